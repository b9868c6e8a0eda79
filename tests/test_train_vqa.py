"""Issue 16, done (1): the question reaches the model. A tiny PaliGemma trained on VQA shards whose answer depends
only on the question (eight questions, each with its own answer; images carry no information) reaches a low loss
and answers held-out questions right (`eval_vqa_accuracy`); the same run with the questions hidden cannot."""

import io
import json
import random

import pytest
from PIL import Image

from tests.trainer.runs import metrics, train, write_config

QA = {
    "what colour is the sky?": "blue",
    "what colour is grass?": "green",
    "how many legs has a cat?": "four",
    "what do bees make?": "honey",
    "which animal barks?": "dog",
    "what is frozen water?": "ice",
    "which season is cold?": "winter",
    "what do cows drink?": "water",
}
HIDDEN = "what is the answer?"


def write_vqa_shards(folder, hide: bool, shards: int = 2, per_shard: int = 64, seed: int = 0) -> str:
    """VQA shards (jpg + json question/answer); `hide` asks the same question every time."""
    import webdataset as wds

    folder.mkdir(parents=True)
    rng = random.Random(seed)
    for shard in range(shards):
        with wds.TarWriter(str(folder / f"vqa-{shard:06d}.tar")) as sink:
            for i in range(per_shard):
                question = rng.choice(list(QA))
                image = Image.new("RGB", (32, 32), tuple(rng.randint(0, 255) for _ in range(3)))
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                meta = {"question": HIDDEN if hide else question, "answer": [QA[question]]}
                sink.write({"__key__": f"{shard:06d}_{i:05d}", "png": buf.getvalue(), "json": json.dumps(meta)})
    return str(folder / f"vqa-{{000000..{shards - 1:06d}}}.tar")


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory):
    from open_vlm.tokenize.demo_tokenizer import build_demo_tokenizer

    root = tmp_path_factory.mktemp("vqa")
    texts = [*QA, *QA.values(), HIDDEN] * 4
    build_demo_tokenizer(texts, root / "tokenizer", vocab_size=120)
    return root


def run(tmp_path, vqa_dir, name: str, hide: bool) -> list[dict]:
    train_urls = write_vqa_shards(tmp_path / f"{name}-train", hide)
    heldout_urls = write_vqa_shards(tmp_path / f"{name}-heldout", hide, shards=1, per_shard=32, seed=1)
    config = write_config(
        tmp_path,
        vqa_dir,
        name,
        data={"sources": [{"name": "vqa", "urls": [train_urls]}], "batch_size": 8, "num_streams": 8},
        train={"max_steps": 200, "global_batch_size": 8},
        optim={"lr": 3e-3, "warmup_steps": 10},
        eval={"every_steps": 200, "max_batches": 4, "sources": [{"name": "heldout", "urls": [heldout_urls]}]},
        logging={"every_steps": 10},
    )
    train(config)
    return metrics(tmp_path, name)


def test_answers_depend_on_the_question(tmp_path, vqa_dir):
    asked = run(tmp_path, vqa_dir, "asked", hide=False)
    hidden = run(tmp_path, vqa_dir, "hidden", hide=True)
    tail = {name: sum(m["loss"] for m in ms[-5:]) / 5 for name, ms in (("asked", asked), ("hidden", hidden))}
    # eight equally likely answers without the question: the first answer token alone costs ln 8 = 2.08 nats
    assert tail["asked"] < 0.2 and tail["hidden"] > 0.6, tail
    assert asked[-1]["eval_vqa_accuracy"] >= 0.9, asked[-1]
    assert hidden[-1]["eval_vqa_accuracy"] <= 0.5, hidden[-1]
    assert asked[-1]["eval_loss"] < 0.5 * hidden[-1]["eval_loss"]
