"""What a checkpoint needs to rebuild its model without the training run's files, and the rebuild itself."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import fsspec
import yaml

from open_vlm.checkpoint.checkpointer import read_meta, resolve_checkpoint
from open_vlm.checkpoint.dcp_io import load_model_weights
from open_vlm.checkpoint.files import read_bytes
from open_vlm.config.load import config_from_yaml_text
from open_vlm.config.schema import RunConfig

log = logging.getLogger(__name__)

SPEC = "model/spec.json"


def model_files(cfg: RunConfig, tokenizer) -> dict[str, bytes]:
    """Files (path in the checkpoint → bytes) under `model/`: spec, model config text and tokenizer."""
    files: dict[str, bytes] = {}
    spec = {"kind": cfg.model.kind, "model": dataclasses.asdict(cfg.model), "config_file": None}
    if cfg.model.config:
        name = "model_config" + Path(cfg.model.config).suffix
        with fsspec.open(cfg.model.config, "rb") as f:
            files[f"model/{name}"] = f.read()
        spec["config_file"] = name
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for path in Path(tmp).rglob("*"):
                if path.is_file():
                    files[f"model/tokenizer/{path.relative_to(tmp).as_posix()}"] = path.read_bytes()
        spec["tokenizer_dir"] = "tokenizer"
    files[SPEC] = json.dumps(spec, indent=1).encode()
    return files


def described_model_config(files: dict[str, bytes]) -> dict | None:
    """The model config that `model_files` captured (parsed), or None when the model came from elsewhere."""
    name = json.loads(files[SPEC]).get("config_file") if SPEC in files else None
    return yaml.safe_load(files[f"model/{name}"]) if name else None


def saved_model_config(ckpt: str) -> dict | None:
    """The model config saved in a checkpoint's `model/` folder (parsed), or None (none saved, an old checkpoint)."""
    try:
        name = json.loads(read_bytes(f"{ckpt}/{SPEC}")).get("config_file")
        return yaml.safe_load(read_bytes(f"{ckpt}/model/{name}")) if name else None
    except FileNotFoundError:
        return None


def load_model_from_checkpoint(path: str, module: str | None = None):
    """(bundle, tokenizer, run config) of a checkpoint, a checkpoint dir or a run folder (local or URL).

    `module`: a user module to import first (its model kinds); the `model.module` a checkpoint records is
    never imported, since a checkpoint (from a shared bucket, say) must not choose which code runs.
    """
    from open_vlm.models.registry import build_model, model_kinds
    from open_vlm.storage import local_dir
    from open_vlm.tokenize.tokenizers import load_tokenizer

    ckpt = resolve_checkpoint(path)
    cfg = config_from_yaml_text(read_meta(ckpt)["config"])
    spec = json.loads(read_bytes(f"{ckpt}/{SPEC}"))
    # The whole model in fp32, as saved weights of any dtype load into it: `frozen_dtype` would cast the kind's
    # default-frozen parameters (LXMERT's last visual half) again, and an fp32 forward then mixes dtypes.
    model_cfg = dataclasses.replace(
        cfg.model, freeze=[], unfreeze=[], pretrained=None, frozen_dtype="fp32", module=module
    )
    if module is None and model_cfg.kind not in model_kinds():
        raise ValueError(
            f"{ckpt}: model kind '{model_cfg.kind}' is not registered; the checkpoint names module "
            f"'{cfg.model.module}', which loading never imports (a checkpoint must not choose the code that runs): "
            "import it yourself first (Python), or name it (`module=` / model.module of open-vlm eval)"
        )
    folder = local_dir(f"{ckpt}/model")  # a local path as it is (`file://`, `~` spelled out), a URL downloaded
    if spec.get("config_file"):
        model_cfg.config = str(folder / spec["config_file"])
    elif cfg.model.pretrained:
        model_cfg.pretrained = cfg.model.pretrained  # the architecture comes from where training started
    tokenizer = None
    if spec.get("tokenizer_dir"):
        tokenizer = load_tokenizer(str(folder / spec["tokenizer_dir"]))
        model_cfg.tokenizer = str(folder / spec["tokenizer_dir"])
    bundle = build_model(model_cfg, tokenizer)
    report = load_model_weights(ckpt, bundle.model)
    if report.missing or report.unexpected:
        raise RuntimeError(
            f"{ckpt}: weights do not match the model (missing {report.missing[:5]}, unexpected {report.unexpected[:5]})"
        )
    return bundle, tokenizer, cfg
