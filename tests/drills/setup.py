"""What the drills run on: the drill data (demo shards, one of them a hand-made gzipped tar cut short, no manifest)
and an S3 server of their own that they can freeze."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

GZ_SHARD = "hand-000003.tar.gz"
PLAIN_SHARDS = "demo-{000000..000002}.tar"
KEEP_OF_GZ = 0.6  # the gzipped shard keeps this share of its bytes
# Short S3 timeouts for the drill jobs (s3fs's defaults: 5 s connect, 15 s read, 5 botocore tries under 5 s3fs
# tries): a request then gives up after 1 s and s3fs after about 7 s, so that a 10 s freeze outlasts both and the
# retries of open_vlm (shard reads, checkpoint phases) have to carry the run.
S3_TIMEOUTS = '{"config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}}'


def drill_sources(data: Path | str) -> list[dict]:
    """The drill's one source: three plain shards and the cut gzipped one (local folder or s3:// prefix)."""
    base = str(data).rstrip("/")
    return [{"name": "shapes", "urls": [f"{base}/{PLAIN_SHARDS}", f"{base}/{GZ_SHARD}"], "weight": 1.0}]


def gnu_tar_gz(shard: Path, out: Path) -> None:
    """Re-pack a tar shard with GNU tar and gzip, as someone packing files by hand would (Python's tarfile where
    there is no `tar`)."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(shard) as tar:
            names = sorted(m.name for m in tar.getmembers() if m.isfile())
            tar.extractall(tmp, filter="data")
        if shutil.which("tar"):
            subprocess.run(["tar", "--format=gnu", "-czf", str(out), "-C", tmp, *names], check=True)
            return
        with gzip.open(out, "wb") as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name in names:
                tar.add(os.path.join(tmp, name), arcname=name)


def drill_data(demo_dir: Path, out: Path) -> Path:
    """A copy of the demo data for the drills: shard 3 as a hand-made gzipped tar cut short, no manifest."""
    shutil.copytree(demo_dir, out, dirs_exist_ok=True)
    for stale in ("manifest.json", "manifest.index.npz"):
        (out / stale).unlink(missing_ok=True)
    gz = out / GZ_SHARD
    gnu_tar_gz(out / "demo-000003.tar", gz)
    (out / "demo-000003.tar").unlink()
    size = gz.stat().st_size
    with open(gz, "r+b") as f:
        f.truncate(int(size * KEEP_OF_GZ))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """A moto S3 server process on loopback; `freeze` stops it (SIGSTOP) for a while, as an outage would."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url

    @classmethod
    def start(cls) -> MotoServer:
        port = _free_port()
        exe = Path(sys.executable).parent / "moto_server"
        proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return cls(proc, f"http://127.0.0.1:{port}")
            except OSError:
                time.sleep(0.2)
        proc.kill()
        raise RuntimeError("moto_server did not start")

    @property
    def env(self) -> dict[str, str]:
        """What a job needs to reach this server (and give up on a request after 2 s)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FSSPEC_S3": S3_TIMEOUTS,
        }

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.url}, key="testing", secret="testing")

    def bucket_with(self, folder: Path) -> str:
        """A new bucket holding the files of `folder` (shards, manifest); its s3:// URL."""
        name = f"drill-{uuid.uuid4().hex[:8]}"
        fs = self.fs()
        fs.mkdir(name)
        for path in sorted(folder.iterdir()):
            if path.is_file() and (path.suffix in (".tar", ".gz") or path.name == "manifest.json"):
                fs.put_file(str(path), f"{name}/{path.name}")
        return f"s3://{name}"

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
