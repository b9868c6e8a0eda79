"""Attempts to break the SageMaker launcher (issue 21's fixes). Each test states the claim it holds the launcher
to; a failing test is a defect. AWS is moto (tests/launch/conftest.py)."""

from __future__ import annotations

import json
import urllib.request
import uuid

import boto3
import pytest
import s3fs

from launch.instances import LaunchError
from launch.plan import LaunchConfig, make_plan
from launch.preflight import role_needs
from launch.sagemaker import main
from open_vlm.config.load import config_from_yaml_text
from open_vlm.config.validate import check_batch
from open_vlm.errors import ConfigError
from tests.conftest import REPO
from tests.launch.conftest import IMAGE, ROLE


def dry(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--dry-run", *args])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def base(run_config, instance="ml.g5.12xlarge") -> list[str]:
    return ["--config", str(run_config), "--instance-type", instance, "--role", ROLE]


# --- configs the launcher ships that the job then rejects ---------------------------------------------------


def test_break_global_batch_not_checked_for_the_jobs_world_size(run_config, aws_env, capsys):
    """Claim: a config the job would reject at start is refused before submitting. ml.g5.12xlarge has 4 GPUs,
    so the job's world is 4 and train.global_batch_size 24 is not a multiple of 8 x 4: the job's
    check_inputs(cfg, 'train', world=4) exits 2 after the instances start; the launcher accepts it."""
    code, out, err = dry(capsys, *base(run_config), "--", "--data.batch_size", "8", "--train.global_batch_size", "24")
    if code == 0:  # what the job would do with the shipped config, at WORLD_SIZE=4
        shipped = config_from_yaml_text(json.dumps(json.loads(out)["RunConfig"]))
        with pytest.raises(ConfigError, match="not a multiple"):
            check_batch(shipped, world=4)
    assert code == 2, "launcher accepted a global batch the 4-GPU job refuses at start"


@pytest.mark.parametrize(
    "override",
    [
        ["--checkpoint.init_from", "/home/me/runs/x/checkpoints/step_00000100"],
        ["--checkpoint.resume", "/home/me/runs/x/checkpoints/step_00000100"],
        ["--model.open_clip_checkpoint", "/home/me/open_clip.pt"],
        ["--eval.every_steps", "5", "--eval.sources", '[{"name": "ho", "urls": ["/home/me/ho-{0..3}.tar"]}]'],
    ],
    ids=["init_from", "resume", "open_clip_checkpoint", "eval.sources"],
)
def test_break_local_paths_the_job_reads_are_not_refused(run_config, aws_env, capsys, override):
    """Claim (README): 'a local data/tokenizer path the job could not read' is refused before upload. train reads
    these keys too (open_vlm/config/validate.py reads(cfg, 'train')), and the job exits 2 on each."""
    code, out, err = dry(capsys, *base(run_config), "--", *override)
    assert code == 2, f"accepted a local path only this machine has: {override}"


# --- S3 inputs the preflight does not look at ----------------------------------------------------------------

MISSING = "s3://no-such-bucket-3f9c1e/x"


@pytest.mark.parametrize(
    "override",
    [
        [
            "--data.sources",
            f'[{{"name": "shapes", "urls": ["s3://shards/demo/demo-000000.tar", "{MISSING}-{{0..3}}.tar"]}}]',
        ],
        ["--eval.every_steps", "5", "--eval.sources", f'[{{"name": "ho", "urls": ["{MISSING}-{{0..3}}.tar"]}}]'],
        ["--checkpoint.init_from", "s3://shards/no-checkpoint-here/step_00000100"],
        ["--checkpoint.dir", f"{MISSING}/checkpoints"],
    ],
    ids=["second-url-pattern", "eval.sources", "init_from", "checkpoint.dir-bucket"],
)
def test_break_s3_inputs_the_job_reads_are_not_checked(submit_env, aws_hooks, s3_bucket, run_config, capsys, override):
    """Claim: 'every S3 location the job reads holds something', checked before submitting (and the role's
    s3:GetObject on each). The job reads each of these at start (validate.reads(cfg, 'train'), the checkpoint
    bucket in check_inputs) and exits 2 there, after the instances are billed; the launcher submits."""
    args = ["--config", str(run_config), "--instance-type", "ml.g5.12xlarge", "--role", ROLE, "--image", IMAGE]
    code = main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", *override])
    capsys.readouterr()
    assert code == 2 and aws_hooks.sent["CreateTrainingJob"] == [], (
        f"submitted a job whose input is missing: {override}"
    )


# --- the role check: what the preflight asks for vs what the job does -------------------------------------


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


def test_break_role_with_every_permission_the_preflight_checks_cannot_start_or_resume_the_job(
    s3_endpoint, aws_env, s3_bucket, demo_dir, tmp_path, monkeypatch
):
    """Claim: check_role_access lists every gap between the role and what the job reads and writes. Give a
    principal exactly role_needs(plan) (moto enforces IAM, resource ARNs included) and run what the job does
    first: its input check (open_vlm/train.py: check_inputs) and, on a spot restart, finding the checkpoint to
    resume (Checkpointer.latest). Both fail: the job needs s3:ListBucket (s3fs lists the shard folder, the
    tokenizer folder, the checkpoint dir) and s3:GetObject under the checkpoint prefix, and the tokenizer ARN
    the preflight checks ('.../demo/tokenizer', the folder key) is not the objects the job reads under it."""
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


# --- the dry run vs what submit sends ------------------------------------------------------------------------

SDK_DEFAULTS = """\
SchemaVersion: '1.0'
SageMaker:
  TrainingJob:
    EnableNetworkIsolation: true
    Tags:
      - Key: team
        Value: vision
"""


def test_break_sdk_config_file_defaults_reach_the_request_but_not_the_dry_run(
    submit_env, aws_hooks, s3_bucket, run_config, tmp_path, monkeypatch, capsys
):
    """Claim: '--dry-run prints the exact CreateTrainingJob request submit sends'. The SageMaker SDK applies
    the defaults of its config files (~/.config/sagemaker/config.yaml, /etc/xdg/sagemaker/config.yaml, or
    SAGEMAKER_USER_CONFIG_OVERRIDE; common in managed accounts and Studio) to every ModelTrainer; the launcher
    even silences the SDK's 'applied value from config' lines. Here they add network isolation (the trainer then
    cannot stream its s3:// data) and tags to the sent request, and the dry run shows neither."""
    defaults = tmp_path / "sagemaker_config.yaml"
    defaults.write_text(SDK_DEFAULTS)
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(defaults))
    args = ["--config", str(run_config), "--instance-type", "ml.g5.12xlarge", "--image", IMAGE, "--role", ROLE]
    args += ["--s3-root", f"s3://{s3_bucket}/jobs", "--job-name", "sdkdefaults"]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["--dry-run", *args]) == 0
    printed = json.loads(capsys.readouterr().out)["CreateTrainingJob"]
    (sent,) = aws_hooks.sent["CreateTrainingJob"]
    extra = sorted(set(sent) - set(printed))
    assert extra == [], f"submit sent { ({k: sent[k] for k in extra}) } that the dry run does not print"


# --- the user's S3 endpoint setting ----------------------------------------------------------------------------


def test_break_users_s3_endpoint_setting_redirects_sagemaker_iam_and_ecr(run_config, aws_env, monkeypatch):
    """Claim (README): `open-vlm config set s3_endpoint URL` points S3 reads at an S3-compatible store (MinIO, a
    local moto). make_plan loads the run config, which exports it as AWS_ENDPOINT_URL into the launcher's own
    process: from then on every boto3 client the launcher makes (SageMaker, IAM, ECR, STS) goes to the S3
    store, so a user with a local MinIO setting cannot launch (errors from MinIO, or checks against it)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("OPEN_VLM_S3_ENDPOINT", "http://minio.local:9000")
    from launch.sagemaker import boto_session

    make_plan(LaunchConfig(config=str(run_config), instance_type="ml.g5.12xlarge", role=ROLE), lambda a, r: IMAGE, REPO)
    endpoint = boto_session("us-east-1").client("sagemaker").meta.endpoint_url
    assert "minio" not in endpoint, f"SageMaker calls would go to {endpoint}"


@pytest.mark.slow
def test_break_ddp_on_a_one_gpu_instance_is_launched_and_the_job_fails(run_config, aws_env, capsys, demo_dir, tmp_path):
    """Claim: a job the launcher submits does not fail on its config. ml.g5.2xlarge has one GPU, so every node
    runs torchrun --nproc_per_node 1; with train.strategy ddp (the fixture's, and any config written for a
    multi-GPU type) the rank exits 2: 'Default process group has not been initialized' (init_distributed makes
    no group at WORLD_SIZE=1, DistributedDataParallel needs one). The launcher refuses only 'single' on many."""
    import subprocess
    import sys

    from tests.launch.test_break_spot import ENV, local_config

    code, out, err = dry(capsys, *base(run_config, "ml.g5.2xlarge"))
    assert code == 0 and json.loads(out)["RunConfig"]["train"]["strategy"] == "ddp"  # accepted as is
    config = local_config(demo_dir, tmp_path, max_steps=2)
    config.write_text(config.read_text().replace("strategy: fsdp", "strategy: ddp"))
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "-m",
            "open_vlm.train",
            "--config",
            str(config),
        ],
        cwd=REPO,
        env={**__import__("os").environ, **ENV, "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, [line for line in job.stderr.splitlines() if "ERROR" in line][:2]


def test_break_user_model_module_is_neither_shipped_nor_refused(run_config, aws_env, tmp_path, monkeypatch):
    """Claim (README 'Your own model'): `model.module: my_package.my_models` anywhere on PYTHONPATH is imported
    before the model is built, and a module that cannot be imported exits 2. The launcher ships only open_vlm/,
    launch/, configs/, tools/: a lab module that imports fine here is not in the job's source, so the job exits
    2 ('model.module: cannot import ...') after its instances start. The launcher neither ships nor refuses it."""
    from launch.sagemaker import stage_source

    lab = tmp_path / "lab"
    (lab / "my_lab_models_3f9c").mkdir(parents=True)
    (lab / "my_lab_models_3f9c" / "__init__.py").write_text("# registers a model kind\n")
    monkeypatch.syspath_prepend(str(lab))
    opts = LaunchConfig(
        config=str(run_config),
        instance_type="ml.g5.12xlarge",
        role=ROLE,
        overrides=["--model.module", "my_lab_models_3f9c"],
    )
    try:
        plan = make_plan(opts, lambda account, region: IMAGE, REPO)
    except (LaunchError, ConfigError):  # refusing it is one acceptable outcome
        return
    source = stage_source(plan, tmp_path / "staged" / "source")
    assert (source / "my_lab_models_3f9c" / "__init__.py").exists(), "the job cannot import model.module"


def test_break_existence_check_is_a_key_prefix_match(submit_env, aws_hooks, s3_bucket, run_config, capsys):
    """Claim: 'every S3 location the job reads holds something' is checked (a typo found now, not after the
    instances start). check_data_exists lists with Prefix=<the URL's key>, so a tokenizer folder 's3://b/models/tok'
    passes when only 's3://b/models/tokenizer/...' exists; the job then finds no folder 'models/tok' and exits 2."""
    from tests.launch.conftest import publish

    publish(submit_env, s3_bucket, ["models/tokenizer/tokenizer.json"], image_tag=None)
    args = ["--config", str(run_config), "--instance-type", "ml.g5.12xlarge", "--role", ROLE, "--image", IMAGE]
    typo = f"s3://{s3_bucket}/models/tok"  # the folder is models/tokenizer
    code = main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", "--model.tokenizer", typo])
    capsys.readouterr()
    assert code == 2 and aws_hooks.sent["CreateTrainingJob"] == [], f"submitted with model.tokenizer {typo}"


def test_break_wandb_online_without_a_key_in_the_job(run_config, aws_env, monkeypatch, capsys):
    """Claim: a config the job rejects at start is refused before submitting. The user's environment config
    (`open-vlm config set wandb_mode online`, or OPEN_VLM_WANDB_MODE) is resolved into the shipped config, but
    the user's wandb login (~/.netrc, WANDB_API_KEY here) does not travel: rank 0's wandb.init raises
    'UsageError: No API key configured' in the job (no tty), after the instances start."""
    monkeypatch.setenv("OPEN_VLM_WANDB_MODE", "online")
    code, out, err = dry(capsys, *base(run_config))
    shipped = json.loads(out)["RunConfig"] if code == 0 else {}
    env = json.loads(out)["CreateTrainingJob"]["Environment"] if code == 0 else {}
    assert code == 2 or "WANDB_API_KEY" in env, (
        f"shipped logging.wandb.mode={shipped['logging']['wandb']['mode']} with no WANDB_API_KEY in {sorted(env)}"
    )


@pytest.mark.slow
def test_break_spot_job_with_explicit_resume_rewinds_on_every_interruption(
    run_config, aws_env, capsys, demo_dir, tmp_path
):
    """Claim (README 'Spot instances and resuming'): when SageMaker restarts an interrupted spot job, the trainer
    continues from the newest committed checkpoint under <job-name>/checkpoints. The launcher keeps a
    `--checkpoint.resume` given after `--` (none, or a path) and says nothing, even with --spot. Every spot
    restart runs the same config: with `none` it starts at step 0 and moves the job's own checkpoints aside
    ('another timeline'), with a path it rewinds to that path. Issue 21's 'restarts from step 0, can loop until
    MaxWait runs out' again, through a documented option."""
    from tests.trainer.runs import train, write_config

    code, out, err = dry(capsys, *base(run_config), "--spot", "--", "--checkpoint.resume", "none")
    shipped = json.loads(out)["RunConfig"]["checkpoint"] if code == 0 else {}
    if code == 0:
        assert shipped["resume"] == "none" and "resume" not in err  # shipped as is, no note
    # The job, interrupted after step 4 (its SIGTERM save) and restarted by SageMaker with the same config:
    config = write_config(
        tmp_path,
        demo_dir,
        "spot",
        train={"max_steps": 4, "global_batch_size": 2},
        checkpoint={"every_steps": 0, "resume": "none", "dir": str(tmp_path / "ck")},
    )
    train(config)  # first attempt: reaches step 4, saves it
    restart = train(config)  # the spot restart
    started = [line for line in restart.stderr.splitlines() if "starting at" in line]
    aside = sorted(p.name for p in (tmp_path / "ck").glob("abandoned/*"))
    assert code == 2 or not aside, f"the restart: {started}; the job's own checkpoints moved aside: {aside}"


def test_break_channel_named_like_an_sdk_channel_in_another_case(aws_env, tmp_path, capsys):
    """Claim (limits.check_channel_names): channel names must not be the SDK's own ('code', 'sm_drivers') and must
    not differ only in case ('clash in SM_CHANNEL_*'). The case rule is applied among the data channels only:
    sources named 'Code' / 'SM_DRIVERS' are accepted, next to the SDK's 'code' / 'sm_drivers', and the SDK's
    environment.py then exports SM_CHANNEL_CODE / SM_CHANNEL_SM_DRIVERS once, for whichever comes last."""
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
