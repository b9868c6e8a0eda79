"""`--dry-run` prints the whole job: checked here for a 2-node spot job, without any AWS endpoint."""

import json

import pytest

from launch.instances import LaunchError
from launch.plan import parse_duration
from launch.sagemaker import main
from tests.launch.conftest import ROLE


def dry_run(capsys, *args: str) -> dict:
    assert main(["--dry-run", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_dry_run_two_node_spot_job(run_config, aws_env, capsys):
    job = dry_run(
        capsys,
        *("--config", str(run_config), "--instance-type", "ml.p4d.24xlarge", "--instance-count", "2"),
        *("--spot", "--max-run", "2d", "--max-wait", "3d", "--role", ROLE, "--region", "us-west-2"),
        *("--job-name", "tiny-spot", "--env", "NCCL_DEBUG=INFO", "--", "--optim.lr", "2e-4"),
    )
    root = "s3://sagemaker-us-west-2-123456789012/open_vlm/tiny-spot"
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert job["ResourceConfig"]["InstanceType"] == "ml.p4d.24xlarge"
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 2 * 86400, "MaxWaitTimeInSeconds": 3 * 86400}
    assert job["Distribution"] == {"Torchrun": {"process_count_per_node": 8}}
    assert "--nnodes 2 --nproc_per_node 8 -m open_vlm.train" in job["Command"]
    assert job["CheckpointDir"] == f"{root}/checkpoints"
    assert job["OutputDataConfig"]["S3OutputPath"] == f"{root}/output"
    assert job["Environment"]["NCCL_DEBUG"] == "INFO"
    assert job["AlgorithmSpecification"]["TrainingImage"].startswith(
        "123456789012.dkr.ecr.us-west-2.amazonaws.com/open-vlm:"
    )
    # The shipped run config: launcher defaults and the overrides applied.
    shipped = job["RunConfig"]
    assert shipped["checkpoint"]["dir"] == f"{root}/checkpoints"
    assert shipped["checkpoint"]["resume"] == "latest"  # spot restarts resume
    assert shipped["run"]["output_dir"] == "/opt/ml/output/data"
    assert shipped["optim"]["lr"] == 2e-4


def test_on_demand_has_no_max_wait_and_keeps_explicit_settings(run_config, aws_env, capsys):
    job = dry_run(
        capsys,
        *("--config", str(run_config), "--instance-type", "ml.g5.2xlarge", "--role", ROLE),
        *("--", "--checkpoint.resume", "none", "--checkpoint.dir", "s3://mine/ckpt", "--train.strategy", "single"),
    )
    assert job["EnableManagedSpotTraining"] is False
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 5 * 86400}
    assert job["Distribution"] == {"Torchrun": {"process_count_per_node": 1}}
    assert job["RunConfig"]["checkpoint"] == {
        **job["RunConfig"]["checkpoint"],
        "dir": "s3://mine/ckpt",
        "resume": "none",
    }
    assert job["Region"] == "us-east-1"  # from AWS_DEFAULT_REGION


def test_channel_mounts_source_as_fastfile(run_config, aws_env, capsys):
    job = dry_run(
        capsys,
        *("--config", str(run_config), "--instance-type", "ml.g5.2xlarge", "--role", ROLE, "--channel", "shapes"),
        *("--", "--train.strategy", "single"),
    )
    assert job["InputDataConfig"] == [{"ChannelName": "shapes", "S3Uri": "s3://shards/demo/", "InputMode": "FastFile"}]
    assert job["RunConfig"]["data"]["sources"][0]["urls"] == ["/opt/ml/input/data/shapes/demo-{000000..000003}.tar"]


def test_parse_duration():
    assert parse_duration("5d", "x") == 432000
    assert parse_duration("90m", "x") == 5400
    assert parse_duration("3600", "x") == 3600
    with pytest.raises(LaunchError, match="--max-run: expected a duration"):
        parse_duration("five days", "--max-run")
