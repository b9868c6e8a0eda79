"""Attention maps: where in the image a model looks, drawn over the image (`open-vlm view --attention`).

- `paligemma`, `vlm`: the language model's attention from the answer onto the image tokens. The queries are the
  positions that predict each answer token (the last prompt token for the first one), so the map shows what
  the model read while producing the answer, generated greedily or given.
- `siglip`, `clip`: the vision tower's attention over the patches: the pooled token's (SigLIP's attention-pooling
  probe, CLIP's class token at the last layer); a SigLIP tower without a pooling head averages the last
  layer's queries. Per layer: CLIP's class-token row, SigLIP's average over queries.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from open_vlm.inference.generate import GenerationSettings
from open_vlm.inference.processor import ImageInput, image_bytes
from open_vlm.inference.wrapper import OpenVLM

ALPHA = 0.5  # weight of the heat colours over the image in the left panel
MIN_SIDE = 224  # small images are scaled up so the grid stays readable
# Heat colours from cold to hot (blue, cyan, yellow, red) at 0, 1/3, 2/3, 1.
COLD_TO_HOT = np.array([[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]], dtype=np.float64)


Selection = list[int] | str | None  # indices, "all", or None (averaged)


@dataclass
class AttentionMaps:
    """Attention over the image grid: per layer and head, and the per-head maps behind the default view."""

    layers: np.ndarray  # (L, H, rows, cols): per layer and head
    by_head: np.ndarray  # (H, rows, cols): the default view per head (answer: mean over layers; pooled token)
    answer: str = ""  # the answer the maps are for (paligemma, vlm)

    def select(self, layers: Selection = None, heads: Selection = None) -> list[tuple[str, np.ndarray]]:
        """(name, (rows, cols) map) per view: the default averaged view; per layer (heads averaged); per layer and
        head; or per head of the default view. `layers` / `heads`: indices (negative from the end), "all" or None."""
        num_layers, num_heads = self.layers.shape[:2]
        layers = _indices(layers, num_layers, "--layer", "layers")
        heads = _indices(heads, num_heads, "--head", "heads")
        if layers is None and heads is None:
            return [("attention", self.by_head.mean(0))]
        if layers is None:
            return [(f"head{h}", self.by_head[h]) for h in heads]
        if heads is None:
            return [(f"layer{i}", self.layers[i].mean(0)) for i in layers]
        return [(f"layer{i}-head{h}", self.layers[i, h]) for i in layers for h in heads]


def _indices(chosen: Selection, size: int, flag: str, what: str) -> list[int] | None:
    if chosen is None:
        return None
    if chosen == "all":
        return list(range(size))
    for i in chosen:
        if not -size <= i < size:
            raise ValueError(f"{flag} {i}: the model has {size} {what} (0..{size - 1}, or negative from the end)")
    return [i % size for i in chosen]


def pixels(vlm: OpenVLM, image: ImageInput) -> torch.Tensor:
    """One image as the model's pixel values (the training transform), on its device and dtype."""
    return vlm.processor.pixel_values([image]).to(vlm.device, vlm.dtype)


def grid(weights: torch.Tensor) -> np.ndarray:
    """(..., N) attention over N image tokens → (..., rows, cols) for the square grid they come from."""
    n = weights.shape[-1]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} image tokens do not form a square grid")
    return weights.reshape(*weights.shape[:-1], side, side).float().cpu().numpy()


# --- generative kinds: the language model's attention from the answer onto the image tokens ----------------
def _paligemma(model, ids, types, pixels) -> tuple:
    out = model(input_ids=ids, token_type_ids=types, pixel_values=pixels, output_attentions=True, use_cache=False)
    return out.attentions


def _vlm(model, ids, types, pixels) -> tuple:
    out = model.language_model(inputs_embeds=model.embed(ids, pixels), output_attentions=True, use_cache=False)
    return out.attentions


# (model, ids, token types, pixels) → the language model's per-layer attentions, each (1, heads, T, T)
LM_ATTENTIONS: dict[str, Callable[..., tuple]] = {"paligemma": _paligemma, "vlm": _vlm}


def answer_maps(vlm: OpenVLM, image: ImageInput, prompt: str | None, answer: str | None, settings) -> AttentionMaps:
    """Attention of the answer (generated with `settings` when `answer` is None) onto the image tokens."""
    proc = vlm.processor
    if answer is None:
        answer_ids = vlm.generate_ids([image], [prompt], settings)[0]
    else:
        answer_ids = proc.tokenizer(answer, add_special_tokens=False)["input_ids"]
    prompt_batch = proc.prompts([prompt])
    n = prompt_batch["input_ids"].shape[1]
    answer_t = torch.tensor([answer_ids], dtype=torch.long)
    ids = torch.cat([prompt_batch["input_ids"], answer_t], dim=1).to(vlm.device)
    types = torch.cat([prompt_batch["token_type_ids"], torch.ones_like(answer_t)], dim=1).to(vlm.device)
    with torch.no_grad():
        attentions = LM_ATTENTIONS[vlm.kind](vlm.model, ids, types, pixels(vlm, image))
    image_positions = (ids[0] == proc.image_token_id).nonzero().squeeze(1)
    queries = torch.arange(n - 1, n - 1 + max(len(answer_ids), 1), device=ids.device)
    per_layer = torch.stack([a[0][:, queries][:, :, image_positions].mean(1) for a in attentions])  # (L, H, N)
    layers = grid(per_layer)
    return AttentionMaps(layers=layers, by_head=layers.mean(0), answer=proc.decode([answer_ids])[0])


# --- contrastive kinds: the vision tower's attention over the patches ---------------------------------------
def tower_maps(vlm: OpenVLM, image: ImageInput, prompt: str | None, answer: str | None, settings) -> AttentionMaps:
    """The pooled token's attention over the patches per head, and each layer's (see the module docstring)."""
    tower = vlm.model.vision_model
    with torch.no_grad():
        out = tower(pixel_values=pixels(vlm, image), output_attentions=True)
        attentions = torch.stack([a[0] for a in out.attentions])  # (L, H, N, N)
        if vlm.kind == "clip":  # token 0 is the class token, the one CLIP pools
            per_layer = attentions[:, :, 0, 1:]
            pooled = per_layer[-1]
        else:
            per_layer = attentions.mean(2)
            head = getattr(tower, "head", None)
            pooled = per_layer[-1]
            if head is not None:  # the attention-pooling probe's own weights over the final patch features
                hidden = out.last_hidden_state
                probe = head.probe.repeat(hidden.shape[0], 1, 1)
                _, weights = head.attention(probe, hidden, hidden, need_weights=True, average_attn_weights=False)
                pooled = weights[0, :, 0]
    return AttentionMaps(layers=grid(per_layer), by_head=grid(pooled))


MAPS: dict[str, Callable[..., AttentionMaps]] = {
    "paligemma": answer_maps,
    "vlm": answer_maps,
    "siglip": tower_maps,
    "clip": tower_maps,
}


def attention_maps(
    vlm: OpenVLM,
    image: ImageInput,
    prompt: str | None = None,
    answer: str | None = None,
    settings: GenerationSettings | None = None,
) -> AttentionMaps:
    """The attention maps of one image (for paligemma / vlm: of `answer`, or of the greedy answer to `prompt`).
    The model is switched to eager attention, the only one that returns its weights, and stays so."""
    if vlm.kind not in MAPS:
        raise ValueError(f"attention maps are for {sorted(MAPS)}; this model is {vlm.kind!r}")
    from open_vlm.models.spec import set_attention

    set_attention(vlm.model, "eager", key="attention maps")  # only eager attention returns its weights
    return MAPS[vlm.kind](vlm, image, prompt, answer, settings or GenerationSettings())


# --- drawing -------------------------------------------------------------------------------------------------
def heat_colours(heat: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] → (H, W, 3) float RGB, cold blue to hot red."""
    stops = np.linspace(0.0, 1.0, len(COLD_TO_HOT))
    return np.stack([np.interp(heat, stops, COLD_TO_HOT[:, c]) for c in range(3)], axis=-1)


def draw_attention(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """Two panels side by side: the image under the heat colours, and the heat alone in grey (white = most)."""
    image = image.convert("RGB")
    scale = max(1.0, MIN_SIDE / min(image.size))
    size = (round(image.size[0] * scale), round(image.size[1] * scale))
    image = image.resize(size, Image.BICUBIC)
    span = float(heat.max() - heat.min())
    norm = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    grey = Image.fromarray(np.uint8(np.round(norm * 255)), mode="L").resize(size, Image.BILINEAR)
    colours = heat_colours(np.asarray(grey, dtype=np.float64) / 255)
    blended = (1 - ALPHA) * np.asarray(image, dtype=np.float64) + ALPHA * colours
    canvas = Image.new("RGB", (2 * size[0], size[1]))
    canvas.paste(Image.fromarray(np.uint8(np.round(blended))), (0, 0))
    canvas.paste(grey.convert("RGB"), (size[0], 0))
    return canvas


def _open(image: ImageInput) -> Image.Image:
    """The image as given (bytes, a path or URL, or a PIL image), at its own size, for drawing."""
    if isinstance(image, Image.Image):
        return image
    return Image.open(io.BytesIO(image_bytes(image)))


def write_attention_pngs(
    vlm: OpenVLM,
    image: str | Path,
    out_dir: str | Path,
    prompt: str | None = None,
    answer: str | None = None,
    layers: Selection = None,
    heads: Selection = None,
    settings: GenerationSettings | None = None,
) -> tuple[AttentionMaps, list[Path]]:
    """The maps of `image` and one PNG per selected view in `out_dir` (`<image stem>-<view>.png`)."""
    maps = attention_maps(vlm, image, prompt, answer, settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    picture = _open(image)
    paths = []
    for name, heat in maps.select(layers, heads):
        info = PngInfo()
        for key, value in (("view", name), ("answer", maps.answer), ("prompt", prompt or ""), ("model", vlm.source)):
            info.add_text(key, value)
        path = out / f"{Path(str(image)).stem}-{name}.png"
        draw_attention(picture, heat).save(path, format="PNG", pnginfo=info)
        paths.append(path)
    return maps, paths
