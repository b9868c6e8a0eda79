"""`model.module`: a user's module outside the package registers a model kind and a loss, and training uses them."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.trainer.runs import ENV, folder, write_config

USER_MODULE = '''
"""A lab's own captioner, registered from outside open_vlm."""
import os
from types import SimpleNamespace

import torch
import torch.nn as nn

from open_vlm.models.losses import LossOutput, next_token_loss_sum, register_loss
from open_vlm.models.registry import ModelBundle, register_model


class MeanColourCaptioner(nn.Module):
    """Token embeddings plus the image's mean colour, through a GRU."""

    def __init__(self, vocab: int, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.colour = nn.Linear(3, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids, pixel_values=None, use_cache=False, **unused):
        x = self.embed(input_ids) + self.colour(pixel_values.mean((2, 3)))[:, None]
        return SimpleNamespace(logits=self.head(self.rnn(x)[0]))


@register_model("mean_colour_captioner")
def build(cfg, tokenizer):
    model = MeanColourCaptioner(len(tokenizer))
    groups = {"vision": ["colour."], "language": ["embed.", "rnn.", "head."]}
    return ModelBundle(model, "mean_colour_captioner", image_size=32, num_image_tokens=4, groups=groups)


@register_loss("counted_next_token")
def counted(**unused):
    def fn(outputs, batch):
        with open(os.environ["USER_LOSS_LOG"], "a") as log:
            log.write("call\\n")
        labels = batch["labels"].to(outputs["logits"].device)
        count = int((labels[:, 1:] != -100).sum())
        return LossOutput(next_token_loss_sum(outputs["logits"], labels), count)

    return fn
'''


@pytest.fixture
def user_module(tmp_path):
    """`lab_models/captioners.py` in a folder of its own (put on PYTHONPATH by the tests)."""
    package = tmp_path / "user_code" / "lab_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "captioners.py").write_text(textwrap.dedent(USER_MODULE))
    return tmp_path / "user_code"


def test_a_user_module_registers_a_model_kind_and_a_loss_that_train(user_module, tmp_path, demo_dir, monkeypatch):
    from tests.conftest import run_cli

    config = write_config(
        tmp_path,
        demo_dir,
        "user",
        model={
            "kind": "mean_colour_captioner",
            "module": "lab_models.captioners",
            "tokenizer": str(demo_dir / "tokenizer"),
        },
        train={"max_steps": 4, "global_batch_size": 4, "loss": "counted_next_token"},
        data={"batch_size": 2},
    )
    log = tmp_path / "loss_calls.txt"
    env = {**ENV, "PYTHONPATH": f"{user_module}:{ENV['PYTHONPATH']}", "USER_LOSS_LOG": str(log)}
    result = run_cli("-m", "open_vlm.train", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in (folder(tmp_path, "user") / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    assert len(log.read_text().splitlines()) == 4 * 2  # the user's loss ran for every micro-batch

    # The checkpoint rebuilds the user's model too, once the caller names the module (the one the checkpoint
    # records is never imported by a loader: a checkpoint must not choose the code that runs).
    from open_vlm.checkpoint.model_io import load_model_from_checkpoint

    monkeypatch.syspath_prepend(str(user_module))
    with pytest.raises(ValueError, match="never imports"):
        load_model_from_checkpoint(str(folder(tmp_path, "user")))
    bundle, _, cfg = load_model_from_checkpoint(str(folder(tmp_path, "user")), module="lab_models.captioners")
    assert type(bundle.model).__name__ == "MeanColourCaptioner" and cfg.model.module == "lab_models.captioners"


def test_a_module_that_cannot_be_imported_is_one_line(tmp_path, demo_dir):
    from tests.conftest import run_cli

    config = write_config(tmp_path, demo_dir, "missing", model={"module": "lab_modles.captioners"})
    result = run_cli("-m", "open_vlm.train", "--config", str(config), env=ENV)
    assert result.returncode == 2
    assert "model.module: cannot import 'lab_modles.captioners'" in result.stderr
    assert "PYTHONPATH" in result.stderr and "Traceback" not in result.stderr


def test_import_extension_is_a_no_op_without_a_name():
    from open_vlm.extensions import import_extension

    assert import_extension(None) is None and import_extension("") is None
    assert import_extension("json") is json
