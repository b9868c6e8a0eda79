"""Shared fixtures: demo shards and tokenizer, a real S3 endpoint (moto server) on loopback."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run `python -m <module> args...` in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Demo shards (4 x 32 samples), manifest, tokenizer and example images."""
    from make_demo_data import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["--out", str(out), "--num-shards", "4", "--per-shard", "32", "--seed", "3"]) == 0
    return out


@pytest.fixture(scope="session")
def mixture_dir(tmp_path_factory) -> Path:
    """Demo captions, VQA (`vqa/`) and text-only (`text/`) shards, 2 x 32 samples each, one tokenizer for all."""
    from make_demo_data import main

    out = tmp_path_factory.mktemp("mixture")
    args = ["--out", str(out), "--num-shards", "2", "--per-shard", "32", "--seed", "5", "--sets", "captions,vqa,text"]
    assert main(args) == 0
    return out


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Drop the log handlers a test's in-process `main()` added (they hold that test's captured stderr, which is
    closed afterwards: a later test's log record would print a 'Logging error' into its output)."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _isolated_user_config(tmp_path, monkeypatch):
    """Never read or write the real user's config dir; no stray OPEN_VLM_* settings."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for key in list(os.environ):
        if key.startswith("OPEN_VLM_"):
            monkeypatch.delenv(key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on loopback, reached over HTTP by s3fs (as s3fs tests itself)."""
    port = _free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket; returns its name."""
    import uuid

    import s3fs

    name = f"test-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    return name
