"""`--dry-run` prints the whole job: checked here without any AWS endpoint, with the AWS limits it enforces."""

import json

import pytest
import yaml

from launch.instances import GPUS_PER_INSTANCE, LaunchError
from launch.plan import LaunchConfig, make_plan, parse_duration
from launch.sagemaker import main
from open_vlm.config.load import config_from_yaml_text, ignored_keys
from open_vlm.config.validate import check_batch
from open_vlm.errors import ConfigError
from tests.conftest import REPO
from tests.launch.conftest import IMAGE, ROLE


def dry_run(capsys, *args: str) -> dict:
    assert main(["--dry-run", *args]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def dry(capsys, *args: str) -> tuple[int, str, str]:
    """Runs a dry run; returns its exit status, stdout and stderr."""
    code = main(["--dry-run", *args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def refused(capsys, *args: str) -> str:
    """Runs a dry run that must exit 2; returns its one-line message."""
    assert main(["--dry-run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_dry_run_two_node_spot_job(run_config, aws_env, capsys):
    job = dry_run(
        capsys,
        *("--config", str(run_config), "--instance-type", "ml.p4d.24xlarge", "--instance-count", "2"),
        *("--spot", "--max-run", "2d", "--max-wait", "3d", "--role", ROLE, "--region", "us-west-2"),
        *("--job-name", "tiny-spot", "--env", "NCCL_DEBUG=INFO", "--", "--optim.lr", "2e-4"),
    )
    root = "s3://sagemaker-us-west-2-123456789012/open_vlm/tiny-spot"
    request = job["CreateTrainingJob"]
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["ResourceConfig"]["InstanceType"] == "ml.p4d.24xlarge"
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 2 * 86400, "MaxWaitTimeInSeconds": 3 * 86400}
    assert "--nnodes 2 --nproc_per_node 8 -m open_vlm.train" in job["Command"]
    assert request["OutputDataConfig"]["S3OutputPath"] == f"{root}/output"
    assert request["Environment"]["NCCL_DEBUG"] == "INFO"
    assert request["AlgorithmSpecification"]["TrainingImage"].startswith(
        "123456789012.dkr.ecr.us-west-2.amazonaws.com/open-vlm:"
    )
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["code", "sm_drivers"]
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
    request = job["CreateTrainingJob"]
    assert "EnableManagedSpotTraining" not in request
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 5 * 86400}
    assert "--nproc_per_node 1 " in job["Command"]
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
    shapes = job["CreateTrainingJob"]["InputDataConfig"][0]
    assert shapes["ChannelName"] == "shapes" and shapes["InputMode"] == "FastFile"
    assert shapes["DataSource"]["S3DataSource"]["S3Uri"] == "s3://shards/demo/"
    assert job["RunConfig"]["data"]["sources"][0]["urls"] == ["/opt/ml/input/data/shapes/demo-{000000..000003}.tar"]


def test_node_command_execs_the_entry_as_first_process(run_config, aws_env, capsys):
    job = dry_run(capsys, "--config", str(run_config), "--instance-type", "ml.g5.12xlarge", "--role", ROLE)
    spec = job["CreateTrainingJob"]["AlgorithmSpecification"]
    assert spec["ContainerEntrypoint"] == ["/bin/bash"]
    assert spec["ContainerArguments"][1].split("&& ")[-1].startswith("exec ")  # the SDK script replaces bash
    assert job["Command"].startswith("exec python3 -m launch.sagemaker_entry --nnodes 1 --nproc_per_node 4 ")


def test_spot_without_save_cadence_saves_on_a_timer_and_says_so(run_config, aws_env, capsys):
    from launch.plan import SPOT_SAVE_MINUTES

    args = ("--config", str(run_config), "--instance-type", "ml.g5.2xlarge", "--role", ROLE, "--spot")
    single = ("--train.strategy", "single")
    job = dry_run(capsys, *args, "--", *single, "--checkpoint.every_steps", "0")
    assert job["RunConfig"]["checkpoint"]["every_minutes"] == SPOT_SAVE_MINUTES > 0
    assert main(["--dry-run", *args, "--", *single, "--checkpoint.every_steps", "0"]) == 0
    assert f"checkpoint.every_minutes set to {SPOT_SAVE_MINUTES:g}" in capsys.readouterr().err

    kept = dry_run(capsys, *args, "--", *single)  # the config's every_steps 10 is a cadence: left alone
    assert kept["RunConfig"]["checkpoint"]["every_minutes"] == 0
    on_demand = dry_run(capsys, *args[:-1], "--", *single, "--checkpoint.every_steps", "0")
    assert on_demand["RunConfig"]["checkpoint"]["every_minutes"] == 0


def test_max_run_is_at_most_28_days(run_config, aws_env, capsys):
    args = ("--config", str(run_config), "--instance-type", "ml.g5.2xlarge", "--role", ROLE)
    single = ("--", "--train.strategy", "single")
    assert "at most 28 days" in refused(capsys, *args, "--max-run", "30d", *single)
    assert dry_run(capsys, *args, "--max-run", "28d", *single)["CreateTrainingJob"]["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 28 * 86400
    }


@pytest.mark.parametrize("item", ["BAD-KEY=1", "1ST=x", "NOVALUE", "=x"])
def test_env_names_follow_the_api_pattern(run_config, aws_env, capsys, item):
    args = ("--config", str(run_config), "--instance-type", "ml.g5.2xlarge", "--role", ROLE, "--env", item)
    assert f"--env {item}: expected KEY=VALUE" in refused(capsys, *args, "--", "--train.strategy", "single")


@pytest.mark.parametrize(("name", "why"), [("code", "the SageMaker SDK's own channel"), ("my-data", "letters, digits")])
def test_channel_names_are_checked(tmp_path, aws_env, capsys, name, why):
    cfg = {
        "data": {"sources": [{"name": name, "urls": ["s3://shards/demo/demo-{000000..000003}.tar"]}]},
        "model": {"kind": "paligemma", "config": "configs/models/paligemma_tiny.yaml", "tokenizer": "s3://shards/tok"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    args = ("--config", str(tmp_path / "run.yaml"), "--instance-type", "ml.g5.2xlarge", "--role", ROLE)
    assert why in refused(capsys, *args, "--channel", name)


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("public.ecr.aws/deep-learning-containers/pytorch-training:2.7.1", "only from a private ECR registry"),
        ("pytorch/pytorch:latest", "only from a private ECR registry"),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/open-vlm:x", "is in eu-west-1 but the job runs in us-east-1"),
    ],
)
def test_image_must_be_private_ecr_in_the_jobs_region(run_config, aws_env, capsys, image, why):
    args = ("--config", str(run_config), "--instance-type", "ml.g5.2xlarge", "--role", ROLE, "--image", image)
    assert why in refused(capsys, *args, "--", "--train.strategy", "single")


def test_request_is_held_to_the_api_model(run_config, aws_env, capsys):
    long_root = "s3://bucket/" + "x" * 1000  # every S3 URI in the request grows past the API's 1024
    args = ("--config", str(run_config), "--instance-type", "ml.g5.2xlarge", "--role", ROLE, "--s3-root", long_root)
    assert "S3Uri: length" in refused(capsys, *args, "--", "--train.strategy", "single")


def test_every_instance_type_we_know_is_one_the_api_takes():
    from launch.limits import check_request

    for instance_type in GPUS_PER_INSTANCE:
        check_request({"ResourceConfig": {"InstanceType": instance_type, "InstanceCount": 1, "VolumeSizeInGB": 1}})
    with pytest.raises(LaunchError, match="InstanceType"):
        check_request({"ResourceConfig": {"InstanceType": "ml.p9.48xlarge", "InstanceCount": 1}})


def test_efa_settings_for_every_efa_instance_type(run_config, aws_env, capsys):
    from sagemaker.train.container_drivers.common.utils import SM_EFA_NCCL_INSTANCES, SM_EFA_RDMA_INSTANCES

    from launch.instances import EFA_INSTANCES, EFA_RDMA_INSTANCES

    # Ours covers the SDK's fixed lists (for the GPU types we know) and what they leave out.
    assert set(SM_EFA_NCCL_INSTANCES) & set(GPUS_PER_INSTANCE) <= EFA_INSTANCES
    assert set(SM_EFA_RDMA_INSTANCES) & set(GPUS_PER_INSTANCE) <= EFA_RDMA_INSTANCES
    assert {"ml.p5en.48xlarge", "ml.p6-b200.48xlarge"} <= EFA_RDMA_INSTANCES
    base = ("--config", str(run_config), "--role", ROLE, "--instance-type")
    for instance_type in sorted(EFA_INSTANCES):
        env = dry_run(capsys, *base, instance_type)["CreateTrainingJob"]["Environment"]
        assert env["FI_PROVIDER"] == "efa", instance_type
        assert ("FI_EFA_USE_DEVICE_RDMA" in env) == (instance_type in EFA_RDMA_INSTANCES), instance_type
        assert "NCCL_PROTO" not in env
    plain = dry_run(capsys, *base, "ml.g5.2xlarge", "--", "--train.strategy", "single")["CreateTrainingJob"]
    assert "FI_PROVIDER" not in plain["Environment"]


def test_job_config_has_nothing_train_ignores(run_config, aws_env, capsys, tmp_path):
    """Shipping the whole config made every job warn `train ignores these config keys: extract.*`."""
    job = dry_run(capsys, "--config", str(run_config), "--instance-type", "ml.g5.12xlarge", "--role", ROLE)
    shipped = tmp_path / "run_config.yaml"
    shipped.write_text(yaml.safe_dump(job["RunConfig"]))
    assert ignored_keys(["--config", str(shipped)], "train") == []


def test_parse_duration():
    assert parse_duration("5d", "x") == 432000
    assert parse_duration("90m", "x") == 5400
    assert parse_duration("3600", "x") == 3600
    with pytest.raises(LaunchError, match="--max-run: expected a duration"):
        parse_duration("five days", "--max-run")


def base(run_config, instance="ml.g5.12xlarge") -> list[str]:
    return ["--config", str(run_config), "--instance-type", instance, "--role", ROLE]


def test_global_batch_is_checked_for_the_jobs_world_size(run_config, aws_env, capsys):
    """A config the job would refuse at start is refused before submitting: ml.g5.12xlarge runs 4 processes, and a
    global batch of 24 is not a multiple of 8 x 4."""
    overrides = ["--data.batch_size", "8", "--train.global_batch_size"]
    job = dry_run(capsys, *base(run_config), "--", *overrides, "32")  # control: a multiple of 8 x 4
    check_batch(config_from_yaml_text(json.dumps(job["RunConfig"])), world=4)
    err = refused(capsys, *base(run_config), "--", *overrides, "24")
    assert "not a multiple" in err and "(this job runs 4 processes)" in err
    with pytest.raises(ConfigError, match="not a multiple"):  # what the job itself would say at start
        check_batch(config_from_yaml_text(json.dumps(job["RunConfig"] | {"train": {"global_batch_size": 24}})), 4)


def test_users_s3_endpoint_does_not_redirect_sagemaker(run_config, aws_env, monkeypatch):
    """The user's s3_endpoint setting (a MinIO, say) is for S3 reads only: loading the run config does not send the
    launcher's SageMaker (IAM, ECR, STS) clients there."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("OPEN_VLM_S3_ENDPOINT", "http://minio.local:9000")
    from launch.sagemaker import boto_session

    make_plan(LaunchConfig(config=str(run_config), instance_type="ml.g5.12xlarge", role=ROLE), lambda a, r: IMAGE, REPO)
    endpoint = boto_session("us-east-1").client("sagemaker").meta.endpoint_url
    assert "minio" not in endpoint, f"SageMaker calls would go to {endpoint}"


def test_wandb_online_without_a_key_is_refused(run_config, aws_env, monkeypatch, capsys):
    """wandb online resolved from the user's settings needs a key in the job (the user's login does not travel)."""
    monkeypatch.setenv("OPEN_VLM_WANDB_MODE", "online")
    err = refused(capsys, *base(run_config))
    assert err.startswith("error: logging.wandb.mode online:") and "--env WANDB_API_KEY=" in err
    job = dry_run(capsys, *base(run_config), "--env", "WANDB_API_KEY=k")
    assert job["RunConfig"]["logging"]["wandb"]["mode"] == "online" and job["CreateTrainingJob"]["Environment"]


@pytest.mark.parametrize("resume", ["none", "s3://shards/runs/x/checkpoints/step_00000100"])
def test_spot_with_an_explicit_resume_is_refused(run_config, aws_env, capsys, resume):
    """With --spot every restart runs the same config: an explicit checkpoint.resume would rewind to it (or start
    afresh) on every interruption instead of continuing from the job's newest checkpoint, so it is refused."""
    err = refused(capsys, *base(run_config), "--spot", "--", "--checkpoint.resume", resume)
    assert f"checkpoint.resume {resume}: with --spot" in err and "leave checkpoint.resume unset" in err


def test_spot_keeps_the_default_resume_latest(run_config, aws_env, capsys):
    """Without --checkpoint.resume a spot job resumes from its own newest checkpoint."""
    code, out, err = dry(capsys, *base(run_config), "--spot")
    assert code == 0, err
    assert json.loads(out)["RunConfig"]["checkpoint"]["resume"] == "latest"


def test_channels_named_like_the_sdks_in_another_case_are_refused(aws_env, tmp_path, capsys):
    """Data channels 'Code' / 'SM_DRIVERS' clash with the SDK's 'code' / 'sm_drivers' in SM_CHANNEL_* (upper case)."""
    import yaml

    cfg = {
        "data": {
            "sources": [
                {"name": "Code", "urls": ["s3://shards/a/x-{0..3}.tar"]},
                {"name": "SM_DRIVERS", "urls": ["s3://shards/b/x-{0..3}.tar"]},
            ]
        },
        "model": {"kind": "paligemma", "config": "configs/models/paligemma_tiny.yaml", "tokenizer": "s3://shards/tok"},
        "train": {"strategy": "ddp"},
    }
    path = tmp_path / "chan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = dry(capsys, *base(path), "--channel", "Code", "--channel", "SM_DRIVERS")
    names = [c["ChannelName"] for c in json.loads(out)["CreateTrainingJob"]["InputDataConfig"]] if code == 0 else []
    assert code == 2, f"channels {names} clash in SM_CHANNEL_*"


@pytest.mark.slow
def test_ddp_config_runs_on_a_one_gpu_instance(run_config, aws_env, capsys, demo_dir, tmp_path):
    """A ddp config is accepted for a 1-GPU instance, and the job runs it: torchrun --nproc_per_node 1 with
    train.strategy ddp trains (a process group of one)."""
    import subprocess

    from tests.launch.jobs import job_env, local_config, torchrun_argv

    code, out, err = dry(capsys, *base(run_config, "ml.g5.2xlarge"))
    assert code == 0 and json.loads(out)["RunConfig"]["train"]["strategy"] == "ddp"  # accepted as is
    config = local_config(demo_dir, tmp_path, max_steps=2)
    config.write_text(config.read_text().replace("strategy: fsdp", "strategy: ddp"))
    job = subprocess.run(
        torchrun_argv(config),
        cwd=REPO,
        env=job_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, [line for line in job.stderr.splitlines() if "ERROR" in line][:2]


def test_a_malformed_override_after_the_separator_is_one_line(run_config, aws_env, capsys):
    err = refused(capsys, *base(run_config), "--", "--train.max_steps")
    assert err.startswith("error: bad override: argument --train.max_steps: expected one argument")
