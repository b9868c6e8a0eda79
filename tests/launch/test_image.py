"""The training image's recipe: pins from the tested environment, linux/amd64, a smoke test before pushing.
No docker daemon here: the Dockerfile and the commands are checked, not run."""

from __future__ import annotations

import importlib.metadata as metadata
import shutil

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from launch import constraints, image
from tests.conftest import REPO, run_cli

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/open-vlm:abc"


def body(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_constraints_are_the_tested_environment():
    fresh = constraints.render(constraints.installed_closure(constraints.requirement_roots()))
    assert body(constraints.CONSTRAINTS.read_text()) == body(fresh), "stale: run python -m launch.constraints"


def test_pins_resolve_together():
    """Every pinned package's own requirements hold among the pins (boto3, botocore and aiobotocore included)."""
    pins = constraints.read_pins(constraints.CONSTRAINTS)
    assert {"torch", "boto3", "botocore", "aiobotocore", "s3fs"} <= set(pins)
    for name in pins:
        for line in metadata.distribution(name).requires or []:
            need = Requirement(line)
            dep = canonicalize_name(need.name)
            if dep in pins and (need.marker is None or need.marker.evaluate({"extra": ""})):
                assert need.specifier.contains(pins[dep], prereleases=True), f"{name} needs {line}, pinned {pins[dep]}"


def test_smoke_check_passes_in_the_tested_environment():
    result = run_cli("-m", "launch.constraints", "--check")  # what `--build --check` runs inside the image
    assert result.returncode == 0, result.stderr


def test_smoke_check_names_what_differs():
    pins = {"torch": "0.0.1", "numpy": metadata.version("numpy"), "no-such-package": "1.0"}
    problems = constraints.check_installed(pins, imports=("open_vlm.no_such_module",))
    assert [p.split()[0] for p in problems] == ["no-such-package", "torch", "import"]
    assert "(pinned 0.0.1)" in problems[1] and "missing" in problems[0]


def test_dockerfile_installs_the_pins_for_linux_amd64():
    lines = [line.strip() for line in (REPO / "launch/Dockerfile").read_text().splitlines()]
    assert any(line.startswith("FROM --platform=linux/amd64 ") for line in lines)
    assert "COPY requirements.txt launch/constraints.txt ./" in lines
    (install,) = [line for line in lines if line.startswith("RUN pip install") and "requirements.txt" in line]
    assert "-c constraints.txt" in install and install.split()[-1] == "boto3"  # boto3 resolved with s3fs's botocore


def test_build_smoke_tests_before_pushing():
    build, check, push = image.build_commands(IMAGE, check=True)
    assert build[:4] == ["docker", "build", "--platform", "linux/amd64"]
    assert check[:5] == ["docker", "run", "--rm", "--platform", "linux/amd64"] and IMAGE in check
    assert check[-2:] == ["launch.constraints", "--check"]
    assert push == ["docker", "push", IMAGE]
    assert len(image.build_commands(IMAGE)) == 2  # no smoke test unless asked


def test_image_tag_follows_the_pins(tmp_path, monkeypatch):
    for name in image.RECIPE_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    monkeypatch.setattr(image, "REPO_ROOT", tmp_path)
    before = image.image_tag()
    (tmp_path / "launch/constraints.txt").write_text("torch==0.0.1\n")
    assert image.image_tag() != before
