"""GPUs per node of the SageMaker instance types we launch on: one torchrun process per GPU."""

from __future__ import annotations

import difflib


class LaunchError(Exception):
    """A launch that cannot go ahead: the CLI prints the one-line message and exits with status 2."""

    exit_code = 2


def _family(prefix: str, sizes: dict[str, int]) -> dict[str, int]:
    return {f"ml.{prefix}.{size}": gpus for size, gpus in sizes.items()}


_G_SIZES = {"xlarge": 1, "2xlarge": 1, "4xlarge": 1, "8xlarge": 1, "16xlarge": 1, "12xlarge": 4, "24xlarge": 4}

GPUS_PER_INSTANCE: dict[str, int] = {
    **_family("p3", {"2xlarge": 1, "8xlarge": 4, "16xlarge": 8}),
    "ml.p3dn.24xlarge": 8,
    "ml.p4d.24xlarge": 8,
    "ml.p4de.24xlarge": 8,
    "ml.p5.48xlarge": 8,
    "ml.p5e.48xlarge": 8,
    "ml.p5en.48xlarge": 8,
    "ml.p6-b200.48xlarge": 8,
    **_family("g4dn", {k: v for k, v in _G_SIZES.items() if k != "24xlarge"}),
    **_family("g5", {**_G_SIZES, "48xlarge": 8}),
    **_family("g6", {**_G_SIZES, "48xlarge": 8}),
    **_family("g6e", {**_G_SIZES, "48xlarge": 8}),
}


def gpus_per_node(instance_type: str) -> int:
    """GPUs of one instance of `instance_type`; `LaunchError` listing close matches when unknown."""
    if instance_type in GPUS_PER_INSTANCE:
        return GPUS_PER_INSTANCE[instance_type]
    candidate = instance_type if instance_type.startswith("ml.") else f"ml.{instance_type}"
    close = difflib.get_close_matches(candidate, list(GPUS_PER_INSTANCE), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known GPU types: {', '.join(GPUS_PER_INSTANCE)}"
    raise LaunchError(f"unknown instance type '{instance_type}'{hint}")


# EFA: the types whose instances carry an Elastic Fabric Adapter (EC2's `network-info.efa-supported`), and those
# whose EFA also does RDMA (p4d and newer). SageMaker's own driver keeps a shorter, fixed list.
EFA_RDMA_INSTANCES = frozenset(f"ml.{name}.48xlarge" for name in ("p5", "p5e", "p5en", "p6-b200")) | {
    "ml.p4d.24xlarge",
    "ml.p4de.24xlarge",
}
EFA_INSTANCES = EFA_RDMA_INSTANCES | {
    "ml.p3dn.24xlarge",
    *(f"ml.g4dn.{size}" for size in ("8xlarge", "12xlarge", "16xlarge")),
    *(
        f"ml.{family}.{size}"
        for family in ("g5", "g6", "g6e")
        for size in ("8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")
    ),
}


def efa_environment(instance_type: str) -> dict[str, str]:
    """What NCCL's aws-ofi plugin needs to use EFA on `instance_type` (nothing for types without EFA).

    NCCL_PROTO is left to NCCL: forcing `simple` (as SageMaker's driver does) slows every collective.
    """
    if instance_type not in EFA_INSTANCES:
        return {}
    env = {"FI_PROVIDER": "efa", "RDMAV_FORK_SAFE": "1"}  # fork-safe: data-loader workers fork after NCCL starts
    if instance_type in EFA_RDMA_INSTANCES:
        env["FI_EFA_USE_DEVICE_RDMA"] = "1"
    return env
