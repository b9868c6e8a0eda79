"""Converting an open_clip SigLIP (timm ViT with MAP head + open_clip text tower) into transformers' SiglipModel."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import fsspec
import torch
import torch.nn as nn

log = logging.getLogger(__name__)


def fetch(url: str) -> Path:
    """A local path for `url` (copied to a temp dir when remote), keeping the file name."""
    if "://" not in url or url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    target = Path(tempfile.mkdtemp(prefix="open_vlm_")) / Path(url).name
    with fsspec.open(url, "rb") as src:
        target.write_bytes(src.read())
    return target


def read_state_dict(url: str) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors or torch file, unwrapping `state_dict` and DDP `module.` prefixes."""
    path = fetch(url)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_open_clip(model: str, checkpoint: str | None) -> nn.Module:
    """An open_clip model: `model` is a built-in name, a model-config .json (local or remote) or local-dir:..."""
    import open_clip

    if model.endswith(".json"):
        path = fetch(model)
        open_clip.add_model_config(str(path))
        model = path.stem
    oc = open_clip.create_model(model, pretrained=None)
    if checkpoint:
        oc.load_state_dict(read_state_dict(checkpoint))
    return oc.eval()


def act_name(act: nn.Module) -> str:
    """The transformers `hidden_act` computing the same function as `act`."""
    if isinstance(act, nn.GELU):
        return "gelu_pytorch_tanh" if act.approximate == "tanh" else "gelu"
    if type(act).__name__ == "QuickGELU":
        return "quick_gelu"
    raise ValueError(f"no transformers activation for {act}")


def check_convertible(oc: nn.Module) -> None:
    """Raise unless `oc` has the SigLIP layout that SiglipModel reproduces exactly."""
    trunk = getattr(getattr(oc, "visual", None), "trunk", None)
    problems = []
    if trunk is None or not hasattr(trunk, "blocks"):
        problems.append("vision tower is not a timm ViT")
    else:
        if trunk.cls_token is not None or getattr(trunk, "reg_token", None) is not None:
            problems.append("vision tower has class/register tokens")
        if getattr(trunk, "attn_pool", None) is None:
            problems.append("vision tower lacks the MAP head (timm_pool: map)")
        if not isinstance(trunk.blocks[0].ls1, nn.Identity) or not isinstance(trunk.norm_pre, nn.Identity):
            problems.append("vision tower uses layer scale or a pre-norm")
    text = getattr(oc, "text", None)
    if text is None or getattr(text, "pool_type", None) != "last" or not isinstance(text.text_projection, nn.Linear):
        problems.append("text tower must pool the last token and project with a Linear (proj_bias: true)")
    elif text.attn_mask is not None:
        problems.append("text tower must not be causal (no_causal_mask: true)")
    if getattr(oc, "logit_bias", None) is None:
        problems.append("model has no logit_bias (not a SigLIP)")
    if problems:
        raise ValueError("open_clip model is not convertible to SiglipModel: " + "; ".join(problems))


def siglip_config_from_open_clip(oc: nn.Module):
    """The SiglipConfig whose model matches `oc`'s architecture."""
    from transformers import SiglipConfig

    trunk, text = oc.visual.trunk, oc.text
    block, resblock = trunk.blocks[0], text.transformer.resblocks[0]
    vision = {
        "image_size": trunk.patch_embed.img_size[0],
        "patch_size": trunk.patch_embed.patch_size[0],
        "hidden_size": trunk.embed_dim,
        "intermediate_size": block.mlp.fc1.out_features,
        "num_hidden_layers": len(trunk.blocks),
        "num_attention_heads": block.attn.num_heads,
        "layer_norm_eps": trunk.norm.eps,
        "hidden_act": act_name(block.mlp.act),
    }
    text_cfg = {
        "vocab_size": text.token_embedding.num_embeddings,
        "hidden_size": text.width,
        "intermediate_size": resblock.mlp.c_fc.out_features,
        "num_hidden_layers": len(text.transformer.resblocks),
        "num_attention_heads": text.heads,
        "max_position_embeddings": text.positional_embedding.shape[0],
        "layer_norm_eps": text.ln_final.eps,
        "hidden_act": act_name(resblock.mlp.gelu),
        "projection_size": text.text_projection.out_features,
    }
    if text_cfg["projection_size"] != vision["hidden_size"]:
        raise ValueError("SiglipModel needs the text projection size to equal the vision width")
    return SiglipConfig(text_config=text_cfg, vision_config=vision)


def split_qkv(prefix: str, weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """A fused q/k/v projection as separate q_proj/k_proj/v_proj entries under `prefix`."""
    out = {}
    for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3), bias.chunk(3), strict=True):
        out[f"{prefix}{name}.weight"], out[f"{prefix}{name}.bias"] = w, b
    return out


def vision_state_dict(s: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """timm ViT (`visual.trunk.*`) → `vision_model.*`."""
    t, v = "visual.trunk.", "vision_model."
    out = {
        f"{v}embeddings.patch_embedding.weight": s[f"{t}patch_embed.proj.weight"],
        f"{v}embeddings.patch_embedding.bias": s[f"{t}patch_embed.proj.bias"],
        f"{v}embeddings.position_embedding.weight": s[f"{t}pos_embed"][0],
    }
    for i in range(num_layers):
        src, dst = f"{t}blocks.{i}.", f"{v}encoder.layers.{i}."
        out.update(split_qkv(f"{dst}self_attn.", s[f"{src}attn.qkv.weight"], s[f"{src}attn.qkv.bias"]))
        for a, b in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj")):
            out[f"{dst}{b}.weight"], out[f"{dst}{b}.bias"] = s[f"{src}{a}.weight"], s[f"{src}{a}.bias"]
        for fc in ("fc1", "fc2"):
            out[f"{dst}mlp.{fc}.weight"], out[f"{dst}mlp.{fc}.bias"] = (
                s[f"{src}mlp.{fc}.weight"],
                s[f"{src}mlp.{fc}.bias"],
            )
    p, h = f"{t}attn_pool.", f"{v}head."
    out[f"{h}probe"] = s[f"{p}latent"]
    out[f"{h}attention.in_proj_weight"] = torch.cat([s[f"{p}q.weight"], s[f"{p}kv.weight"]])
    out[f"{h}attention.in_proj_bias"] = torch.cat([s[f"{p}q.bias"], s[f"{p}kv.bias"]])
    pairs = [("proj", "attention.out_proj"), ("norm", "layernorm"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]
    for a, b in pairs:
        out[f"{h}{b}.weight"], out[f"{h}{b}.bias"] = s[f"{p}{a}.weight"], s[f"{p}{a}.bias"]
    out[f"{v}post_layernorm.weight"], out[f"{v}post_layernorm.bias"] = s[f"{t}norm.weight"], s[f"{t}norm.bias"]
    return out


def text_state_dict(s: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """open_clip TextTransformer (`text.*`) → `text_model.*`."""
    t, m = "text.", "text_model."
    out = {
        f"{m}embeddings.token_embedding.weight": s[f"{t}token_embedding.weight"],
        f"{m}embeddings.position_embedding.weight": s[f"{t}positional_embedding"],
    }
    for i in range(num_layers):
        src, dst = f"{t}transformer.resblocks.{i}.", f"{m}encoder.layers.{i}."
        out.update(split_qkv(f"{dst}self_attn.", s[f"{src}attn.in_proj_weight"], s[f"{src}attn.in_proj_bias"]))
        pairs = [
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("attn.out_proj", "self_attn.out_proj"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ]
        for a, b in pairs:
            out[f"{dst}{b}.weight"], out[f"{dst}{b}.bias"] = s[f"{src}{a}.weight"], s[f"{src}{a}.bias"]
    for a, b in (("ln_final", "final_layer_norm"), ("text_projection", "head")):
        out[f"{m}{b}.weight"], out[f"{m}{b}.bias"] = s[f"{t}{a}.weight"], s[f"{t}{a}.bias"]
    return out


def siglip_from_open_clip(model: str, checkpoint: str | None) -> nn.Module:
    """A SiglipModel holding the weights of open_clip `model` loaded from `checkpoint`."""
    from transformers import SiglipModel

    oc = load_open_clip(model, checkpoint)
    check_convertible(oc)
    config = siglip_config_from_open_clip(oc)
    s = oc.state_dict()
    state = {
        **vision_state_dict(s, config.vision_config.num_hidden_layers),
        **text_state_dict(s, config.text_config.num_hidden_layers),
        "logit_scale": s["logit_scale"].reshape(1),
        "logit_bias": s["logit_bias"].reshape(1),
    }
    hf = SiglipModel(config)
    hf.load_state_dict(state, strict=True)
    log.info("converted open_clip %s (%s) to SiglipModel", model, checkpoint)
    return hf.eval()
