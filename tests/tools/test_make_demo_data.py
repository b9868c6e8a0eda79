import io
import json

from PIL import Image

from open_vlm.data.manifest import read_manifest
from open_vlm.data.shards import iter_tar_samples
from open_vlm.tokenize.tokenizers import load_tokenizer


def test_shards_manifest_and_captions(demo_dir):
    manifest = read_manifest(str(demo_dir / "manifest.json"))
    assert [s.num_samples for s in manifest.shards] == [32, 32, 32, 32]
    keys = set()
    for shard in manifest.shards:
        with open(shard.url, "rb") as f:
            samples = list(iter_tar_samples(f, shard.url))
        assert len(samples) == shard.num_samples
        for sample in samples:
            keys.add(sample["__key__"])
            attrs = json.loads(sample["json"])
            caption = sample["txt"].decode()
            assert caption == f"a {attrs['colour']} {attrs['shape']} on the {attrs['place']}"
            image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
            assert image.size == (64, 64)
            # The shape's colour really is in the picture: its channel dominates somewhere.
            channel = {"red": 0, "green": 1, "blue": 2, "yellow": 0}[attrs["colour"]]
            pixels = list(image.getdata())
            assert any(p[channel] > 150 and min(p) < 100 for p in pixels)
    assert len(keys) == 128


def test_tokenizer_round_trip(demo_dir):
    tok = load_tokenizer(str(demo_dir / "tokenizer"))
    text = "a blue triangle on the top"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id


def test_examples_named_by_caption(demo_dir):
    examples = sorted((demo_dir / "examples").glob("*.jpg"))
    assert len(examples) == 4
    assert all(p.stem.startswith("a_") and "_on_the_" in p.stem for p in examples)


def test_vqa_and_text_sets(mixture_dir):
    """`--sets captions,vqa,text`: questions whose answers are the image's attributes, text-only sentences."""
    tok = load_tokenizer(str(mixture_dir / "tokenizer"))
    for folder, prefix in (("vqa", "vqa"), ("text", "text")):
        manifest = read_manifest(str(mixture_dir / folder / "manifest.json"))
        assert [s.num_samples for s in manifest.shards] == [32, 32]
        with open(manifest.shards[0].url, "rb") as f:
            samples = list(iter_tar_samples(f, manifest.shards[0].url))
        assert manifest.shards[0].url.endswith(f"{prefix}-000000.tar")
        for sample in samples:
            if folder == "vqa":
                assert set(sample) - {"__key__", "__url__", "__offset__"} == {"jpg", "json"}
                meta = json.loads(sample["json"])
                assert meta["answer"][0] == meta[meta["asked"]] and meta["question"].endswith("?")
                texts = [meta["question"], *meta["answer"]]
            else:
                assert set(sample) - {"__key__", "__url__", "__offset__"} == {"txt"}
                texts = [sample["txt"].decode()]
            for text in texts:
                assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"], text


def test_unknown_set_is_refused(tmp_path):
    import pytest
    from make_demo_data import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--sets", "captions,video"])
    assert exit_info.value.code == 2
