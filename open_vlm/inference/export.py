"""`open-vlm export CKPT OUT_DIR`: a checkpoint as a folder that stock transformers loads.

- `paligemma` → `PaliGemmaForConditionalGeneration` + tokenizer + `PaliGemmaProcessor` (AutoProcessor loads it).
  The saved tokenizer is the training one: building a `PaliGemmaProcessor` adds PaliGemma's 1,152 `<loc…>` /
  `<seg…>` tokens to its tokenizer, ids the model has no embeddings for, so it is built on a copy. (Loading the
  processor adds them again in memory, as transformers does; a model trained without them cannot use them.)
- `siglip` → `SiglipModel`, `clip` → `CLIPModel` (+ tokenizer and image processor; the tokenizer's
  `model_max_length` is the training text length, so `padding="max_length"` pads as training did),
  `lxmert` → `LxmertForPreTraining`;
- `vlm` → our folder (`OpenVLM.from_pretrained` loads it); its `language_model/` is a plain causal-LM folder.

Every export also has `open_vlm_export.json` (kind, preprocessing, source checkpoint, step), so
`OpenVLM.from_pretrained(OUT_DIR)` preprocesses exactly as training did. Weights are consolidated safetensors.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from open_vlm.inference.wrapper import EXPORT_FILE, Loaded, load, resolve_dtype
from open_vlm.models import clip, siglip

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def image_processor(settings, kind: str):
    """A transformers image processor with the training resize and statistics (bicubic, 1/255, mean, std)."""
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    size = settings.image_size
    common = {
        "do_resize": True,
        "resample": 3,  # PIL bicubic, as data/decode.py
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(settings.image_mean),
        "image_std": list(settings.image_std),
    }
    if kind == "clip":
        return CLIPImageProcessor(
            size={"height": size, "width": size}, do_center_crop=False, do_convert_rgb=True, **common
        )
    return SiglipImageProcessor(size={"height": size, "width": size}, **common)


def write_processor(loaded: Loaded, out: Path) -> bool:
    """Save the tokenizer and the kind's transformers processor into `out`; False when there is no HF tokenizer."""
    settings, tokenizer, kind = loaded.settings, loaded.tokenizer, loaded.settings.kind
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        return False
    if settings.task == "contrastive":
        # The text tower saw texts padded to `max_text_len` (SigLIP pools the last position, so the length matters);
        # the stock recipe `processor(text=..., padding="max_length")` reads that length from the tokenizer.
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.model_max_length = settings.max_text_len
    if kind == "paligemma":
        from transformers import PaliGemmaProcessor

        # The processor adds its <loc>/<seg> tokens to the tokenizer it is given: a copy, never the model's own.
        processor = PaliGemmaProcessor(
            image_processor=image_processor(settings, kind), tokenizer=copy.deepcopy(tokenizer)
        )
        processor.image_seq_length = settings.num_image_tokens
        processor.image_processor.image_seq_length = settings.num_image_tokens
        processor.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))  # after the processor: its tokenizer files are the training tokenizer's
    if kind in ("siglip", "clip"):
        image_processor(settings, kind).save_pretrained(str(out))
    elif kind == "vlm":
        tokenizer.save_pretrained(str(out / "language_model"))  # the LM half stands alone
    return True


def export(source: str, out_dir: str, dtype: str | None = None) -> Path:
    """Export a checkpoint (or run folder, local or s3://) to `out_dir` (local or s3://); returns the local folder."""
    from open_vlm.storage import is_remote

    loaded = load(source)
    model = loaded.model.to(dtype=resolve_dtype(dtype)) if dtype else loaded.model
    if is_remote(out_dir):
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_export(loaded, model, Path(tmp))
            import fsspec

            fs, root = fsspec.core.url_to_fs(out_dir)
            fs.put(str(folder).rstrip("/") + "/", root.rstrip("/") + "/", recursive=True)
        log.info("exported %s to %s", loaded.source, out_dir)
        return Path(out_dir)
    folder = write_export(loaded, model, Path(out_dir))
    log.info("exported %s (%s, step %s) to %s", loaded.source, loaded.settings.kind, loaded.step, folder)
    return folder


# kind → the state dict in the stock class's layout, where ours differs (absent: the model's own)
STOCK_STATE: dict[str, Callable[[torch.nn.Module], dict]] = {
    "clip": clip.stock_state_dict,
    "siglip": siglip.stock_state_dict,
}


def write_export(loaded: Loaded, model, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    to_stock = STOCK_STATE.get(loaded.settings.kind)
    state = {"state_dict": to_stock(model)} if to_stock is not None else {}
    model.save_pretrained(str(out), max_shard_size="1000GB", **state)  # one consolidated safetensors file
    has_tokenizer = write_processor(loaded, out)
    tokenizer = "." if has_tokenizer else loaded.tokenizer_name
    info = {
        "format": FORMAT_VERSION,
        "kind": loaded.settings.kind,
        "processor": loaded.settings.to_dict(),
        "tokenizer": tokenizer,
        "source": loaded.source,
        "step": loaded.step,
    }
    (out / EXPORT_FILE).write_text(json.dumps(info, indent=1))
    return out
