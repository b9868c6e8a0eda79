"""The SageMaker SDK's config-file defaults: what a submission sends is what --dry-run prints (launch/sdk_config.py)."""

from __future__ import annotations

import json

from launch.sagemaker import main
from tests.launch.conftest import IMAGE, ROLE

SDK_DEFAULTS = """\
SchemaVersion: '1.0'
SageMaker:
  TrainingJob:
    EnableNetworkIsolation: true
    Tags:
      - Key: team
        Value: vision
"""


def job_args(run_config, s3_bucket) -> list[str]:
    args = ["--config", str(run_config), "--instance-type", "ml.g5.12xlarge", "--image", IMAGE, "--role", ROLE]
    return [*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--job-name", "sdkdefaults"]


def test_dry_run_shows_what_the_sdk_config_files_add(
    submit_env, aws_hooks, s3_bucket, run_config, tmp_path, monkeypatch, capsys
):
    """The SDK applies its config files' defaults (~/.config/sagemaker/config.yaml, SAGEMAKER_USER_CONFIG_OVERRIDE,
    common in managed accounts and Studio) to every ModelTrainer: the dry run prints the request with them."""
    defaults = tmp_path / "sagemaker_config.yaml"
    defaults.write_text(SDK_DEFAULTS.replace("EnableNetworkIsolation: true", "EnableNetworkIsolation: false"))
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(defaults))
    assert main(job_args(run_config, s3_bucket)) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["--dry-run", *job_args(run_config, s3_bucket)]) == 0
    printed = json.loads(capsys.readouterr().out)["CreateTrainingJob"]
    (sent,) = aws_hooks.sent["CreateTrainingJob"]
    assert sorted(sent) == sorted(printed)
    assert sent["EnableNetworkIsolation"] is False and printed["EnableNetworkIsolation"] is False
    same = {key for key in sent if sent[key] == printed[key]}
    assert set(sent) - same <= {"TrainingJobName", "InputDataConfig", "HyperParameters"}  # the job's timestamp


def test_network_isolation_from_the_sdk_config_files_is_refused(
    submit_env, aws_hooks, s3_bucket, run_config, tmp_path, monkeypatch, capsys
):
    """A job of ours cannot run isolated (it streams s3:// data and writes its checkpoints to S3): a default that
    isolates it is refused, by the dry run and the submission alike, in one line, and nothing is sent."""
    defaults = tmp_path / "sagemaker_config.yaml"
    defaults.write_text(SDK_DEFAULTS)
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(defaults))
    for dry_run in ([], ["--dry-run"]):
        assert main([*dry_run, *job_args(run_config, s3_bucket)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: EnableNetworkIsolation is true in"), err
    assert aws_hooks.sent["CreateTrainingJob"] == []
