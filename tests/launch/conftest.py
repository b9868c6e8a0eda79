"""Launcher fixtures: a run config whose data and tokenizer live on S3, that data and the image in moto, and
hooks on the launcher's boto3 sessions (the requests it sends; IAM's policy simulator, which moto lacks)."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import boto3
import pytest
import yaml

ACCOUNT = "123456789012"  # moto's account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/OpenVlmTraining"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/open-vlm:test"
MANIFEST = {  # the least ECR's PutImage accepts
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 1,
        "digest": "sha256:" + "a" * 64,
    },
    "layers": [],
}


@pytest.fixture
def run_config(tmp_path) -> Path:
    cfg = {
        "run": {"project": "demo", "name": "tiny"},
        "data": {"sources": [{"name": "shapes", "urls": ["s3://shards/demo/demo-{000000..000003}.tar"]}]},
        "model": {"kind": "paligemma", "config": "configs/models/paligemma_tiny.yaml", "tokenizer": "s3://shards/tok"},
        "train": {"strategy": "ddp", "max_steps": 50},
        "checkpoint": {"every_steps": 10, "resume": "none"},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def aws_env(monkeypatch):
    """A region and no role from the environment: each test says what it passes."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("SAGEMAKER_ROLE", raising=False)


class AwsHooks:
    """Event hooks on each boto3 session the launcher makes.

    `sent[operation]` records the requests as they go on the wire. IAM's SimulatePrincipalPolicy, which moto does
    not implement, is answered here: `implicitDeny` for the actions in `denied`, `allowed` for the rest.
    """

    def __init__(self):
        self.sent: dict[str, list[dict]] = defaultdict(list)
        self.denied: set[str] = set()

    def install(self, session):
        session.events.register("before-call.sagemaker.CreateTrainingJob", self._record)
        session.events.register("before-call.iam.SimulatePrincipalPolicy", self._simulate)
        return session

    def _record(self, params, model, **_):
        self.sent[model.name].append(json.loads(params["body"]))

    def _simulate(self, params, **_):
        from botocore.awsrequest import AWSResponse

        form = params["body"]  # IAM's query protocol: ActionNames.member.1=..., ResourceArns.member.1=...
        actions = [v for k, v in sorted(form.items()) if k.startswith("ActionNames.member.")]
        resources = [v for k, v in sorted(form.items()) if k.startswith("ResourceArns.member.")] or ["*"]
        results = [
            {
                "EvalActionName": action,
                "EvalResourceName": resource,
                "EvalDecision": "implicitDeny" if action in self.denied else "allowed",
            }
            for action in actions
            for resource in resources
        ]
        return AWSResponse(params["url"], 200, {}, None), {"EvaluationResults": results, "IsTruncated": False}


@pytest.fixture
def aws_hooks(monkeypatch) -> AwsHooks:
    import launch.sagemaker

    hooks = AwsHooks()
    real = launch.sagemaker.boto_session
    monkeypatch.setattr(launch.sagemaker, "boto_session", lambda region: hooks.install(real(region)))
    return hooks


def publish(endpoint: str, bucket: str, keys: list[str], image_tag: str | None = "test") -> None:
    """Put placeholder objects at `keys` of `bucket` (created if needed) and an image in moto's ECR."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"placeholder")
    if image_tag:
        ecr = boto3.client("ecr", endpoint_url=endpoint)
        try:
            ecr.create_repository(repositoryName="open-vlm")
        except ecr.exceptions.RepositoryAlreadyExistsException:
            pass
        try:
            ecr.put_image(repositoryName="open-vlm", imageManifest=json.dumps(MANIFEST), imageTag=image_tag)
        except ecr.exceptions.ImageAlreadyExistsException:
            pass


@pytest.fixture
def submit_env(s3_endpoint, aws_env, aws_hooks, monkeypatch):
    """moto holds the run config's data, the tokenizer and the image; the SDK's own role check is off."""
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")  # the tests that want it turn it on
    publish(s3_endpoint, "shards", [*(f"demo/demo-{i:06d}.tar" for i in range(4)), "tok/tokenizer.json"])
    return s3_endpoint


@pytest.fixture
def restricted_credentials(s3_endpoint, monkeypatch):
    """`deny(*actions)`: from then on the launcher signs as an IAM user allowed everything but `actions`, and moto
    enforces IAM (its auth mode), so AccessDenied comes from moto itself."""

    def moto_auth(count: str) -> None:
        url = f"{s3_endpoint}/moto-api/reset-auth"
        request = urllib.request.Request(url, data=count.encode(), headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request).read()

    def deny(*actions: str) -> None:
        iam = boto3.client("iam", endpoint_url=s3_endpoint)
        user = f"launcher-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        statements = [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
        statements.append({"Effect": "Deny", "Action": list(actions), "Resource": "*"})
        document = json.dumps({"Version": "2012-10-17", "Statement": statements})
        iam.put_user_policy(UserName=user, PolicyName="launcher", PolicyDocument=document)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        moto_auth("0")

    yield deny
    moto_auth("inf")
