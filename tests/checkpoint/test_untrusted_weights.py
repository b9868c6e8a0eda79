"""A weights file from someone else never runs code: a pickle payload in any `.pt` / `.bin` a loader reads (a
checkpoint's `extra.pt` and RNG states, an exported folder's `pytorch_model.bin`, `model.pretrained`, an open_clip
state dict, detector weights) is refused with one line naming where, and the payload never runs.

Shown to fail on a broken build: with `files.torch_load` using `weights_only=False`, the payloads in `extra.pt`
and the RNG state ran (and the AST check named the line)."""

import ast
import random
import shutil

import pytest
import torch

from open_vlm.checkpoint.checkpointer import Checkpointer
from open_vlm.checkpoint.dcp_safe import UnsafeCheckpoint
from tests.conftest import REPO
from tests.trainer.runs import folder

# Files that may unpickle at all, each with a restricted unpickler (DCP metadata allowlist, numpy arrays only).
RESTRICTED_UNPICKLERS = {"open_vlm/checkpoint/dcp_safe.py", "open_vlm/extract/bottom_up_weights.py"}


class Payload:
    """Unpickling this creates a file: what an attacker's code would do, made harmless."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def payload_file(path, marker) -> None:
    """A torch file that runs `open(marker, "w")` when fully unpickled."""
    torch.save({"state": {"weight": torch.zeros(2)}, "x": Payload(marker)}, path)


@pytest.fixture
def ckpt(base_run, tmp_path):
    tmp, _ = base_run
    out = tmp_path / "ckpts" / "step_00000004"
    shutil.copytree(folder(tmp, "base") / "checkpoints" / "step_00000004", out)
    return out


@pytest.mark.parametrize("name", ["extra.pt", "rng/rank_00000.pt"])
def test_a_payload_in_a_checkpoint_torch_file_is_refused(ckpt, tmp_path, name):
    from open_vlm.checkpoint.model_io import load_model_from_checkpoint
    from open_vlm.trainer.optim import build_optimizer

    marker = tmp_path / "payload_ran"
    payload_file(ckpt / name, marker)
    bundle, _, cfg = load_model_from_checkpoint(str(ckpt))
    optimizer, _ = build_optimizer(bundle.model, cfg.optim, cfg.train.max_steps, bundle.groups)
    with pytest.raises(UnsafeCheckpoint, match=f"{name}: a weights file there refers to io.open.*refusing"):
        Checkpointer(str(ckpt.parent)).load(str(ckpt), bundle.model, optimizer)
    assert not marker.exists(), "the payload ran"


def test_a_payload_bin_in_an_exported_folder_is_refused(ckpt, tmp_path):
    """An export whose safetensors was swapped for a `pytorch_model.bin` payload (transformers would torch.load it)."""
    from open_vlm.inference.export import export
    from open_vlm.inference.wrapper import OpenVLM

    out = export(str(ckpt), str(tmp_path / "exported"))
    (out / "model.safetensors").unlink()
    marker = tmp_path / "payload_ran"
    payload_file(out / "pytorch_model.bin", marker)
    with pytest.raises(UnsafeCheckpoint, match="exported: a weights file there refers to io.open"):
        OpenVLM.from_pretrained(str(out))
    assert not marker.exists(), "the payload ran"


def test_payloads_in_state_dict_files_are_refused(tmp_path):
    """`model.open_clip_checkpoint` and `extract.region.weights` files."""
    from open_vlm.extract.region import load_state_dict
    from open_vlm.models.open_clip_siglip import read_state_dict

    marker = tmp_path / "payload_ran"
    for name in ("open_clip.bin", "detector.pt"):
        payload_file(tmp_path / name, marker)
    with pytest.raises(UnsafeCheckpoint, match="detector.pt: a weights file there refers to io.open"):
        load_state_dict(str(tmp_path / "detector.pt"))
    with pytest.raises(Exception, match="io.open"):  # the model build wraps it as UnsafeCheckpoint (registry)
        read_state_dict(str(tmp_path / "open_clip.bin"))
    assert not marker.exists(), "the payload ran"


def test_nothing_in_the_package_unpickles_freely():
    """No `pickle.load(s)`, no `np.load(allow_pickle=True)`, no `weights_only=False`; only restricted unpicklers."""
    for path in sorted((REPO / "open_vlm").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            name = f"{getattr(func.value, 'id', '')}.{func.attr}" if isinstance(func, ast.Attribute) else ""
            keywords = {k.arg: getattr(k.value, "value", None) for k in getattr(node, "keywords", [])}
            assert name not in ("pickle.load", "pickle.loads"), f"{rel}:{node.lineno}"
            assert not (name == "np.load" and keywords.get("allow_pickle") is True), f"{rel}:{node.lineno}"
            assert keywords.get("weights_only", True) is not False, f"{rel}:{node.lineno}"
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                assert rel in RESTRICTED_UNPICKLERS, f"{rel}:{node.lineno}: a new unpickler"


def garbled(path, how: str) -> None:
    torch.save({"step": 3, "scaler": {"scale": torch.tensor(1.0)}}, path)
    data = bytearray(path.read_bytes())
    if how == "zeroed header":  # same size, the zip header gone: torch reads it as a legacy pickle
        data[:64] = bytes(64)
    elif how == "random bytes":
        data[:] = random.Random(0).randbytes(len(data))
    elif how == "cut short":
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["zeroed header", "random bytes", "cut short"])
def test_a_garbled_torch_file_is_damage_not_a_payload(tmp_path, how):
    """Bytes that are no pickle at all are a damaged file (a resume may fall back past it), not code refused."""
    from open_vlm.checkpoint.files import torch_load

    garbled(tmp_path / "extra.pt", how)
    with pytest.raises(Exception) as err:
        torch_load(str(tmp_path / "extra.pt"))
    assert not isinstance(err.value, UnsafeCheckpoint), err.value
    assert isinstance(err.value, (OSError, RuntimeError, ValueError, EOFError)), repr(err.value)


def test_a_payload_in_a_legacy_torch_file_is_still_refused(tmp_path):
    """The old (non-zip) torch format carries a pickle as well: its payload is refused, as the zip one's."""
    from open_vlm.checkpoint.files import torch_load

    marker = tmp_path / "payload_ran"
    torch.save({"x": Payload(marker)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpoint, match="legacy.pt: a weights file there"):
        torch_load(str(tmp_path / "legacy.pt"))
    assert not marker.exists(), "the payload ran"
