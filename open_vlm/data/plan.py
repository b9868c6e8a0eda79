"""Which samples make each global batch, and which rank and worker takes each one. No I/O here.

A global batch of G samples is G / g **groups** of g consecutive positions of one source (g = G with
`data.mixing: batch`, `data.mix_group` with `sample`). Group h takes the source with the largest deficit
`w_s * (h + 1) - groups_taken_s + phase_s` (a seeded phase in [0, 1) per source), so after any number of
groups every source is within two groups of its share, and the seed changes the schedule.
Slot i of the global batch goes to rank i % R; a rank's t-th slot of the step goes to worker t % K. When
R x K divides both g and P (see order.py), every stream is read by exactly one worker of one rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from open_vlm.data.order import seed_entropy


@dataclass
class PlanState:
    """The data position of a run: all it takes to continue its order exactly (the same on every rank)."""

    step: int = 0
    groups_taken: list[int] = field(default_factory=list)  # per source
    positions: list[int] = field(default_factory=list)  # samples taken per source (n_s)

    def copy(self) -> PlanState:
        return PlanState(self.step, list(self.groups_taken), list(self.positions))


class MixSchedule:
    """Largest-deficit source choice per group, with a seeded phase per source."""

    def __init__(self, weights: list[float], seed: int = 0):
        total = float(sum(weights))
        self.weights = np.array([w / total for w in weights])
        self.phase = np.random.default_rng(np.random.SeedSequence([seed_entropy(seed), 0x313])).random(len(weights))

    def pick(self, groups_taken: list[int]) -> int:
        h = sum(groups_taken)
        deficits = self.weights * (h + 1) - np.asarray(groups_taken) + self.phase
        return int(np.argmax(deficits))


@dataclass(frozen=True)
class StepPlan:
    """The groups of one step: (source, first position) each, `group` positions long."""

    step: int
    groups: list[tuple[int, int]]
    group: int

    def slot(self, i: int) -> tuple[int, int]:
        """(source, position) of global slot `i` of the step."""
        source, start = self.groups[i // self.group]
        return source, start + i % self.group

    def rank_slots(self, rank: int, world: int) -> list[tuple[int, int]]:
        """This rank's (source, position) pairs, in slot order."""
        return [self.slot(i) for i in range(rank, self.group * len(self.groups), world)]


class Planner:
    """Turns a `PlanState` into step plans, advancing it."""

    def __init__(self, weights: list[float], seed: int, global_batch: int, group: int):
        if group <= 0 or global_batch % group:
            raise ValueError(f"data.mix_group {group} must divide the global batch {global_batch}")
        self.schedule = MixSchedule(weights, seed)
        self.global_batch, self.group = global_batch, group

    def initial(self) -> PlanState:
        n = len(self.schedule.weights)
        return PlanState(0, [0] * n, [0] * n)

    def next_step(self, state: PlanState) -> StepPlan:
        """The plan of step `state.step`; `state` moves past it."""
        groups = []
        for _ in range(self.global_batch // self.group):
            source = self.schedule.pick(state.groups_taken)
            groups.append((source, state.positions[source]))
            state.groups_taken[source] += 1
            state.positions[source] += self.group
        plan = StepPlan(state.step, groups, self.group)
        state.step += 1
        return plan
