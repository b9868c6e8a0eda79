"""An open_clip SigLIP checkpoint converted to SiglipModel gives open_clip's own features and logits."""

import json

import pytest
import torch

from open_vlm.config.schema import ModelConfig
from open_vlm.models.open_clip_siglip import load_open_clip, siglip_from_open_clip
from open_vlm.models.registry import build_model
from tests.models.conftest import images, token_ids

OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {
        "image_size": 32,
        "timm_model_name": "open_vlm_test_siglip_vit",
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    },
    "text_cfg": {
        "context_length": 8,
        "vocab_size": 50,
        "width": 32,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    },
}


def register_tiny_timm_vit():
    """A tiny SigLIP-style timm ViT (no class token, MAP head): timm ships none this small."""
    from timm.models import is_model, register_model
    from timm.models.vision_transformer import VisionTransformer

    if is_model("open_vlm_test_siglip_vit"):
        return

    @register_model
    def open_vlm_test_siglip_vit(pretrained=False, **kwargs):
        dims = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2)
        return VisionTransformer(class_token=False, global_pool="map", **dims, num_classes=kwargs.get("num_classes", 0))


@pytest.fixture
def checkpoint(tmp_path):
    """(model-config json, state-dict file, the open_clip model) with non-default random weights."""
    register_tiny_timm_vit()
    cfg = tmp_path / "tiny_siglip_oc.json"
    cfg.write_text(json.dumps(OPEN_CLIP_CFG))
    torch.manual_seed(0)
    model = load_open_clip(str(cfg), None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # move every tensor off its init so a dropped one shows
    torch.save(model.state_dict(), tmp_path / "oc.pt")
    return cfg, tmp_path / "oc.pt", model.eval()


def test_converted_matches_open_clip(checkpoint):
    cfg, weights, oc = checkpoint
    bundle = build_model(ModelConfig(kind="siglip", open_clip_model=str(cfg), open_clip_checkpoint=str(weights)))
    x, text = images(3), token_ids(3, 8, 50)
    with torch.no_grad():
        image_oc, text_oc, scale_oc = oc(x, text)[:3]
        out = bundle.model.eval()(pixel_values=x, input_ids=text)
        logits_oc = oc.get_logits(x, text)[0]
    torch.testing.assert_close(out.image_embeds, image_oc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.text_embeds, text_oc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bundle.model.logit_scale.exp()[0], scale_oc)
    torch.testing.assert_close(out.logits_per_image, logits_oc, atol=1e-5, rtol=1e-5)


def test_checkpoint_from_s3(checkpoint, upload):
    cfg, weights, oc = checkpoint
    url = upload(weights.parent, "oc")
    model = siglip_from_open_clip(f"{url}/{cfg.name}", f"{url}/{weights.name}")
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixel_values=x).pooler_output, oc.encode_image(x), atol=1e-5, rtol=1e-5
        )


def test_non_siglip_layout_is_refused(tmp_path):
    cfg = dict(
        OPEN_CLIP_CFG, vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16}
    )
    path = tmp_path / "tiny_native_vit.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a timm ViT"):
        siglip_from_open_clip(str(path), None)
