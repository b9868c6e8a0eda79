"""Storage faults for the drills: the S3 endpoint frozen mid-run, a disk that fills up, shards that disappear or are
cut short between the manifest and the read. Each returns the outcomes of one drilled job (see harness.py)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tests.drills.harness import Job, Outcome, _ended, finish_job, kill_when, wait_until
from tests.drills.setup import MotoServer
from tests.trainer.runs import kill_tree


def _error_lines(err: str) -> list[str]:
    """The ranks' error lines (log records at ERROR and `error:` lines)."""
    return [line for line in err.splitlines() if " ERROR " in line or line.startswith("error:")]


def s3_freezes(
    job: Job, server: MotoServer, plan: list[tuple[str, int]], seconds: float, rng: random.Random
) -> list[Outcome]:
    """Freeze the S3 server (SIGSTOP) for `seconds` after each planned step of one running job, then let it finish.

    A plan entry is (what the freeze should meet, the step after which it starts): `save` right after a checkpoint
    step is logged (its save talks to S3 then); `reads` a few steps before the loader opens the next epoch's shards,
    far from a save (training goes on from what the loader holds, then waits for a worker blocked on S3). A save
    freeze starts at a random moment of the save's first half second (listing, small files, shards or commit). The
    job either carries on (retries) or stops with a clear error, and is then resumed to the end."""
    outcomes = []
    began = time.monotonic()
    proc = job.start()
    try:
        for kind, target in plan:
            reached = wait_until(proc, lambda t=target: job.last_step() >= t)
            time.sleep(rng.uniform(0.0, 0.5) if kind == "save" else 0.0)
            server.freeze()
            frozen_at = job.last_step()
            time.sleep(seconds)
            server.thaw()
            outcomes.append(
                Outcome(f"S3 frozen {seconds:.0f}s during {kind}", reached, f"after step {frozen_at}", seconds)
            )
        status, err = _ended(proc, timeout=600)
    finally:
        server.thaw()
        kill_tree(proc.pid)
    retried = retries_logged(job)
    if status == 0 and job.last_step() == job.max_steps:
        outcomes.append(Outcome("carried on", True, f"exit 0 at the last step; {retried}", time.monotonic() - began))
        return outcomes
    errors = _error_lines(err)
    outcomes.append(
        Outcome("stopped", bool(errors), f"exit {status}: {errors[-1] if errors else 'no error line'}", 0.0)
    )
    outcomes.append(finish_job(job))
    return outcomes


def retries_logged(job: Job) -> str:
    """How often the job's log says a shard read or a checkpoint query was retried."""
    text = "".join(p.read_text() for p in job.folder.glob("*.log"))
    shards = sum("retrying in" in line and "open_vlm.data.shards" in line for line in text.splitlines())
    saves = sum("retry in" in line or ("retrying in" in line and "checkpointer" in line) for line in text.splitlines())
    return f"retried {shards} shard read(s), {saves} checkpoint operation(s)"


def disk_full(job: Job, limit: int) -> list[Outcome]:
    """Run with a checkpoint disk that fills up after `limit` bytes per process: the run stops with a clear message
    and the previous checkpoint stays the latest; with space again, the run resumes from it and finishes."""
    import fsspec

    from open_vlm.checkpoint.checkpointer import verify_checkpoint

    fsspec.register_implementation("diskfull", "open_vlm.checkpoint.faults.DiskFullFileSystem", clobber=True)
    began = time.monotonic()
    status, err = _ended(job.start(env={"OPEN_VLM_DISK_FULL_AFTER": str(limit)}), timeout=600)
    errors = _error_lines(err)
    said = any("No space left on device" in line and "the disk is full" in line for line in errors)
    committed = job.committed()
    latest_ok = bool(committed) and not verify_checkpoint(committed[-1][1], checksums=True)
    stopped = job.last_step()
    ok = status not in (0, None) and said and latest_ok and stopped < job.max_steps
    detail = (
        f"exit {status} after step {stopped}; latest checkpoint step {committed[-1][0] if committed else None} "
        f"verifies {latest_ok}; clear message {said}"
    )
    outcome = Outcome(f"disk full after {limit} bytes", ok, detail, time.monotonic() - began)
    return [outcome, finish_job(job, env={"OPEN_VLM_DISK_FULL_AFTER": str(1 << 50)})]  # space again


def rank_bytes(job: Job) -> list[int]:
    """Bytes each rank writes for one checkpoint (its shard and RNG state; rank 0 also the rest)."""
    _, url = job.committed()[0]
    files = json.loads(Path(url, "COMPLETE").read_text())["files"]
    rank1 = sum(f["size"] for name, f in files.items() if name.startswith("__1_") or name.endswith("rank_00001.pt"))
    return [sum(f["size"] for f in files.values()) - rank1, rank1]


def cut(path: Path, keep: float) -> None:
    """Truncate a file to `keep` of its bytes."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


DAMAGED_SHARDS = ("demo-000000.tar", "demo-000001.tar", "demo-000002.tar")  # what `shard_damage` cuts or deletes


def shard_damage(job: Job, rng: random.Random) -> list[Outcome]:
    """Shards cut short or gone after the manifest was written: one cut before the job starts, one cut between a
    kill and the resume, one deleted while the job reads. The job trains on; every lost sample is a counted hole.
    (A shard deleted while the job is down is refused by the preflight at the next start, naming it.)"""
    data = job.data
    began = time.monotonic()
    cut(data / "demo-000002.tar", rng.uniform(0.3, 0.7))  # before the first read
    step = rng.randint(2, 7)
    reached = kill_when(job.start(), lambda: job.last_step() >= step)
    outcomes = [Outcome("shard 2 cut before the run; kill -9", reached, f"after step {job.last_step()}", 0.0)]
    cut(data / "demo-000000.tar", rng.uniform(0.4, 0.7))  # between the kill and the resume
    proc = job.start()
    try:
        step = rng.randint(job.last_step() + 1, job.last_step() + 4)
        reached = wait_until(proc, lambda: job.last_step() >= step)
        (data / "demo-000001.tar").unlink()  # while the job reads
        status, err = _ended(proc, timeout=600)
    finally:
        kill_tree(proc.pid)
    ok = reached and status == 0 and job.last_step() == job.max_steps
    tail = "" if ok else f"; {_error_lines(err)[-1:]}"
    outcomes.append(
        Outcome(
            "shard 0 cut before the resume, shard 1 deleted while reading",
            ok,
            f"exit {status} at step {job.last_step()}{tail}",
            time.monotonic() - began,
        )
    )
    return outcomes


DAMAGE_KINDS = ("cut distcp", "no data.json", "garbled meta.json", "garbled extra.pt")


def damage(ckpts: Path, what: str, step: int) -> str:
    """Damage the committed checkpoint of `step` one of the ways the drill knows; returns its folder."""
    folder = ckpts / f"step_{step:08d}"
    if what == "cut distcp":
        shard = sorted(folder.glob("*.distcp"))[0]
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 3)
    elif what == "no data.json":
        (folder / "data.json").unlink()
    elif what == "garbled meta.json":
        data = (folder / "meta.json").read_bytes()
        (folder / "meta.json").write_bytes(b"\x00" * 8 + data[8:])  # same size: only a parse (or a checksum) sees it
    elif what == "garbled extra.pt":  # same size, not JSON: only loading it (or a checksum) sees it
        data = (folder / "extra.pt").read_bytes()
        (folder / "extra.pt").write_bytes(b"\x00" * 64 + data[64:])
    elif what == "bytes changed":
        shard = sorted(folder.glob("*.distcp"))[-1]
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:
        raise ValueError(what)
    return str(folder)


def damaged_checkpoints(reference: Job, job: Job, rng: random.Random) -> list[Outcome]:
    """A copy of the reference run with its newest 1-3 checkpoints damaged after commit: `resume latest` names each
    and why, resumes from the newest good one and runs to the end."""
    import shutil

    shutil.copytree(reference.folder, job.folder)
    (job.folder / "config.yaml").unlink()
    ckpts = job.folder / "checkpoints"
    steps = [s for s, _ in reference.committed()]
    bad = steps[-rng.randint(1, 3) :]
    kinds = {step: rng.choice(DAMAGE_KINDS) for step in bad}
    for step, what in kinds.items():
        damage(ckpts, what, step)
    good = steps[-len(bad) - 1]
    outcome = finish_job(job)
    log = "".join(p.read_text() for p in job.folder.glob("*.log"))
    named = all(f"step_{s:08d} is damaged" in log for s in bad)
    resumed = f"resuming from {ckpts}/step_{good:08d}, the newest good checkpoint" in log
    detail = f"damaged {kinds}; each named {named}; resumed from step {good} {resumed}; {outcome.detail}"
    return [Outcome("damaged checkpoints, fallback", outcome.ok and named and resumed, detail, outcome.seconds)]
