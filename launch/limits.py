"""AWS limits a SageMaker training request must meet, checked before anything is sent: one line each, saying
what to change. The named checks come first (clear messages); `check_request` then holds the whole request
against the API model botocore ships (lengths, patterns, enums, counts), so nothing AWS would reject slips by.
"""

from __future__ import annotations

import difflib
import functools
import re

from launch.instances import LaunchError

MAX_RUN_S = 28 * 86400  # MaxRuntimeInSeconds: SageMaker allows at most 28 days
ENV_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # CreateTrainingJob's pattern for Environment keys
MAX_ENV_ENTRIES = 100
MAX_ENV_LENGTH = 512  # for keys and values alike
# The API allows [A-Za-z0-9.-_]{1,64}, but the SDK's container script exports SM_CHANNEL_<NAME> to bash, where
# '.' and '-' break the job at start.
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
SDK_CHANNELS = ("code", "sm_drivers")  # the SageMaker SDK's own channels: the uploaded source and its scripts
MAX_CHANNELS = 20
# Training pulls images only from a private ECR registry (a VPC registry needs TrainingImageConfig, unused here).
PRIVATE_ECR = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/"
    r"(?P<repository>[a-z0-9][a-z0-9._/-]*)(:(?P<tag>[\w][\w.-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))$"
)


def check_region(region: str, partition: str) -> None:
    """`region` is one SageMaker runs in (botocore's endpoint data), in the role's partition (aws, aws-cn...)."""
    regions = _sagemaker_regions()
    if region not in regions:
        close = difflib.get_close_matches(region, list(regions), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise LaunchError(f"region '{region}': SageMaker does not run there{hint} (give --region or AWS_REGION)")
    if regions[region] != partition:
        raise LaunchError(
            f"region {region} is in the {regions[region]} partition but the role is in {partition}; "
            f"pass a role of the {regions[region]} partition (arn:{regions[region]}:iam::...)"
        )


@functools.cache
def _sagemaker_regions() -> dict[str, str]:
    """region -> partition, for every region botocore knows SageMaker in."""
    import botocore.session

    session = botocore.session.get_session()
    return {
        region: partition
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("sagemaker", partition_name=partition)
    }


def check_max_run(seconds: int) -> None:
    if seconds > MAX_RUN_S:
        raise LaunchError(
            f"--max-run: SageMaker allows at most 28 days ({MAX_RUN_S}s), got {seconds}s; "
            "use --max-run 28d or less (a relaunch with the same --job-name resumes)"
        )


def parse_env(items: list[str]) -> dict[str, str]:
    """`--env KEY=VALUE` items as a dict, each held to the API's limits."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not ENV_KEY.match(key):
            raise LaunchError(
                f"--env {item}: expected KEY=VALUE with KEY of letters, digits and '_' not starting with a digit"
            )
        if len(key) > MAX_ENV_LENGTH or len(value) > MAX_ENV_LENGTH:
            raise LaunchError(f"--env {key}: keys and values are limited to {MAX_ENV_LENGTH} characters")
        env[key] = value
    return env


def check_environment(env: dict[str, str]) -> None:
    if len(env) > MAX_ENV_ENTRIES:
        raise LaunchError(f"--env: a job takes at most {MAX_ENV_ENTRIES} variables, this one has {len(env)}")


def check_channel_names(names: list[str]) -> None:
    """Data channel names: the API's pattern, bash-safe, distinct from the SDK's own channels and each other."""
    for name in names:
        if name.lower() in SDK_CHANNELS:  # SM_CHANNEL_<NAME> is upper case: 'Code' clashes with 'code'
            raise LaunchError(
                f"--channel {name}: clashes with the SageMaker SDK's own channel '{name.lower()}' (SM_CHANNEL_* "
                "names are upper case); rename the data source (data.sources[].name)"
            )
        if not CHANNEL_NAME.match(name):
            raise LaunchError(
                f"--channel {name}: channel names are 1-64 letters, digits or '_'; rename the data source "
                f"(data.sources[].name)"
            )
    upper = [name.upper() for name in names]
    if len(set(upper)) != len(upper):
        raise LaunchError(f"--channel: names differing only in case clash in SM_CHANNEL_*: {', '.join(names)}")
    if len(names) + len(SDK_CHANNELS) > MAX_CHANNELS:
        raise LaunchError(f"--channel: at most {MAX_CHANNELS - len(SDK_CHANNELS)} data channels, got {len(names)}")


def check_image(image: str, region: str) -> dict[str, str]:
    """The parts of a private ECR image URI in the job's region; `LaunchError` saying what to do otherwise."""
    match = PRIVATE_ECR.match(image)
    if not match:
        raise LaunchError(
            f"--image: SageMaker training pulls only from a private ECR registry "
            f"(<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>), got '{image}'; push the image to "
            "ECR (or use --build) and pass that URI"
        )
    if match["region"] != region:
        raise LaunchError(
            f"--image: {image} is in {match['region']} but the job runs in {region}; push or replicate the image "
            f"to {region}, or launch with --region {match['region']}"
        )
    return {key: value for key, value in match.groupdict().items() if value is not None}


@functools.cache
def _create_training_job_shape():
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return model.operation_model("CreateTrainingJob").input_shape


def check_request(request: dict) -> None:
    """Hold a CreateTrainingJob request to the limits in botocore's SageMaker API model."""
    _check_value(_create_training_job_shape(), request, "")


def _check_value(shape, value, path: str) -> None:
    meta = shape.metadata
    problem = None
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if name in value:
                _check_value(member, value[name], f"{path}.{name}".lstrip("."))
        return
    if shape.type_name in ("list", "map", "string"):
        size = len(value)
        if size < meta.get("min", 0) or size > meta.get("max", size):
            problem = f"length {size} is outside {meta.get('min', 0)}..{meta.get('max', 'any')}"
    if shape.type_name in ("integer", "long") and not meta.get("min", value) <= value <= meta.get("max", value):
        problem = f"{value} is outside {meta.get('min', '-')}..{meta.get('max', '-')}"
    if shape.type_name == "string" and problem is None:
        if "enum" in shape.metadata and value not in shape.enum:
            problem = f"'{value}' is not one of the API's values"
        elif "pattern" in meta and not _matches(meta["pattern"], value):
            problem = f"'{value}' does not match {meta['pattern']}"
    if problem:
        raise LaunchError(f"the job request's {path}: {problem} (an AWS limit); change the option that sets it")
    if shape.type_name == "list":
        for i, item in enumerate(value):
            _check_value(shape.member, item, f"{path}[{i}]")
    elif shape.type_name == "map":
        for key, item in value.items():
            _check_value(shape.key, key, f"{path} key {key}")
            _check_value(shape.value, item, f"{path}[{key}]")


def _matches(pattern: str, value: str) -> bool:
    try:
        return re.fullmatch(pattern, value, re.DOTALL) is not None
    except re.error:  # a Java-only construct (\p{...}): leave that one to the API
        return True
