"""`open-vlm export CKPT OUT_DIR`: a checkpoint as a folder that stock transformers loads.

- `paligemma` → `PaliGemmaForConditionalGeneration` + tokenizer + `PaliGemmaProcessor` (AutoProcessor loads it);
- `siglip` → `SiglipModel`, `clip` → `CLIPModel` (+ tokenizer and image processor), `lxmert` → `LxmertForPreTraining`;
- `vlm` → our folder (`OpenVLM.from_pretrained` loads it); its `language_model/` is a plain causal-LM folder.

Every export also has `open_vlm_export.json` (kind, preprocessing, source checkpoint, step), so
`OpenVLM.from_pretrained(OUT_DIR)` preprocesses exactly as training did. Weights are consolidated safetensors.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from open_vlm.inference.wrapper import EXPORT_FILE, Loaded, load, resolve_dtype

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
    tokenizer.save_pretrained(str(out))
    if kind == "paligemma":
        from transformers import PaliGemmaProcessor

        processor = PaliGemmaProcessor(image_processor=image_processor(settings, kind), tokenizer=tokenizer)
        processor.image_seq_length = settings.num_image_tokens
        processor.image_processor.image_seq_length = settings.num_image_tokens
        processor.save_pretrained(str(out))
    elif kind in ("siglip", "clip"):
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


def write_export(loaded: Loaded, model, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), max_shard_size="1000GB")  # one consolidated safetensors file
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
