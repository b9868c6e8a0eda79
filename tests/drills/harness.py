"""The drill harness: real torchrun jobs (2 gloo ranks, the tiny demo model) with faults injected from outside,
then compared with an uninterrupted run of the same config, bit for bit.

A `Job` is one run folder. A fault (`kill_job`, `kill_in_save`, `kill_rank`, `sigterm`) starts the job (it resumes
from its latest checkpoint), injects the fault at a random moment drawn from a seeded RNG, waits for the job to end
and returns an `Outcome`; `finish` runs it to the end. `compare` then checks that every step's metrics equal the
reference's (`metrics.jsonl`: loss, lr, grad_norm, samples and tokens seen) and that every checkpoint both runs
committed holds the same consumed record (`open-vlm view CKPT --json`) and, for the final step, the same weights.
The CI drills (tests/drills/test_*.py) run a few faults each; `tools/drill.py` runs the long form.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from tests.drills.setup import drill_sources
from tests.trainer.runs import descendants, finish, kill_tree, start, write_config

EXACT_KEYS = ("loss", "lr", "grad_norm", "samples_seen", "tokens_seen")
# A small DDP run: 2 ranks, a loader worker each, a checkpoint every 3 steps, metrics every step.
BASE = {
    "train": {"strategy": "ddp", "max_steps": 24},
    "data": {"num_workers": 1},
    "checkpoint": {"every_steps": 3},
    "logging": {"every_steps": 1},
}
SLOW_SHARDS = "rank=1,file=.distcp,delay=1.5,times=1000"  # every DCP shard write of rank 1 takes 1.5 s more
STEP_TIMEOUT_S = 240  # a job that logs no step for this long is hung: a drill failure, not a wait
EXIT_TIMEOUT_S = 180


def merged(*parts: dict) -> dict:
    """Sections deep-merged one level (`{"train": {...}}` + `{"train": {...}}`)."""
    out: dict = {}
    for part in parts:
        for section, values in part.items():
            out[section] = {**out.get(section, {}), **copy.deepcopy(values)}
    return out


@dataclass
class Job:
    """One run folder of the drill config (torchrun, 2 ranks); every start resumes from its latest checkpoint."""

    tmp: Path
    data: Path
    name: str
    sections: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def __post_init__(self):
        self.sections = merged(BASE, {"data": {"sources": drill_sources(self.data)}}, self.sections)
        self.config = write_config(self.tmp, self.data, self.name, **self.sections)

    @property
    def folder(self) -> Path:
        return self.tmp / "runs" / "t" / self.name

    @property
    def metrics_path(self) -> Path:
        return self.folder / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> str:
        return self.sections["checkpoint"].get("dir") or str(self.folder / "checkpoints")

    @property
    def max_steps(self) -> int:
        return self.sections["train"]["max_steps"]

    def start(self, *overrides: str, env: dict | None = None) -> subprocess.Popen:
        return start(self.config, *overrides, procs=2, env={**self.env, **(env or {})})

    def metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def last_step(self) -> int:
        lines = self.metrics()
        return lines[-1]["step"] if lines else 0

    def committed(self) -> list[tuple[int, str]]:
        from open_vlm.checkpoint.checkpointer import Checkpointer

        return Checkpointer(self.checkpoint_dir).list_complete()


@dataclass
class Outcome:
    """What one injected fault did."""

    fault: str
    ok: bool
    detail: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.fault}: {'ok' if self.ok else 'FAILED'} ({self.detail}, {self.seconds:.1f}s)"


def rank_pids(proc: subprocess.Popen) -> dict[int, int]:
    """The training processes of a torchrun job by rank (their loader workers left out)."""
    found: dict[int, int] = {}
    for pid in descendants(proc.pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
        if ranks and b"open_vlm.train" in cmd:
            found[ranks[0]] = min(found.get(ranks[0], pid), pid)  # workers are forked later: larger pids
    return found


def wait_until(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = STEP_TIMEOUT_S) -> bool:
    """Poll `condition` while the job runs; False when the job ended or the time ran out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _ended(proc: subprocess.Popen, timeout: float = EXIT_TIMEOUT_S) -> tuple[int | None, str]:
    status, err = finish(proc, timeout=timeout)
    kill_tree(proc.pid)  # nothing of a drill job may outlive it
    return status, err


def _random_step(job: Job, rng: random.Random, span: int = 6) -> int:
    """A step to fault after: up to `span` steps past the job's position now, before its last step."""
    now = job.last_step()
    return min(now + rng.randint(1, span), max(now + 1, job.max_steps - 2))


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], pause: float = 0.0) -> bool:
    """kill -9 of the job's whole tree `pause` seconds after `condition` holds; whether it held before the job
    ended by itself."""
    try:
        reached = wait_until(proc, condition)
        time.sleep(pause)
        kill_tree(proc.pid)
    finally:
        _ended(proc)
    return reached


# --- faults ---------------------------------------------------------------------------------------------
def kill_job(job: Job, rng: random.Random) -> Outcome:
    """kill -9 of the whole job (torchrun, both ranks, their loader workers) at a random moment."""
    step, pause = _random_step(job, rng), rng.uniform(0.0, 0.4)
    began = time.monotonic()
    reached = kill_when(job.start(), lambda: job.last_step() >= step, pause)
    return Outcome("kill -9 job", reached, f"after step {job.last_step()} (+{pause:.2f}s)", time.monotonic() - began)


def kill_in_save(job: Job, rng: random.Random, async_save: bool = False) -> Outcome:
    """kill -9 of the whole job while a checkpoint is being written: rank 1's shard writes are slowed by 1.5 s, and
    the kill comes 0-1 s after a checkpoint step is logged (the save starts right after its metrics line)."""
    mode = "async" if async_save else "sync"
    every = job.sections["checkpoint"]["every_steps"]
    target = (job.last_step() // every + 1) * every
    target = target if target < job.max_steps else target - every  # not the final save
    pause = rng.uniform(0.0, 1.0)
    began = time.monotonic()
    before = {s for s, _ in job.committed()}
    proc = job.start(
        f"--checkpoint.async_save={str(async_save).lower()}", env={"OPEN_VLM_CHECKPOINT_FAULT": SLOW_SHARDS}
    )
    reached = kill_when(proc, lambda: job.last_step() >= target, pause)
    new = sorted({s for s, _ in job.committed()} - before)
    detail = f"{pause:.2f}s into the {mode} save of step {target}; newly committed {new or 'none'}"
    return Outcome(f"kill -9 job during {mode} save", reached and target not in new, detail, time.monotonic() - began)


def kill_rank(job: Job, rng: random.Random, bound_s: float = 60.0) -> Outcome:
    """kill -9 of one rank: the other must stop with a clear error within `bound_s`, not hang."""
    step, victim = _random_step(job, rng), rng.choice([0, 1])
    began = time.monotonic()
    proc = job.start()
    try:
        reached = wait_until(proc, lambda: job.last_step() >= step)
        pids = rank_pids(proc)
        killed_at = time.monotonic()
        if victim in pids:
            os.kill(pids[victim], signal.SIGKILL)
        status, err = finish(proc, timeout=bound_s)
        took = time.monotonic() - killed_at
    finally:
        kill_tree(proc.pid)
    clear = "lost contact with another rank" in err
    ok = reached and victim in pids and status is not None and status != 0 and clear
    detail = (
        f"rank {victim} after step {job.last_step()}; job ended in {took:.1f}s (exit {status}); clear error {clear}"
    )
    return Outcome("kill -9 one rank", ok, detail, time.monotonic() - began)


def sigterm(job: Job, rng: random.Random, grace_s: float = 30.0) -> Outcome:
    """SIGTERM to torchrun (a spot reclaim): the ranks checkpoint and exit 0 before the grace ends."""
    step = _random_step(job, rng)
    began = time.monotonic()
    proc = job.start(env={"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(int(grace_s))})
    try:
        reached = wait_until(proc, lambda: job.last_step() >= step)
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        status, err = finish(proc, timeout=grace_s + 30)
        took = time.monotonic() - signalled
    finally:
        kill_tree(proc.pid)
    stopped = job.last_step()
    saved = stopped in {s for s, _ in job.committed()}
    clean = "after SIGTERM" in err and "Signal 9" not in err and "exitcode  : -9" not in err
    ok = reached and saved and clean and took < grace_s
    detail = f"at step {stopped}; committed {saved}; ranks exited cleanly {clean} in {took:.1f}s of {grace_s:.0f}s"
    return Outcome("SIGTERM with grace", ok, detail, time.monotonic() - began)


def finish_job(job: Job, *overrides: str, env: dict | None = None) -> Outcome:
    """Run the job (resuming) to its last step: exit 0."""
    began = time.monotonic()
    status, err = _ended(job.start(*overrides, env=env), timeout=STEP_TIMEOUT_S + 120)
    ok = status == 0 and job.last_step() == job.max_steps
    tail = "" if ok else f"; stderr: {err[-1500:]}"
    return Outcome("finish", ok, f"exit {status} at step {job.last_step()}{tail}", time.monotonic() - began)


FAULTS: dict[str, Callable[[Job, random.Random], Outcome]] = {
    "kill": kill_job,
    "kill_sync_save": kill_in_save,
    "kill_async_save": lambda job, rng: kill_in_save(job, rng, async_save=True),
    "kill_rank": kill_rank,
    "sigterm": sigterm,
}


# --- comparing with the uninterrupted run ------------------------------------------------------------------
def _consumed(url: str) -> dict:
    """What `open-vlm view CKPT --json` says about a checkpoint's data position (URLs by file name)."""
    from open_vlm.view import view

    info = view(url)
    for entry in info.get("consumed", []):
        entry["url"] = entry["url"].rsplit("/", 1)[-1]  # the same shards on S3 and on disk
    keep = ("step", "samples_seen", "tokens_seen", "consumed", "bad_samples", "data_sources", "world")
    return {k: info.get(k) for k in keep}


def compare(reference: Job, job: Job, steps: range | None = None) -> list[str]:
    """Every difference between a drilled job and the uninterrupted reference ([] when none)."""
    problems = []
    ref = {m["step"]: m for m in reference.metrics()}
    got: dict[int, dict] = {}
    for m in job.metrics():
        if m["step"] in got:
            problems.append(f"step {m['step']} logged twice")
        got[m["step"]] = m
    for step in steps or range(1, reference.max_steps + 1):
        if step not in got:
            problems.append(f"step {step}: not logged")
            continue
        for key in EXACT_KEYS:
            if got[step].get(key) != ref[step].get(key):
                problems.append(f"step {step}: {key} {got[step].get(key)!r} != {ref[step].get(key)!r}")
    ref_ckpts = dict(reference.committed())
    for step, url in job.committed():
        if step in ref_ckpts:
            problems += _unreadable(
                step, lambda u=url, r=ref_ckpts[step]: _consumed(u) != _consumed(r), "consumed record differs"
            )
    final = reference.max_steps
    mine = dict(job.committed())
    if final not in mine:
        problems.append(f"no checkpoint of the last step {final}")
    elif final in ref_ckpts:
        problems += _unreadable(final, lambda: not same_weights(ref_ckpts[final], mine[final]), "weights differ")
    return problems


def _unreadable(step: int, differs: Callable[[], bool], what: str) -> list[str]:
    """`what` when `differs()`; a committed checkpoint the comparison cannot read is a finding too, not a crash."""
    try:
        return [f"checkpoint of step {step}: {what}"] if differs() else []
    except Exception as err:  # a drill on a broken build commits checkpoints that do not load: report them
        return [f"checkpoint of step {step}: unreadable ({type(err).__name__}: {str(err)[:200]})"]


def compare_positions(reference: Job, job: Job, damaged: Collection[str]) -> list[str]:
    """For a job whose shards `damaged` (file names) were cut or deleted: every step is logged once with the
    reference's row count (no position skipped or repeated), the data position equals the reference's at every
    checkpoint both committed, and the extra bad samples (a bad sample's row is an invalid copy, counted as a hole)
    are more than none and at most the positions the job consumed in the damaged shards."""
    problems = []
    steps = [m["step"] for m in job.metrics()]
    if steps != list(range(1, reference.max_steps + 1)):
        problems.append(f"steps logged: {steps}")
    rows = {m["step"]: m["samples_seen"] for m in reference.metrics()}
    problems += [
        f"step {m['step']}: {m['samples_seen']} rows processed, {rows.get(m['step'])} in the reference"
        for m in job.metrics()
        if m["samples_seen"] != rows.get(m["step"])
    ]
    ref_ckpts = dict(reference.committed())
    for step, url in job.committed():
        if step in ref_ckpts:
            problems += _unreadable(
                step,
                lambda u=url, r=ref_ckpts[step]: _position(_consumed(u)) != _position(_consumed(r)),
                "data position differs",
            )
    final = reference.max_steps
    if final in ref_ckpts and final in dict(job.committed()):
        mine, theirs = _consumed(dict(job.committed())[final]), _consumed(ref_ckpts[final])
        extra = sum(mine["bad_samples"].values()) - sum(theirs["bad_samples"].values())
        positions = sum(
            c["epochs_complete"] * c["num_samples"] + c["samples_read"] for c in mine["consumed"] if c["url"] in damaged
        )
        if not 0 < extra <= positions:
            problems.append(f"{extra} more samples counted as bad; the damaged shards had {positions} positions read")
    else:
        problems.append(f"no checkpoint of the last step {final}")
    return problems


def _position(consumed: dict) -> tuple:
    return consumed["step"], consumed["consumed"]


def same_weights(a: str, b: str) -> bool:
    """The model tensors of two checkpoints are equal, bit for bit."""
    import torch

    from open_vlm.checkpoint.model_io import load_model_from_checkpoint

    wa = load_model_from_checkpoint(a)[0].model.state_dict()
    wb = load_model_from_checkpoint(b)[0].model.state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def checkpoints_verify(job: Job) -> list[str]:
    """Every committed checkpoint of the job matches its marker, checksums included."""
    from open_vlm.checkpoint.checkpointer import verify_checkpoint

    return [f"{url}: {p}" for _, url in job.committed() for p in verify_checkpoint(url, checksums=True)]


@dataclass
class DrillResult:
    """A drill's outcomes and what differs from the uninterrupted run (`lost`: must be empty)."""

    name: str
    outcomes: list[Outcome]
    lost: list[str]

    @property
    def passed(self) -> bool:
        return all(o.ok for o in self.outcomes) and not self.lost

    def report(self) -> str:
        lines = [f"drill {self.name}: {'passed' if self.passed else 'FAILED'}"]
        lines += [f"  {o.line()}" for o in self.outcomes]
        lines += [f"  lost: {p}" for p in self.lost[:20]] or ["  lost: nothing"]
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {
            "drill": self.name,
            "passed": self.passed,
            "faults": [o.__dict__ for o in self.outcomes],
            "lost": self.lost,
        }


def run_faults(reference: Job, job: Job, faults: list[str], seed: int) -> DrillResult:
    """Inject `faults` (names in FAULTS) one after another into `job`, finish it, compare with `reference`."""
    rng = random.Random(seed)
    outcomes = []
    for name in faults:
        if job.last_step() >= job.max_steps - 2:
            break  # too close to the end for another fault
        outcomes.append(FAULTS[name](job, rng))
    outcomes.append(finish_job(job))
    lost = compare(reference, job) + checkpoints_verify(job)
    return DrillResult(job.name, outcomes, lost)
