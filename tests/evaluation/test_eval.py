"""`open-vlm eval`: zero-shot SigLIP on the demo shards, LXMERT VQA on region shards, outputs, wandb, plots."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from open_vlm.evaluation.plot import CELL, cell_origin, draw_report, shade
from open_vlm.evaluation.run import main
from tests.conftest import REPO, run_cli

CONFIGS = REPO / "configs" / "models"
SHAPES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def siglip_dir(demo_dir, tmp_path_factory):
    from open_vlm.config.schema import ModelConfig
    from open_vlm.models.registry import build_model
    from open_vlm.tokenize.tokenizers import load_tokenizer

    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(demo_dir / "tokenizer"))
    bundle = build_model(ModelConfig(kind="siglip", config=str(CONFIGS / "siglip_tiny.yaml")), tokenizer)
    out = tmp_path_factory.mktemp("siglip")
    bundle.model.save_pretrained(out)
    return out


def zero_shot_args(demo_dir, siglip_dir, runs, *extra: str) -> list[str]:
    return [
        "--data.sources",
        json.dumps([{"name": "demo", "urls": [str(demo_dir / "demo-000000.tar")], "modality": "image_text"}]),
        "--data.batch_size",
        "8",
        "--data.max_text_len",
        "16",
        "--model.kind",
        "siglip",
        "--model.pretrained",
        str(siglip_dir),
        "--model.tokenizer",
        str(demo_dir / "tokenizer"),
        "--eval.class_names",
        "[circle,square,triangle]",
        "--eval.prompt",
        "a {}",
        "--eval.label_field",
        "shape",
        "--eval.max_samples",
        "20",
        "--run.output_dir",
        str(runs),
        "--run.name",
        "zs",
        *extra,
    ]


def first_samples(shard, n: int) -> list[dict]:
    out = []
    with tarfile.open(shard) as tar:
        members = {}
        for m in tar:
            key, suffix = m.name.split(".", 1)
            members.setdefault(key, {})[suffix] = tar.extractfile(m).read()
    for key in list(members)[:n]:
        out.append(members[key])
    return out


def test_zero_shot_report_matches_direct_model_predictions(demo_dir, siglip_dir, tmp_path):
    from transformers import AutoTokenizer, SiglipModel

    assert main(zero_shot_args(demo_dir, siglip_dir, tmp_path)) == 0
    folder = tmp_path / "open_vlm" / "zs"
    report = json.loads((folder / "eval-zero_shot.json").read_text())
    assert (folder / "eval-zero_shot.txt").read_text().startswith("class")
    assert Image.open(folder / "eval-zero_shot.png").format == "PNG"
    assert (folder / "config.yaml").exists()

    # The same predictions computed here straight from transformers.
    samples = first_samples(demo_dir / "demo-000000.tar", 20)
    truth = [SHAPES.index(json.loads(s["json"])["shape"]) for s in samples]
    model = SiglipModel.from_pretrained(str(siglip_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(demo_dir / "tokenizer"))
    text = tok([f"a {s}" for s in SHAPES], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    images = [
        np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB").resize((32, 32), Image.BICUBIC)) for s in samples
    ]
    pixels = (torch.from_numpy(np.stack(images)).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        logits = model(
            input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels.permute(0, 3, 1, 2)
        ).logits_per_image
    predicted = logits.argmax(1).tolist()
    cm = np.zeros((3, 3), dtype=int)
    for t, p in zip(truth, predicted):
        cm[t, p] += 1
    assert report["confusion_matrix"] == cm.tolist()
    assert report["num_samples"] == 20 and [r["support"] for r in report["per_class"]] == cm.sum(1).tolist()
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 20)


def test_multi_label_and_wandb_offline(demo_dir, siglip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = zero_shot_args(
        demo_dir, siglip_dir, tmp_path, "--logging.wandb.mode", "offline", "--eval.multi_label", "true"
    )
    assert main(args) == 0
    folder = tmp_path / "open_vlm" / "zs"
    report = json.loads((folder / "eval-zero_shot.json").read_text())
    assert report["multi_label"] and len(report["confusion_matrix"]) == 3
    assert sum(r["support"] for r in report["per_class"]) == 20  # one shape per image
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))


def write_region_shard(path, n: int = 6, k: int = 5) -> list[str]:
    from open_vlm.extract.registry import Regions
    from open_vlm.extract.writer import ShardWriter, sample_members

    answers = []
    rng = np.random.default_rng(0)
    with ShardWriter(str(path)) as sink:
        for i in range(n):
            answer = ["red", "green", "blue"][i % 3]
            answers.append(answer)
            regions = Regions(rng.standard_normal((k, 16)).astype(np.float32), rng.random((k, 4)).astype(np.float32))
            members = sample_members(
                regions,
                image_id=f"{i:03d}",
                size=(32, 32),
                caption="a square",
                source_json={"question": "what colour is the square", "answer": answer},
            )
            sink.write(f"{i:03d}", members)
    return answers


def test_vqa_with_the_lxmert_qa_head(tmp_path):
    import yaml
    from transformers import LxmertForPreTraining

    from tests.tokenize.conftest import make_word_tokenizer

    tokenizer = make_word_tokenizer()
    tokenizer.save_pretrained(tmp_path / "tok")
    spec = yaml.safe_load((CONFIGS / "lxmert_tiny.yaml").read_text()) | {"task_qa": True, "num_qa_labels": 3}
    (tmp_path / "lxmert_qa.yaml").write_text(yaml.safe_dump(spec))
    torch.manual_seed(0)
    from open_vlm.config.schema import ModelConfig
    from open_vlm.models.registry import build_model

    model = build_model(ModelConfig(kind="lxmert", config=str(tmp_path / "lxmert_qa.yaml")), tokenizer).model
    model.save_pretrained(tmp_path / "lxmert")
    answers = write_region_shard(tmp_path / "vqa-0.tar")
    source = [{"name": "vqa", "urls": [str(tmp_path / "vqa-0.tar")], "modality": "region_features"}]
    args = [
        "--data.sources",
        json.dumps(source),
        "--model.kind",
        "lxmert",
        "--model.pretrained",
        str(tmp_path / "lxmert"),
    ]
    args += ["--model.tokenizer", str(tmp_path / "tok"), "--eval.task", "vqa", "--eval.class_names", "[red,green,blue]"]
    args += ["--eval.label_field", "answer", "--eval.num_regions", "5", "--run.output_dir", str(tmp_path / "runs")]
    assert main(args) == 0
    report = json.loads((tmp_path / "runs" / "open_vlm" / "default" / "eval-vqa.json").read_text())
    assert [r["support"] for r in report["per_class"]] == [2, 2, 2] and report["num_samples"] == len(answers)
    assert isinstance(model, LxmertForPreTraining)
    bad = main(args + ["--eval.class_names", "[red,green]"])  # the QA head has 3 answers
    assert bad == 2


def test_unknown_eval_kind_exits_2():
    result = run_cli("-m", "open_vlm.cli", "eval", "--kind", "clasification")
    assert result.returncode == 2 and "did you mean 'classification'" in result.stderr


def test_plot_shades_cells_by_row_rate():
    from open_vlm.evaluation.metrics import single_label_report

    report = single_label_report([0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 0, 1], ["a", "b"])
    image = draw_report(report).convert("RGB")

    def colour(i, j):
        x, y = cell_origin(i, j)
        return image.getpixel((x + CELL - 3, y + CELL - 3))  # a corner, away from the count text

    assert colour(0, 0) == shade(0.75) and colour(0, 1) == shade(0.25) and colour(1, 1) == shade(0.5)
    assert sum(shade(0.75)) < sum(shade(0.25))  # more → darker


@pytest.fixture(scope="module")
def siglip_run(demo_dir, tmp_path_factory):
    """A SigLIP trained in-process for a few steps on the demo shards (a run folder with one checkpoint)."""
    from open_vlm.config.load import load_run_config
    from open_vlm.trainer.loop import Trainer
    from tests.trainer.runs import folder, write_config

    tmp = tmp_path_factory.mktemp("siglip-run")
    model = {"kind": "siglip", "config": str(CONFIGS / "siglip_tiny.yaml"), "tokenizer": str(demo_dir / "tokenizer")}
    config = write_config(tmp, demo_dir, "siglip", model=model, train={"loss": "siglip", "max_steps": 3})
    Trainer(load_run_config(["--config", str(config)]), folder(tmp, "siglip")).fit()
    return folder(tmp, "siglip")


def test_classification_of_a_checkpoint_run_folder_or_export(demo_dir, siglip_run, tmp_path):
    from open_vlm import OpenVLM
    from open_vlm.cli import main as cli

    source = [{"name": "demo", "urls": [str(demo_dir / "demo-000000.tar")], "modality": "image_text"}]
    common = ["--data.sources", json.dumps(source), "--eval.class_names", "[circle,square,triangle]"]
    common += ["--eval.prompt", "a {}", "--eval.label_field", "shape", "--eval.max_samples", "20"]
    checkpoint = sorted((siglip_run / "checkpoints").glob("step_*"))[-1]
    assert cli(["export", str(siglip_run), str(tmp_path / "export")]) == 0
    reports = []
    for name, path in (("run", siglip_run), ("ckpt", checkpoint), ("export", tmp_path / "export")):
        args = [*common, "--kind", "classification", "--checkpoint", str(path), "--run.output_dir", str(tmp_path)]
        assert main([*args, "--run.name", name]) == 0
        reports.append(json.loads((tmp_path / "open_vlm" / name / "eval-zero_shot.json").read_text()))
    assert reports[0] == reports[1] == reports[2]

    # The same predictions straight from the trained model, preprocessed as in training.
    model = OpenVLM.from_pretrained(str(siglip_run))
    samples = first_samples(demo_dir / "demo-000000.tar", 20)
    truth = [SHAPES.index(json.loads(s["json"])["shape"]) for s in samples]
    predicted = model.zero_shot_logits([s["jpg"] for s in samples], SHAPES, template="a {}").argmax(1).tolist()
    cm = np.zeros((3, 3), dtype=int)
    for t, p in zip(truth, predicted):
        cm[t, p] += 1
    assert reports[0]["confusion_matrix"] == cm.tolist()
