"""`open-vlm data bench`: the run's loader alone, on local and S3 shards; a config without sources is one line."""

import re

import s3fs
import yaml

from open_vlm.data import bench
from open_vlm.data.stages import MAIN_STAGES, WORKER_STAGES
from tests.conftest import run_cli
from tests.trainer.runs import write_config

RATE = re.compile(r"^(\d+(?:\.\d+)?) samples/s, (\d+(?:\.\d+)?) batches/s", re.M)


def bench_config(tmp_path, demo_dir, urls: str | None = None, **data) -> str:
    """The trainer tests' tiny PaliGemma run, batch 4 (a source of `urls` instead of the demo shards)."""
    data = {"batch_size": 4, **data}
    if urls is not None:
        data["sources"] = [{"name": "shapes", "urls": [urls]}]
    return str(write_config(tmp_path, demo_dir, "bench", data=data))


def test_demo_config_prints_rates_first_batch_and_stages(tmp_path, demo_dir, capsys):
    config = bench_config(tmp_path, demo_dir)
    assert bench.main(["--config", config, "--steps", "3", "--workers", "1", "--profile"]) == 0
    out = capsys.readouterr().out
    rate = RATE.search(out)
    assert rate and float(rate.group(1)) > 0 and float(rate.group(2)) > 0, out
    assert "(24 samples in" in out  # 3 steps x 2 micro-batches x 4 samples after the first micro-batch
    assert re.search(r"micro-batch 4 x 2 accumulation", out)
    assert re.search(r"time to first batch \d+\.\d+ s", out)
    workers = next(line for line in out.splitlines() if line.startswith("workers"))
    main = next(line for line in out.splitlines() if line.startswith("main process"))
    for stage in WORKER_STAGES:
        assert re.search(rf"{stage} \d+\.\d\d", workers), workers
    for stage in (s for s in MAIN_STAGES if s != "pin"):  # pinning only on CUDA
        assert re.search(rf"{stage} \d+\.\d\d", main), main


def test_stage_times_are_counted_only_when_profiling(tmp_path, demo_dir):
    from open_vlm.config.load import load_run_config

    cfg = load_run_config(["--config", bench_config(tmp_path, demo_dir), "--data.num_workers", "1"])
    quiet = bench.measure(bench.build(cfg, 0, 1, profile=False), 2)
    assert quiet.stages == {} and quiet.samples == 16
    loud = bench.measure(bench.build(cfg, 0, 1, profile=True), 2)
    assert set(loud.stages) == {*WORKER_STAGES, *MAIN_STAGES} - {"pin"}
    assert all(seconds > 0 for seconds in loud.stages.values())


def test_rank_share_of_a_larger_world(tmp_path, demo_dir, capsys):
    config = bench_config(tmp_path, demo_dir)
    assert bench.main(["--config", config, "--steps", "2", "--world", "2", "--rank", "1"]) == 0
    out = capsys.readouterr().out
    assert "rank 1 of 2" in out and "micro-batch 4 x 1 accumulation" in out and "(8 samples in" in out


def test_s3_shards(tmp_path, demo_dir, s3_endpoint, s3_bucket, capsys):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    for shard in sorted(demo_dir.glob("demo-*.tar")):
        fs.put(str(shard), f"{s3_bucket}/demo/{shard.name}")
    urls = f"s3://{s3_bucket}/demo/demo-{{000000..000003}}.tar"
    config = bench_config(tmp_path, demo_dir, urls=urls)
    assert bench.main(["--config", config, "--steps", "2", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert RATE.search(out) and "(16 samples in" in out and "0 bad" in out, out
    s3fs.S3FileSystem.clear_instance_cache()


def test_config_without_sources_is_one_line_exit_2(tmp_path, demo_dir):
    config = tmp_path / "nosources.yaml"
    raw = yaml.safe_load(open(bench_config(tmp_path, demo_dir)))
    raw["data"]["sources"] = []
    config.write_text(yaml.safe_dump(raw))
    out = run_cli("-m", "open_vlm.cli", "data", "bench", "--config", str(config))
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "data.sources is empty" in lines[0], out.stderr
