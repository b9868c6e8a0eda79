import os

import yaml

from open_vlm.config import env
from open_vlm.config.load import load_run_config
from tests.conftest import run_cli


def test_defaults_when_nothing_set():
    assert env.load_env_config() == env.EnvConfig()


def test_user_file_then_env_var_then_run_config(tmp_path, monkeypatch):
    env.set_user_value("output_root", "/from/file")
    env.set_user_value("wandb_project", "filed")
    assert env.load_env_config().output_root == "/from/file"
    cfg = load_run_config([])
    assert cfg.run.output_dir == "/from/file"
    assert cfg.logging.wandb.project == "filed"

    monkeypatch.setenv("OPEN_VLM_OUTPUT_ROOT", "/from/env")
    assert load_run_config([]).run.output_dir == "/from/env"

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run": {"output_dir": "/from/run"}}))
    assert load_run_config(["--config", str(path)]).run.output_dir == "/from/run"
    assert load_run_config(["--config", str(path), "--run.output_dir", "/cli"]).run.output_dir == "/cli"


def test_s3_endpoint_is_exported_for_s3_only(monkeypatch):
    import boto3

    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    env.set_user_value("s3_endpoint", "http://127.0.0.1:1")
    try:
        load_run_config([])
        assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:1"
        session = boto3.Session(aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1")
        assert session.client("s3").meta.endpoint_url == "http://127.0.0.1:1"
        assert "127.0.0.1" not in session.client("sts").meta.endpoint_url  # other AWS calls are not redirected
    finally:  # set by the code under test, not by monkeypatch (whose delenv would restore it: S3 tests after break)
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)


def test_file_lives_under_xdg(tmp_path):
    path = env.set_user_value("wandb_mode", "offline")
    assert path == tmp_path / "xdg" / "open_vlm" / "config.yaml"
    assert yaml.safe_load(path.read_text()) == {"wandb_mode": "offline"}


def test_cli_set_and_show(tmp_path):
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "xdg2")}
    out = run_cli("-m", "open_vlm.cli", "config", "set", "output_root", "/data/runs", env=xdg)
    assert out.returncode == 0, out.stderr
    out = run_cli("-m", "open_vlm.cli", "config", "show", env=xdg)
    line = next(line for line in out.stdout.splitlines() if line.startswith("output_root"))
    assert "/data/runs" in line and "config.yaml" in line
    out = run_cli("-m", "open_vlm.cli", "config", "show", env={**xdg, "OPEN_VLM_OUTPUT_ROOT": "/env"})
    line = next(line for line in out.stdout.splitlines() if line.startswith("output_root"))
    assert "/env" in line and "OPEN_VLM_OUTPUT_ROOT" in line
    out = run_cli("-m", "open_vlm.cli", "config", "set", "output_rot", "x", env=xdg)
    assert out.returncode == 2 and "output_root" in out.stderr
