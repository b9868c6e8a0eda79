"""MLflow (a real sqlite store, a real `mlflow server` on loopback) and TensorBoard, read back after training."""

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from open_vlm.checkpoint.checkpointer import read_meta
from open_vlm.errors import OpenVLMError
from open_vlm.tracking.mlflow_run import MlflowTracker
from tests.trainer.runs import finish, folder, metrics, start, train, wait_for_steps, write_config


def catalog_run(tmp_path, demo_dir, name, **logging):
    """A 3-step run on a catalog dataset (`shapes_cat`), checkpoints every 2 steps, these logging settings."""
    catalog = tmp_path / "catalog.yaml"
    urls = [str(demo_dir / "demo-{000000..000003}.tar")]
    catalog.write_text(yaml.safe_dump({"shapes_cat": {"urls": urls, "modality": "image_text"}}))
    return write_config(
        tmp_path,
        demo_dir,
        name,
        data={"sources": [{"dataset": "shapes_cat"}], "catalogs": [str(catalog)], "batch_size": 2},
        train={"max_steps": 3, "global_batch_size": 4},
        checkpoint={"every_steps": 2},
        logging={"every_steps": 1, **logging},
    )


def the_run(client, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def check_inputs_and_tags(run, run_folder: Path, last_step: int):
    """The source is a dataset input under its catalog name with its version; the last checkpoint is tagged."""
    ckpt = run_folder / "checkpoints" / f"step_{last_step:08d}"
    version = read_meta(str(ckpt))["data_sources"][0]["version"]
    (data,) = run.inputs.dataset_inputs
    assert (data.dataset.name, data.dataset.digest) == ("shapes_cat", version)
    tags = {t.key: t.value for t in data.tags}
    assert tags["mlflow.data.context"] == "training" and tags["split"] == "train" and tags["source"] == "shapes_cat"
    assert run.data.tags["checkpoint_uri"] == str(ckpt)


def test_mlflow_sqlite_and_tensorboard_read_back_across_a_resume_and_an_eval(tmp_path, demo_dir, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from open_vlm.config.load import load_run_config
    from open_vlm.evaluation.metrics import single_label_report
    from open_vlm.evaluation.report import summary_numbers, write_report
    from open_vlm.tracking.evaluation import log_evaluation
    from open_vlm.train import main

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    config = catalog_run(tmp_path, demo_dir, "mlf", trackers=["jsonl", "mlflow", "tensorboard"], system_every_steps=2)
    run_folder = folder(tmp_path, "mlf")
    assert main(["--config", str(config)]) == 0
    shutil.rmtree(run_folder / "checkpoints" / "step_00000003")  # as if it died after logging step 3
    assert main(["--config", str(config), "--train.max_steps", "4"]) == 0  # resumes at 2, logs 3 again: same run

    client = MlflowClient(f"sqlite:///{run_folder}/mlflow.db")
    run = the_run(client, "t")
    assert (run.info.run_name, run.info.status) == ("mlf", "FINISHED")
    params = run.data.params
    assert params["train.max_steps"] == "3"  # params keep their first value (MLflow never changes one)
    assert params["data.sources.0.dataset"] == "shapes_cat" and params["train.global_batch_size"] == "4"
    assert json.loads(params["logging.trackers"]) == ["jsonl", "mlflow", "tensorboard"]
    lines = metrics(tmp_path, "mlf")
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    # MLflow keeps both loggings of the replayed step 3; exact resume makes them the same number.
    loss = history(client, run.info.run_id, "loss")
    assert [s for s, _ in loss] == [1, 2, 3, 3, 4]
    assert sorted(set(loss)) == [(m["step"], m["loss"]) for m in lines]
    assert [s for s, _ in history(client, run.info.run_id, "system/cpu_percent")] == [2, 4]
    check_inputs_and_tags(run, run_folder, 4)

    # `open-vlm eval` in this run folder: its numbers and plot join the same MLflow run and TensorBoard log.
    cfg = load_run_config(["--config", str(config)])
    report = single_label_report(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["circle", "square"])
    paths = write_report(report, run_folder, "eval-zero_shot")
    logged = log_evaluation(
        cfg, run_folder, summary_numbers(report), {"eval/zero_shot": paths["plot"]}, [paths["json"]], step=4
    )
    assert logged == ["mlflow", "tensorboard"]
    run = the_run(client, "t")
    assert run.data.metrics["eval/accuracy"] == 0.75
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "eval"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} == {
        "eval/eval-zero_shot.png",
        "eval/eval-zero_shot.json",
    }

    events = EventAccumulator(str(run_folder / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [s for s, _ in scalars] == [1, 2, 3, 4]  # the resumed run's step 3 replaces the interrupted run's
    assert np.allclose([v for _, v in scalars], [m["loss"] for m in lines], rtol=1e-6)
    assert "system/process_memory_gb" in events.Tags()["scalars"]
    (image,) = events.Images("eval/zero_shot")
    assert image.step == 4 and image.encoded_image_string.startswith(b"\x89PNG")
    assert "config/text_summary" in events.Tags()["tensors"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    with serve_mlflow(tmp_path) as (url, _):
        yield url


@contextlib.contextmanager
def serve_mlflow(tmp_path):
    """A real `mlflow server` on loopback (sqlite backend, artifacts proxied to a folder): (its URL, its process);
    stopped by its process group."""
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    exe = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        + ["--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server and the workers it starts stop together
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_mlflow_server_on_loopback_read_back(tmp_path, demo_dir, mlflow_server):
    from mlflow import MlflowClient

    config = catalog_run(tmp_path, demo_dir, "srv", trackers=["jsonl", "mlflow"])
    train(config, env={"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "served"})
    run_folder = folder(tmp_path, "srv")
    assert not (run_folder / "mlflow.db").exists()  # MLFLOW_TRACKING_URI wins over the run folder's store

    client = MlflowClient(mlflow_server)
    run = the_run(client, "served")
    assert (run.info.run_name, run.info.status) == ("srv", "FINISHED")
    assert run.data.params["train.max_steps"] == "3" and run.data.params["run.name"] == "srv"
    lines = metrics(tmp_path, "srv")
    assert history(client, run.info.run_id, "loss") == [(m["step"], m["loss"]) for m in lines]
    check_inputs_and_tags(run, run_folder, 3)
    downloaded = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl"))
    assert Path(downloaded).read_text() == (run_folder / "config.yaml").read_text()


@pytest.mark.slow
def test_a_tracking_server_lost_mid_run_does_not_stop_training(tmp_path, demo_dir):
    """The MLflow server dies at step 2 of 12: the run warns once, goes on to the end (exit 0, every record in
    metrics.jsonl) and is not held up for minutes by the client's retries at every step.

    Shown to fail before the guard: the first log call after the kill raised, after ~4 minutes of retries."""
    config = catalog_run(tmp_path, demo_dir, "lost", trackers=["jsonl", "mlflow"])
    config.write_text(config.read_text().replace("max_steps: 3", "max_steps: 12"))
    with serve_mlflow(tmp_path) as (url, server):
        job = start(config, env={"MLFLOW_TRACKING_URI": url})
        wait_for_steps(job, folder(tmp_path, "lost") / "metrics.jsonl", 2)
        os.killpg(server.pid, signal.SIGKILL)
        status, err = finish(job, timeout=150)
    assert status == 0, err[-3000:]
    assert [m["step"] for m in metrics(tmp_path, "lost")] == list(range(1, 13))
    warnings = [line for line in err.splitlines() if "tracker mlflow:" in line and "failed" in line]
    assert warnings and "the run goes on" in warnings[0], err[-3000:]


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def self_signed_server(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.HTTPServer(("127.0.0.1", 0), _Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_preflight_honours_mlflow_tracking_insecure_tls(self_signed_server, monkeypatch):
    """A server with a self-signed certificate, which MLflow reaches with MLFLOW_TRACKING_INSECURE_TLS=true: a TLS
    handshake is an answer; the certificate is MLflow's business (the check refused the run: 'cannot reach')."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", self_signed_server)
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    MlflowTracker.preflight()


def test_preflight_of_a_database_uri_without_its_driver_is_one_line(monkeypatch):
    """A postgresql:// store without its driver installed: one line naming the URI (it was a traceback)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://user:pw@127.0.0.1:1/mlflow")
    with pytest.raises(OpenVLMError, match="MLFLOW_TRACKING_URI: MLflow cannot use 'postgresql://"):
        MlflowTracker.preflight()


@pytest.mark.slow
def test_an_unreachable_tracker_under_torchrun_ends_the_job_in_seconds(tmp_path, demo_dir):
    """Rank 0 checks, every rank stops with its answer. (Rank 1 went on into a collective, sat out torchrun's 30 s
    grace and was SIGKILLed: ~40 s.)"""
    config = write_config(tmp_path, demo_dir, "mlf", logging={"every_steps": 1, "trackers": ["mlflow"]})
    began = time.monotonic()
    status, err = finish(
        start(config, "--train.strategy", "ddp", procs=2, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"}),
        timeout=120,
    )
    took = time.monotonic() - began
    assert status == 1 and "cannot reach 'http://127.0.0.1:1'" in err, err[-2000:]
    assert "forcefully exiting via 9" not in err and took < 25, f"{took:.0f} s\n{err[-1500:]}"


def test_preflight_error_does_not_echo_a_password_in_the_uri(monkeypatch):
    """A tracking URI with basic-auth credentials in it: the one-line error (logged, and kept as the job's failure
    reason) does not repeat the password."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret-token@127.0.0.1:1")
    with pytest.raises(OpenVLMError) as err:
        MlflowTracker.preflight()
    assert "s3cret-token" not in str(err.value), err.value


def test_preflight_of_a_malformed_http_uri_is_one_line(monkeypatch):
    """'http://[::1' (a typo in an IPv6 host): one line, not a ValueError traceback."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://[::1")
    with pytest.raises(OpenVLMError):
        MlflowTracker.preflight()
