"""`python -m open_vlm.train --config FILE.yaml [--section.key value ...]` (also under torchrun)."""

from __future__ import annotations

import logging
import os
import sys

from open_vlm.errors import report_failure, run_main
from open_vlm.lifeline import watch_launcher
from open_vlm.trainer.signals import StopRequest

# First thing, before the heavier imports in main(): who launched this process (a launcher killed while we import
# would otherwise go unnoticed by the watch, which would then watch init) and, run as a program, the stop handler
# (a SIGTERM while starting would kill the process outright and fail the job; the trainer honours it instead).
LAUNCHER_PID = os.getppid()
STOP_AT_START = StopRequest().install() if __name__ == "__main__" else None

log = logging.getLogger("open_vlm.train")


def failed(err: Exception, code: int) -> int:
    """An error the trainer explains: logged, left as the job's failure reason, and exit status `code`."""
    log.error("%s", err)
    report_failure(str(err))
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    watch_launcher(parent=LAUNCHER_PID)  # under torchrun: exit when the agent dies, instead of hanging on as an orphan
    stop = STOP_AT_START or StopRequest().install()
    try:
        return train(argv, stop)
    finally:
        if stop is not STOP_AT_START:  # called in-process (`open-vlm train`, tests): give the signals back
            stop.uninstall()


def train(argv: list[str], stop: StopRequest) -> int:
    from open_vlm.config.load import ignored_keys, load_run_config
    from open_vlm.config.validate import check_inputs
    from open_vlm.runfolder import run_dir, setup_logging

    cfg = load_run_config(argv)
    check_inputs(cfg, "train", world=int(os.environ.get("WORLD_SIZE", "1")))
    folder = run_dir(cfg.run.output_dir, cfg.run.project, cfg.run.name)
    log_path = setup_logging(folder, cfg.run.project, "train", cfg.logging.level)
    log.info("run folder %s (log %s)", folder, log_path)
    ignored = ignored_keys(argv, "train")
    if ignored:
        log.warning("train ignores these config keys: %s", ", ".join(ignored))

    from open_vlm.trainer.parallel import shutdown_distributed

    try:
        return fit(cfg, folder, stop)
    finally:  # the trainer, and the process groups it holds, out of reach by now
        shutdown_distributed()


def fit(cfg, folder, stop: StopRequest) -> int:
    """Build the trainer and run it: the exit status, with the errors the trainer explains as one line."""
    from open_vlm.checkpoint.checkpointer import CheckpointDamaged, CheckpointError
    from open_vlm.checkpoint.dcp_safe import UnsafeCheckpoint
    from open_vlm.checkpoint.resume import ResumeRefused
    from open_vlm.data.version import DataVersionError
    from open_vlm.trainer.loop import Trainer  # heavy imports after the config is known to be good
    from open_vlm.trainer.parallel import peer_lost

    try:
        trainer = Trainer(cfg, folder)
    except (NotImplementedError, ValueError) as err:  # config values the components reject
        return failed(err, 2)
    try:
        reason = trainer.fit(stop)
    except (ResumeRefused, DataVersionError) as err:  # resuming on changed config/data: refused before any step
        return failed(err, 2)
    except (UnsafeCheckpoint, CheckpointError, CheckpointDamaged) as err:  # must not read, cannot read or write
        return failed(err, 1)
    except RuntimeError as err:  # another rank died (kill -9, OOM): say so instead of gloo's words
        lost = peer_lost(err)
        if lost is None:
            raise
        return failed(RuntimeError(lost), 1)
    log.info("stopped (%s) at step %d, %d samples seen", reason, trainer.step, trainer.samples_seen)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
