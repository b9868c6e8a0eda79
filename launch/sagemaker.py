"""Launch an open_vlm run as a SageMaker training job (SDK v3 `ModelTrainer` + `Torchrun`).

    python -m launch.sagemaker --config configs/X.yaml --instance-type ml.p5.48xlarge --instance-count 4 \
        [--spot] [--max-run 5d] [--max-wait 10d] [--image URI | --build [--check]] [--role ARN] [--region R] \
        [--job-name NAME] [--s3-root s3://bucket/prefix] [--channel SOURCE] [--dry-run] [-- --key value ...]

Every node runs `torchrun -m open_vlm.train --config job/run_config.yaml` (one process per GPU) from the
uploaded source, under `launch/sagemaker_entry.py` as the container's first process (it passes SIGTERM on).
The config, the AWS limits and the account (bucket, image, data, role) are checked before anything is uploaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from launch.image import REPO_ROOT, build_and_push, default_image
from launch.inputs import SHIPPED
from launch.instances import LaunchError
from launch.limits import check_request
from launch.plan import CONFIG_IN_SOURCE, JobPlan, LaunchConfig, make_plan
from launch.preflight import (
    check_channel_regions,
    check_data_exists,
    check_image,
    check_role_access,
    ensure_bucket,
    one_line,
)
from launch.request import CONTAINER_ARGUMENTS, CONTAINER_ENTRYPOINT, job_definition, training_job_request
from open_vlm.config.load import ConfigError
from open_vlm.errors import run_main

log = logging.getLogger("launch.sagemaker")


def parse_args(argv: list[str]) -> LaunchConfig:
    """`LaunchConfig` from the command line; run-config overrides follow a bare `--`."""
    ours, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    defaults = LaunchConfig(config="", instance_type="")
    p = argparse.ArgumentParser(prog="python -m launch.sagemaker", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="run config YAML (local path or URL)")
    p.add_argument("--instance-type", required=True, help="e.g. ml.p5.48xlarge")
    p.add_argument("--instance-count", type=int, default=defaults.instance_count)
    p.add_argument("--spot", action="store_true", help="managed spot training (resumes from checkpoints)")
    p.add_argument("--max-run", default=defaults.max_run, help="max training time: 5d, 12h, 90m, seconds")
    p.add_argument("--max-wait", default=None, help="spot: max time including waiting (default 2x max-run)")
    image = p.add_mutually_exclusive_group()
    image.add_argument("--image", default=None, help="training image URI (default: this checkout's ECR image)")
    image.add_argument("--build", action="store_true", help="build launch/Dockerfile and push it to ECR")
    p.add_argument("--check", action="store_true", help="with --build: smoke-test the image before pushing it")
    p.add_argument("--role", default=None, help="SageMaker execution role ARN (default $SAGEMAKER_ROLE)")
    p.add_argument("--region", default=None)
    p.add_argument("--job-name", default=None, help="default <run.project>-<run.name>; same name = resume")
    p.add_argument("--s3-root", default=None, help="default s3://sagemaker-<region>-<account>/open_vlm")
    p.add_argument("--channel", action="append", default=[], help="mount this data source as a FastFile channel")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the job's environment")
    p.add_argument("--volume-gb", type=int, default=defaults.volume_gb)
    p.add_argument("--dry-run", action="store_true", help="print the job definition as JSON, send nothing")
    args = p.parse_args(ours)
    if args.check and not args.build:
        raise LaunchError("--check tests the image --build makes: add --build")
    return LaunchConfig(
        config=args.config,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        spot=args.spot,
        max_run=args.max_run,
        max_wait=args.max_wait,
        image=args.image,
        build=args.build,
        check=args.check,
        role=args.role,
        region=args.region,
        job_name=args.job_name,
        s3_root=args.s3_root,
        channels=args.channel,
        env=args.env,
        volume_gb=args.volume_gb,
        dry_run=args.dry_run,
        overrides=overrides,
    )


def stage_source(plan: JobPlan, into: Path) -> Path:
    """The source folder SageMaker uploads: the package, configs, the user's model.module and the resolved config."""
    sources = [REPO_ROOT / name for name in SHIPPED]
    for src in [*sources, *([plan.module_source] if plan.module_source else [])]:
        if src.is_dir():
            shutil.copytree(src, into / src.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, into / src.name)
    (into / CONFIG_IN_SOURCE).parent.mkdir(parents=True, exist_ok=True)
    (into / CONFIG_IN_SOURCE).write_text(plan.config_yaml)
    (into / CONFIG_IN_SOURCE).with_name("job.json").write_text(json.dumps(job_definition(plan), indent=1))
    return into


def boto_session(region: str):
    """A boto3 session for `region`; `LaunchError` when no credentials are configured."""
    import boto3

    session = boto3.Session(region_name=region)
    if session.get_credentials() is None:
        raise LaunchError("no AWS credentials: run 'aws configure' / 'aws sso login' or set AWS_ACCESS_KEY_ID")
    return session


def use_our_start_command(params: dict, **_) -> None:
    """botocore hook on CreateTrainingJob: the container starts as `launch/request.py` says (with `exec`)."""
    from sagemaker.train.constants import DEFAULT_CONTAINER_ARGUMENTS, DEFAULT_CONTAINER_ENTRYPOINT

    spec = params["AlgorithmSpecification"]
    sdk = (spec.get("ContainerEntrypoint"), spec.get("ContainerArguments"))
    if sdk != (DEFAULT_CONTAINER_ENTRYPOINT, DEFAULT_CONTAINER_ARGUMENTS):  # the SDK changed: look before trusting
        raise LaunchError(f"the sagemaker SDK's container start command changed ({sdk}); update launch/request.py")
    spec["ContainerEntrypoint"], spec["ContainerArguments"] = CONTAINER_ENTRYPOINT, CONTAINER_ARGUMENTS


def send_the_dry_run(plan: JobPlan):
    """botocore hook on CreateTrainingJob: our start command, then the request must be the one `--dry-run` prints
    (with the real job name): whatever the SDK added on its own (a default from a config file, a new SDK's field)
    stops the launch, naming it, rather than being sent unseen."""

    def hook(params: dict, **kwargs) -> None:
        use_our_start_command(params, **kwargs)
        expected = training_job_request(plan, name=params.get("TrainingJobName"))
        differ = sorted(key for key in {*params, *expected} if params.get(key) != expected.get(key))
        if differ:
            sent = {key: params.get(key) for key in differ}
            raise LaunchError(
                f"the SageMaker SDK would send {json.dumps(sent, default=str)} where --dry-run shows "
                f"{json.dumps({key: expected.get(key) for key in differ}, default=str)}; nothing was submitted (a "
                "default in the SDK's config files? see launch/sdk_config.py)"
            )

    return hook


def submit(plan: JobPlan, source_dir: Path, session) -> str:
    """Create the training job; returns its name."""
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import Channel, DataSource, S3DataSource
    from sagemaker.core.training.configs import Compute, Networking, OutputDataConfig, SourceCode, StoppingCondition
    from sagemaker.train import ModelTrainer

    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)  # "Not applying SDK defaults from ..."
    # The SDK's client warns "No region provided" although it uses our session's region.
    logging.getLogger("sagemaker.core.utils.utils").addFilter(lambda r: "No region provided" not in r.getMessage())

    session.events.register("provide-client-params.sagemaker.CreateTrainingJob", send_the_dry_run(plan))
    bucket, _, prefix = plan.s3_root.removeprefix("s3://").partition("/")
    sm_session = Session(boto_session=session, default_bucket=bucket, default_bucket_prefix=prefix or None)
    wait = {"max_wait_time_in_seconds": plan.max_wait_s} if plan.max_wait_s is not None else {}
    stopping = StoppingCondition(max_runtime_in_seconds=plan.max_run_s, **wait)
    channels = [
        Channel(
            channel_name=name,
            data_source=DataSource(
                s3_data_source=S3DataSource(
                    s3_data_type="S3Prefix", s3_uri=uri, s3_data_distribution_type="FullyReplicated"
                )
            ),
            input_mode="FastFile",
        )
        for name, uri in plan.channels.items()
    ]
    sdk = plan.sdk_settings  # passed explicitly, so that the SDK does not resolve them again its own way
    vpc = sdk.get("VpcConfig", {})
    networking = Networking(
        subnets=vpc.get("Subnets"),
        security_group_ids=vpc.get("SecurityGroupIds"),
        enable_network_isolation=sdk.get("EnableNetworkIsolation"),
        enable_inter_container_traffic_encryption=sdk.get("EnableInterContainerTrafficEncryption"),
    )
    trainer = ModelTrainer(
        sagemaker_session=sm_session,
        role=plan.role,
        base_job_name=plan.job_name,
        input_s3_key_prefix=plan.job_name,
        training_image=plan.image,
        source_code=SourceCode(source_dir=str(source_dir), command=plan.command()),
        compute=Compute(
            instance_type=plan.instance_type,
            instance_count=plan.instance_count,
            volume_size_in_gb=plan.volume_gb,
            enable_managed_spot_training=plan.spot or None,
        ),
        stopping_condition=stopping,
        output_data_config=OutputDataConfig(s3_output_path=plan.output_path),
        environment=plan.environment,
        input_data_config=channels or None,
        networking=networking if sdk else None,
    )
    trainer.train(wait=False, logs=False)
    return trainer._latest_training_job.training_job_name


def launch(opts: LaunchConfig) -> int:
    plan = make_plan(opts, default_image, REPO_ROOT)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    check_request(training_job_request(plan))
    if opts.dry_run:
        print(json.dumps(job_definition(plan), indent=2))
        return 0
    session = boto_session(plan.region)
    ensure_bucket(plan, session)
    check_channel_regions(plan, session)
    if opts.build:
        build_and_push(plan.image, session, check=opts.check)
    else:
        check_image(plan, session, default=opts.image is None)
    check_data_exists(plan)
    check_role_access(plan, session)
    with tempfile.TemporaryDirectory(prefix="open_vlm_job_") as tmp:
        source_dir = stage_source(plan, Path(tmp) / "source")
        try:
            name = submit(plan, source_dir, session)
        except LaunchError:
            raise
        except Exception as err:  # the SDK's errors (role validation, ClientError) vary: report one line
            fix = (
                "; grant them to the role, or pass another --role"
                if type(err).__name__ == "RoleValidationError"
                else ""
            )
            raise LaunchError(f"submitting the job failed: {one_line(err)}{fix}") from err
    print(f"submitted {name}: checkpoints {plan.checkpoint_dir}, output {plan.output_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return launch(parse_args(argv))
    except (ConfigError, LaunchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except (BotoCoreError, ClientError) as err:  # an AWS answer no check above foresaw: still one line
        print(f"error: AWS: {one_line(err)}", file=sys.stderr)
        return LaunchError.exit_code


if __name__ == "__main__":
    sys.exit(run_main(main))
