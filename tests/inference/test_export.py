"""`open-vlm export`: folders that stock transformers classes load (no remote code) with the same outputs as ours."""

import json
import os

import numpy as np
import pytest
import torch

from open_vlm import OpenVLM
from open_vlm.inference.wrapper import EXPORT_FILE, load
from tests.conftest import REPO
from tests.models.conftest import token_ids
from tests.trainer.runs import folder as run_folder
from tests.trainer.runs import train, write_lxmert_config

ATOL = 1e-5


def stock(kind: str):
    import transformers

    names = {
        "paligemma": "PaliGemmaForConditionalGeneration",
        "siglip": "SiglipModel",
        "lxmert": "LxmertForPreTraining",
    }
    return getattr(transformers, names[kind])


def assert_plain_transformers_folder(folder):
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config  # nothing for trust_remote_code to run
    assert [p.name for p in folder.glob("*.safetensors")] == ["model.safetensors"]  # consolidated


@pytest.mark.parametrize("kind", ["paligemma", "siglip", "lxmert"])
def test_stock_class_loads_the_export_with_our_outputs(trained, exported, examples, kind):
    folder = exported(kind)
    assert_plain_transformers_folder(folder)
    theirs = stock(kind).from_pretrained(str(folder), local_files_only=True).eval()
    ours = load(str(trained(kind))).model.eval()
    assert type(theirs) is type(ours)
    info = json.loads((folder / EXPORT_FILE).read_text())
    assert info["kind"] == kind and info["step"] == 6 and info["source"].endswith("step_00000006")
    with torch.no_grad():
        if kind == "lxmert":
            batch = {
                "input_ids": token_ids(2, 8, ours.config.vocab_size),
                "visual_feats": torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0)),
                "visual_pos": torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(1)),
            }
            a, b = ours(**batch), theirs(**batch)
            torch.testing.assert_close(a.prediction_logits, b.prediction_logits, atol=ATOL, rtol=0)
            torch.testing.assert_close(a.cross_relationship_score, b.cross_relationship_score, atol=ATOL, rtol=0)
            return
        model = OpenVLM.from_pretrained(trained(kind))
        pixels = model.processor.pixel_values(examples)
        if kind == "paligemma":
            batch = {**model.processor.prompts([None, "caption", None, None]), "pixel_values": pixels}
            torch.testing.assert_close(theirs(**batch).logits, ours(**batch).logits, atol=ATOL, rtol=0)
            torch.testing.assert_close(theirs(**batch).logits, model.model(**batch).logits, atol=ATOL, rtol=0)
        else:
            batch = {**model.processor.texts(["a red square", "a blue circle on the left"]), "pixel_values": pixels}
            torch.testing.assert_close(
                theirs(**batch).logits_per_image, ours(**batch).logits_per_image, atol=ATOL, rtol=0
            )


def test_exported_paligemma_processor_loads_offline(exported, examples):
    from PIL import Image
    from transformers import AutoProcessor, PaliGemmaProcessor

    folder = exported("paligemma")
    processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    assert isinstance(processor, PaliGemmaProcessor)
    model = OpenVLM.from_pretrained(folder)
    settings = model.processor.settings
    assert processor.image_seq_length == settings.num_image_tokens
    image = Image.open(examples[0]).convert("RGB").resize((settings.image_size,) * 2)
    inputs = processor(images=[image], text=["caption en"], return_tensors="pt")
    # same statistics and size as training: the exact-size image gives the same pixels
    torch.testing.assert_close(inputs["pixel_values"], model.processor.pixel_values([image]), atol=1e-6, rtol=0)
    ours = model.processor.prompts(["caption en"])["input_ids"][0].tolist()
    ids = inputs["input_ids"][0].tolist()
    assert ids[: settings.num_image_tokens] == ours[: settings.num_image_tokens]  # image tokens, then BOS
    assert ids[settings.num_image_tokens] == ours[settings.num_image_tokens] == processor.tokenizer.bos_token_id


def test_vlm_export(trained, exported, examples):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = exported("vlm")
    ours = OpenVLM.from_pretrained(trained("vlm"))
    again = OpenVLM.from_pretrained(folder)
    assert again.generate_ids(examples, None) == ours.generate_ids(examples, None)
    lm = AutoModelForCausalLM.from_pretrained(str(folder / "language_model"), local_files_only=True).eval()
    AutoTokenizer.from_pretrained(str(folder / "language_model"), local_files_only=True)
    ids = token_ids(2, 9, lm.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, ours.model.language_model(ids).logits, atol=ATOL, rtol=0)


def test_export_round_trips_through_open_vlm(exported, trained, examples):
    folder = exported("siglip")
    a, b = OpenVLM.from_pretrained(folder), OpenVLM.from_pretrained(trained("siglip"))
    assert a.processor.settings == b.processor.settings
    np.testing.assert_allclose(a.encode_image(examples), b.encode_image(examples), atol=ATOL)


def test_export_of_nothing_is_a_clear_error(tmp_path):
    from tests.conftest import run_cli

    out = run_cli("-m", "open_vlm.cli", "export", str(tmp_path / "none"), str(tmp_path / "out"))
    assert out.returncode == 2 and "no complete checkpoint" in out.stderr


def test_export_keeps_the_training_tokenizer(trained, exported, tmp_path):
    """Issue 20.4: building the PaliGemmaProcessor must not add its 1,152 <loc>/<seg> tokens to what is saved."""
    from transformers import AutoTokenizer

    from open_vlm.inference.export import write_export

    loaded = load(str(trained("paligemma")))
    vocab = loaded.model.config.text_config.vocab_size
    before = dict(loaded.tokenizer.get_vocab())
    saved = AutoTokenizer.from_pretrained(str(exported("paligemma")), local_files_only=True)
    assert saved.get_vocab() == before and len(saved) <= vocab
    ids = saved("detect <loc0005>", add_special_tokens=False)["input_ids"]
    assert ids and max(ids) < vocab  # every id has an embedding
    write_export(loaded, loaded.model, tmp_path / "again")
    assert loaded.tokenizer.get_vocab() == before  # the caller's tokenizer is left alone too


def test_clip_export_has_a_stock_scalar_logit_scale(tmp_path):
    """Issue 20.3: our CLIP holds logit_scale as (1,) for FSDP2; the export is transformers' 0-D one."""
    import math

    from transformers import CLIPModel

    from open_vlm.config.schema import ModelConfig
    from open_vlm.inference.export import write_export
    from open_vlm.inference.processor import ProcessorSettings
    from open_vlm.inference.wrapper import Loaded
    from open_vlm.models.registry import build_model
    from tests.models.conftest import CONFIGS, images

    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="clip", config=str(CONFIGS / "clip_tiny.yaml")))
    assert bundle.model.logit_scale.shape == (1,)
    with torch.no_grad():
        bundle.model.logit_scale.fill_(6.0)  # beyond ln 100: exported as training's forwards used it
    settings = ProcessorSettings(kind="clip", task="contrastive", image_size=32)
    folder = write_export(Loaded(bundle.model, None, settings, "here", 1), bundle.model, tmp_path / "clip")
    stock = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    assert stock.logit_scale.dim() == 0 and float(stock.logit_scale.detach()) == pytest.approx(math.log(100.0))
    again = load(str(folder)).model.eval()
    assert again.logit_scale.shape == (1,)
    batch = {"input_ids": token_ids(2, 16, 64), "pixel_values": images(2)}
    with torch.no_grad():
        torch.testing.assert_close(stock(**batch).logits_per_image, again(**batch).logits_per_image)


def test_checkpoint_trained_with_frozen_dtype_bf16_loads_in_fp32(tmp_path, demo_dir):
    """`model.frozen_dtype bf16` is legal with `train.precision bf16`. Loading the checkpoint for inference / eval /
    export (`load`) builds the whole model in fp32: keeping frozen_dtype cast LXMERT's default-frozen half (the last
    cross layer's visual half) to bf16 again, and the fp32 forward failed ("mat1 and mat2 must have the same
    dtype")."""
    from open_vlm.inference.wrapper import load
    from tests.models.conftest import token_ids

    model = {"frozen_dtype": "bf16"}
    train_section = {"loss": "lxmert", "precision": "bf16", "max_steps": 1}
    config = write_lxmert_config(tmp_path, demo_dir, "lxbf16", model=model, train=train_section)
    train(config, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    model = load(str(run_folder(tmp_path, "lxbf16"))).model.eval()
    dtypes = {p.dtype for p in model.parameters()}
    batch = {
        "input_ids": token_ids(2, 8, model.config.vocab_size),
        "visual_feats": torch.randn(2, 5, 16),
        "visual_pos": torch.rand(2, 5, 4),
    }
    with torch.no_grad():
        model(**batch)  # RuntimeError: mat1 and mat2 must have the same dtype, but got Float and BFloat16
    assert dtypes == {torch.float32}


@pytest.fixture
def siglip_export(tmp_path):
    """A tiny SigLIP trained with `data.max_text_len 16`, exported with the demo-style tokenizer."""
    from open_vlm.config.schema import ModelConfig
    from open_vlm.inference.export import write_export
    from open_vlm.inference.processor import ProcessorSettings
    from open_vlm.inference.wrapper import Loaded
    from open_vlm.models.registry import build_model
    from tests.tokenize.conftest import bpe_tokenizer

    tok = bpe_tokenizer("metaspace", tmp_path / "tok")
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="siglip", config=str(REPO / "configs/models/siglip_tiny.yaml")), tok)
    settings = ProcessorSettings(kind="siglip", task="contrastive", image_size=32, max_text_len=16)
    out = write_export(Loaded(bundle.model.eval(), tok, settings, "here", 1), bundle.model, tmp_path / "siglip")
    return out, bundle.model.eval(), tok, settings


def test_siglip_export_processor_pads_texts_to_the_training_length(siglip_export):
    """SigLIP pools the last position, so text features depend on the padded length. Training padded to
    `max_text_len` (16); the stock recipe `processor(text=..., padding="max_length")` on the export must give the
    same ids and the same text embeddings. Today the saved tokenizer has no model_max_length: the stock recipe
    raises ("Unable to create tensor ... activate truncation and/or padding"), and `padding=True` gives
    embeddings that differ from training's by ~0.39."""
    from transformers import AutoProcessor, SiglipModel

    from open_vlm.inference.processor import InferenceProcessor
    from open_vlm.inference.wrapper import OpenVLM

    folder, model, tok, settings = siglip_export
    processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    stock = SiglipModel.from_pretrained(str(folder), local_files_only=True).eval()
    texts = ["a red square", "a blue circle on the left"]
    ours = OpenVLM(model, InferenceProcessor(tok, settings))
    want = ours.processor.texts(texts)
    assert processor.tokenizer.model_max_length == settings.max_text_len, processor.tokenizer.model_max_length
    got = processor(text=texts, padding="max_length", return_tensors="pt")
    assert got["input_ids"].tolist() == want["input_ids"].tolist()
    with torch.no_grad():
        theirs = stock.get_text_features(input_ids=got["input_ids"], attention_mask=got["attention_mask"])
    theirs = theirs if isinstance(theirs, torch.Tensor) else theirs.pooler_output
    torch.testing.assert_close(torch.nn.functional.normalize(theirs, dim=-1), ours.encode_text(texts))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="documented trade-off (README, Export)")
def test_exported_paligemma_processor_detect_prompt_runs_on_the_stock_model(tmp_path):
    """Documented trade-off, kept for the record (it fails until a loc/seg option resizes the embeddings): `AutoProcessor` on the export adds PaliGemma's <loc>/<seg>
    tokens again in memory, so `"detect <loc0005>"` gets an id past the model's vocabulary and the stock model
    fails with IndexError (a device-side assert on CUDA) instead of tokenizing the text as training would."""
    from PIL import Image
    from transformers import AutoProcessor, PaliGemmaForConditionalGeneration

    from open_vlm.config.schema import ModelConfig
    from open_vlm.inference.export import write_export
    from open_vlm.inference.processor import ProcessorSettings
    from open_vlm.inference.wrapper import Loaded
    from open_vlm.models.registry import build_model
    from tests.tokenize.conftest import bpe_tokenizer

    tok = bpe_tokenizer("metaspace", tmp_path / "tok")
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="paligemma", config=str(REPO / "configs/models/paligemma_tiny.yaml")), tok)
    settings = ProcessorSettings(
        kind="paligemma", task="prefix_lm", image_size=32, num_image_tokens=bundle.num_image_tokens
    )
    out = write_export(Loaded(bundle.model.eval(), tok, settings, "here", 1), bundle.model, tmp_path / "pg")
    processor = AutoProcessor.from_pretrained(str(out), local_files_only=True)
    stock = PaliGemmaForConditionalGeneration.from_pretrained(str(out), local_files_only=True).eval()
    inputs = processor(images=[Image.new("RGB", (32, 32))], text=["detect <loc0005>"], return_tensors="pt")
    vocab = stock.config.text_config.vocab_size
    assert int(inputs["input_ids"].max()) < vocab, (int(inputs["input_ids"].max()), vocab)
    with torch.no_grad():
        stock(**inputs)
