import pytest
import torch

from open_vlm.config.schema import DataConfig, SourceConfig
from open_vlm.data.build import build_loader
from open_vlm.tokenize.registry import build_processor
from open_vlm.tokenize.tokenizers import load_tokenizer

CASES = {
    "prefix_lm": ("image_text", {"num_image_tokens": 4, "max_len": 12}),
    "chat_lm": ("image_text", {"num_image_tokens": 4, "max_len": 64}),
    "causal_lm": ("text", {"max_len": 10, "pack": True}),
}


def loader_batches(urls: str, modality: str, process, collate, n: int = 3) -> list[dict]:
    cfg = DataConfig(
        sources=[SourceConfig(name="s", urls=[urls], modality=modality)], batch_size=4, num_streams=4, shuffle_window=8
    )
    loader = build_loader(cfg, seed=5, global_batch=8, image_size=16, process=process, collate=collate)
    batches = iter(loader)
    return [next(batches) for _ in range(n)]


@pytest.mark.parametrize("task", sorted(CASES))
def test_pretokenized_shards_yield_identical_batches(demo_dir, tmp_path, task):
    from tokenize_shards import main

    modality, options = CASES[task]
    tokenizer_dir = str(demo_dir / "tokenizer")
    args = ["--urls", str(demo_dir / "demo-{000000..000003}.tar"), "--modality", modality, "--task", task]
    args += ["--tokenizer", tokenizer_dir, "--out", str(tmp_path / "tok")]
    args += [f"--option={k}={str(v).lower()}" for k, v in options.items()]
    assert main(args) == 0
    assert [p.name for p in (tmp_path / "tok").glob("*.npy")] == ["manifest.offsets.npy"]  # arrays: in the shards

    tok = load_tokenizer(tokenizer_dir)
    fly = loader_batches(str(demo_dir / "demo-{000000..000003}.tar"), modality, *build_processor(task, tok, **options))
    # a pretokenized-only processor, and the default one that routes by the source's modality
    pre_urls = str(tmp_path / "tok" / "demo-{000000..000003}.tar")
    pre = loader_batches(pre_urls, "pretokenized", *build_processor(task, tok, pretokenized=True, **options))
    routed = loader_batches(pre_urls, "pretokenized", *build_processor(task, tok, **options), n=1)
    for a, b in [*zip(fly, pre), (fly[0], routed[0])]:
        assert a.keys() == b.keys()
        for key in a:
            if key == "__meta__":
                assert [m["key"] for m in a[key]] == [m["key"] for m in b[key]]
                assert all(m["url"] != n["url"] for m, n in zip(a[key], b[key]))  # really read other shards
            elif isinstance(a[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key
    assert fly[0]["num_supervised"] > 0
    assert not torch.equal(fly[0]["input_ids"], fly[1]["input_ids"])  # batches differ, so equality means something
