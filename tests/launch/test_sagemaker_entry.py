"""The node entry: torchrun's rendezvous from SageMaker's host list, and the container's exact start command run
as PID 1 of a fresh PID namespace, sent SIGTERM as SageMaker does on a spot interruption: checkpoint, exit 0."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import s3fs
import yaml

from launch.sagemaker import main
from launch.sagemaker_entry import children, torchrun_command
from tests.conftest import REPO
from tests.launch.conftest import IMAGE, ROLE
from tests.launch.jobs import entry_argv, local_config, ranks, start_container, start_node, wait_for
from tests.test_lifeline import alive, wait_gone
from tests.trainer.runs import kill_tree


def test_one_host_needs_no_rendezvous_flags():
    cmd = torchrun_command(["--nnodes", "1", "-m", "open_vlm.train"], {"SM_HOST_COUNT": "1"})
    assert cmd == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "-m", "open_vlm.train"]


def test_several_hosts_rendezvous_at_the_master_host():
    env = {"SM_HOST_COUNT": "2", "SM_MASTER_ADDR": "algo-1", "SM_MASTER_PORT": "7777", "SM_CURRENT_HOST_RANK": "1"}
    cmd = torchrun_command(["--nnodes", "2", "-m", "open_vlm.train"], env)
    assert cmd[3:6] == ["--master_addr=algo-1", "--master_port=7777", "--node_rank=1"]


def can_unshare() -> bool:
    probe = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
    return shutil.which("unshare") is not None and subprocess.run(probe, capture_output=True).returncode == 0


def container_tree(fs, request: dict, root: Path) -> Path:
    """/opt/ml as SageMaker lays it out for one host: the request's channels, its config files, output dirs."""
    opt_ml = root / "opt_ml"
    channels = {}
    for channel in request["InputDataConfig"]:
        uri = channel["DataSource"]["S3DataSource"]["S3Uri"].removeprefix("s3://").rstrip("/")
        fs.get(f"{uri}/", str(opt_ml / "input/data" / channel["ChannelName"]) + "/", recursive=True)
        channels[channel["ChannelName"]] = {"TrainingInputMode": channel["InputMode"], "RecordWrapperType": "None"}
    config = opt_ml / "input/config"
    config.mkdir(parents=True)
    hosts = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "lo"}
    resources = {**hosts, "current_instance_type": request["ResourceConfig"]["InstanceType"]}
    (config / "resourceconfig.json").write_text(json.dumps(resources))
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (config / "hyperparameters.json").write_text(json.dumps(request["HyperParameters"]))
    for folder in ("output/data", "model"):
        (opt_ml / folder).mkdir(parents=True)
    return opt_ml


def spot_job_config(demo_dir: Path, fs, bucket: str, path: Path) -> Path:
    """configs/demo.yaml with its shards and tokenizer on S3, training far longer than the test waits."""
    fs.put(f"{demo_dir}/", f"{bucket}/demo/", recursive=True)
    cfg = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    cfg["data"]["sources"][0]["urls"] = [f"s3://{bucket}/demo/demo-{{000000..000003}}.tar"]
    cfg["data"]["batch_size"] = 8
    cfg["model"]["tokenizer"] = f"s3://{bucket}/demo/tokenizer"
    cfg["train"]["max_steps"] = 100000
    cfg["checkpoint"] = {"every_steps": 0, "resume": "none"}  # no save cadence: the spot default applies
    cfg["logging"]["every_steps"] = 1
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare(), reason="needs `unshare --pid --mount` (root) to run a command as PID 1")
def test_spot_interruption_checkpoints_and_exits_0(submit_env, aws_hooks, s3_bucket, demo_dir, tmp_path, capsys):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": submit_env})
    config = spot_job_config(demo_dir, fs, s3_bucket, tmp_path / "spot.yaml")
    args = ["--config", str(config), "--instance-type", "ml.g5.2xlarge", "--spot", "--image", IMAGE, "--role", ROLE]
    assert main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--job-name", "pid1", "--channel", "shapes"]) == 0
    (request,) = aws_hooks.sent["CreateTrainingJob"]
    opt_ml = container_tree(fs, request, tmp_path)

    # The container: the request's entrypoint and arguments, exactly, as PID 1 of a new PID namespace, with /opt/ml
    # (over a tmpfs on /opt, in a mount namespace of its own) and the request's environment.
    spec = request["AlgorithmSpecification"]
    start = [*spec["ContainerEntrypoint"], *spec["ContainerArguments"]]
    mounts = 'mount -t tmpfs tmpfs /opt && mkdir /opt/ml && mount --bind "$0" /opt/ml && exec "$@"'
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        **request["Environment"],
        "TRAINING_JOB_NAME": request["TrainingJobName"],
        **{k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        "AWS_DEFAULT_REGION": "us-east-1",
        "OPEN_VLM_CACHE": str(tmp_path / "cache"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "container.log"
    with log.open("w") as out:
        container = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", mounts, str(opt_ml), *start],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    metrics = opt_ml / "output/data/demo/tiny-paligemma/metrics.jsonl"
    try:
        deadline = time.time() + 400
        while time.time() < deadline and container.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.5)
        assert metrics.exists(), log.read_text()[-4000:]
        (first,) = children(container.pid)  # the namespace's PID 1, as the host sees it
        assert "launch.sagemaker_entry" in Path(f"/proc/{first}/cmdline").read_text()  # the exec chain held

        os.kill(first, signal.SIGTERM)  # what SageMaker does on a spot interruption
        assert container.wait(timeout=180) == 0, log.read_text()[-4000:]
    finally:
        kill_tree(container.pid)

    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    saved = [path.rsplit("/", 2)[1] for path in fs.glob(f"{s3_bucket}/jobs/pid1/checkpoints/step_*/COMPLETE")]
    assert saved == [f"step_{logged[-1]['step']:08d}"]  # saved where the signal stopped it, long before max_steps
    text = log.read_text()
    assert "SIGTERM: passed to 1 training process" in text and "SIGTERM received" in text
    assert "ignores these config keys" not in text  # the job gets only what train reads


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare(), reason="needs `unshare --pid --mount` (root) to run a command as PID 1")
def test_sigterm_while_the_job_starts_stops_it_cleanly(demo_dir, tmp_path):
    """SIGTERM to PID 1 while the rank is still starting (imports, model build: before Trainer.fit) is kept and
    passed on once the rank can take it: the job stops with exit 0 and no failure file."""
    container, opt_ml = start_container(local_config(demo_dir, tmp_path), tmp_path)
    try:
        pid1 = wait_for(lambda: (children(container.pid) or [None])[0], 30)
        torchrun = wait_for(lambda: (children(pid1) or [None])[0], 60)
        wait_for(lambda: ranks(torchrun), 120)  # the rank exists: it is starting up
        time.sleep(1.0)
        os.kill(pid1, signal.SIGTERM)
        code = container.wait(timeout=120)
    finally:
        kill_tree(container.pid)
    log = (tmp_path / "container.log").read_text()
    failure = opt_ml / "output/failure"
    assert (code, failure.exists()) == (0, False), (
        f"exit {code}; failure file: {failure.read_text() if failure.exists() else None!r}; log: {log[-1500:]}"
    )


def test_stop_time_is_measured_against_sagemakers_grace(monkeypatch, caplog):
    """On SageMaker the stop is measured against its 120 s before SIGKILL, not torchrun's 30 s: a 40 s stop is
    fine, and the advice never names torchrun's --shutdown-timeout."""
    from open_vlm.trainer.loop import Trainer

    monkeypatch.setenv("SM_CURRENT_HOST", "algo-1")  # inside a SageMaker job (sm_train.sh's environment)
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    from open_vlm.config.schema import RunConfig

    trainer = types.SimpleNamespace(cfg=RunConfig())  # train.shutdown_timeout unset, as in the job's config
    stop = types.SimpleNamespace(at=time.monotonic() - 40, reason="SIGTERM")
    with caplog.at_level(logging.WARNING, logger="open_vlm.trainer.loop"):
        Trainer._report_stop_time(trainer, stop)
    assert not [r for r in caplog.records if "shutdown-timeout" in r.getMessage()], caplog.text
    stop.at = time.monotonic() - 110  # control: close to SageMaker's SIGKILL, a warning
    with caplog.at_level(logging.WARNING, logger="open_vlm.trainer.loop"):
        Trainer._report_stop_time(trainer, stop)
    assert "of the 120s grace before SIGKILL" in caplog.text


@pytest.mark.slow
def test_torchrun_and_its_ranks_exit_when_the_entry_is_killed(demo_dir, tmp_path):
    """Outside PID 1 (docker run --init, by hand) kill -9 of the entry ends torchrun (parent-death signal), and its
    ranks follow."""
    config = local_config(demo_dir, tmp_path)
    entry = start_node(entry_argv(config), tmp_path)
    torchrun, workers = None, []
    try:
        torchrun = wait_for(lambda: (children(entry.pid) or [None])[0], 60)
        workers = wait_for(lambda: ranks(torchrun), 120)
        os.kill(entry.pid, signal.SIGKILL)
        entry.wait()
        wait_gone([torchrun, *workers], 30)
        survivors = {"torchrun": alive(torchrun), "ranks": [alive(pid) for pid in workers]}
        assert survivors == {"torchrun": False, "ranks": [False]}, f"alive 30 s after the entry died: {survivors}"
    finally:
        for pid in [entry.pid, torchrun, *workers]:
            if pid:
                kill_tree(pid)
