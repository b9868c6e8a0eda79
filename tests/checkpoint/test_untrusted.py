"""A checkpoint from someone else never runs code: a pickle payload in `.metadata` or in a shard is refused
by every entry point that reads checkpoints, with one line, and the payload never runs."""

import ast
import dataclasses
import hashlib
import json
import pickle
import shutil

import pytest
import yaml

from open_vlm.checkpoint.checkpointer import Checkpointer, torch_bytes
from tests.conftest import REPO, run_cli
from tests.trainer.runs import ENV, folder, write_config


class Payload:
    """Unpickling this creates a file: what an attacker's code would do, made harmless."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def copied(base_run, tmp_path):
    """A copy of a real checkpoint (step 4 of the shared base run) and where a payload would write."""
    tmp, _ = base_run
    ckpt = tmp_path / "ckpts" / "step_00000004"
    shutil.copytree(folder(tmp, "base") / "checkpoints" / "step_00000004", ckpt)
    return ckpt, tmp_path / "payload_ran"


@pytest.fixture
def tampered(copied):
    """The payload in `.metadata`, and the COMPLETE marker's record of it rewritten to match (whoever can write the
    checkpoint can write its marker: the size check must not be what stops the payload)."""
    ckpt, marker = copied
    payload = pickle.dumps(Payload(marker))
    (ckpt / ".metadata").write_bytes(payload)
    complete = json.loads((ckpt / "COMPLETE").read_text())
    complete["files"][".metadata"] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    (ckpt / "COMPLETE").write_text(json.dumps(complete))
    return ckpt, marker


def entry_points(ckpt, tmp_path, demo_dir) -> dict[str, list[str]]:
    resume = write_config(tmp_path, demo_dir, "resume", checkpoint={"resume": str(ckpt)})
    init = write_config(tmp_path, demo_dir, "init", checkpoint={"resume": "none", "init_from": str(ckpt)})
    return {
        "train --checkpoint.resume": ["-m", "open_vlm.train", "--config", str(resume)],
        "train --checkpoint.init_from": ["-m", "open_vlm.train", "--config", str(init)],
        "export": ["-m", "open_vlm.cli", "export", str(ckpt), str(tmp_path / "exported")],
        "view": ["-m", "open_vlm.cli", "view", str(ckpt), "--json"],
    }


@pytest.mark.parametrize("command", ["train --checkpoint.resume", "train --checkpoint.init_from", "export", "view"])
def test_a_metadata_payload_is_refused(tampered, tmp_path, demo_dir, command):
    ckpt, marker = tampered
    out = run_cli(*entry_points(ckpt, tmp_path, demo_dir)[command], env=ENV)
    assert out.returncode != 0
    assert not marker.exists(), "the payload ran"
    assert ".metadata: refers to io.open" in out.stderr and "refusing" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "exported").exists()


def test_from_pretrained_refuses_a_metadata_payload(tampered):
    from open_vlm.checkpoint.dcp_safe import UnsafeCheckpoint
    from open_vlm.inference.wrapper import OpenVLM

    ckpt, marker = tampered
    with pytest.raises(UnsafeCheckpoint, match="io.open"):
        OpenVLM.from_pretrained(str(ckpt))
    assert not marker.exists()


def test_a_payload_in_a_shard_item_is_refused(copied):
    """DCP loads non-tensor items (optimizer hyperparameters) with torch.load(weights_only=False): not ours."""
    from open_vlm.checkpoint.dcp_safe import UnsafeCheckpoint, reader_for
    from open_vlm.checkpoint.model_io import load_model_from_checkpoint
    from open_vlm.trainer.optim import build_optimizer

    ckpt, marker = copied
    metadata = reader_for(str(ckpt)).read_metadata()
    index, info = next((i, s) for i, s in metadata.storage_data.items() if i.fqn.startswith("optim.param_groups"))
    payload = torch_bytes(Payload(marker))
    shard = ckpt / info.relative_path
    offset = shard.stat().st_size
    with open(shard, "ab") as f:  # the item now points at the payload; the metadata itself stays plain
        f.write(payload)
    metadata.storage_data[index] = dataclasses.replace(info, offset=offset, length=len(payload))
    (ckpt / ".metadata").write_bytes(pickle.dumps(metadata))

    bundle, _, cfg = load_model_from_checkpoint(str(ckpt))
    optimizer, _ = build_optimizer(bundle.model, cfg.optim, cfg.train.max_steps, bundle.groups)
    with pytest.raises(UnsafeCheckpoint, match=index.fqn):
        Checkpointer(str(ckpt.parent)).load(str(ckpt), bundle.model, optimizer)
    assert not marker.exists(), "the payload ran"


def test_every_torch_load_in_the_package_is_weights_only():
    for path in sorted((REPO / "open_vlm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", "") == "torch":
                flag = {k.arg: k.value for k in node.keywords}.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, f"{path}:{node.lineno}"


def test_a_tampered_meta_json_cannot_import_modules(base_run, tmp_path):
    """The stored config's `model.module` is never imported by a reader that rebuilds the model (export,
    from_pretrained, eval --checkpoint, generate, embed, view --attention): a checkpoint must not pick which
    installed module's top-level code runs. Shown with the stdlib's `this` (prints the Zen of Python)."""
    tmp, _ = base_run
    ckpt = tmp_path / "step_00000004"
    shutil.copytree(folder(tmp, "base") / "checkpoints" / "step_00000004", ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    cfg = yaml.safe_load(meta["config"])
    cfg["model"]["module"] = "this"
    meta["config"] = yaml.safe_dump(cfg)
    (ckpt / "meta.json").write_text(json.dumps(meta))
    out = run_cli("-m", "open_vlm.cli", "export", str(ckpt), str(tmp_path / "exported"), env=ENV)
    assert "The Zen of Python" not in out.stdout, "export imported the module the checkpoint named"
