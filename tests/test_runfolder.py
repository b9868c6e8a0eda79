import json
import logging
import re
import time

from open_vlm.runfolder import MetricsWriter, log_file_name, run_dir, setup_logging


def test_run_dir_and_log_name():
    assert str(run_dir("out", "proj", "exp1")) == "out/proj/exp1"
    when = time.mktime((2026, 11, 22, 9, 8, 7, 0, 0, -1))
    assert log_file_name("proj", "train", when) == "proj-train-20261122-090807.log"


def test_setup_logging_writes_rank0_file(tmp_path):
    path = setup_logging(tmp_path, "proj", "eval", rank=0)
    logging.getLogger("open_vlm.x").info("hello")
    assert re.fullmatch(r"proj-eval-\d{8}-\d{6}\.log", path.name)
    assert "hello" in path.read_text()


def test_other_ranks_log_only_warnings(tmp_path):
    assert setup_logging(tmp_path, "proj", "train", rank=1) is None
    assert logging.getLogger().level == logging.WARNING
    setup_logging(None, "proj", "train", rank=0)


def test_metrics_truncate(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        writer.write({"step": step, "loss": step * 1.0})
    writer.truncate_after(3)
    steps = [json.loads(line)["step"] for line in writer.path.read_text().splitlines()]
    assert steps == [1, 2, 3]
