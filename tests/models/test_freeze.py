"""Freezing by group and glob, unfreezing after, frozen dtype, the optimizer and the parameter table."""

import pytest
import torch

from open_vlm.config.schema import ModelConfig, OptimConfig
from open_vlm.models.freeze import apply_freeze, format_parameter_table, parameter_table
from open_vlm.models.registry import build_model
from open_vlm.trainer.optim import build_optimizer
from tests.models.conftest import CONFIGS
from tests.models.test_vlm import with_images


def tiny(**model):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="vlm", config=str(CONFIGS / "vlm_tiny.yaml"), **model))


def frozen_names(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_optimizer_step_leaves_frozen_bits_alone():
    bundle = tiny(freeze=["vision", "language_model.model.layers.0.*"])
    model = bundle.model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, _ = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1), max_steps=10)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    batch = with_images()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param, before[name]), f"trainable {name} did not move"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    assert any(n.startswith("vision_tower.") for n in frozen_names(model))
    assert any(n.startswith("language_model.model.layers.0.") for n in frozen_names(model))


def test_unfreeze_after_group_freeze():
    model = tiny(freeze=["vision"], unfreeze=["vision_tower.encoder.layers.1.*"]).model
    frozen = frozen_names(model)
    trainable = {n for n, _ in model.named_parameters()} - frozen
    assert {n for n in trainable if n.startswith("vision_tower.")} == {
        n for n, _ in model.named_parameters() if n.startswith("vision_tower.encoder.layers.1.")
    }
    assert "vision_tower.encoder.layers.0.mlp.fc1.weight" in frozen
    assert "vision_tower.post_layernorm.weight" in frozen
    assert not any(n.startswith(("projector.", "language_model.")) for n in frozen)


def test_language_group_includes_embeddings_and_head():
    model = tiny(freeze=["language"], unfreeze=["lm_head"]).model
    frozen = frozen_names(model)
    assert "language_model.model.embed_tokens.weight" in frozen
    assert "language_model.lm_head.weight" not in frozen
    assert not any(n.startswith(("vision_tower.", "projector.")) for n in frozen)


def test_unknown_pattern_is_an_error():
    bundle = tiny()
    with pytest.raises(ValueError, match="matches no parameter"):
        apply_freeze(bundle.model, bundle.groups, ["visoin"])


def test_parameter_table_counts():
    bundle = tiny(freeze=["vision", "embeddings"])
    rows = {r.group: r for r in parameter_table(bundle.model, bundle.groups)}
    params = dict(bundle.model.named_parameters())
    vision = sum(p.numel() for n, p in params.items() if n.startswith("vision_tower."))
    embed = params["language_model.model.embed_tokens.weight"].numel()
    assert (rows["vision"].trainable, rows["vision"].frozen) == (0, vision)
    assert (rows["embeddings"].trainable, rows["embeddings"].frozen) == (0, embed)
    assert rows["language"].frozen == 0  # embeddings are counted in their own, more specific group
    assert rows["total"].frozen == vision + embed
    assert rows["total"].trainable + rows["total"].frozen == sum(p.numel() for p in params.values())
    text = format_parameter_table(list(rows.values()))
    assert "projector" in text and f"{vision:,}" in text


def test_frozen_dtype_bf16_keeps_trainable_fp32_and_runs():
    model = tiny(freeze=["vision"], frozen_dtype="bf16").model
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if n.startswith("vision_tower."))
    assert all(d == torch.float32 for n, d in dtypes.items() if not n.startswith("vision_tower."))
    batch = with_images()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert model.projector.proj[0].weight.grad is not None


def test_frozen_modules_run_without_dropout_while_training():
    """Issue 20.9: a frozen LXMERT embedding gives the same output on every call in training mode."""
    torch.manual_seed(0)
    bundle = build_model(
        ModelConfig(kind="lxmert", config=str(CONFIGS / "lxmert_tiny.yaml"), freeze=["embeddings", "language"])
    )
    model = bundle.model
    for module in model.modules():  # make dropout obvious
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    seen: dict[str, list[torch.Tensor]] = {"embeddings": [], "cross": []}
    model.lxmert.embeddings.register_forward_hook(lambda m, a, out: seen["embeddings"].append(out.detach()))
    model.lxmert.encoder.x_layers[0].register_forward_hook(lambda m, a, out: seen["cross"].append(out[0].detach()))
    batch = {
        "input_ids": torch.randint(5, 60, (2, 8), generator=torch.Generator().manual_seed(0)),
        "visual_feats": torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)),
        "visual_pos": torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(2)),
    }
    for _ in range(2):
        model.train()  # as the trainer (and the held-out evaluator after evaluating) does
        model(**batch)
    torch.testing.assert_close(seen["embeddings"][0], seen["embeddings"][1], atol=0, rtol=0)
    assert not model.lxmert.embeddings.training and model.lxmert.encoder.x_layers[0].training
    assert not torch.allclose(seen["cross"][0], seen["cross"][1])  # trainable parts still use dropout


def test_frozen_bf16_under_fp32_is_refused_in_one_line(tmp_path, demo_dir):
    """Issue 20.10: frozen bf16 weights with fp32 precision are refused up front, not a crash at step 1."""
    from tests.conftest import run_cli
    from tests.trainer.runs import ENV, write_config

    config = write_config(
        tmp_path, demo_dir, "bf16frozen", model={"freeze": ["vision"], "frozen_dtype": "bf16"}, train={"max_steps": 1}
    )
    out = run_cli("-m", "open_vlm.train", "--config", str(config), env=ENV)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "model.frozen_dtype bf16 needs train.precision bf16 or fp16" in out.stderr
    assert "Traceback" not in out.stderr


def test_partly_frozen_layer_in_bf16_trains_under_autocast():
    model = tiny(freeze=["language_model.model.layers.0.self_attn.*"], frozen_dtype="bf16").model.train()
    assert model.language_model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    batch = with_images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert model.language_model.model.layers[0].mlp.up_proj.weight.grad is not None
