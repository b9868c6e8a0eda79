"""Atomic commits, retention, init_from, reset_data, refused config changes, async save, S3."""

import json
import os
import shutil
import signal
import time

import fsspec
import pytest
import s3fs
import torch
import yaml

from open_vlm.checkpoint.checkpointer import MARKER, Checkpointer, read_meta, step_name
from open_vlm.checkpoint.model_io import load_model_from_checkpoint
from open_vlm.config.schema import ModelConfig, OptimConfig, RunConfig
from open_vlm.trainer.optim import lr_factor
from tests.conftest import REPO, run_cli
from tests.trainer.runs import ENV, finish, folder, kill_tree, metrics, start, train, wait_for_log, write_config


def steps_of(directory: str) -> list[int]:
    return [s for s, _ in Checkpointer(directory).list_complete()]


def crash_in_save(config, step: int):
    """Train with a crash (os._exit) after the shards of `step` are written, before its commit."""
    env = {**ENV, "OPEN_VLM_CRASH_BEFORE_COMMIT": f"step_{step:08d}"}
    return run_cli("-m", "open_vlm.train", "--config", str(config), env=env)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_crash_mid_save_leaves_previous_checkpoint_latest(tmp_path, demo_dir, where, request):
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        ckdir = f"s3://{bucket}/atomic"
    else:
        ckdir = str(tmp_path / "ck")
    config = write_config(
        tmp_path, demo_dir, "atomic", train={"max_steps": 6}, checkpoint={"every_steps": 2, "dir": ckdir}
    )
    out = crash_in_save(config, 4)
    assert out.returncode == 137
    assert steps_of(ckdir) == [2]
    fs, root = fsspec.core.url_to_fs(ckdir)
    if where == "s3":  # the half-written step exists but does not count
        assert fs.exists(f"{root}/step_00000004") and not fs.exists(f"{root}/step_00000004/{MARKER}")
    bundle, _, _ = load_model_from_checkpoint(Checkpointer(ckdir).latest())  # and the previous one loads
    assert sum(p.numel() for p in bundle.model.parameters()) > 0
    out = run_cli("-m", "open_vlm.train", "--config", str(config), env=ENV)  # resume from step 2, finish
    assert out.returncode == 0, out.stderr[-2000:]
    assert "step_00000002 at step 2" in out.stderr
    assert steps_of(ckdir) == [2, 4, 6]
    s3fs.S3FileSystem.clear_instance_cache()


def test_keep_last_prunes_but_never_the_resumed_one(tmp_path, demo_dir):
    ckdir = str(tmp_path / "ck")
    config = write_config(
        tmp_path, demo_dir, "keep", train={"max_steps": 6}, checkpoint={"every_steps": 1, "dir": ckdir, "keep_last": 2}
    )
    train(config)
    assert steps_of(ckdir) == [5, 6]
    assert not list((tmp_path / "ck").glob(".step_*"))  # no staging leftovers
    train(config, "--train.max_steps", "9", "--checkpoint.resume", f"{ckdir}/step_00000005")
    assert steps_of(ckdir) == [5, 8, 9]  # 5 was resumed from: protected


def test_keep_last_on_s3(tmp_path, demo_dir, s3_bucket):
    ckdir = f"s3://{s3_bucket}/keep"
    config = write_config(
        tmp_path,
        demo_dir,
        "keeps3",
        train={"max_steps": 4},
        checkpoint={"every_steps": 1, "dir": ckdir, "keep_last": 1},
    )
    train(config)
    assert steps_of(ckdir) == [4]
    fs, root = fsspec.core.url_to_fs(ckdir)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(root)) == ["step_00000004"]
    s3fs.S3FileSystem.clear_instance_cache()


def test_init_from_loads_weights_only(base_run, demo_dir):
    tmp, _ = base_run
    source = folder(tmp, "base") / "checkpoints" / "step_00000004"
    config = write_config(
        tmp, demo_dir, "init", train={"max_steps": 1, "seed": 7}, checkpoint={"init_from": str(source)}
    )
    out = train(config)
    assert "initialised" in out.stderr and "missing none" in out.stderr
    first = metrics(tmp, "init")[0]
    assert first["step"] == 1 and first["samples_seen"] == 8  # fresh step counter and data
    assert first["lr"] == pytest.approx(3e-3 * 0.5)  # fresh scheduler: warmup step 1 of 2
    # The starting weights were the source's: the fresh run's first loss beats a random init's by far.
    scratch = write_config(tmp, demo_dir, "scratch", train={"max_steps": 1, "seed": 7})
    train(scratch)
    assert first["loss"] < metrics(tmp, "scratch")[0]["loss"] - 0.5


def test_reset_data_keeps_weights_restarts_data(base_run):
    tmp, config = base_run
    ckpt = str(folder(tmp, "base") / "checkpoints" / "step_00000002")
    out = train(
        config,
        "--train.max_steps",
        "3",
        "--checkpoint.resume",
        ckpt,
        "--checkpoint.reset_data",
        "true",
        "--checkpoint.dir",
        str(tmp / "reset_ck"),
    )
    assert "reset_data" in out.stderr
    state = json.loads((tmp / "reset_ck" / "step_00000003" / "data.json").read_text())
    assert state["step"] == 1 and state["positions"] == [8]  # one step into a restarted order
    assert read_meta(str(tmp / "reset_ck" / "step_00000003"))["samples_seen"] == 24  # counters continue


@pytest.mark.parametrize(
    "override, key",
    [
        (("--train.seed", "5"), "train.seed"),
        (("--data.num_streams", "4"), "data.num_streams"),
        (("--train.precision", "bf16"), "train.precision"),
        (("--optim.lr", "1e-3"), "optim.lr"),
    ],
)
def test_config_change_refused_unless_allowed(base_run, override, key):
    tmp, config = base_run
    out = run_cli("-m", "open_vlm.train", "--config", str(config), "--train.max_steps", "5", *override, env=ENV)
    assert out.returncode == 2
    assert key in out.stderr and "allow_config_change" in out.stderr
    out = run_cli(
        "-m",
        "open_vlm.train",
        "--config",
        str(config),
        "--train.max_steps",
        "5",
        *override,
        "--checkpoint.allow_config_change",
        "true",
        "--checkpoint.dir",
        str(tmp / f"allowed_{key}"),
        "--checkpoint.resume",
        str(folder(tmp, "base") / "checkpoints" / "step_00000004"),
        "--run.name",
        f"allowed_{key}",
        env=ENV,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    if key == "optim.lr":  # allowed: the new base LR applies from the resumed step on
        expected = 1e-3 * lr_factor(4, 5, OptimConfig(lr=1e-3, warmup_steps=2))
        assert metrics(tmp, f"allowed_{key}")[-1]["lr"] == pytest.approx(expected)


def test_async_save_matches_sync(tmp_path, demo_dir):
    sync = write_config(tmp_path, demo_dir, "sync", train={"max_steps": 4}, checkpoint={"every_steps": 2})
    train(sync)
    asyn = write_config(tmp_path, demo_dir, "async", train={"max_steps": 4}, checkpoint={"every_steps": 2})
    train(asyn, "--checkpoint.async", "true")
    a = load_model_from_checkpoint(str(folder(tmp_path, "sync")))[0].model.state_dict()
    b = load_model_from_checkpoint(str(folder(tmp_path, "async")))[0].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps_of(str(folder(tmp_path, "async") / "checkpoints")) == [2, 4]
    meta = read_meta(str(folder(tmp_path, "async") / "checkpoints" / "step_00000004"))
    assert meta["step"] == 4 and meta["samples_seen"] == 32 and meta["consumed"]


def test_relaunching_a_finished_run_leaves_its_checkpoint_alone(tmp_path, demo_dir, s3_bucket):
    """No new step, no save: the committed final checkpoint is never uncommitted and rewritten in place."""
    ckdir = f"s3://{s3_bucket}/finished"
    config = write_config(tmp_path, demo_dir, "finished", train={"max_steps": 2}, checkpoint={"dir": ckdir})
    train(config)

    def stamps():
        s3fs.S3FileSystem.clear_instance_cache()
        fs, root = fsspec.core.url_to_fs(ckdir)
        return {p: fs.info(p)["LastModified"] for p in fs.find(f"{root}/step_00000002")}

    before = stamps()
    out = train(config)
    assert stamps() == before
    assert "already committed" in out.stderr
    s3fs.S3FileSystem.clear_instance_cache()


def test_resuming_an_older_step_moves_the_later_timeline_aside(tmp_path, demo_dir):
    """Roll back from step 6 to step 2 (spelled another way): the new steps are kept, the old ones set aside."""
    ckdir = tmp_path / "ck"
    config = write_config(
        tmp_path,
        demo_dir,
        "roll",
        train={"max_steps": 6},
        checkpoint={"every_steps": 2, "dir": str(ckdir), "keep_last": 3},
    )
    train(config)
    assert steps_of(str(ckdir)) == [2, 4, 6]
    older = f"{tmp_path}/./ck/step_00000002/"
    overrides = ("--train.max_steps", "5", "--checkpoint.every_steps", "1", "--checkpoint.keep_last", "2")
    out = train(config, *overrides, "--checkpoint.resume", older)
    assert steps_of(str(ckdir)) == [2, 4, 5]  # 2 was resumed from: protected under any spelling
    assert "moved the later checkpoints" in out.stderr
    assert "max_steps: 5" in read_meta(str(ckdir / "step_00000004"))["config"]  # the new timeline's step 4
    assert sorted(p.name.split("-")[0] for p in (ckdir / "abandoned").iterdir()) == ["step_00000004", "step_00000006"]


def fake_checkpoints(root, commits: dict[int, float]) -> Checkpointer:
    for step, when in commits.items():
        folder_ = root / step_name(step)
        folder_.mkdir(parents=True)
        (folder_ / "__0_0.distcp").write_bytes(b"x")
        (folder_ / MARKER).write_text(json.dumps({"step": step, "committed_at": when}))
    return Checkpointer(str(root), keep_last=1)


def test_prune_keeps_the_last_committed_not_the_highest_step(tmp_path):
    checkpointer = fake_checkpoints(tmp_path, {5: 100.0, 3: 200.0})  # 3 was committed after 5
    checkpointer.prune()
    assert steps_of(str(tmp_path)) == [3]


def test_a_kill_mid_prune_never_leaves_a_complete_checkpoint_with_files_missing(tmp_path, monkeypatch):
    checkpointer = fake_checkpoints(tmp_path, {1: 1.0, 2: 2.0})
    real_rm = type(checkpointer.fs).rm

    def killed_while_deleting_files(fs, path, recursive=False, **kwargs):
        if recursive:
            raise KeyboardInterrupt  # the process dies while the shards are being deleted
        return real_rm(fs, path, recursive=recursive, **kwargs)

    monkeypatch.setattr(type(checkpointer.fs), "rm", killed_while_deleting_files)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.prune()
    assert steps_of(str(tmp_path)) == [2]  # step 1 was uncommitted first


def test_init_from_another_model_kind_is_refused(tmp_path, demo_dir):
    from open_vlm.models.registry import build_model
    from open_vlm.trainer.optim import build_optimizer

    siglip = build_model(ModelConfig(kind="siglip", config=str(REPO / "configs/models/siglip_tiny.yaml")), None)
    optimizer, _ = build_optimizer(siglip.model, OptimConfig(), 1, siglip.groups)
    source = Checkpointer(str(tmp_path / "siglip")).save(
        1,
        model=siglip.model,
        optimizer=optimizer,
        extra={},
        rng={},
        data_state={},
        meta={"model_kind": "siglip"},
        files={},
    )
    config = write_config(tmp_path, demo_dir, "wrong_kind", checkpoint={"init_from": source})
    out = run_cli("-m", "open_vlm.train", "--config", str(config), env=ENV)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "holds a siglip model and this run builds paligemma" in out.stderr
    assert "allow_partial_init" in out.stderr and "Traceback" not in out.stderr
    assert not (folder(tmp_path, "wrong_kind") / "checkpoints").exists()  # not a single step trained


@pytest.mark.parametrize("key", ["resume", "init_from"])
def test_a_checkpoint_path_with_no_checkpoint_is_one_line(tmp_path, demo_dir, key):
    (tmp_path / "nothing-here").mkdir()  # it exists (a path that does not is refused earlier, by config checks)
    config = write_config(tmp_path, demo_dir, "nowhere", checkpoint={key: str(tmp_path / "nothing-here")})
    out = run_cli("-m", "open_vlm.train", "--config", str(config), env=ENV)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"checkpoint.{key}: no complete checkpoint at {tmp_path}/nothing-here" in out.stderr
    assert "Traceback" not in out.stderr


def test_init_from_share_rule_and_override():
    from open_vlm.checkpoint.dcp_io import WeightsReport
    from open_vlm.checkpoint.resume import ResumeRefused, check_init_from

    cfg = RunConfig()
    cfg.model.kind = "paligemma"
    same_kind = {"model_kind": "paligemma"}
    with pytest.raises(ResumeRefused, match="only 3 of this model's 7 tensors"):
        check_init_from(same_kind, WeightsReport(3, ["a", "b", "c", "d"], []), cfg, "src")
    check_init_from(same_kind, WeightsReport(4, ["a", "b", "c"], []), cfg, "src")  # most of it: fine
    cfg.checkpoint.allow_partial_init = True
    check_init_from({"model_kind": "siglip"}, WeightsReport(0, ["a"], ["b"]), cfg, "src")  # allowed: a warning


def test_a_data_state_from_before_data_order_v2_is_refused_with_the_way_out(tmp_path, demo_dir):
    """Format 1 states (per-stream cursors) name other samples under the new order: a clear refusal, exit 2."""
    ckdir = tmp_path / "ck"
    config = write_config(tmp_path, demo_dir, "v1", train={"max_steps": 2}, checkpoint={"dir": str(ckdir)})
    train(config)
    data = ckdir / step_name(2) / "data.json"
    state = json.loads(data.read_text())
    old = {k: v for k, v in state.items() if k not in ("version", "groups_taken", "mix_group")}
    data.write_text(json.dumps({**old, "batches_taken": [2], "streams": [[[1, 0, 0, 1]] * 8]}))
    marker = ckdir / step_name(2) / "COMPLETE"  # as written before markers recorded file sizes
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    out = run_cli("-m", "open_vlm.train", "--config", str(config), "--train.max_steps", "4", env=ENV)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "format 1" in out.stderr and "--checkpoint.reset_data true" in out.stderr
    assert "Traceback" not in out.stderr
    train(config, "--train.max_steps", "4", "--checkpoint.reset_data", "true")  # the way out it names works
    assert steps_of(str(ckdir)) == [2, 4]


def test_clip_checkpoint_with_a_0d_logit_scale_loads_and_resumes(tmp_path):
    """The `clip` kind holds `logit_scale` as (1,) (FSDP2 refuses 0-D parameters); checkpoints written before that
    hold it (and its Adam moments) 0-D, as transformers does. They still load for inference / init_from and resume
    (DCP refused the shape change: 'Size mismatch between saved torch.Size([]) and current: torch.Size([1])')."""
    import torch.nn as nn

    from open_vlm.checkpoint.dcp_io import load_model_and_optimizer, load_model_weights, save_model_and_optimizer
    from open_vlm.models.registry import build_model

    config = ModelConfig(kind="clip", config=str(REPO / "configs/models/clip_tiny.yaml"))
    old = build_model(config).model
    old.logit_scale = nn.Parameter(torch.tensor(3.3))  # as the clip kind held it before
    optimizer = torch.optim.AdamW(old.parameters())
    (old.logit_scale * 2.0).backward()
    optimizer.step()
    saved_scale = float(old.logit_scale.detach())
    saved_moment = float(optimizer.state[old.logit_scale]["exp_avg"])
    save_model_and_optimizer(str(tmp_path / "ckpt"), old, optimizer)

    weights = build_model(config).model
    load_model_weights(str(tmp_path / "ckpt"), weights)
    assert weights.logit_scale.shape == (1,) and float(weights.logit_scale.detach()[0]) == saved_scale

    resumed = build_model(config).model
    resumed_optimizer = torch.optim.AdamW(resumed.parameters())
    load_model_and_optimizer(str(tmp_path / "ckpt"), resumed, resumed_optimizer)
    assert float(resumed.logit_scale.detach()[0]) == saved_scale
    moment = resumed_optimizer.state[resumed.logit_scale]["exp_avg"]
    assert moment.shape == (1,) and float(moment[0]) == saved_moment


def _tiny():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 2)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_a_file_url_checkpoint_dir_can_be_read_back(tmp_path):
    """`file://` is a local spelling everywhere, the DCP reader included (it used to get `Path('file:/...')`)."""
    directory = f"file://{tmp_path}/ck"
    model, optimizer = _tiny()
    checkpointer = Checkpointer(directory)
    checkpointer.save(1, model=model, optimizer=optimizer, extra={}, rng={}, data_state={}, meta={}, files={})
    latest = checkpointer.latest()
    assert latest == f"{directory}/step_00000001"
    other, other_opt = torch.nn.Linear(2, 2), None
    other_opt = torch.optim.AdamW(other.parameters())
    checkpointer.load(latest, other, other_opt)
    assert torch.equal(other.weight, model.weight)


@pytest.mark.parametrize("spelling", ["file://{tmp}/ck", "~/ck"])
def test_a_checkpoint_dir_spelling_resumes_through_the_cli(tmp_path, demo_dir, spelling):
    """`resume latest` of a checkpoint dir spelled `file://...` or `~/...` reads it back (it used to exit 1,
    "FileNotFoundError: 'file:/.../.metadata'" or "'~/ck/step_00000002/.metadata'")."""
    env = {**ENV, "HOME": str(tmp_path)}
    directory = spelling.format(tmp=tmp_path)
    config = write_config(tmp_path, demo_dir, "spelled", train={"max_steps": 2}, checkpoint={"dir": directory})
    assert run_cli("-m", "open_vlm.train", "--config", str(config), env=env).returncode == 0
    out = run_cli("-m", "open_vlm.train", "--config", str(config), "--train.max_steps", "3", env=env)
    assert out.returncode == 0, out.stderr[-1500:]


def test_a_storage_error_in_the_committed_check_is_retried(tmp_path, monkeypatch):
    """The first storage access of a save (rank 0's 'is this step already committed', a HEAD on S3) is retried
    like every other phase: one transient error there does not end the run."""
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


def test_a_second_ctrl_c_during_a_shard_write_aborts(tmp_path, demo_dir):
    """README: 'a second Ctrl-C aborts', also inside DCP's shard write, where the KeyboardInterrupt arrives wrapped
    in a CheckpointException: it is raised, not retried as a storage error (exit 130)."""
    config = write_config(tmp_path, demo_dir, "ctrlc", train={"max_steps": 1000}, checkpoint={"every_steps": 2})
    proc = start(config, env={"OPEN_VLM_CHECKPOINT_FAULT": "rank=0,file=.distcp,after=1,delay=25"})
    try:
        wait_for_log(proc, "takes 25s")
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGINT)
        status, err = finish(proc, timeout=120)
    finally:
        kill_tree(proc.pid)
    assert "KeyboardInterrupt" not in err or "retry" not in err, err[-2000:]
    assert status == 130, (status, err[-2000:])
    assert steps_of(str(folder(tmp_path, "ctrlc") / "checkpoints")) == [2]  # the last good one, intact


def test_the_saved_model_description_is_the_one_being_trained(tmp_path, demo_dir):
    """The model description is captured at start: editing `model.config` while the run goes on (say, to prepare
    the next experiment) does not change later checkpoints (they used to carry the edited rope_theta)."""
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
        wait_for_log(proc, "takes 8s")
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


def test_resume_refuses_another_architecture(base_run, tmp_path, demo_dir):
    """A model config with half the layers is refused with one line naming the changed key (it used to resume
    silently, dropping the saved layers); allowed config changes still never load another architecture."""
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


def test_extending_a_run_follows_the_new_schedule_from_the_first_step(base_run, tmp_path):
    """Raising train.max_steps (the usual way to extend a run) changes the cosine schedule: the first resumed step
    already follows the new one (it used to keep the checkpoint's LR, the old schedule's floor)."""
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


def test_loading_into_another_architecture_names_the_difference(tmp_path):
    """Weights of another shape, or checkpoint weights the model lacks, are refused before anything loads."""
    from open_vlm.checkpoint.dcp_io import WeightsMismatch

    model, optimizer = _tiny()
    checkpointer = Checkpointer(str(tmp_path / "ck"))
    checkpointer.save(1, model=model, optimizer=optimizer, extra={}, rng={}, data_state={}, meta={}, files={})
    ckpt = checkpointer.latest()
    wider = torch.nn.Linear(2, 3)
    with pytest.raises(WeightsMismatch, match=r"2 weights of another shape \(e.g. bias: \(2,\) -> \(3,\)\)"):
        checkpointer.load(ckpt, wider, torch.optim.AdamW(wider.parameters()))
    smaller = torch.nn.Linear(2, 2, bias=False)
    with pytest.raises(WeightsMismatch, match=r"1 checkpoint weights this model lacks \(e.g. \['bias'\]\)"):
        checkpointer.load(ckpt, smaller, torch.optim.AdamW(smaller.parameters()))


def test_verify_says_when_a_marker_records_no_files(tmp_path):
    """A checkpoint committed before markers recorded sizes and checksums cannot be verified: `view --verify` says so
    instead of "ok" (a review found it answering "ok" for a truncated shard under such a marker)."""
    model, optimizer = _tiny()
    checkpointer = Checkpointer(str(tmp_path / "ck"))
    checkpointer.save(1, model=model, optimizer=optimizer, extra={}, rng={}, data_state={}, meta={}, files={})
    ckpt = checkpointer.latest()
    good = run_cli("-m", "open_vlm.cli", "view", ckpt, "--verify", env=ENV)
    assert good.returncode == 0 and good.stdout.rstrip().endswith(": ok"), good.stdout + good.stderr
    marker = tmp_path / "ck" / step_name(1) / "COMPLETE"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    old = run_cli("-m", "open_vlm.cli", "view", ckpt, "--verify", env=ENV)
    assert old.returncode == 0 and "not verifiable" in old.stdout and ": ok" not in old.stdout, old.stdout
