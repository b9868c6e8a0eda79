"""The CreateTrainingJob request a `JobPlan` becomes: what `--dry-run` prints and what `submit` sends.

The SageMaker SDK builds the real request from the same plan (uploading the source and its container scripts);
a test captures that request under moto and compares it with this one, field by field. Only what is decided
at submission is a placeholder: the job-name timestamp the SDK appends.
"""

from __future__ import annotations

import yaml

from launch.plan import JobPlan

TIMESTAMP = "YYYYmmddHHMMSS"  # the SDK names each job <job-name>-<UTC timestamp>
SDK_SCRIPT = "/opt/ml/input/data/sm_drivers/sm_train.sh"  # the SDK's container script: env set-up, then our command
# The container's start command. The SDK's own ends in `&& sm_train.sh`, which bash may or may not exec (it
# depends on the bash version): then PID 1 stays a shell that ignores SIGTERM, and a spot interruption kills
# the trainer without a checkpoint. With `exec` here and in our command, the entry is PID 1 on every image.
CONTAINER_ENTRYPOINT = ["/bin/bash"]
CONTAINER_ARGUMENTS = ["-c", f"chmod +x {SDK_SCRIPT} && exec {SDK_SCRIPT}"]


def job_name_with_timestamp(plan: JobPlan) -> str:
    return f"{plan.job_name}-{TIMESTAMP}"


def _channel(name: str, uri: str, mode: str) -> dict:
    source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
    return {"ChannelName": name, "DataSource": {"S3DataSource": source}, "InputMode": mode}


def training_job_request(plan: JobPlan, name: str | None = None) -> dict:
    """CreateTrainingJob's parameters, as the SDK sends them for `plan` (as job `name`: default the placeholder)."""
    name = name or job_name_with_timestamp(plan)
    upload = f"{plan.s3_root}/{plan.job_name}/{name}/input"  # where the SDK uploads the source and its scripts
    stopping = {"MaxRuntimeInSeconds": plan.max_run_s}
    if plan.max_wait_s is not None:
        stopping["MaxWaitTimeInSeconds"] = plan.max_wait_s
    request = {
        "TrainingJobName": name,
        "HyperParameters": {},  # the node command carries every argument
        "AlgorithmSpecification": {
            "TrainingInputMode": "File",
            "TrainingImage": plan.image,
            "ContainerEntrypoint": CONTAINER_ENTRYPOINT,
            "ContainerArguments": CONTAINER_ARGUMENTS,
        },
        "RoleArn": plan.role,
        "InputDataConfig": [
            *(_channel(channel, uri, "FastFile") for channel, uri in plan.channels.items()),
            _channel("code", f"{upload}/code", "File"),
            _channel("sm_drivers", f"{upload}/sm_drivers", "File"),
        ],
        "OutputDataConfig": {"S3OutputPath": plan.output_path, "CompressionType": "GZIP"},
        "ResourceConfig": {
            "InstanceType": plan.instance_type,
            "InstanceCount": plan.instance_count,
            "VolumeSizeInGB": plan.volume_gb,
        },
        "StoppingCondition": stopping,
        "Environment": plan.environment,
        **plan.sdk_settings,  # from the SDK's config files (launch/sdk_config.py)
    }
    if plan.spot:
        request["EnableManagedSpotTraining"] = True
    return request


def job_definition(plan: JobPlan) -> dict:
    """What `--dry-run` prints: the request, the command every node runs inside it, and the shipped config."""
    return {
        "Region": plan.region,
        "CreateTrainingJob": training_job_request(plan),
        "Command": plan.command(),
        "RunConfig": yaml.safe_load(plan.config_yaml),
    }
