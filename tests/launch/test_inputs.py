"""What the job reads, checked before submitting (launch/inputs.py, launch/preflight.py): local paths only this
machine has, S3 locations that do not exist, a user's model.module. AWS is moto (tests/launch/conftest.py)."""

from __future__ import annotations

import pytest

from launch.instances import LaunchError
from launch.plan import LaunchConfig, make_plan
from launch.sagemaker import main
from open_vlm.errors import ConfigError
from tests.conftest import REPO
from tests.launch.conftest import IMAGE, ROLE
from tests.launch.test_plan import base, dry


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
def test_local_paths_the_job_reads_are_refused(run_config, aws_env, capsys, override):
    """Every local path train reads (validate.reads(cfg, 'train')) is refused unless the job has it."""
    code, out, err = dry(capsys, *base(run_config), "--", *override)
    assert code == 2, f"accepted a local path only this machine has: {override}"


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
def test_missing_s3_inputs_stop_the_launch(submit_env, aws_hooks, s3_bucket, run_config, capsys, override):
    """Every S3 location the job reads at start holds something (each URL pattern, eval sources, init_from, the
    checkpoint bucket), checked before submitting."""
    args = ["--config", str(run_config), "--instance-type", "ml.g5.12xlarge", "--role", ROLE, "--image", IMAGE]
    code = main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", *override])
    capsys.readouterr()
    assert code == 2 and aws_hooks.sent["CreateTrainingJob"] == [], (
        f"submitted a job whose input is missing: {override}"
    )


def test_s3_folder_must_exist_as_a_folder_not_a_key_prefix(submit_env, aws_hooks, s3_bucket, run_config, capsys):
    """A tokenizer folder 's3://b/models/tok' does not pass because 's3://b/models/tokenizer/...' exists."""
    from tests.launch.conftest import publish

    publish(submit_env, s3_bucket, ["models/tokenizer/tokenizer.json"], image_tag=None)
    args = ["--config", str(run_config), "--instance-type", "ml.g5.12xlarge", "--role", ROLE, "--image", IMAGE]
    typo = f"s3://{s3_bucket}/models/tok"  # the folder is models/tokenizer
    code = main([*args, "--s3-root", f"s3://{s3_bucket}/jobs", "--", "--model.tokenizer", typo])
    capsys.readouterr()
    assert code == 2 and aws_hooks.sent["CreateTrainingJob"] == [], f"submitted with model.tokenizer {typo}"


def test_user_model_module_is_shipped_with_the_source(run_config, aws_env, tmp_path, monkeypatch):
    """model.module importable here (on PYTHONPATH) is shipped with the job's source."""
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
