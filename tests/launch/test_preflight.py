"""The role check: a principal allowed exactly what role_needs lists can do what the job does first. moto enforces
IAM (tests/launch/conftest.py)."""

from __future__ import annotations

import json
import urllib.request
import uuid

import boto3
import s3fs

from launch.plan import LaunchConfig, make_plan
from launch.preflight import role_needs
from tests.conftest import REPO
from tests.launch.conftest import IMAGE, ROLE


def _moto_auth(endpoint: str, count: str) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=count.encode(), headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request).read()


def _user_allowed(endpoint: str, needs: dict[str, list[str]]) -> dict[str, str]:
    """Credentials of an IAM user allowed exactly `needs` (action -> resource ARNs), as the preflight states them."""
    iam = boto3.client("iam", endpoint_url=endpoint)
    name = f"job-role-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    statements = [{"Effect": "Allow", "Action": action, "Resource": arns} for action, arns in needs.items()]
    iam.put_user_policy(
        UserName=name, PolicyName="p", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements})
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def _s3_job_config(demo_dir, bucket: str, path):
    """A tiny run whose shards and tokenizer are on S3 (as a real job's are)."""
    import yaml

    fs = s3fs.S3FileSystem()
    fs.put(f"{demo_dir}/", f"{bucket}/demo/", recursive=True)
    cfg = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    cfg["data"]["sources"][0]["urls"] = [f"s3://{bucket}/demo/demo-{{000000..000003}}.tar"]
    cfg["data"]["batch_size"] = 8
    cfg["model"]["tokenizer"] = f"s3://{bucket}/demo/tokenizer"
    cfg["train"]["strategy"] = "ddp"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_role_with_what_role_needs_lists_starts_and_resumes_the_job(
    s3_endpoint, aws_env, s3_bucket, demo_dir, tmp_path, monkeypatch
):
    """A principal allowed exactly role_needs(plan) passes the job's input check (check_inputs) and finds the
    checkpoint to resume (Checkpointer.latest): s3:ListBucket on the buckets, s3:GetObject on the objects under a
    folder and under the checkpoint prefix."""
    from open_vlm.checkpoint.checkpointer import Checkpointer
    from open_vlm.config.validate import check_inputs

    config = _s3_job_config(demo_dir, s3_bucket, tmp_path / "job.yaml")
    opts = LaunchConfig(
        config=str(config),
        instance_type="ml.g5.12xlarge",
        role=ROLE,
        image=IMAGE,
        s3_root=f"s3://{s3_bucket}/jobs",
        job_name="perm",
    )
    plan = make_plan(opts, lambda account, region: IMAGE, REPO)
    needs = role_needs(plan)
    fs = s3fs.S3FileSystem()
    fs.pipe(f"{plan.checkpoint_dir.removeprefix('s3://')}/step_00000010/COMPLETE", b"")  # an earlier run saved

    check_inputs(plan.run_config, "train", world=4)  # control: with full credentials the job starts
    assert Checkpointer(plan.checkpoint_dir).latest().endswith("step_00000010")

    for key, value in _user_allowed(s3_endpoint, needs).items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    _moto_auth(s3_endpoint, "0")
    problems = []
    try:
        try:
            check_inputs(plan.run_config, "train", world=4)
        except Exception as err:  # noqa: BLE001 - any failure is the finding
            problems.append(f"job start: {type(err).__name__}: {err}")
        try:
            Checkpointer(plan.checkpoint_dir).latest()
        except Exception as err:  # noqa: BLE001
            problems.append(f"spot restart: {type(err).__name__}: {err}")
    finally:
        _moto_auth(s3_endpoint, "inf")
        s3fs.S3FileSystem.clear_instance_cache()
    assert problems == [], f"preflight needs {needs} pass, yet: {problems}"
