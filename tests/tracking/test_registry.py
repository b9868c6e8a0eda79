"""The tracker registry: names checked at config load, the wandb switch, config flattening, lazy imports."""

import subprocess
import sys

import pytest
import yaml

from open_vlm.config.load import ConfigError, load_run_config
from open_vlm.config.schema import LoggingConfig, RunConfig, SourceConfig, WandbConfig
from open_vlm.tracking import selected_trackers
from open_vlm.tracking.base import flatten, numbers
from tests.conftest import REPO


def test_an_unknown_tracker_is_refused_at_load_naming_the_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"logging": {"trackers": ["jsonl", "mlfow"]}}))
    with pytest.raises(ConfigError, match="logging.trackers: unknown tracker 'mlfow'; did you mean 'mlflow'"):
        load_run_config(["--config", str(path)])
    cfg = load_run_config(["--config", str(path), "--logging.trackers", "tensorboard"])  # a bare value: one item
    assert cfg.logging.trackers == ["tensorboard"]


def test_wandb_mode_still_turns_wandb_on():
    assert selected_trackers(LoggingConfig()) == ["jsonl"]
    assert selected_trackers(LoggingConfig(wandb=WandbConfig(mode="offline"))) == ["jsonl", "wandb"]
    assert selected_trackers(LoggingConfig(trackers=["wandb", "mlflow", "wandb"])) == ["wandb", "mlflow"]


def test_flatten_gives_dotted_keys_and_string_values():
    cfg = RunConfig()
    cfg.data.sources = [SourceConfig(name="a", urls=["x-{0..3}.tar"], weight=0.5)]
    flat = flatten(cfg)
    assert flat["train.max_steps"] == "100"
    assert flat["data.sources.0.urls"] == '["x-{0..3}.tar"]'
    assert flat["data.sources.0.weight"] == "0.5"
    assert flat["logging.trackers"] == '["jsonl"]'
    assert flat["model.config"] == ""
    assert numbers({"step": 3, "loss": 1.5, "skipped_step": True, "note": "x"}) == {"loss": 1.5, "skipped_step": 1.0}


def test_the_trainer_does_not_import_mlflow_or_tensorboard():
    code = (
        "import sys, open_vlm.train, open_vlm.trainer.loop, open_vlm.tracking; "
        "print(sorted(m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


class Flaky:
    """A tracker whose server is down for its first `down` calls."""

    def __init__(self, down: int):
        self.down, self.got = down, []

    def log_metrics(self, step: int, record: dict) -> None:
        if self.down > 0:
            self.down -= 1
            raise ConnectionError("server gone")
        self.got.append(step)


def test_a_failing_tracker_is_left_alone_for_its_pause_then_tried_again(caplog):
    from open_vlm.tracking.base import Guarded

    flaky = Flaky(down=1)
    guarded = Guarded("flaky", flaky, pause_s=3600)
    for step in (1, 2, 3):
        guarded.log_metrics(step, {"loss": 1.0})  # 1 fails; 2 and 3 fall in the pause: not even tried
    assert flaky.got == [] and flaky.down == 0
    guarded.paused_until = 0.0  # the pause is over
    guarded.log_metrics(4, {"loss": 1.0})
    assert flaky.got == [4]
    text = caplog.text
    assert "tracker flaky: logging step 1 failed (ConnectionError: server gone); the run goes on" in text
    assert "tracker flaky: working again, after 3 missed calls" in text
