"""The launcher end to end against a moto server (code upload + CreateTrainingJob), and its one-line errors."""

import json

import boto3
import pytest
import s3fs

from launch.sagemaker import main
from open_vlm.config.load import config_from_yaml_text
from tests.conftest import run_cli
from tests.launch.conftest import IMAGE, ROLE


@pytest.fixture
def submit_env(s3_endpoint, aws_env, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")  # moto's IAM knows no roles
    return s3_endpoint


def test_submit_end_to_end(submit_env, s3_bucket, run_config, capsys):
    args = ["--config", str(run_config), "--instance-type", "ml.p5.48xlarge", "--instance-count", "2", "--spot"]
    args += ["--max-run", "1d", "--image", IMAGE, "--role", ROLE, "--s3-root", f"s3://{s3_bucket}/jobs"]
    args += ["--job-name", "tiny-e2e", "--", "--optim.lr", "3e-4"]
    assert main(args) == 0, capsys.readouterr().err
    name = capsys.readouterr().out.split()[1].rstrip(":")
    assert name.startswith("tiny-e2e-")

    job = boto3.client("sagemaker", endpoint_url=submit_env).describe_training_job(TrainingJobName=name)
    assert job["RoleArn"] == ROLE
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["ResourceConfig"]["InstanceType"] == "ml.p5.48xlarge"
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 2 * 86400}
    assert job["HyperParameters"] == {"config": "job/run_config.yaml"}
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{s3_bucket}/jobs/tiny-e2e/output"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert set(channels) == {"code", "sm_drivers"}  # data is streamed from S3, not copied

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": submit_env})
    code = channels["code"].removeprefix("s3://").rstrip("/")
    assert code.startswith(f"{s3_bucket}/jobs/tiny-e2e/")
    shipped = config_from_yaml_text(fs.cat(f"{code}/job/run_config.yaml").decode())
    assert shipped.optim.lr == 3e-4
    assert shipped.checkpoint.dir == f"s3://{s3_bucket}/jobs/tiny-e2e/checkpoints"
    assert shipped.checkpoint.resume == "latest"
    assert fs.exists(f"{code}/launch/sagemaker_entry.py") and fs.exists(f"{code}/open_vlm/train.py")
    assert fs.exists(f"{code}/configs/models/paligemma_tiny.yaml")  # model.config is read from the source

    drivers = channels["sm_drivers"].removeprefix("s3://").rstrip("/")
    assert json.loads(fs.cat(f"{drivers}/distributed.json"))["process_count_per_node"] == 8
    assert json.loads(fs.cat(f"{drivers}/sourcecode.json"))["entry_script"] == "launch/sagemaker_entry.py"


def test_bad_config_key_fails_before_upload(submit_env, s3_bucket, run_config, capsys):
    args = ["--config", str(run_config), "--instance-type", "ml.p5.48xlarge", "--image", IMAGE, "--role", ROLE]
    args += ["--s3-root", f"s3://{s3_bucket}/jobs", "--", "--optim.learning_rate", "1e-4"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown config key 'optim.learning_rate'; did you mean 'optim.lr'?"
    assert s3fs.S3FileSystem(client_kwargs={"endpoint_url": submit_env}).ls(s3_bucket) == []


def test_bad_key_in_config_file(run_config, aws_env, capsys):
    run_config.write_text(run_config.read_text().replace("max_steps:", "total_steps:"))
    assert main(["--dry-run", "--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--role", ROLE]) == 2
    assert "unknown config key 'train.total_steps'; did you mean 'train.max_steps'?" in capsys.readouterr().err


def test_unknown_instance_type_exits_2():
    result = run_cli("-m", "launch.sagemaker", "--config", "configs/demo.yaml", "--instance-type", "ml.p5.96xlarge")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert "unknown instance type 'ml.p5.96xlarge'; did you mean ml.p5.48xlarge" in result.stderr


def test_missing_role_exits_2(run_config, aws_env, capsys):
    assert main(["--dry-run", "--config", str(run_config), "--instance-type", "ml.p5.48xlarge"]) == 2
    assert capsys.readouterr().err.startswith("error: no IAM role: pass --role")


def test_single_process_strategy_on_many_gpus_exits_2(run_config, aws_env, capsys):
    args = ["--dry-run", "--config", str(run_config), "--instance-type", "ml.p5.48xlarge", "--role", ROLE]
    assert main([*args, "--", "--train.strategy", "single"]) == 2
    assert "train.strategy: 'single' runs one process but this job starts 8" in capsys.readouterr().err


def test_local_data_path_exits_2(run_config, aws_env, capsys):
    args = ["--dry-run", "--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--role", ROLE]
    assert main([*args, "--", "--model.tokenizer", "data/demo/tokenizer", "--train.strategy", "single"]) == 2
    assert "model.tokenizer: 'data/demo/tokenizer' is a local path the job cannot read" in capsys.readouterr().err


def test_build_without_docker_daemon_says_what_to_do(submit_env, s3_bucket, run_config, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--build", "--role", ROLE]
    assert main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", "--train.strategy", "single"]) == 2
    err = capsys.readouterr().err
    assert "--build needs a running docker daemon" in err and "docker build -f" in err and "--image" in err


def test_entry_script_runs_open_vlm_train(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {learning_rate: 1}\n")
    result = run_cli("launch/sagemaker_entry.py", "--config", str(bad))
    assert result.returncode == 2  # open_vlm.train's own config error, not a launcher one
    assert "unknown config key 'optim.learning_rate'" in result.stderr


def test_library_does_not_import_sagemaker():
    code = "import sys, open_vlm.train, launch.plan, launch.sagemaker; assert 'sagemaker' not in sys.modules"
    assert run_cli("-c", code).returncode == 0
