"""`train.compile` with gradient accumulation: the same losses as eager, without recompiling every micro-step."""

import time

import pytest
import torch

from open_vlm.config.load import load_run_config
from tests.trainer.runs import folder, write_config

STEPS = 3


def losses(tmp_path, demo_dir, compile_: bool) -> tuple[list[float], list[int]]:
    """Per-step losses of a tiny run with accumulation 2, and the graphs compiled so far after each step."""
    from torch._dynamo.utils import counters

    from open_vlm.trainer.loop import Trainer

    name = "compiled" if compile_ else "eager"
    config = write_config(
        tmp_path,
        demo_dir,
        name,
        data={"batch_size": 2},
        train={"global_batch_size": 4, "compile": compile_, "max_steps": STEPS},
    )
    trainer = Trainer(load_run_config(["--config", str(config)]), folder(tmp_path, name))
    assert trainer.loader.accum_steps == 2
    batches = iter(trainer.loader)
    out, graphs = [], []
    for _ in range(STEPS):
        out.append(trainer.train_step([next(batches) for _ in range(trainer.loader.accum_steps)]).loss)
        graphs.append(counters["stats"]["unique_graphs"])
    return out, graphs


@pytest.mark.slow
def test_compiled_losses_match_eager_with_accumulation_and_compile_once(tmp_path, demo_dir):
    torch._dynamo.reset()
    t0 = time.perf_counter()
    try:
        compiled, graphs = losses(tmp_path, demo_dir, True)
    finally:
        seconds = time.perf_counter() - t0
    eager, _ = losses(tmp_path, demo_dir, False)
    torch._dynamo.reset()
    print(f"compiled run: {seconds:.0f}s, graphs after each step {graphs}")
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
    assert eager[0] != eager[-1]  # the weights moved: a later step would show a wrong update
    assert graphs[0] > 0 and graphs[-1] == graphs[0], graphs  # nothing recompiled after the first step
