"""Bad inputs, as a new user types them: each ends in one `error:` line with the right exit status, no traceback.

One row per input: the command line (`$name` placeholders are filled from the fixtures below), the expected
exit status (2: config, 1: data), and a substring of the one line that answers it. Rows run as subprocesses;
most fail while the config loads, before torch is imported. Each row failed on the code before
`open_vlm/errors.py` / `config/validate.py` existed (a traceback, another exit status, or a line that did not
name the key).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from string import Template

import numpy as np
import pytest
from PIL import Image

from open_vlm.config.validate import require_image
from open_vlm.errors import ConfigError
from tests.conftest import REPO, run_cli
from tests.launch.conftest import ROLE
from tests.trainer import runs


@dataclass
class Row:
    name: str
    argv: list[str]
    code: int
    says: str
    env: dict[str, str] = field(default_factory=dict)
    s3: bool = False  # needs the moto S3 endpoint
    timeout: float = 300  # seconds; a row that must fail fast says how fast


# An S3 endpoint where nothing listens
NO_S3 = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "x",
    "AWS_SECRET_ACCESS_KEY": "y",
}
TRAIN = ["-m", "open_vlm.train", "--config", "$config"]
CLI = ["-m", "open_vlm.cli"]
EVAL = [*CLI, "eval", "--config", "$config", "--run.output_dir", "$tmp/runs"]
EXTRACT = [*CLI, "extract", "--config", f"{REPO}/configs/extract.yaml", "--run.output_dir", "$tmp/runs"]
EXTRACT += ["--extract.out", "$tmp/regions"]
ONE_SHARD = '["$demo/demo-000000.tar"]'
LAUNCH = ["-m", "launch.sagemaker", "--config", "$launch_config", "--instance-type", "ml.g5.12xlarge", "--dry-run"]
LAUNCH += ["--region", "us-east-1", "--role", ROLE]
BAD_USER_FILE = {"XDG_CONFIG_HOME": "$tmp/xdg"}  # its open_vlm/config.yaml has an unknown key


def sources(url: str) -> list[str]:
    return ["--data.sources", json.dumps([{"name": "s", "urls": [url]}])]


ROWS = [
    # train: paths
    Row("train-model-config", [*TRAIN, "--model.config", "no/such/model.yaml"], 2, "model.config: no model config file at 'no/such/model.yaml' (no folder 'no/such'"),
    Row("train-model-config-typo", [*TRAIN, "--model.config", f"{REPO}/configs/models/paligema_tiny.yaml"], 2, "did you mean 'paligemma_tiny.yaml'?"),
    Row("train-source-key", [*TRAIN, "--data.sources", '[{"urls": ["$demo/demo-000000.tar"], "wieght": 2}]'], 2, "unknown config key 'data.sources[0].wieght'; did you mean 'data.sources[0].weight'?"),
    Row("train-augment-key", [*TRAIN, "--data.augment", '{"lite": {"flipp": true}}'], 2, "unknown config key 'data.augment.lite.flipp'; did you mean 'data.augment.lite.flip'?"),
    Row("augment-shards-key", [f"{REPO}/tools/augment_shards.py", "shapes", "--out", "$tmp/aug", "--augment", "{flipp: 0.5}"], 2, "--augment: unknown key 'flipp'; did you mean 'flip'?"),
    # MLflow's client retries a refused connection for ~4 minutes, after the model is built; checked first now
    Row("train-mlflow-unreachable", [*TRAIN, "--logging.trackers", '["jsonl", "mlflow"]'], 1, "MLFLOW_TRACKING_URI: cannot reach 'http://127.0.0.1:9'", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, timeout=90),
    Row("train-mlflow-scheme", [*TRAIN, "--logging.trackers", '["mlflow"]'], 2, "MLFLOW_TRACKING_URI: MLflow cannot use 'mlfow://host'", env={"MLFLOW_TRACKING_URI": "mlfow://host"}),
    Row("eval-mlflow-unreachable", [*EVAL, "--logging.trackers", '["mlflow"]'], 1, "MLFLOW_TRACKING_URI: cannot reach 'http://127.0.0.1:9'", env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, timeout=90),
    Row("train-tokenizer", [*TRAIN, "--model.tokenizer", "no/such/tok"], 2, "model.tokenizer: no tokenizer folder at 'no/such/tok'"),
    Row("train-pretrained", [*TRAIN, "--model.pretrained", "$tmp/no-model"], 2, "model.pretrained: no save_pretrained folder"),
    Row("train-init-from", [*TRAIN, "--checkpoint.init_from", "$tmp/no-run"], 2, "checkpoint.init_from: no complete checkpoint at"),
    Row("train-resume", [*TRAIN, "--checkpoint.resume", "$tmp/no-run"], 2, "checkpoint.resume: no complete checkpoint at"),
    Row("train-shards", [*TRAIN, *sources("$tmp/nope/x-{0..3}.tar")], 2, "data.sources[0].urls: 4 of 4 shard(s) match no file"),
    Row("train-shard-range", [*TRAIN, *sources("$demo/demo-{000000..000009}.tar")], 2, "6 of 10 shard(s) match no file, e.g. '$demo/demo-000004.tar'"),
    Row("train-s3-shards", [*TRAIN, *sources("s3://$bucket/none-{0..1}.tar")], 2, "2 of 2 shard(s) match no file", s3=True),
    Row("train-s3-checkpoint-bucket", [*TRAIN, "--checkpoint.dir", "s3://no-$bucket/ck"], 2, "checkpoint.dir: no bucket at 's3://no-$bucket'", s3=True),
    # train: numbers
    Row("train-batch", [*TRAIN, "--data.batch_size", "-4"], 2, "data.batch_size: -4 is out of range (it must be >= 1)"),
    Row("train-workers", [*TRAIN, "--data.num_workers", "-1"], 2, "data.num_workers: -1 is out of range"),
    Row("train-streams", [*TRAIN, "--data.num_streams", "0"], 2, "data.num_streams: 0 is out of range"),
    Row("train-pad", [*TRAIN, "--data.pad_to_multiple", "0"], 2, "data.pad_to_multiple: 0 is out of range"),
    Row("train-steps", [*TRAIN, "--train.max_steps", "0"], 2, "train.max_steps: 0 is out of range"),
    Row("train-lr", [*TRAIN, "--optim.lr", "-0.1"], 2, "optim.lr: -0.1 is out of range (it must be > 0)"),
    Row("train-lr-nan", [*TRAIN, "--optim.lr", "nan"], 2, "optim.lr: nan is out of range"),
    Row("train-save-every", [*TRAIN, "--checkpoint.every_steps", "-5"], 2, "checkpoint.every_steps: -5 is out of range"),
    Row("train-log-every", [*TRAIN, "--logging.every_steps", "0"], 2, "logging.every_steps: 0 is out of range"),
    Row("train-log-level", [*TRAIN, "--logging.level", "LOUD"], 2, "logging.level: expected one of"),
    Row("train-global-batch", [*TRAIN, "--train.global_batch_size", "9"], 2, "train.global_batch_size: 9 is not a multiple of data.batch_size (2); use 8 or 10"),
    Row("train-global-batch-world", [*TRAIN, "--train.global_batch_size", "6"], 2, "x world size (2) = 4; use 4 or 8", env={"WORLD_SIZE": "2", "RANK": "0"}),
    # train: how the config is written
    Row("train-unquoted-braces", [*TRAIN, "--data.catalogs", "[x-{0..1}.yaml]"], 2, "data.catalogs: cannot read '[x-{0..1}.yaml]' as YAML"),
    Row("train-user-file", [*TRAIN], 2, "config.yaml: unknown key(s) ['bogus']", env=BAD_USER_FILE),
    # train: data whose samples do not fit the modality (webdataset's own sample.tgz: png + cls)
    Row("train-png-cls", [*TRAIN, *sources("$png_cls")], 1, "decodes as modality image_text (no txt / json caption|text, answer, messages / conversations or suffix field); members seen: cls, png"),
    # eval
    Row("eval-checkpoint", [*EVAL, "--checkpoint", "$tmp/no-run"], 2, "eval.checkpoint: no complete checkpoint at"),
    Row("eval-tokenizer", [*EVAL, "--model.kind", "siglip", "--model.config", f"{REPO}/configs/models/siglip_tiny.yaml", "--model.tokenizer", "no/tok"], 2, "model.tokenizer: no tokenizer folder"),
    Row("eval-threshold", [*EVAL, "--eval.threshold", "2"], 2, "eval.threshold: 2.0 is out of range (it must be in [0, 1])"),
    Row("eval-log-level", [*EVAL, "--logging.level", "LOUD"], 2, "logging.level: expected one of"),
    Row("eval-loss-png-cls", [*EVAL, "--checkpoint", "$tmp", "--eval.sources", json.dumps([{"urls": ["$png_cls"]}])], 1, "eval.sources[0]: none of the first"),
    # extract (its module imports torch)
    Row("extract-shards", [*EXTRACT, "--extract.urls", '["$tmp/nope-{0..1}.tar"]'], 2, "extract.urls: 2 of 2 shard(s) match no file"),
    Row("extract-weights", [*EXTRACT, "--extract.urls", ONE_SHARD, "--extract.region.weights", "$tmp/no.pt"], 2, "extract.region.weights: no state-dict file"),
    Row("extract-unquoted-braces", [*EXTRACT, "--extract.urls", "[$tmp/x-{0..1}.tar]"], 2, "extract.urls: cannot read"),
    Row("extract-batch", [*EXTRACT, "--extract.urls", ONE_SHARD, "--extract.batch_size", "0"], 2, "extract.batch_size: 0 is out of range"),
    # generate / export / embed
    Row("generate-checkpoint", [*CLI, "generate", "--checkpoint", "$tmp/no-run", "--image", "$image"], 2, "--checkpoint: no complete checkpoint at '$tmp/no-run'"),
    Row("generate-image", [*CLI, "generate", "--checkpoint", "$tmp", "--image", "$tmp/cat.jpg"], 2, "--image: no image file at '$tmp/cat.jpg'"),
    Row("generate-not-an-image", [*CLI, "generate", "--checkpoint", "$tmp", "--image", "$not_image"], 2, "--image: cannot read '$not_image' as an image (not a format PIL reads)"),
    Row("generate-image-folder", [*CLI, "generate", "--checkpoint", "$tmp", "--image", "$tmp"], 2, "--image: '$tmp' is a folder; give an image file"),
    Row("attention-image", [*CLI, "view", "--attention", "--checkpoint", "$tmp", "--image", "$tmp/cat.jpg"], 2, "--image: no image file at '$tmp/cat.jpg'"),
    Row("attention-not-an-image", [*CLI, "view", "--attention", "--checkpoint", "$tmp", "--image", "$not_image"], 2, "--image: cannot read '$not_image' as an image"),
    Row("attention-checkpoint", [*CLI, "view", "--attention", "--checkpoint", "$tmp/no-run", "--image", "$image"], 2, "--checkpoint: no complete checkpoint at '$tmp/no-run'"),
    Row("generate-top-p", [*CLI, "generate", "--checkpoint", "$tmp", "--image", "$image", "--top-p", "1.5"], 2, "--top-p: 1.5 is out of range"),
    Row("export-checkpoint", [*CLI, "export", "$tmp/no-run", "$tmp/out"], 2, "CHECKPOINT: no complete checkpoint at '$tmp/no-run'"),
    Row("embed-checkpoint", [*CLI, "embed", "--checkpoint", "$tmp/no-run", "--text", "hi"], 2, "--checkpoint: no complete checkpoint at"),
    Row("embed-image", [*CLI, "embed", "--checkpoint", "$tmp", "--image", "$tmp/dog.jpg"], 2, "--image: no image file"),
    Row("view-s3-unreachable", [*CLI, "view", "s3://bucket/run", "--verify"], 1, "PATH: cannot read 's3://bucket/run': EndpointConnectionError", env=NO_S3, timeout=60),
    Row("view-s3-shard-unreachable", [*CLI, "view", "s3://bucket/x-000000.tar"], 1, "PATH: cannot read 's3://bucket/x-000000.tar': EndpointConnectionError", env=NO_S3, timeout=60),
    # data
    Row("data-add-shards", [*CLI, "data", "add", "x", "$tmp/nope-{0..1}.tar", "--modality", "image_text", "--catalog", "$tmp/c.yaml"], 2, "URLS: 2 of 2 shard(s) match no file"),
    Row("data-add-png-cls", [*CLI, "data", "add", "x", "$png_cls", "--modality", "image_text", "--catalog", "$tmp/c.yaml"], 0, "members seen: cls, png"),
    Row("data-bench-world", [*CLI, "data", "bench", "--config", "$config", "--world", "0"], 2, "--world: 0 must be at least 1"),
    Row("data-list-user-file", [*CLI, "data", "list"], 2, "unknown key(s) ['bogus']", env=BAD_USER_FILE),
    Row("config-show-user-file", [*CLI, "config", "show"], 2, "unknown key(s) ['bogus']", env=BAD_USER_FILE),
    # the SageMaker launcher: the config is resolved (and checked) by the shared loader
    Row("launch-batch", [*LAUNCH, "--", "--data.batch_size", "-4"], 2, "data.batch_size: -4 is out of range"),
    Row("launch-lr", [*LAUNCH, "--", "--optim.lr", "-1"], 2, "optim.lr: -1.0 is out of range"),
    Row("launch-global-batch", [*LAUNCH, "--", "--train.global_batch_size", "12", "--data.batch_size", "8"], 2, "train.global_batch_size: 12 is not a multiple of data.batch_size (8)"),
    Row("launch-unquoted-braces", [*LAUNCH, "--", "--data.catalogs", "[x-{0..1}.yaml]"], 2, "data.catalogs: cannot read"),
    Row("launch-user-file", [*LAUNCH], 2, "unknown key(s) ['bogus']", env=BAD_USER_FILE),
]  # fmt: skip


def png_cls_tgz(path) -> str:
    """A gzipped tar like webdataset's testdata/sample.tgz: `<key>.png` + `<key>.cls`, no caption."""
    with tarfile.open(path, "w:gz") as tar:
        for i in range(10):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(buf, format="PNG")
            for suffix, data in (("png", buf.getvalue()), ("cls", str(i % 3).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture(scope="module")
def places(tmp_path_factory, demo_dir) -> dict[str, str]:
    """What `$name` in a row stands for: a good run config, a launcher config, shards, an image."""
    import yaml

    tmp = tmp_path_factory.mktemp("bad_inputs")
    (tmp / "xdg" / "open_vlm").mkdir(parents=True)
    (tmp / "xdg" / "open_vlm" / "config.yaml").write_text("bogus: 1\n")
    launch = {
        "run": {"project": "demo", "name": "tiny"},
        "data": {"sources": [{"name": "shapes", "urls": ["s3://shards/demo/demo-{000000..000003}.tar"]}]},
        "model": {"kind": "paligemma", "config": "configs/models/paligemma_tiny.yaml", "tokenizer": "s3://shards/t"},
        "train": {"strategy": "ddp", "max_steps": 50},
    }
    (tmp / "launch.yaml").write_text(yaml.safe_dump(launch))
    return {
        "tmp": str(tmp),
        "demo": str(demo_dir),
        "config": str(runs.write_config(tmp, demo_dir, "bad", checkpoint={"resume": "none"})),
        "launch_config": str(tmp / "launch.yaml"),
        "png_cls": png_cls_tgz(tmp / "sample.tgz"),
        "image": str(next((demo_dir / "examples").glob("*.jpg"))),
        "not_image": write_not_an_image(tmp / "photo.jpg"),
    }


def write_not_an_image(path) -> str:
    path.write_bytes(b"<html>403 Forbidden</html>")  # what a failed download saves under the image's name
    return str(path)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_bad_input_is_one_line(row: Row, places, request):
    if row.s3:
        places = {**places, "bucket": request.getfixturevalue("s3_bucket")}
    argv = [Template(arg).safe_substitute(places) for arg in row.argv]
    env = {k: Template(v).safe_substitute(places) for k, v in row.env.items()}
    out = run_cli(*argv, env=env, timeout=row.timeout)
    text = out.stdout + out.stderr
    says = Template(row.says).safe_substitute(places)
    assert "Traceback" not in text, text[-3000:]
    assert out.returncode == row.code, text[-3000:]
    assert any(says in line for line in text.splitlines()), text[-3000:]


def test_debug_shows_the_traceback(places):
    out = run_cli("-m", "open_vlm.train", "--config", places["config"], "--data.batch_size", "-4")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    debug = run_cli(*out.args[1:], env={"OPEN_VLM_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == out.stderr.strip().splitlines()[-1]


def test_a_truncated_jpeg_is_refused_before_the_model_loads(tmp_path):
    """A JPEG cut in half (a failed download: a valid header) is found before the model loads (PIL's verify() reads
    no JPEG data: it passed, and generate failed only at decode, after loading the model)."""
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="cut.jpg"):
        require_image("--image", str(path))


def test_a_dangling_symlink_is_not_suggested_as_itself(tmp_path):
    """A symlink whose target is gone is said to be one (it was 'not found; did you mean 'x.jpg'?': itself)."""
    (tmp_path / "x.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ConfigError) as err:
        require_image("--image", str(tmp_path / "x.jpg"))
    assert "did you mean 'x.jpg'" not in str(err.value) and "(a broken symlink)" in str(err.value), err.value


@pytest.mark.slow
def test_view_of_an_endpoint_that_never_answers_ends_in_one_line(tmp_path):
    """An endpoint that accepts the connection but never answers (a hung proxy, a black-holing firewall): one line
    naming PATH within seconds (botocore's and s3fs's retries of 60 s reads ran for minutes)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    port = server.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "open_vlm.cli", "view", "s3://bucket/ckpt/step_00000002"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("open-vlm view s3://... with a silent endpoint still running after 60 s")
    finally:
        server.close()
    assert done.returncode == 1 and "PATH: cannot read" in done.stderr, done.stderr[-1000:]
