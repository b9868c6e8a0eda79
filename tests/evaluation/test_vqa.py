"""Issue 16: VQA accuracy of held-out sources (VQAv2 normalisation; which sources count as VQA; chat models too)."""

import pytest
import torch

from open_vlm.config.schema import ModelConfig, RunConfig, SourceConfig
from open_vlm.evaluation.vqa import exact_match, is_vqa_source, normalize_answer, vqa_evaluator
from open_vlm.models.registry import build_model
from open_vlm.tokenize.tokenizers import load_tokenizer
from tests.conftest import REPO


@pytest.mark.parametrize(
    "answer, normal",
    [
        ("Two", "2"),
        ("The Red one.", "red 1"),
        ("a dog", "dog"),
        ("  yes!  ", "yes"),
        ("dont", "don't"),
        ("1,000", "1000"),
        ("2.5", "2.5"),
        ("on the left-side", "on left side"),
        ("an apple?", "apple"),
    ],
)
def test_normalisation(answer, normal):
    assert normalize_answer(answer) == normal


def test_exact_match_against_any_answer():
    assert exact_match("Two.", ["2", "3"])
    assert exact_match("the left", ["left", "on the left"])
    assert not exact_match("left side", ["left"])
    assert not exact_match("", ["left"])


def source(mixture_dir, name, pattern, **kw):
    return SourceConfig(name=name, urls=[str(mixture_dir / pattern)], **kw)


def test_vqa_sources_are_found_by_their_answers(mixture_dir):
    assert is_vqa_source(source(mixture_dir, "vqa", "vqa/vqa-000000.tar"))
    assert not is_vqa_source(source(mixture_dir, "captions", "demo-000000.tar"))
    assert not is_vqa_source(source(mixture_dir, "text", "text/text-000000.tar", modality="text"))


def test_chat_model_is_scored_on_vqa_sources_only(mixture_dir):
    tok = load_tokenizer(str(mixture_dir / "tokenizer"))
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="vlm", config=str(REPO / "configs/models/vlm_tiny.yaml")), tok)
    cfg = RunConfig()
    cfg.model.kind, cfg.data.batch_size, cfg.data.num_streams = "vlm", 4, 4
    cfg.eval.max_batches, cfg.eval.answer_max_tokens = 2, 3
    sources = [source(mixture_dir, "captions", "demo-000000.tar"), source(mixture_dir, "vqa", "vqa/vqa-000001.tar")]
    evaluator = vqa_evaluator(cfg, bundle, tok, sources)
    assert [s.name for s in evaluator.sources] == ["vqa"]
    batch = next(iter(evaluator.loader))
    assert batch["input_ids"][:, -1].eq(evaluator.text.text.assistant_start[-1]).all()  # asks, then lets it answer
    result = evaluator.evaluate(bundle.model, torch.device("cpu"))
    assert set(result) == {"eval_vqa_accuracy"} and 0.0 <= result["eval_vqa_accuracy"] <= 1.0
    cfg.eval.answer_max_tokens = 0
    assert vqa_evaluator(cfg, bundle, tok, sources) is None
