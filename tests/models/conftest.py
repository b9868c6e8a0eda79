"""Fixtures for model tests: a tiny tokenizer, a local download cache, and uploading folders to S3."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

CONFIGS = REPO / "configs" / "models"


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A tiny BPE tokenizer with `<image>` and `<pad>` (vocabulary of a few dozen tokens)."""
    from open_vlm.tokenize.demo_tokenizer import build_demo_tokenizer

    texts = ["a red square on the left", "a blue circle on the right", "caption en"] * 4
    return build_demo_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=60)


@pytest.fixture(autouse=True)
def _download_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPEN_VLM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def upload(s3_endpoint, s3_bucket):
    """`upload(local_folder, name) -> s3://bucket/name`, the folder copied through the moto server."""
    import s3fs

    def put(folder: Path, name: str) -> str:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
        fs.put(str(folder).rstrip("/") + "/", f"{s3_bucket}/{name}/", recursive=True)
        s3fs.S3FileSystem.clear_instance_cache()
        return f"s3://{s3_bucket}/{name}"

    return put


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def token_ids(n: int, length: int, vocab: int, seed: int = 0, low: int = 5) -> torch.Tensor:
    return torch.randint(low, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def assert_has_grads(model: torch.nn.Module) -> None:
    """Every trainable parameter that took part got a finite, non-zero-everywhere gradient."""
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads, "no gradients"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
