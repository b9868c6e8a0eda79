"""`python -m open_vlm.train --config FILE.yaml [--section.key value ...]` (also under torchrun)."""

from __future__ import annotations

import logging
import os
import sys

from open_vlm.config.load import ignored_keys, load_run_config
from open_vlm.config.validate import check_inputs
from open_vlm.data.version import DataVersionError
from open_vlm.errors import run_main
from open_vlm.lifeline import watch_launcher
from open_vlm.runfolder import run_dir, setup_logging

log = logging.getLogger("open_vlm.train")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    watch_launcher()  # under torchrun: exit when the agent dies, instead of hanging on as an orphan
    cfg = load_run_config(argv)
    check_inputs(cfg, "train", world=int(os.environ.get("WORLD_SIZE", "1")))
    folder = run_dir(cfg.run.output_dir, cfg.run.project, cfg.run.name)
    log_path = setup_logging(folder, cfg.run.project, "train", cfg.logging.level)
    log.info("run folder %s (log %s)", folder, log_path)
    ignored = ignored_keys(argv, "train")
    if ignored:
        log.warning("train ignores these config keys: %s", ", ".join(ignored))

    from open_vlm.checkpoint.checkpointer import CheckpointDamaged, CheckpointError
    from open_vlm.checkpoint.dcp_safe import UnsafeCheckpoint
    from open_vlm.checkpoint.resume import ResumeRefused
    from open_vlm.trainer.loop import Trainer  # heavy imports after the config is known to be good
    from open_vlm.trainer.parallel import peer_lost, shutdown_distributed

    try:
        trainer = Trainer(cfg, folder)
    except (NotImplementedError, ValueError) as err:  # config values the components reject
        log.error("%s", err)
        return 2
    try:
        reason = trainer.fit()
    except (ResumeRefused, DataVersionError) as err:  # resuming on changed config/data: refused before any step
        log.error("%s", err)
        return 2
    except (UnsafeCheckpoint, CheckpointError, CheckpointDamaged) as err:  # must not read, cannot read or write
        log.error("%s", err)
        return 1
    except RuntimeError as err:  # another rank died (kill -9, OOM): say so instead of gloo's words
        lost = peer_lost(err)
        if lost is None:
            raise
        log.error("%s", lost)
        return 1
    finally:
        shutdown_distributed()
    log.info("stopped (%s) at step %d, %d samples seen", reason, trainer.step, trainer.samples_seen)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
