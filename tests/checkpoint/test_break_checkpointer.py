"""Break: checkpoint claims that do not hold (each test fails on today's code)."""

import json
import os
import shutil
import signal
import time

import pytest
import torch
import yaml

from open_vlm.checkpoint.checkpointer import Checkpointer
from tests.conftest import REPO, run_cli
from tests.trainer.runs import (
    ENV,
    descendants,
    finish,
    folder,
    kill_tree,
    start,
    train,
    wait_for_steps,
    write_config,
)


def _tiny():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 2)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_a_file_url_checkpoint_dir_can_be_read_back(tmp_path):
    """`file://` is a local spelling everywhere (storage.is_remote, canonical, local_dir), and saves work; but the
    DCP reader gets the URL verbatim (Path('file:/...')): every resume/init_from/export of it fails."""
    directory = f"file://{tmp_path}/ck"
    model, optimizer = _tiny()
    checkpointer = Checkpointer(directory)
    checkpointer.save(1, model=model, optimizer=optimizer, extra={}, rng={}, data_state={}, meta={}, files={})
    latest = checkpointer.latest()
    assert latest == f"{directory}/step_00000001"
    other, other_opt = torch.nn.Linear(2, 2), None
    other_opt = torch.optim.AdamW(other.parameters())
    checkpointer.load(latest, other, other_opt)  # FileNotFoundError: 'file:/.../step_00000001/.metadata'
    assert torch.equal(other.weight, model.weight)


@pytest.mark.parametrize("spelling", ["file://{tmp}/ck", "~/ck"])
def test_a_checkpoint_dir_spelling_resumes_through_the_cli(tmp_path, demo_dir, spelling):
    """Saves under `file://...` or `~/...` work (fsspec resolves them), `resume latest` of them does not:
    exit 1, "FileNotFoundError: 'file:/.../.metadata'" (or "'~/ck/step_00000002/.metadata'")."""
    env = {**ENV, "HOME": str(tmp_path)}
    directory = spelling.format(tmp=tmp_path)
    config = write_config(tmp_path, demo_dir, "spelled", train={"max_steps": 2}, checkpoint={"dir": directory})
    assert run_cli("-m", "open_vlm.train", "--config", str(config), env=env).returncode == 0
    out = run_cli("-m", "open_vlm.train", "--config", str(config), "--train.max_steps", "3", env=env)
    assert out.returncode == 0, out.stderr[-1500:]


def test_a_tampered_meta_json_cannot_import_modules(base_run, tmp_path):
    """The stored config's `model.module` is imported by every reader that rebuilds the model (export,
    from_pretrained, eval --checkpoint, generate, embed, view --attention): a checkpoint picks which installed
    module's top-level code runs. Shown with the stdlib's `this` (prints the Zen of Python)."""
    tmp, _ = base_run
    ckpt = tmp_path / "step_00000004"
    shutil.copytree(folder(tmp, "base") / "checkpoints" / "step_00000004", ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    cfg = yaml.safe_load(meta["config"])
    cfg["model"]["module"] = "this"
    meta["config"] = yaml.safe_dump(cfg)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    out = run_cli("-m", "open_vlm.cli", "export", str(ckpt), str(tmp_path / "exported"), env=ENV)
    assert "The Zen of Python" not in out.stdout, "export imported the module the checkpoint named"


def test_resume_refuses_another_architecture(base_run, tmp_path, demo_dir):
    """A model config with half the layers resumes silently (exit 0): the saved layers it lacks are dropped and
    the run goes on under the old step count. The fingerprint has model.kind only; the trainer's load checks
    weights missing from the checkpoint, never checkpoint weights missing from the model."""
    tmp, _ = base_run
    spec = yaml.safe_load((REPO / "configs/models/paligemma_tiny.yaml").read_text())
    spec["text"]["num_hidden_layers"] = spec["vision"]["num_hidden_layers"] = 1
    (tmp_path / "half_layers.yaml").write_text(yaml.safe_dump(spec))
    ckdir = tmp_path / "ck"
    shutil.copytree(folder(tmp, "base") / "checkpoints" / "step_00000002", ckdir / "step_00000002")
    config = write_config(
        tmp_path,
        demo_dir,
        "smaller",
        train={"max_steps": 3},
        model={"config": str(tmp_path / "half_layers.yaml")},
        checkpoint={"dir": str(ckdir)},
    )
    out = run_cli("-m", "open_vlm.train", "--config", str(config), env=ENV)
    assert out.returncode == 2, "resumed a 2-layer checkpoint into a 1-layer model without a word"
    error = [line for line in out.stderr.splitlines() if "break resume" in line]
    assert len(error) == 1 and "model.config text.num_hidden_layers: 2 -> 1" in error[0], out.stderr[-1500:]
    assert "allow_config_change" in error[0] and "Traceback" not in out.stderr
    # Allowed, the config change passes, the weights do not: another architecture never resumes.
    out = run_cli("-m", "open_vlm.train", "--config", str(config), "--checkpoint.allow_config_change", "true", env=ENV)
    assert out.returncode == 2, out.stderr[-1500:]
    assert "holds another model" in out.stderr and "init_from" in out.stderr and "Traceback" not in out.stderr


def test_a_second_ctrl_c_during_a_shard_write_aborts(tmp_path, demo_dir):
    """README: 'a second Ctrl-C aborts'. Inside DCP's write, the KeyboardInterrupt is wrapped into a
    CheckpointException, which `_together` treats as a storage error and retries: the run trains on, saves
    twice more and exits 0."""
    config = write_config(tmp_path, demo_dir, "ctrlc", train={"max_steps": 1000}, checkpoint={"every_steps": 2})
    proc = start(config, env={"OPEN_VLM_CHECKPOINT_FAULT": "rank=0,file=.distcp,after=1,delay=25"})
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            proc.stderr_file.seek(0)
            if "takes 25s" in proc.stderr_file.read():
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGINT)
        status, err = finish(proc, timeout=120)
    finally:
        kill_tree(proc.pid)
    assert "KeyboardInterrupt" not in err or "retry" not in err, err[-2000:]
    assert status == 130, (status, err[-2000:])


def test_sigterm_to_every_process_of_the_job_with_loader_workers(tmp_path, demo_dir):
    """README: 'DataLoader workers ignore it [SIGTERM]; the rank shuts them down'. They don't: they only sit in a
    process group of their own. Slurm (job end / preemption), systemd and `kill` of every pid signal each process:
    the workers die and the trainer exits 1 without the checkpoint."""
    config = write_config(tmp_path, demo_dir, "allterm", train={"max_steps": 1000}, data={"num_workers": 2})
    proc = start(config)
    try:
        wait_for_steps(proc, folder(tmp_path, "allterm") / "metrics.jsonl", 3)
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        status, err = finish(proc, timeout=120)
    finally:
        kill_tree(proc.pid)
    assert status == 0, err[-2000:]  # today: 1, "DataLoader worker (pid(s) ...) exited unexpectedly"
    assert Checkpointer(str(folder(tmp_path, "allterm") / "checkpoints")).list_complete()


def test_extending_a_run_follows_the_new_schedule_from_the_first_step(base_run, tmp_path):
    """Raising train.max_steps (not refused: the usual way to extend a run) changes the cosine schedule. The LR
    of the first resumed step is the checkpoint's (old schedule: here its floor), the steps after it follow
    the new schedule; `restore_hyperparameters` recomputes group LRs only when an optim.* key changed."""
    from open_vlm.config.schema import OptimConfig
    from open_vlm.trainer.optim import lr_factor
    from tests.trainer.runs import metrics

    tmp, config = base_run
    ckdir = tmp_path / "ck"
    shutil.copytree(folder(tmp, "base") / "checkpoints" / "step_00000004", ckdir / "step_00000004")
    train(config, "--train.max_steps", "8", "--checkpoint.dir", str(ckdir), "--run.name", "extended")
    records = {m["step"]: m["lr"] for m in metrics(tmp, "extended")}
    schedule = OptimConfig(lr=3e-3, warmup_steps=2)
    assert records[6] == 3e-3 * lr_factor(5, 8, schedule)  # the new schedule applies from step 6 ...
    assert records[5] == 3e-3 * lr_factor(4, 8, schedule), (records[5], 3e-3 * lr_factor(4, 4, schedule))


def test_the_saved_model_description_is_the_one_being_trained(tmp_path, demo_dir):
    """`model_files` re-reads `model.config` from its path at every save. Edit that file while the run goes on
    (say, to prepare the next experiment) and later checkpoints carry the edited config: export and
    from_pretrained then rebuild a model that was never trained (here: another rope_theta, no error)."""
    spec = yaml.safe_load((REPO / "configs/models/paligemma_tiny.yaml").read_text())
    model_config = tmp_path / "mine.yaml"
    model_config.write_text(yaml.safe_dump(spec))
    config = write_config(
        tmp_path,
        demo_dir,
        "edited",
        train={"max_steps": 4},
        model={"config": str(model_config)},
        checkpoint={"every_steps": 2},
    )
    proc = start(config, env={"OPEN_VLM_CHECKPOINT_FAULT": "rank=0,file=data.json,delay=8"})  # a slow first save
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            proc.stderr_file.seek(0)
            if "takes 8s" in proc.stderr_file.read():
                break
            time.sleep(0.2)
        spec["text"]["rope_theta"] = 100.0  # the user edits the file for another run
        model_config.write_text(yaml.safe_dump(spec))
        status, err = finish(proc, timeout=240)
    finally:
        kill_tree(proc.pid)
    assert status == 0, err[-1500:]
    ckdir = folder(tmp_path, "edited") / "checkpoints"
    first = yaml.safe_load((ckdir / "step_00000002" / "model" / "model_config.yaml").read_text())
    last = yaml.safe_load((ckdir / "step_00000004" / "model" / "model_config.yaml").read_text())
    assert last == first, "step 4 describes a model with rope_theta 100, trained with the default"


def test_a_storage_error_in_the_committed_check_is_retried(tmp_path, monkeypatch):
    """Every phase of a save is retried; the first storage access of a save (rank 0's 'is this step already
    committed', a HEAD on S3) is not: one transient error there ends the run (OSError out of `save`)."""
    import errno

    model, optimizer = _tiny()
    checkpointer = Checkpointer(str(tmp_path / "ck"))
    real, calls = Checkpointer.is_committed, []

    def flaky(self, step):
        calls.append(step)
        if len(calls) == 1:
            raise OSError(errno.EIO, "transient storage error (S3 503 SlowDown)")
        return real(self, step)

    monkeypatch.setattr(Checkpointer, "is_committed", flaky)
    monkeypatch.setattr("open_vlm.checkpoint.checkpointer.RETRY_DELAY", 0.01)
    checkpointer.save(1, model=model, optimizer=optimizer, extra={}, rng={}, data_state={}, meta={}, files={})
    assert [s for s, _ in checkpointer.list_complete()] == [1]
