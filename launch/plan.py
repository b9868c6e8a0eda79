"""What a SageMaker job will be: launcher options (`LaunchConfig`) resolved into a `JobPlan`.

Pure functions over the run config and the options; nothing here talks to AWS, so `--dry-run` prints
exactly the plan a submission sends (`launch/request.py` turns it into the CreateTrainingJob request).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from launch.constraints import CONSTRAINTS, read_pins
from launch.inputs import S3Read, check_local_reads, s3_reads, user_module
from launch.instances import LaunchError, efa_environment, gpus_per_node
from launch.limits import (
    check_channel_names,
    check_environment,
    check_image,
    check_max_run,
    check_region,
    parse_env,
)
from launch.sdk_config import job_settings, load_sdk_config
from open_vlm.config.env import load_env_config
from open_vlm.config.load import IGNORED_SECTIONS, ConfigError, dump_config, given_keys, load_run_config
from open_vlm.config.schema import RunConfig
from open_vlm.config.validate import check_batch
from open_vlm.storage import is_remote

CONFIG_IN_SOURCE = "job/run_config.yaml"  # where the resolved config lies in the uploaded source
ENTRY_MODULE = "launch.sagemaker_entry"  # the container's first process: torchrun, with SIGTERM passed on
CONTAINER_DATA = "/opt/ml/input/data"  # where SageMaker mounts input channels
CONTAINER_RUNS = "/opt/ml/output/data"  # uploaded by SageMaker as output.tar.gz when the job ends
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/\S+$")
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
MAX_JOB_NAME = 48  # SageMaker allows 63; the SDK appends "-YYYYmmddHHMMSS"
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
SPOT_SAVE_MINUTES = 30.0  # a spot job's save cadence when the config sets none: at most this much work is redone
SPOT_KEEP_LAST = 3  # with that cadence, the checkpoints kept (else a 5-day job leaves 240 of them in S3)


@dataclass
class LaunchConfig:
    """Launcher options, every default in one place (the CLI mirrors these fields)."""

    config: str
    instance_type: str
    instance_count: int = 1
    spot: bool = False
    max_run: str = "5d"
    max_wait: str | None = None  # spot only; default: twice max_run (time to wait for capacity)
    image: str | None = None  # default: the image `--build` pushes for this checkout
    build: bool = False
    check: bool = False  # with build: smoke-test the image (pinned versions, imports) before pushing it
    role: str | None = None  # default: $SAGEMAKER_ROLE
    region: str | None = None  # default: --region, $AWS_REGION, then the boto3 profile
    job_name: str | None = None  # default: <run.project>-<run.name>; also keys the checkpoint prefix
    s3_root: str | None = None  # default: s3://sagemaker-<region>-<account>/open_vlm
    channels: list[str] = field(default_factory=list)  # data source names to mount as FastFile channels
    env: list[str] = field(default_factory=list)  # extra KEY=VALUE for the job's environment
    volume_gb: int = 100
    dry_run: bool = False
    overrides: list[str] = field(default_factory=list)  # `--section.key value` for the run config


@dataclass
class JobPlan:
    """Everything a submission needs, resolved."""

    job_name: str
    region: str
    role: str
    account: str
    image: str
    instance_type: str
    instance_count: int
    processes_per_node: int
    spot: bool
    max_run_s: int
    max_wait_s: int | None
    s3_root: str
    checkpoint_dir: str
    output_path: str
    environment: dict[str, str]
    channels: dict[str, str]  # channel name -> S3 prefix (FastFile)
    reads: list[S3Read]  # what the job reads (and writes) on S3, as `open_vlm.config.validate.reads` lists it
    volume_gb: int
    run_config: RunConfig
    config_yaml: str
    notes: list[str] = field(default_factory=list)  # what the launcher chose for the user, said when launching
    module_source: Path | None = None  # model.module's package, shipped beside open_vlm/
    sdk_settings: dict = field(default_factory=dict)  # CreateTrainingJob fields from the SDK's config files

    @property
    def partition(self) -> str:
        """The AWS partition (aws, aws-cn, aws-us-gov) of the role, and so of every ARN the job uses."""
        return self.role.split(":")[1]

    def command(self) -> str:
        """What every node runs; `exec` makes the entry the container's first process, which gets SIGTERM.

        The entry adds torchrun's rendezvous flags from SageMaker's host list."""
        return (
            f"exec python3 -m {ENTRY_MODULE} --nnodes {self.instance_count} --nproc_per_node "
            f"{self.processes_per_node} -m open_vlm.train --config {CONFIG_IN_SOURCE}"
        )


def parse_duration(text: str, what: str) -> int:
    """Seconds in '5d', '12h', '90m', '45s' or '3600'."""
    match = DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise LaunchError(f"{what}: expected a duration like 5d, 12h, 90m or 3600, got '{text}'")
    return int(float(match.group(1)) * UNIT_SECONDS[match.group(2)])


def resolve_region(opts: LaunchConfig) -> str:
    region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        import boto3

        region = boto3.Session().region_name
    if not region:
        raise LaunchError("no AWS region: pass --region (e.g. us-east-1) or set AWS_REGION")
    return region


def resolve_role(opts: LaunchConfig) -> tuple[str, str]:
    """(role ARN, account id)."""
    role = opts.role or os.environ.get("SAGEMAKER_ROLE")
    if not role:
        raise LaunchError("no IAM role: pass --role arn:aws:iam::<account>:role/<name> or set SAGEMAKER_ROLE")
    match = ROLE_ARN.match(role)
    if not match:
        raise LaunchError(f"--role: expected a full role ARN like arn:aws:iam::123456789012:role/Name, got '{role}'")
    return role, match.group(1)


def default_job_name(cfg: RunConfig) -> str:
    name = re.sub(r"[^a-zA-Z0-9]+", "-", f"{cfg.run.project}-{cfg.run.name}").strip("-")
    return name[:MAX_JOB_NAME].rstrip("-") or "open-vlm"


def overridden_keys(overrides: list[str]) -> set[str]:
    return {arg[2:].split("=", 1)[0] for arg in overrides if arg.startswith("--")}


def _mount_channels(cfg: RunConfig, names: list[str]) -> dict[str, str]:
    """Rewrite the named sources' s3:// URLs to their FastFile mounts; returns channel -> S3 prefix."""
    sources = {source.name: source for source in cfg.data.sources}
    check_channel_names(names)
    channels = {}
    for name in names:
        if name not in sources:
            raise LaunchError(f"--channel {name}: no data source of that name (sources: {', '.join(sources)})")
        source = sources[name]
        prefixes = {url.split("{")[0].rsplit("/", 1)[0] for url in source.urls}
        if len(prefixes) != 1 or not next(iter(prefixes)).startswith("s3://"):
            raise LaunchError(f"--channel {name}: needs s3:// URLs under one folder, got {source.urls}")
        prefix = prefixes.pop()
        mount = f"{CONTAINER_DATA}/{name}"
        source.urls = [url.replace(prefix, mount, 1) for url in source.urls]
        if source.manifest and source.manifest.startswith(prefix + "/"):
            source.manifest = source.manifest.replace(prefix, mount, 1)
        channels[name] = prefix + "/"
    return channels


def _spot_checkpoints(cfg: RunConfig, given: set[str]) -> list[str]:
    """A spot job resumes from its own newest checkpoint and saves often enough; returns the notes to show."""
    ck = cfg.checkpoint
    if ck.resume != "latest":  # each restart would run this config again: rewind to `resume`, or start afresh
        start = "at step 0, setting the job's own checkpoints aside" if ck.resume == "none" else f"from {ck.resume}"
        fix = (
            "to start afresh, use a new --job-name (its checkpoint folder is empty)"
            if ck.resume == "none"
            else f"to start from its weights use -- --checkpoint.init_from {ck.resume}, or copy it into "
            f"{ck.dir}/ to continue it"
        )
        raise ConfigError(
            f"checkpoint.resume {ck.resume}: with --spot every restart after an interruption would start {start}; "
            f"leave checkpoint.resume unset (latest: the job's newest checkpoint); {fix}"
        )
    if ck.every_steps or ck.every_minutes:
        return []
    if "checkpoint.every_minutes" in given:  # an explicit 0: honoured, and said
        return [
            "--spot with checkpoint.every_minutes 0 and no every_steps, as given: only the save on SageMaker's stop "
            "signal protects the work; an interruption without time to save restarts from the last checkpoint"
        ]
    ck.every_minutes = SPOT_SAVE_MINUTES
    notes = [
        f"--spot: checkpoint.every_minutes set to {SPOT_SAVE_MINUTES:g} (the config sets no save cadence), so an "
        f"interruption redoes at most ~{SPOT_SAVE_MINUTES:g} min of training; choose with "
        "-- --checkpoint.every_minutes N or --checkpoint.every_steps N"
    ]
    if ck.keep_last == 0 and "checkpoint.keep_last" not in given:
        ck.keep_last = SPOT_KEEP_LAST
        notes.append(
            f"--spot: checkpoint.keep_last set to {SPOT_KEEP_LAST}, so timed saves do not pile up in S3; "
            "-- --checkpoint.keep_last 0 keeps them all"
        )
    return notes


def _check_job_config(cfg: RunConfig, world: int, environment: dict[str, str]) -> None:
    """What the job would refuse at start, refused now: the batch for its world size, wandb without a login."""
    try:
        check_batch(cfg, world)
    except ConfigError as err:
        raise ConfigError(f"{err} (this job runs {world} processes)") from None
    if cfg.logging.wandb.mode == "online" and "WANDB_API_KEY" not in environment:
        raise ConfigError(
            "logging.wandb.mode online: your wandb login does not travel to the job; pass --env WANDB_API_KEY=<key> "
            "(visible in the job's description) or -- --logging.wandb.mode offline (then `wandb sync` the run)"
        )


def shipped_config(cfg: RunConfig) -> str:
    """The resolved config as the job's YAML, without the sections `train` does not read (it would warn)."""
    values = yaml.safe_load(dump_config(cfg))
    for section in IGNORED_SECTIONS["train"]:
        values.pop(section, None)
    return yaml.safe_dump(values, sort_keys=False)


def make_plan(opts: LaunchConfig, image_for: Callable[[str, str], str], source_root: Path) -> JobPlan:
    """Resolve the options and the run config into a `JobPlan`; `LaunchError`/`ConfigError` when it can't."""
    processes = gpus_per_node(opts.instance_type)
    if opts.instance_count < 1:
        raise LaunchError(f"--instance-count: must be >= 1, got {opts.instance_count}")
    if opts.volume_gb < 1:
        raise LaunchError(f"--volume-gb: must be >= 1, got {opts.volume_gb}")
    max_run = parse_duration(opts.max_run, "--max-run")
    check_max_run(max_run)
    max_wait = None
    if opts.max_wait and not opts.spot:
        raise LaunchError("--max-wait only applies to spot jobs: add --spot")
    if opts.spot:
        max_wait = parse_duration(opts.max_wait, "--max-wait") if opts.max_wait else 2 * max_run
        if max_wait < max_run:
            raise LaunchError(f"--max-wait ({max_wait}s) must be >= --max-run ({max_run}s)")
    environment = {"PYTHONUNBUFFERED": "1", **efa_environment(opts.instance_type), **parse_env(opts.env)}
    check_environment(environment)
    argv = ["--config", opts.config, *opts.overrides]
    # The user's s3_endpoint (a MinIO, say) is for this machine's S3 reads: the job and these checks use AWS.
    cfg = load_run_config(argv, env=dataclasses.replace(load_env_config(), s3_endpoint=None))
    region = resolve_region(opts)
    role, account = resolve_role(opts)
    check_region(region, role.split(":")[1])
    if opts.image:
        check_image(opts.image, region)
    job_name = opts.job_name or default_job_name(cfg)
    if len(job_name) > MAX_JOB_NAME or not JOB_NAME.match(job_name):
        raise LaunchError(f"--job-name: letters, digits and '-', at most {MAX_JOB_NAME} characters; got '{job_name}'")
    world = processes * opts.instance_count
    if cfg.train.strategy == "single" and world > 1:
        raise ConfigError(
            f"train.strategy: 'single' runs one process but this job starts {world} "
            f"({opts.instance_count} x {processes} GPUs); add -- --train.strategy ddp (or fsdp)"
        )
    _check_job_config(cfg, world, environment)
    s3_root = (opts.s3_root or f"s3://sagemaker-{region}-{account}/open_vlm").rstrip("/")
    if not s3_root.startswith("s3://"):
        raise LaunchError(f"--s3-root: expected s3://bucket[/prefix], got '{opts.s3_root}'")
    set_by_user = overridden_keys(opts.overrides)
    if cfg.checkpoint.dir is None:
        cfg.checkpoint.dir = f"{s3_root}/{job_name}/checkpoints"
    elif not is_remote(cfg.checkpoint.dir):
        raise LaunchError(
            f"checkpoint.dir: '{cfg.checkpoint.dir}' is local to the instance and lost with it; "
            "leave it unset (the job's S3 prefix) or give an s3:// URL"
        )
    if "checkpoint.resume" not in set_by_user and cfg.checkpoint.resume == "none":
        cfg.checkpoint.resume = "latest"  # a spot restart or a relaunch picks up where the job stood
    notes = _spot_checkpoints(cfg, given_keys(argv)) if opts.spot else []
    if load_env_config().s3_endpoint:
        notes.append("your s3_endpoint setting is not used: the job and the launcher's checks read AWS S3")
    if "run.output_dir" not in set_by_user:
        cfg.run.output_dir = CONTAINER_RUNS
    reads = s3_reads(cfg)
    channels = _mount_channels(cfg, opts.channels)
    check_local_reads(cfg, source_root)
    module_source = user_module(cfg, set(read_pins(CONSTRAINTS)), default_image=opts.image is None)
    if module_source is not None:
        notes.append(f"model.module: shipping {module_source} with the job's source")
    sdk_settings = job_settings(load_sdk_config())
    return JobPlan(
        job_name=job_name,
        region=region,
        role=role,
        account=account,
        image=opts.image or image_for(account, region),
        instance_type=opts.instance_type,
        instance_count=opts.instance_count,
        processes_per_node=processes,
        spot=opts.spot,
        max_run_s=max_run,
        max_wait_s=max_wait,
        s3_root=s3_root,
        checkpoint_dir=cfg.checkpoint.dir,
        output_path=f"{s3_root}/{job_name}/output",
        environment=environment,
        channels=channels,
        reads=reads,
        volume_gb=opts.volume_gb,
        run_config=cfg,
        config_yaml=shipped_config(cfg),
        notes=notes,
        module_source=module_source,
        sdk_settings=sdk_settings,
    )
