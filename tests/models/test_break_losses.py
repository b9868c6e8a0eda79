"""Break attempts on packed masks and mean-reduced losses (issue 20 follow-up): each test fails on today's code."""

import json
import os

import pytest
import torch

from open_vlm.models.registry import lm_forward
from open_vlm.tokenize.causal import PackedCausalLMCollator
from tests.conftest import REPO, run_cli
from tests.models.test_attention import loss_sum

VOCAB = 64


def sliding_lm(family: str, attn: str):
    """A tiny causal LM with a sliding-window attention of 3 tokens (Mistral; Gemma 2 alternates full/sliding)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=3,
        attn_implementation=attn,
    )
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**common)).eval()
    return Gemma2ForCausalLM(Gemma2Config(head_dim=8, **common)).eval()


@pytest.mark.parametrize(("family", "attn"), [("mistral", "eager"), ("mistral", "sdpa"), ("gemma2", "eager")])
def test_packed_rows_keep_the_sliding_window(family, attn):
    """`lm_forward` hands a ready 4-D block-causal mask to the model; transformers returns a 4-D mask as is, so
    the sliding window of Mistral / Gemma 2 / Gemma 3 (PaliGemma 2's decoder) is dropped for packed rows: a
    token attends to its whole document instead of the last `sliding_window` tokens. Unpacked documents keep the
    window, so packing changes the loss (Mistral 86.91 vs 87.02). Feeding only the restarting `position_ids`
    (transformers finds the documents itself) gives the unpacked loss exactly."""
    model = sliding_lm(family, attn)
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(5, VOCAB, (n,), generator=gen) for n in (7, 3, 8, 2, 6)]
    batch = PackedCausalLMCollator(0, row_length=12)([{"input_ids": d, "labels": d.clone()} for d in docs])
    assert batch["input_ids"].shape[0] < len(docs)  # really packed
    with torch.no_grad():
        unpacked = sum(loss_sum(lm_forward(model, {"input_ids": d[None]})["logits"], d[None]) for d in docs)
        packed = loss_sum(lm_forward(model, batch)["logits"], batch["labels"])
    torch.testing.assert_close(packed, unpacked, atol=1e-4, rtol=1e-5)


@pytest.fixture(scope="module")
def dist_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("break_dist") / "records.json"
    result = run_cli(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "tests/models/break_dist_main.py"),
        str(out),
        env={"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_lxmert_invalid_rows_on_another_rank_change_nothing(dist_records):
    """Interface 1 on 2 ranks: rank 1's micro-batch is all invalid copies. The lxmert loss is a per-rank mean
    (LossOutput reduction "mean"), so rank 1 returns 0 and DDP's average halves rank 0's gradient: norm ratio 0.5
    vs one process on the valid rows (the same happens under gradient accumulation, loop.py `out.loss / accum`).
    next_token (global normaliser) and clip/siglip (global valid count) are exact in the same situation."""
    r = dist_records["lxmert"]
    assert abs(r["norm_ratio"] - 1.0) < 1e-4, r
    assert r["cosine"] > 0.9999, r


@pytest.mark.slow
def test_siglip_scale_and_bias_reach_the_loss_in_fp32_under_fsdp_bf16(dist_records):
    """contrastive_losses.py: 'Logits and losses are computed in fp32 whatever the features' dtype'. Under FSDP2
    with `train.precision bf16`, MixedPrecisionPolicy casts `logit_scale` and `logit_bias` to bf16 with every
    other parameter, and `contrastive_forward` reads those: the loss gets bias -10.0 for a parameter of -10.03
    (bf16 spacing 0.0625 near 10: bias updates below it are invisible to the forward) and a rounded scale.
    Under DDP + autocast (and in open_clip's AMP training) both stay fp32."""
    r = dist_records["siglip_fsdp_bf16"]
    assert r["scale_dtype"] == "torch.float32" and r["bias_dtype"] == "torch.float32", r
    assert abs(r["bias"] - r["bias_fp32"]) < 1e-5, r
    assert abs(r["scale"] - r["scale_fp32"]) < 1e-4 * r["scale_fp32"], r


@pytest.mark.parametrize("task", ["causal_lm", "chat_lm"])
def test_paligemma_on_tasks_without_token_types_stays_causal(task):
    """`data.task` may name `causal_lm` or `chat_lm` for `model.kind paligemma` (nothing refuses it). Their
    batches carry no `token_type_ids`; PaliGemma's config turns on `use_bidirectional_attention`, and without
    token types transformers builds no mask under SDPA (the default), so every token attends to the future:
    changing the last text token changes the logits of every earlier position. Eager attention (and the same
    rows with token_type_ids = 1) stay causal."""
    from open_vlm.config.schema import ModelConfig
    from open_vlm.data.build import batch_to_device
    from open_vlm.models.registry import build_model
    from open_vlm.tokenize.registry import build_processor
    from tests.models.conftest import CONFIGS
    from tests.tokenize.conftest import make_word_tokenizer, word_id

    tok = make_word_tokenizer()
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="paligemma", config=str(CONFIGS / "paligemma_tiny.yaml")), tok)
    model = bundle.model.train()
    assert bundle.model.config.text_config._attn_implementation == "sdpa"
    options = {"max_len": 32} if task == "causal_lm" else {"max_len": 32, "num_image_tokens": bundle.num_image_tokens}
    processor, collate = build_processor(task, tok, **options)
    image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def logits(text):
        batch = batch_to_device(collate([processor({"text": text, "image": image, "__key__": "k"})]), "cpu")
        assert "token_type_ids" not in batch
        with torch.no_grad():
            return bundle.forward(model, batch)["logits"][0], batch["input_ids"][0]

    a, ids_a = logits("a red square on the left")
    b, ids_b = logits("a red square on the right")
    changed = int((ids_a != ids_b).nonzero()[0])
    assert ids_a[changed] == word_id("left") and ids_b[changed] == word_id("right")
    leak = float((a[:changed] - b[:changed]).abs().max())
    assert leak == 0.0, f"positions before the changed token moved by {leak}"


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_contrastive_loss_is_fp32_inside_the_trainers_autocast(kind):
    """contrastive_losses.py: 'Logits and losses are computed in fp32 whatever the features' dtype'. The trainer
    calls the loss inside `strategy.autocast()` (single / DDP with `train.precision bf16`), where the `.float()`
    casts are undone: the logit matmuls run in bf16. Same fp32 features in, the loss moves by 4e-4 (relative) and
    the feature gradients by 1.1% (clip) / 0.4% (siglip) vs the same call without autocast (= open_clip fp32)."""
    from open_vlm.models.losses import build_loss

    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)
    text = torch.nn.functional.normalize(image + 0.5 * torch.randn(64, 32, generator=g), dim=-1)
    loss_fn = build_loss(kind)

    def run(autocast: bool):
        a, b = image.clone().requires_grad_(), text.clone().requires_grad_()
        outputs = {"image_features": a, "text_features": b, "logit_scale": torch.tensor(100.0)}
        outputs["logit_bias"] = torch.tensor(-10.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(outputs, {"valid": torch.ones(64, dtype=torch.bool)}).loss
        loss.backward()
        return float(loss.detach()), torch.cat([a.grad.flatten(), b.grad.flatten()])

    (loss32, grad32), (loss_auto, grad_auto) = run(False), run(True)
    assert abs(loss_auto - loss32) <= 1e-6 * loss32, (loss_auto, loss32)
    assert float((grad_auto - grad32).norm() / grad32.norm()) < 1e-5
