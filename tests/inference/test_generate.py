"""Generation through `OpenVLM`: KV cache, left padding, sampling, and the same tokens as transformers' generate."""

import pytest
import torch

from open_vlm import OpenVLM
from open_vlm.data.decode import decode_image, normalize_images
from open_vlm.inference.generate import GenerationSettings, filter_logits

PROMPTS = [None, "caption", "caption en please", None]  # different lengths: left padding in the batch

GENERATIVE = ["paligemma", "vlm"]


def until_eos(rows: list[list[int]], eos: int) -> list[list[int]]:
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@pytest.fixture(scope="module")
def models(trained):
    return {kind: OpenVLM.from_pretrained(trained(kind)) for kind in GENERATIVE}


@pytest.mark.parametrize("kind", GENERATIVE)
def test_cached_and_uncached_generation_are_identical(models, examples, kind):
    model = models[kind]
    cached = model.generate_ids(examples, PROMPTS, GenerationSettings(max_new_tokens=12))
    uncached = model.generate_ids(examples, PROMPTS, GenerationSettings(max_new_tokens=12, use_cache=False))
    assert cached == uncached
    assert sum(len(row) for row in cached) > 0


@pytest.mark.parametrize("kind", GENERATIVE)
def test_the_cache_is_used(models, examples, kind, monkeypatch):
    """With the cache, every step after the first feeds one new token; without, the whole sequence."""
    model = models[kind]
    lengths = {True: [], False: []}
    forward = model.model.forward if kind == "paligemma" else model.model.language_model.forward
    target = model.model if kind == "paligemma" else model.model.language_model

    def spy(use_cache):
        def call(*args, **kwargs):
            x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
            lengths[use_cache].append(x.shape[1])
            return forward(*args, **kwargs)

        return call

    for use_cache in (True, False):
        monkeypatch.setattr(target, "forward", spy(use_cache))
        model.generate_ids(examples[:1], None, GenerationSettings(max_new_tokens=6, use_cache=use_cache))
    assert lengths[True][1:] == [1] * (len(lengths[True]) - 1) and len(lengths[True]) > 1
    assert lengths[False] == list(range(lengths[False][0], lengths[False][0] + len(lengths[False])))
    assert lengths[True][0] == lengths[False][0]


@pytest.mark.parametrize("kind", GENERATIVE)
def test_batched_left_padded_equals_one_by_one(models, examples, kind):
    model = models[kind]
    settings = GenerationSettings(max_new_tokens=10)
    batched = model.generate_ids(examples, PROMPTS, settings)
    alone = [model.generate_ids([im], [p], settings)[0] for im, p in zip(examples, PROMPTS)]
    assert batched == alone


def test_paligemma_tokens_equal_transformers_generate(models, exported, examples):
    from transformers import PaliGemmaForConditionalGeneration

    ours = models["paligemma"]
    hf = PaliGemmaForConditionalGeneration.from_pretrained(str(exported("paligemma")), local_files_only=True).eval()
    proc = ours.processor
    batch = proc.prompts(PROMPTS)
    out = hf.generate(
        **batch,
        pixel_values=proc.pixel_values(examples),
        max_new_tokens=12,
        do_sample=False,
        suppress_tokens=[proc.image_token_id],
        eos_token_id=proc.eos_id,
        pad_token_id=proc.pad_id,
    )
    theirs = until_eos(out[:, batch["input_ids"].shape[1] :].tolist(), proc.eos_id)
    assert ours.generate_ids(examples, PROMPTS, GenerationSettings(max_new_tokens=12)) == theirs


def test_vlm_tokens_equal_its_transformers_generate(models, examples):
    """`VisionLanguageModel.generate` (transformers' loop over `inputs_embeds`) agrees with ours, cached or not."""
    ours = models["vlm"]
    proc = ours.processor
    batch = proc.prompts(PROMPTS)
    want = ours.generate_ids(examples, PROMPTS, GenerationSettings(max_new_tokens=12))
    for use_cache in (True, False):
        out = ours.model.generate(
            batch["input_ids"],
            pixel_values=proc.pixel_values(examples),
            attention_mask=batch["attention_mask"],
            max_new_tokens=12,
            do_sample=False,
            use_cache=use_cache,
            suppress_tokens=[proc.image_token_id],
            eos_token_id=proc.eos_id,
            pad_token_id=proc.pad_id,
        )
        assert until_eos(out.tolist(), proc.eos_id) == want


@pytest.mark.parametrize("kind", GENERATIVE)
def test_sampling_is_seeded(models, examples, kind):
    model = models[kind]
    sample = dict(max_new_tokens=10, do_sample=True, temperature=1.5)
    a = model.generate_ids(examples, None, GenerationSettings(**sample, seed=1))
    assert a == model.generate_ids(examples, None, GenerationSettings(**sample, seed=1))
    others = [model.generate_ids(examples, None, GenerationSettings(**sample, seed=s)) for s in (2, 3)]
    assert any(o != a for o in others)
    greedy = model.generate_ids(examples, None, GenerationSettings(max_new_tokens=10))
    assert model.generate_ids(examples, None, GenerationSettings(**sample, seed=4, top_k=1)) == greedy
    assert model.generate_ids(examples, None, GenerationSettings(**sample, seed=4, top_p=1e-6)) == greedy


def test_filters_keep_what_they_should():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda **kw: torch.isfinite(filter_logits(logits, GenerationSettings(**kw))).tolist()[0]  # noqa: E731
    assert keep(top_k=2) == [True, True, False, False]
    assert keep(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7 <= 0.8
    assert keep(top_p=0.9) == [True, True, True, False]
    assert keep(top_p=1.0, top_k=0) == [True] * 4


def test_stops_at_max_new_tokens_and_at_eos(models, examples):
    model = models["paligemma"]
    assert all(len(r) <= 3 for r in model.generate_ids(examples, None, GenerationSettings(max_new_tokens=3)))
    # Make EOS the only choice: generation stops at once with nothing to say.
    head = model.model.lm_head
    bias = torch.full((head.out_features,), -1e4)
    bias[model.processor.eos_id] = 1e4
    handle = head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        assert model.generate_ids(examples, None, GenerationSettings(max_new_tokens=5)) == [[]] * len(examples)
    finally:
        handle.remove()


def test_images_preprocessed_as_in_training(models, examples):
    from pathlib import Path

    from PIL import Image

    proc = models["paligemma"].processor
    size = proc.settings.image_size
    raw = Path(examples[0]).read_bytes()
    want = normalize_images(decode_image(raw, size)[None])  # what the trainer feeds
    assert torch.equal(proc.pixel_values([examples[0]]), want)
    assert torch.equal(proc.pixel_values([raw]), want)
    png = Image.new("RGB", (size, size), (10, 200, 30))
    assert torch.allclose(proc.pixel_values([png])[0, :, 0, 0], torch.tensor([10, 200, 30]) / 127.5 - 1)


def test_device_and_dtype(trained, examples):
    model = OpenVLM.from_pretrained(trained("paligemma"), dtype="bf16")
    assert model.dtype == torch.bfloat16 and not model.model.training
    assert len(model.generate(examples[:2], max_new_tokens=3)) == 2


def test_an_undecodable_image_is_named(tmp_path):
    """A bad image given by path says which one and why, without PIL's in-memory buffer in the message."""
    from open_vlm.inference.processor import image_tensor

    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(ValueError) as err:
        image_tensor(str(bad), 16)
    assert str(err.value) == f"'{bad}': undecodable image: not a format PIL reads"
    with pytest.raises(ValueError, match=r"^image bytes: undecodable image"):
        image_tensor(bad.read_bytes(), 16)
