"""The launcher end to end against a moto server (code upload + CreateTrainingJob), and its one-line errors."""

import json

import boto3
import pytest
import s3fs
import yaml

from launch.sagemaker import main
from open_vlm.config.load import config_from_yaml_text
from tests.conftest import run_cli
from tests.launch.conftest import ACCOUNT, IMAGE, ROLE


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def uploaded(endpoint: str, request: dict, channel: str) -> str:
    """The S3 path (bucket/key, for s3fs) of a channel of a sent CreateTrainingJob request."""
    uris = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    return uris[channel].removeprefix("s3://").rstrip("/")


def test_submit_end_to_end(submit_env, aws_hooks, s3_bucket, run_config, capsys):
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
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{s3_bucket}/jobs/tiny-e2e/output"
    channels = {c["ChannelName"] for c in job["InputDataConfig"]}
    assert channels == {"code", "sm_drivers"}  # data is streamed from S3, not copied

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": submit_env})
    (request,) = aws_hooks.sent["CreateTrainingJob"]
    code = uploaded(submit_env, request, "code")
    assert code.startswith(f"{s3_bucket}/jobs/tiny-e2e/")
    shipped = config_from_yaml_text(fs.cat(f"{code}/job/run_config.yaml").decode())
    assert shipped.optim.lr == 3e-4
    assert shipped.checkpoint.dir == f"s3://{s3_bucket}/jobs/tiny-e2e/checkpoints"
    assert shipped.checkpoint.resume == "latest"
    assert fs.exists(f"{code}/launch/sagemaker_entry.py") and fs.exists(f"{code}/open_vlm/train.py")
    assert fs.exists(f"{code}/configs/models/paligemma_tiny.yaml")  # model.config is read from the source
    script = fs.cat(f"{uploaded(submit_env, request, 'sm_drivers')}/sm_train.sh").decode()
    assert "exec python3 -m launch.sagemaker_entry --nnodes 2 --nproc_per_node 8 -m open_vlm.train" in script


def container_command(script: str) -> str:
    """The command the SDK's sm_train.sh evaluates (it carries it in a quoted heredoc)."""
    return script.split("<<'SAGEMAKER_BASE_COMMAND_EOF'\n", 1)[1].split("\nSAGEMAKER_BASE_COMMAND_EOF", 1)[0]


def test_dry_run_prints_the_request_submit_sends(submit_env, aws_hooks, s3_bucket, run_config, capsys):
    args = ["--config", str(run_config), "--instance-type", "ml.p5en.48xlarge", "--instance-count", "2", "--spot"]
    args += ["--image", IMAGE, "--role", ROLE, "--s3-root", f"s3://{s3_bucket}/jobs", "--channel", "shapes"]
    args += ["--job-name", "same", "--env", "NCCL_DEBUG=INFO", "--", "--optim.lr", "3e-4"]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["--dry-run", *args]) == 0
    printed = json.loads(capsys.readouterr().out)

    (sent,) = aws_hooks.sent["CreateTrainingJob"]
    stamp = sent["TrainingJobName"].removeprefix("same-")
    placeholder = printed["CreateTrainingJob"]["TrainingJobName"].removeprefix("same-")
    assert json.loads(json.dumps(sent).replace(stamp, placeholder)) == printed["CreateTrainingJob"]
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": submit_env})
    script = fs.cat(f"{uploaded(submit_env, sent, 'sm_drivers')}/sm_train.sh").decode()
    assert container_command(script) == printed["Command"]
    shipped = fs.cat(f"{uploaded(submit_env, sent, 'code')}/job/run_config.yaml").decode()
    assert yaml.safe_load(shipped) == printed["RunConfig"]


def test_role_missing_permissions_are_listed_in_full(submit_env, aws_hooks, s3_bucket, run_config, monkeypatch, capsys):
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "true")
    iam = boto3.client("iam", endpoint_url=submit_env)
    trust = {
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ]
    }
    try:
        iam.create_role(RoleName=ROLE.rsplit("/", 1)[1], AssumeRolePolicyDocument=json.dumps(trust))
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    aws_hooks.denied = {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData", "ec2:DescribeSubnets"}
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--image", IMAGE, "--role", ROLE]
    assert main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", "--train.strategy", "single"]) == 2
    err = one_line_error(capsys)
    assert "Missing permissions" in err and all(action in err for action in aws_hooks.denied), err
    assert aws_hooks.sent["CreateTrainingJob"] == []


def test_role_that_cannot_read_the_data_stops_before_submitting(submit_env, aws_hooks, s3_bucket, run_config, capsys):
    aws_hooks.denied = {"s3:GetObject"}
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--image", IMAGE, "--role", ROLE]
    assert main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", "--train.strategy", "single"]) == 2
    err = one_line_error(capsys)
    assert "s3:GetObject on arn:aws:s3:::shards/demo/demo-000000.tar" in err and "add these to the role" in err
    assert "s3:GetObject on arn:aws:s3:::shards/tok" in err
    assert aws_hooks.sent["CreateTrainingJob"] == []


def test_access_denied_creating_the_default_bucket(submit_env, run_config, restricted_credentials, capsys):
    restricted_credentials("s3:CreateBucket")  # moto enforces it from here on
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--role", ROLE, "--region", "us-west-2"]
    assert main([*args, "--", "--train.strategy", "single"]) == 2
    err = one_line_error(capsys)
    assert f"cannot create the default bucket sagemaker-us-west-2-{ACCOUNT}" in err and "--s3-root" in err


def test_access_denied_checking_the_image(submit_env, s3_bucket, run_config, restricted_credentials, capsys):
    restricted_credentials("ecr:DescribeImages")
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--role", ROLE, "--image", IMAGE]
    assert main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", "--train.strategy", "single"]) == 2
    assert "may not call ecr:DescribeImages on repository open-vlm" in one_line_error(capsys)


def test_image_not_in_ecr(submit_env, s3_bucket, run_config, capsys):
    image = IMAGE.replace(":test", ":never-pushed")
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--role", ROLE, "--image", image]
    assert main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", "--train.strategy", "single"]) == 2
    assert f"image {image} is not in ECR" in one_line_error(capsys)


def test_s3_root_bucket_in_another_region(submit_env, run_config, capsys):
    s3 = boto3.client("s3", endpoint_url=submit_env, region_name="eu-west-1")
    bucket = "open-vlm-eu-bucket"
    try:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--role", ROLE, "--image", IMAGE]
    assert main([*args, "--s3-root", f"s3://{bucket}/jobs", "--", "--train.strategy", "single"]) == 2
    err = one_line_error(capsys)
    assert f"bucket {bucket} is in eu-west-1 but the job runs in us-east-1" in err and "--region eu-west-1" in err


def test_missing_data_stops_before_submitting(submit_env, aws_hooks, s3_bucket, run_config, capsys):
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--role", ROLE, "--image", IMAGE]
    overrides = ["--train.strategy", "single", "--model.tokenizer", "s3://shards/no-such-tokenizer"]
    assert main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", *overrides]) == 2
    err = one_line_error(capsys)
    assert "model.tokenizer: no tokenizer folder at 's3://shards/no-such-tokenizer'" in err
    assert aws_hooks.sent["CreateTrainingJob"] == []


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


@pytest.mark.parametrize("check", [False, True])
def test_build_without_docker_daemon_says_what_to_do(submit_env, s3_bucket, run_config, monkeypatch, capsys, check):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    args = ["--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--build", *(["--check"] * check)]
    args += ["--role", ROLE, "--s3-root", f"s3://{s3_bucket}/jobs", "--", "--train.strategy", "single"]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "--build needs a running docker daemon" in err and "--image" in err
    assert "docker build --platform linux/amd64 -f" in err
    assert ("launch.constraints --check" in err) == check


def test_check_needs_build(run_config, aws_env, capsys):
    args = ["--dry-run", "--config", str(run_config), "--instance-type", "ml.g5.xlarge", "--role", ROLE, "--check"]
    assert main(args) == 2
    assert "add --build" in one_line_error(capsys)


def test_library_does_not_import_sagemaker():
    code = "import sys, open_vlm.train, launch.plan, launch.sagemaker; assert 'sagemaker' not in sys.modules"
    assert run_cli("-c", code).returncode == 0
