"""Tiny runs trained through the real trainer (once per session and kind), for the inference tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.trainer.runs import folder, train, write_config

CONFIGS = REPO / "configs" / "models"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _sections(kind: str, tmp: Path) -> dict:
    if kind == "paligemma":
        return {}
    if kind == "vlm":
        # chat_lm: the default template costs 26 text tokens with the demo tokenizer (a budget of 16 is refused)
        return {"model": {"kind": "vlm", "config": str(CONFIGS / "vlm_tiny.yaml")}, "data": {"max_text_len": 40}}
    if kind == "siglip":
        return {"model": {"kind": "siglip", "config": str(CONFIGS / "siglip_tiny.yaml")}, "train": {"loss": "siglip"}}
    if kind == "lxmert":
        from tests.evaluation.test_eval import write_region_shard
        from tests.tokenize.conftest import make_word_tokenizer

        make_word_tokenizer().save_pretrained(tmp / "word_tokenizer")
        write_region_shard(tmp / "regions-0.tar", n=16, k=5)
        source = {"name": "regions", "urls": [str(tmp / "regions-0.tar")], "modality": "region_features"}
        return {
            "data": {"sources": [source], "num_streams": 1, "max_text_len": 12},
            "model": {
                "kind": "lxmert",
                "config": str(CONFIGS / "lxmert_tiny.yaml"),
                "tokenizer": str(tmp / "word_tokenizer"),
            },
            "train": {"loss": "lxmert"},
        }
    raise ValueError(kind)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, demo_dir):
    """`trained(kind) -> run folder`: a few optimizer steps of `kind` through `python -m open_vlm.train`."""
    runs: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in runs:
            tmp = tmp_path_factory.mktemp(kind)
            sections = _sections(kind, tmp)
            sections.setdefault("train", {}).update(max_steps=6)
            config = write_config(tmp, demo_dir, kind, **sections)
            train(config, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
            runs[kind] = folder(tmp, kind)
        return runs[kind]

    return get


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """`exported(kind) -> folder`: `open-vlm export` of the trained run."""
    out: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in out:
            from open_vlm.cli import main

            target = tmp_path_factory.mktemp(f"export-{kind}") / "model"
            assert main(["export", str(trained(kind)), str(target)]) == 0
            out[kind] = target
        return out[kind]

    return get


@pytest.fixture(scope="session")
def examples(demo_dir) -> list[str]:
    return sorted(str(p) for p in (demo_dir / "examples").glob("*.jpg"))
