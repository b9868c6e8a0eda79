"""Training-job defaults from the SageMaker SDK's config files, read here so that `--dry-run` shows what `submit`
sends.

The SDK applies the defaults in `/etc/xdg/sagemaker/config.yaml`, `~/.config/sagemaker/config.yaml` (or the files
$SAGEMAKER_ADMIN_CONFIG_OVERRIDE / $SAGEMAKER_USER_CONFIG_OVERRIDE name; common in managed accounts and Studio) to
every ModelTrainer, for each setting the launcher leaves unset. The launcher takes the ones a job of ours can
honour into its request (and passes them to the SDK explicitly): the VPC, inter-container traffic encryption,
network isolation off. It refuses network isolation on (the trainer streams its data from S3 and writes its
checkpoints there, which isolation forbids) and any other training-job default the request would not show.
"""

from __future__ import annotations

from launch.instances import LaunchError

MODEL_TRAINER = ("SageMaker", "PythonSDK", "Modules", "ModelTrainer")
TRAINING_JOB = ("SageMaker", "TrainingJob")
RESOURCES = ("SageMaker", "PythonSDK", "Resources")
# What the SDK fills in when the launcher leaves it unset, besides networking: refused, since nothing in our
# request shows it (ModelTrainer attributes, then sagemaker-core's TrainingJob.create arguments).
UNSHOWN_TRAINER = ("TrainingImageConfig", "AlgorithmName", "CheckpointConfig", "TrainingInputMode", "Hyperparameters")
UNSHOWN_RESOURCE = ("checkpoint_config", "debug_hook_config", "tensor_board_output_config", "profiler_config")
WHERE = (
    "the SageMaker SDK's config files (/etc/xdg/sagemaker/config.yaml, ~/.config/sagemaker/config.yaml, "
    "$SAGEMAKER_ADMIN_CONFIG_OVERRIDE, $SAGEMAKER_USER_CONFIG_OVERRIDE)"
)


def _at(config: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        config = config.get(key) if isinstance(config, dict) else None
    return config if isinstance(config, dict) else {}


def load_sdk_config() -> dict:
    """The SDK's merged defaults, as the SDK loads them; {} without the sagemaker package."""
    try:
        from sagemaker.core.config.config_manager import SageMakerConfig
    except ImportError:
        return {}
    try:
        return SageMakerConfig().load_sagemaker_config() or {}
    except Exception as err:  # a file that does not parse or validate, an S3 location we cannot read
        raise LaunchError(f"cannot read {WHERE}: {type(err).__name__}: {str(err).splitlines()[0]}") from err


def job_settings(config: dict) -> dict:
    """The CreateTrainingJob fields `config` (the SDK's defaults) adds to our request; `LaunchError` for one a job
    of ours cannot run with, or that the request could not show."""
    trainer, job = _at(config, MODEL_TRAINER), _at(config, TRAINING_JOB)
    resources = [_at(config, (*RESOURCES, name)) for name in ("TrainingJob", "GlobalDefaults")]
    networking = trainer.get("Networking") or {}
    isolation = networking.get("EnableNetworkIsolation", job.get("EnableNetworkIsolation"))
    if isolation:
        raise LaunchError(
            f"EnableNetworkIsolation is true in {WHERE}: an isolated job cannot stream its s3:// data or write "
            "checkpoints; set it false for this job's account or profile (or point SAGEMAKER_USER_CONFIG_OVERRIDE "
            "at a file without it)"
        )
    unshown = [f"ModelTrainer.{key}" for key in UNSHOWN_TRAINER if trainer.get(key) is not None]
    unshown += [f"Resources.*.{key}" for key in UNSHOWN_RESOURCE if any(r.get(key) is not None for r in resources)]
    if unshown:
        raise LaunchError(
            f"{WHERE} set {', '.join(unshown)}, which this launcher does not apply or show; remove them for this "
            "job (e.g. SAGEMAKER_USER_CONFIG_OVERRIDE=<a file without them>)"
        )
    vpc = {**_vpc(job.get("VpcConfig") or {}), **_vpc(networking)}
    for resource in resources:
        vpc = vpc or _vpc(resource.get("vpc_config") or {})
    settings: dict = {"VpcConfig": vpc} if vpc else {}
    if isolation is not None:
        settings["EnableNetworkIsolation"] = False
    encryption = networking.get("EnableInterContainerTrafficEncryption")
    if encryption is not None:
        settings["EnableInterContainerTrafficEncryption"] = bool(encryption)
    return settings


def _vpc(section: dict) -> dict:
    """SecurityGroupIds / Subnets from a section spelled either way (the SDK's files use both)."""
    out = {}
    for api, snake in (("SecurityGroupIds", "security_group_ids"), ("Subnets", "subnets")):
        value = section.get(api, section.get(snake))
        if value:
            out[api] = list(value)
    return out
