"""Launch an open_vlm run as a SageMaker training job (SDK v3 `ModelTrainer` + `Torchrun`).

    python -m launch.sagemaker --config configs/X.yaml --instance-type ml.p5.48xlarge --instance-count 4 \
        [--spot] [--max-run 5d] [--max-wait 10d] [--image URI | --build] [--role ARN] [--region R] \
        [--job-name NAME] [--s3-root s3://bucket/prefix] [--channel SOURCE] [--dry-run] [-- --key value ...]

Every node runs `torchrun -m open_vlm.train --config job/run_config.yaml` (one process per GPU) from the
uploaded source; the config is resolved and checked here, before anything is uploaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from launch.image import REPO_ROOT, build_and_push, check_image_exists, default_image
from launch.instances import LaunchError
from launch.plan import CONFIG_IN_SOURCE, ENTRY_SCRIPT, SHIPPED, JobPlan, LaunchConfig, job_definition, make_plan
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
    p.add_argument("--role", default=None, help="SageMaker execution role ARN (default $SAGEMAKER_ROLE)")
    p.add_argument("--region", default=None)
    p.add_argument("--job-name", default=None, help="default <run.project>-<run.name>; same name = resume")
    p.add_argument("--s3-root", default=None, help="default s3://sagemaker-<region>-<account>/open_vlm")
    p.add_argument("--channel", action="append", default=[], help="mount this data source as a FastFile channel")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the job's environment")
    p.add_argument("--volume-gb", type=int, default=defaults.volume_gb)
    p.add_argument("--dry-run", action="store_true", help="print the job definition as JSON, send nothing")
    args = p.parse_args(ours)
    return LaunchConfig(
        config=args.config,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        spot=args.spot,
        max_run=args.max_run,
        max_wait=args.max_wait,
        image=args.image,
        build=args.build,
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
    """The source folder SageMaker uploads: the package, configs and the resolved run config."""
    for name in SHIPPED:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, into / name)
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


def ensure_bucket(plan: JobPlan, session) -> None:
    """The job's bucket must exist; the SDK-style default `sagemaker-<region>-<account>` is created."""
    from botocore.exceptions import ClientError

    bucket = plan.s3_root.removeprefix("s3://").split("/", 1)[0]
    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise LaunchError(f"cannot use bucket {bucket}: {err}") from err
    if bucket != f"sagemaker-{plan.region}-{plan.account}":
        raise LaunchError(f"bucket {bucket} does not exist: create it or pass --s3-root s3://<bucket>/<prefix>")
    where = {} if plan.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": plan.region}}
    s3.create_bucket(Bucket=bucket, **where)


def submit(plan: JobPlan, source_dir: Path, session) -> str:
    """Create the training job; returns its name."""
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import Channel, DataSource, S3DataSource
    from sagemaker.core.training.configs import Compute, OutputDataConfig, SourceCode, StoppingCondition
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)  # "Not applying SDK defaults from ..."
    # The SDK's client warns "No region provided" although it uses our session's region.
    logging.getLogger("sagemaker.core.utils.utils").addFilter(lambda r: "No region provided" not in r.getMessage())

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
    trainer = ModelTrainer(
        sagemaker_session=sm_session,
        role=plan.role,
        base_job_name=plan.job_name,
        input_s3_key_prefix=plan.job_name,
        training_image=plan.image,
        source_code=SourceCode(source_dir=str(source_dir), entry_script=ENTRY_SCRIPT),
        distributed=Torchrun(process_count_per_node=plan.processes_per_node),
        compute=Compute(
            instance_type=plan.instance_type,
            instance_count=plan.instance_count,
            volume_size_in_gb=plan.volume_gb,
            enable_managed_spot_training=plan.spot or None,
        ),
        stopping_condition=stopping,
        output_data_config=OutputDataConfig(s3_output_path=plan.output_path),
        hyperparameters=plan.hyperparameters,
        environment=plan.environment,
        input_data_config=channels or None,
    )
    trainer.train(wait=False, logs=False)
    return trainer._latest_training_job.training_job_name


def launch(opts: LaunchConfig) -> int:
    plan = make_plan(opts, default_image, REPO_ROOT)
    if opts.dry_run:
        print(json.dumps(job_definition(plan), indent=2))
        return 0
    session = boto_session(plan.region)
    ensure_bucket(plan, session)
    if opts.build:
        build_and_push(plan.image, session)
    elif opts.image is None:
        check_image_exists(plan.image, session)
    with tempfile.TemporaryDirectory(prefix="open_vlm_job_") as tmp:
        source_dir = stage_source(plan, Path(tmp) / "source")
        try:
            name = submit(plan, source_dir, session)
        except Exception as err:  # the SDK's errors (role validation, ClientError) vary: report one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LaunchError(f"submitting the job failed: {first}") from err
    print(f"submitted {name}: checkpoints {plan.checkpoint_dir}, output {plan.output_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return launch(parse_args(argv))
    except (ConfigError, LaunchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(run_main(main))
