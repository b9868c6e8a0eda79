"""Break attempts on export and checkpoint loading (issue 20 follow-up): each test fails on today's code."""

import os

import pytest
import torch

from tests.conftest import REPO
from tests.trainer.runs import folder, train, write_config


def test_lxmert_checkpoint_with_frozen_dtype_bf16_loads_for_fp32_inference(tmp_path, demo_dir):
    """`model.frozen_dtype bf16` is legal with `train.precision bf16`. Loading the checkpoint for inference / eval /
    export (`load`) rebuilds the model with freeze=[] but keeps frozen_dtype, and LXMERT's default_freeze
    (the last cross layer's visual half) is cast to bf16 again: the fp32 forward then fails with
    "mat1 and mat2 must have the same dtype"."""
    from open_vlm.inference.wrapper import load
    from tests.evaluation.test_eval import write_region_shard
    from tests.models.conftest import token_ids
    from tests.tokenize.conftest import make_word_tokenizer

    make_word_tokenizer().save_pretrained(tmp_path / "word_tokenizer")
    write_region_shard(tmp_path / "regions-0.tar", n=16, k=5)
    source = {"name": "regions", "urls": [str(tmp_path / "regions-0.tar")], "modality": "region_features"}
    config = write_config(
        tmp_path,
        demo_dir,
        "lxbf16",
        data={"sources": [source], "num_streams": 1, "max_text_len": 12},
        model={
            "kind": "lxmert",
            "config": str(REPO / "configs/models/lxmert_tiny.yaml"),
            "tokenizer": str(tmp_path / "word_tokenizer"),
            "frozen_dtype": "bf16",
        },
        train={"loss": "lxmert", "precision": "bf16", "max_steps": 1},
    )
    train(config, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    model = load(str(folder(tmp_path, "lxbf16"))).model.eval()
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


def test_siglip_export_processor_pads_texts_as_training_did(siglip_export):
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


def test_exported_paligemma_processor_detect_prompt_runs_on_the_stock_model(tmp_path):
    """Documented trade-off, kept for the record: `AutoProcessor` on the export adds PaliGemma's <loc>/<seg>
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
