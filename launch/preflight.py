"""Checks against the AWS account before a job is submitted, so that a first launch fails here, in one line
that says what to do, rather than in a traceback or after instances are billed.

Each takes the plan and a boto3 session: the bucket (exists, can be created, same region as the job), the image
(in ECR), the data (exists), and the role (may read the data and write the checkpoints).
"""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError

from launch.instances import LaunchError
from launch.limits import check_image as parse_image
from launch.plan import JobPlan

log = logging.getLogger(__name__)


def is_access_denied(err: ClientError) -> bool:
    """AccessDenied in any of the forms AWS services (and moto) answer it."""
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return "AccessDenied" in code or code in ("403", "Forbidden") or status == 403


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def bucket_region(s3, bucket: str) -> str | None:
    """The region `bucket` lives in (None when these credentials may not ask); ClientError when it is missing."""
    try:
        head = s3.head_bucket(Bucket=bucket)
    except ClientError as err:
        if is_access_denied(err):  # S3 still names the region of a bucket it will not show us
            return err.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        raise
    headers = head.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return head.get("BucketRegion") or headers.get("x-amz-bucket-region")


def ensure_bucket(plan: JobPlan, session) -> None:
    """The job's bucket exists in the job's region; the SDK-style default `sagemaker-<region>-<account>` is created."""
    bucket = split_s3(plan.s3_root)[0]
    s3 = session.client("s3")
    try:
        region = bucket_region(s3, bucket)
    except ClientError as err:
        if error_code(err) not in ("404", "NoSuchBucket"):
            raise LaunchError(f"--s3-root: cannot use bucket {bucket}: {one_line(err)}") from err
        _create_default_bucket(plan, s3, bucket)
        return
    if region is None:
        raise LaunchError(
            f"--s3-root: bucket {bucket} exists but these credentials may not use it (AccessDenied); "
            "pass --s3-root s3://<a bucket you can write>/<prefix>"
        )
    _same_region(plan, region, f"--s3-root bucket {bucket}", "the uploaded source")


def _create_default_bucket(plan: JobPlan, s3, bucket: str) -> None:
    if bucket != f"sagemaker-{plan.region}-{plan.account}":
        raise LaunchError(f"bucket {bucket} does not exist: create it or pass --s3-root s3://<bucket>/<prefix>")
    where = {} if plan.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": plan.region}}
    try:
        s3.create_bucket(Bucket=bucket, **where)
    except ClientError as err:
        if is_access_denied(err):
            raise LaunchError(
                f"cannot create the default bucket {bucket}: these credentials may not call s3:CreateBucket; "
                f"have it created (in {plan.region}) or pass --s3-root s3://<a bucket you can write>/<prefix>"
            ) from err
        raise LaunchError(f"cannot create the default bucket {bucket}: {one_line(err)}") from err
    log.info("created bucket %s in %s", bucket, plan.region)


def _same_region(plan: JobPlan, region: str, what: str, needs: str) -> None:
    if region != plan.region:
        raise LaunchError(
            f"{what} is in {region} but the job runs in {plan.region}, and {needs} must be in the job's region; "
            f"launch with --region {region} or use a bucket in {plan.region}"
        )


def check_channel_regions(plan: JobPlan, session) -> None:
    """FastFile channels must be in the job's region (the data the loader streams itself may be anywhere)."""
    s3 = session.client("s3")
    for name, uri in plan.channels.items():
        bucket = split_s3(uri)[0]
        try:
            region = bucket_region(s3, bucket)
        except ClientError as err:
            raise LaunchError(f"--channel {name}: cannot use bucket {bucket}: {one_line(err)}") from err
        if region is not None:
            _same_region(plan, region, f"--channel {name}: bucket {bucket}", "a FastFile channel")


def check_image(plan: JobPlan, session, default: bool) -> None:
    """The image is in ECR (the default one must have been built with --build)."""
    parts = parse_image(plan.image, plan.region)
    image_id = {"imageTag": parts["tag"]} if "tag" in parts else {"imageDigest": parts["digest"]}
    ecr = session.client("ecr")
    how = "build it with --build (needs docker)" if default else "push it there"
    try:
        ecr.describe_images(registryId=parts["account"], repositoryName=parts["repository"], imageIds=[image_id])
    except ClientError as err:
        if error_code(err) in ("ImageNotFoundException", "RepositoryNotFoundException"):
            raise LaunchError(f"image {plan.image} is not in ECR; {how}, or pass --image URI") from err
        if not is_access_denied(err):
            raise LaunchError(f"cannot check image {plan.image}: {one_line(err)}") from err
        if parts["account"] != plan.account:  # another account's image: the role may pull what we may not list
            log.warning("could not check image %s (no ecr:DescribeImages on it); going ahead", plan.image)
            return
        raise LaunchError(
            f"cannot check image {plan.image}: these credentials may not call ecr:DescribeImages on repository "
            f"{parts['repository']}; grant it, or pass --image with an image you can see"
        ) from err


def check_data_exists(plan: JobPlan) -> None:
    """Each S3 location the job reads at start is there, checked as the job checks it (`open_vlm.config.validate`):
    every shard of every URL pattern, a folder as a folder (not a key prefix), the checkpoint bucket. Locations
    these credentials may not read are left to `check_role_access` (the job reads them as its role)."""
    import fsspec

    from open_vlm.config.validate import PATHS, check_shards, require_bucket, require_path
    from open_vlm.errors import DataError

    fsspec.filesystem("s3").invalidate_cache()  # listings cached earlier in this process may be stale
    for read in plan.reads:
        try:
            if read.kind in ("file", "folder"):
                require_path(read.key, read.urls[0], *PATHS[read.key])
            elif read.kind == "shards":
                check_shards(read.key, list(read.urls))
            elif read.kind == "checkpoints":
                require_bucket(read.key, read.urls[0])
        except DataError as err:
            if isinstance(err.__cause__, PermissionError):
                log.info("could not look at %s with these credentials (the role's access is checked next)", read.key)
                continue
            raise LaunchError(str(err)) from err


def role_needs(plan: JobPlan) -> dict[str, list[str]]:
    """S3 action -> resource ARNs the job's role must be allowed: list the buckets it reads, read every input (the
    objects under a folder, a shard range's ends, the manifest beside the shards, the channels), and read, write
    and delete (pruning, setting aside) under the checkpoint folder."""
    arn = f"arn:{plan.partition}:s3:::"
    reads, buckets, checkpoints = [], [], []
    for read in plan.reads:
        buckets += read.buckets()
        reads += read.objects()
        if read.kind == "checkpoints":
            checkpoints += read.objects()
    for uri in plan.channels.values():
        buckets.append(split_s3(uri)[0])
        reads.append(f"{uri.removeprefix('s3://').rstrip('/')}/*")
    needs = {
        "s3:ListBucket": [arn + bucket for bucket in dict.fromkeys(buckets)],
        "s3:GetObject": [arn + path for path in dict.fromkeys(reads)],
        "s3:PutObject": [arn + path for path in checkpoints],
        "s3:DeleteObject": [arn + path for path in checkpoints],
    }
    return {action: arns for action, arns in needs.items() if arns}


def check_role_access(plan: JobPlan, session) -> None:
    """The role may read the data and write checkpoints (iam:SimulatePrincipalPolicy); all gaps in one line."""
    iam = session.client("iam")
    missing = []
    try:
        for action, arns in role_needs(plan).items():
            pages = iam.get_paginator("simulate_principal_policy").paginate(
                PolicySourceArn=plan.role, ActionNames=[action], ResourceArns=arns
            )
            for page in pages:
                missing += [
                    f"{r['EvalActionName']} on {r.get('EvalResourceName', '*')}"
                    for r in page.get("EvaluationResults", [])
                    if r.get("EvalDecision") != "allowed"
                ]
    except (ClientError, BotoCoreError) as err:  # BotoCoreError: an endpoint without IAM's simulator
        if isinstance(err, ClientError) and error_code(err) in ("NoSuchEntity", "NoSuchEntityException"):
            raise LaunchError(f"--role: {plan.role} does not exist; create it or pass another --role") from err
        why = error_code(err) if isinstance(err, ClientError) else type(err).__name__
        log.warning("could not check what %s may read and write (iam:SimulatePrincipalPolicy: %s)", plan.role, why)
        return
    if missing:
        raise LaunchError(
            f"--role: {plan.role} is not allowed {', '.join(missing)}; add these to the role's policy "
            "(or pass another --role), else the job fails after its instances start"
        )


def one_line(err: Exception) -> str:
    """An exception as one line: SDK role errors keep their verdict and full permission list, not their advice."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    verdict = text.split("\n\n", 1)[0]  # the SDK's RoleValidationError: verdict, blank line, then code snippets
    return " ".join(line.strip() for line in verdict.splitlines() if line.strip())
