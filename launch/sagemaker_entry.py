"""What every SageMaker node runs as the container's first process: torchrun for this node, SIGTERM passed on.

    python3 -m launch.sagemaker_entry --nnodes N --nproc_per_node P -m open_vlm.train --config job/run_config.yaml

SageMaker stops a job (spot interruption, `--max-run`, StopTrainingJob) by sending SIGTERM to the container's
first process, and SIGKILL 120 s later. The job's start command `exec`s into this module, so this is that
process. It passes SIGTERM, SIGINT and SIGUSR1 to torchrun's workers, which finish their step, checkpoint and
exit 0; torchrun then exits 0, and so does this. It adds the rendezvous flags from SageMaker's host list,
reaps orphans (PID 1's duty) and leaves SageMaker a failure reason when training fails.

Only the standard library here: it runs before anything else and must not hold a GPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
FAILURE_FILE = Path("/opt/ml/output/failure")  # SageMaker shows its first 1 KiB as the job's FailureReason


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


def say(message: str) -> None:
    print(f"sagemaker_entry: {message}", file=sys.stderr, flush=True)


def forward_to_workers(torchrun_pid: int, signum: int) -> list[int]:
    """Send `signum` to torchrun's workers (to torchrun itself before it has any); returns who got it."""
    targets = children(torchrun_pid) or [torchrun_pid]
    for pid in targets:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    return targets


def wait_reaping(proc: subprocess.Popen) -> int:
    """Wait for `proc`, reaping any orphan handed to us meanwhile; returns its exit code (128+N for signal N)."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


def write_failure(code: int) -> None:
    """Leave SageMaker a reason, unless the trainer already wrote one."""
    if not FAILURE_FILE.parent.is_dir() or (FAILURE_FILE.exists() and FAILURE_FILE.stat().st_size):
        return
    FAILURE_FILE.write_text(
        f"torchrun exited with status {code} on {socket.gethostname()}; the first error is in the job's log\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "SM_NETWORK_INTERFACE_NAME" in os.environ:  # NCCL's bootstrap network, as SageMaker's own driver sets it
        os.environ.setdefault("NCCL_SOCKET_IFNAME", os.environ["SM_NETWORK_INTERFACE_NAME"])
    cmd = torchrun_command(args, dict(os.environ))
    say(f"pid {os.getpid()}, running {' '.join(cmd)}")
    proc = subprocess.Popen(cmd)

    def forward(signum, frame) -> None:
        targets = forward_to_workers(proc.pid, signum)
        say(f"{signal.Signals(signum).name}: passed to {len(targets)} training process(es), waiting for them")

    for sig in FORWARDED:
        signal.signal(sig, forward)
    code = wait_reaping(proc)
    say(f"torchrun exited with status {code}")
    if code:
        write_failure(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
