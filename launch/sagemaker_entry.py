"""What every SageMaker node runs as the container's first process: torchrun for this node, SIGTERM passed on.

    python3 -m launch.sagemaker_entry --nnodes N --nproc_per_node P -m open_vlm.train --config job/run_config.yaml

SageMaker stops a job (spot interruption, `--max-run`, StopTrainingJob) by sending SIGTERM to the container's
first process, and SIGKILL 120 s later. The job's start command `exec`s into this module, so this is that
process. It passes SIGTERM, SIGINT and SIGUSR1 to torchrun's workers, which finish their step, checkpoint and
exit 0 (or, still starting, exit 0 before their first step); torchrun then exits 0, and so does this. A signal
that arrives before the workers can take it (not started yet, or still starting Python) is passed on as soon as
they catch it. It adds the rendezvous flags from SageMaker's host list, reaps orphans (PID 1's duty), and leaves
SageMaker a failure reason when training fails: the first failing rank's one-line error (the trainer writes it to
$OPEN_VLM_FAILURE_FILE), else torchrun's exit status.

Outside a PID namespace of its own (`docker run --init`, by hand) torchrun is killed when this process dies, and
its workers follow it (open_vlm/lifeline.py), so nothing trains on unwatched.

What the workers learn from their environment: OPEN_VLM_STOP_GRACE_S (seconds from SIGTERM to SIGKILL here,
SageMaker's 120, which the trainer measures its stop against), OPEN_VLM_FAILURE_FILE, and OPEN_VLM_WATCH_PID (this
process: they exit when it dies, even when torchrun is gone before they could watch it).

Only the standard library here: it runs before anything else and must not hold a GPU.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
FAILURE_FILE = Path("/opt/ml/output/failure")  # SageMaker shows its first 1 KiB as the job's FailureReason
SIGKILL_AFTER_S = 120  # SageMaker's grace between SIGTERM and SIGKILL
PR_SET_PDEATHSIG = 1  # prctl(2)
POLL_S = 0.1  # how often the wait loop looks at its children (and passes signals on)


def torchrun_command(args: list[str], env: dict[str, str]) -> list[str]:
    """torchrun for this node; with several hosts, rendezvous at SageMaker's master host (the first, sorted)."""
    rendezvous = []
    if int(env.get("SM_HOST_COUNT", "1")) > 1:
        rendezvous = [
            f"--master_addr={env['SM_MASTER_ADDR']}",
            f"--master_port={env['SM_MASTER_PORT']}",
            f"--node_rank={env['SM_CURRENT_HOST_RANK']}",
        ]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, *args]


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """torchrun's (and so its workers') environment: what the trainer needs to know about this container."""
    # OPEN_VLM_WATCH_PID: the workers exit when this process dies, even if torchrun dies first (open_vlm/lifeline.py)
    out = {**env, "OPEN_VLM_STOP_GRACE_S": str(SIGKILL_AFTER_S), "OPEN_VLM_WATCH_PID": str(os.getpid())}
    if "SM_NETWORK_INTERFACE_NAME" in env:  # NCCL's bootstrap network, as SageMaker's own driver sets it
        out.setdefault("NCCL_SOCKET_IFNAME", env["SM_NETWORK_INTERFACE_NAME"])
    if FAILURE_FILE.parent.is_dir():
        out["OPEN_VLM_FAILURE_FILE"] = str(FAILURE_FILE)
    return out


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (torchrun's workers, when `pid` is torchrun)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4, after the parenthesised command name
            found.append(int(entry.name))
    return found


def workers(torchrun_pid: int) -> list[int]:
    """torchrun's workers: its children started with a worker's environment (not a helper, not a fork yet to exec)."""
    found = []
    for pid in children(torchrun_pid):
        try:
            if b"TORCHELASTIC_RUN_ID=" in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def catches(pid: int, signum: int) -> bool:
    """Whether `pid` has a handler for `signum` (else the signal's default action, for SIGTERM death, applies)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (signum - 1) & 1)


def say(message: str) -> None:
    print(f"sagemaker_entry: {message}", file=sys.stderr, flush=True)


class StopForwarder:
    """The stop signals this process received, passed to each of torchrun's workers once it catches them (a worker
    still starting Python would die of a SIGTERM, failing the job), until torchrun exits: workers that start late
    get them too. The handler only records; `flush`, from the wait loop, does the rest."""

    def __init__(self):
        self.torchrun_pid: int | None = None  # set once torchrun runs
        self.received: list[int] = []  # in order, each once
        self.signalled: dict[int, set[int]] = {}  # signal -> the workers that got it

    def __call__(self, signum, frame) -> None:
        if signum not in self.received:
            self.received.append(signum)

    @property
    def first(self) -> str:
        return signal.Signals(self.received[0]).name if self.received else ""

    def flush(self) -> None:
        """Pass each signal received to the workers that catch it and have not had it yet."""
        if not self.received or self.torchrun_pid is None:
            return
        current = workers(self.torchrun_pid)
        for signum in list(self.received):
            name, new = signal.Signals(signum).name, signum not in self.signalled
            got = self.signalled.setdefault(signum, set())
            ready = [pid for pid in current if pid not in got and catches(pid, signum)]
            for pid in ready:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass
            got.update(ready)
            if ready:
                say(f"{name}: passed to {len(ready)} training process(es), waiting for them")
            elif new:
                say(f"{name} before the training processes can take it: passing it on as soon as they can")


def wait_reaping(proc: subprocess.Popen, forwarder: StopForwarder | None = None) -> int:
    """Wait for `proc`, reaping any orphan handed to us meanwhile and passing stop signals on; returns its exit code
    (128+N for signal N). It polls: a blocking wait would not wake for a signal still waiting for its workers."""
    while True:
        if forwarder is not None:
            forwarder.flush()
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(POLL_S)
            continue
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


def write_failure(code: int, stopped_by: str = "") -> None:
    """Leave SageMaker a reason, unless a training process already wrote one."""
    if not FAILURE_FILE.parent.is_dir() or (FAILURE_FILE.exists() and FAILURE_FILE.stat().st_size):
        return
    why = f" after {stopped_by}" if stopped_by else ""
    FAILURE_FILE.write_text(
        f"torchrun exited with status {code}{why} on {socket.gethostname()}; the first error is in the job's log\n"
    )


def die_with(parent: int):
    """For Popen's preexec_fn: the child gets SIGKILL when `parent` (this process) dies, as it would when PID 1
    does. Runs in the child between fork and exec; this process has one thread, so the parent-death signal is
    tied to it."""

    def setup() -> None:
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # died before prctl took effect
            os._exit(1)

    return setup


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    env = worker_environment(dict(os.environ))
    cmd = torchrun_command(args, env)
    say(f"pid {os.getpid()}, running {' '.join(cmd)}")
    forwarder = StopForwarder()
    for sig in FORWARDED:  # before torchrun starts: a signal from now on is passed on, never lost
        signal.signal(sig, forwarder)
    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with(os.getpid()))
    forwarder.torchrun_pid = proc.pid
    code = wait_reaping(proc, forwarder)
    say(f"torchrun exited with status {code}")
    if code:
        write_failure(code, forwarder.first)
    return code


if __name__ == "__main__":
    sys.exit(main())
