"""Loading from an S3 checkpoint (moto server), and `open-vlm generate` with its sampling flags."""

import pytest

from open_vlm import OpenVLM
from open_vlm.cli import one_line_answer
from open_vlm.inference.generate import GenerationSettings
from tests.conftest import run_cli


@pytest.fixture
def s3_run(trained, s3_endpoint, s3_bucket):
    import s3fs

    local = trained("paligemma")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(local / "checkpoints") + "/", f"{s3_bucket}/run/checkpoints/", recursive=True)
    s3fs.S3FileSystem.clear_instance_cache()
    return local, f"s3://{s3_bucket}/run"


def test_from_pretrained_straight_from_s3(s3_run, examples, tmp_path):
    local, url = s3_run
    settings = GenerationSettings(max_new_tokens=8)
    want = OpenVLM.from_pretrained(local).generate_ids(examples, None, settings)
    for path in (url, f"{url}/checkpoints", f"{url}/checkpoints/step_00000006"):
        model = OpenVLM.from_pretrained(path)
        assert model.source == f"{url}/checkpoints/step_00000006"
        assert model.generate_ids(examples, None, settings) == want
    from open_vlm.inference.export import export

    export(url, f"{url}-exported")
    assert OpenVLM.from_pretrained(f"{url}-exported").generate_ids(examples, None, settings) == want


def test_generate_cli_prints_answers_and_samples_reproducibly(trained, examples):
    folder = trained("paligemma")
    base = ["-m", "open_vlm.cli", "generate", "--checkpoint", str(folder), "--image", *examples[:2]]
    greedy = run_cli(*base, "--prompt", "caption en", "--max-new-tokens", "6")
    assert greedy.returncode == 0, greedy.stderr[-2000:]
    want = OpenVLM.from_pretrained(folder).generate(examples[:2], ["caption en"] * 2, max_new_tokens=6)
    assert greedy.stdout.splitlines() == [f"{im}: {one_line_answer(a)}" for im, a in zip(examples[:2], want)]
    sample = [*base, "--sample", "--temperature", "1.5", "--top-p", "0.95", "--top-k", "20", "--seed", "7"]
    first, second = run_cli(*sample), run_cli(*sample)
    assert first.returncode == 0 and first.stdout == second.stdout
    sampled = OpenVLM.from_pretrained(folder).generate(
        examples[:2], do_sample=True, temperature=1.5, top_p=0.95, top_k=20, seed=7
    )
    assert first.stdout.splitlines() == [f"{im}: {one_line_answer(a)}" for im, a in zip(examples[:2], sampled)]
    assert one_line_answer("a\nb\\n") == "a\\nb\\\\n"  # a generated newline never splits the line


def test_help_lists_export_and_embed():
    out = run_cli("-m", "open_vlm.cli", "--help")
    assert "export" in out.stdout and "embed" in out.stdout and "not built" not in out.stdout
