"""Launcher fixtures: a run config whose data and tokenizer live on S3 (nothing is read at launch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLE = "arn:aws:iam::123456789012:role/OpenVlmTraining"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/open-vlm:test"


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
