"""`train.epochs`: the step count at which every source has been read E times over, from the data plan itself."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from open_vlm.data.plan import Planner

log = logging.getLogger(__name__)

MAX_SIMULATED_GROUPS = 1_000_000  # past this the count comes from the weights' bound instead of the plan


@dataclass(frozen=True)
class EpochSteps:
    """How many steps E epochs take, and how many passes over each source they make."""

    steps: int
    passes: list[float]  # per source: samples taken / samples in the source
    exact: bool  # False: an upper bound from the weights (a plan too long to walk)


def steps_for_epochs(
    counts: list[int], weights: list[float], epochs: float, global_batch: int, group: int, seed: int
) -> EpochSteps:
    """The fewest steps after which source s has given at least `ceil(epochs * counts[s])` samples.

    Walks the loader's own plan (data/plan.py: which source each group of `group` samples takes), so with one
    source and a global batch dividing its size, one epoch ends exactly when every sample was read once."""
    if epochs <= 0:
        raise ValueError(f"train.epochs must be > 0, got {epochs}")
    if any(n <= 0 for n in counts):
        raise ValueError(f"a source has no samples (counts {counts}): epochs cannot be counted")
    wanted = [math.ceil(epochs * n) for n in counts]
    groups_per_step = global_batch // group
    total = float(sum(weights))
    bound = max(math.ceil(need / group / (w / total)) for need, w in zip(wanted, weights)) + 2 * len(counts)
    if bound > MAX_SIMULATED_GROUPS:
        steps = math.ceil(bound / groups_per_step)
        taken = [steps * global_batch * w / total for w in weights]
        return EpochSteps(steps, [t / n for t, n in zip(taken, counts)], exact=False)
    planner = Planner(weights, seed, global_batch, group)
    state = planner.initial()
    while any(p < w for p, w in zip(state.positions, wanted)):
        planner.next_step(state)
    return EpochSteps(state.step, [p / n for p, n in zip(state.positions, counts)], exact=True)


def log_epoch_steps(epochs: float, plan: EpochSteps, names: list[str]) -> None:
    passes = ", ".join(f"{name} {p:.3g}" for name, p in zip(names, plan.passes))
    how = "" if plan.exact else " (an upper bound from the weights: the plan is too long to walk)"
    log.info("train.epochs %g: %d steps%s; passes over each source: %s", epochs, plan.steps, how, passes)
