"""Run under `torchrun --nproc_per_node=2`: each rank writes the keys it got and the merged state."""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from open_vlm.trainer.parallel import shutdown_distributed
from tests.data.shardgen import make_loader


def main(shard_dir: str, out_dir: str, steps: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    source = Source("d", "image_text", 1.0, read_manifest(f"{shard_dir}/manifest.json"))
    loader = make_loader([source], rank=rank, world=world, num_workers=1, global_batch=8, micro_batch=2)
    it = iter(loader)
    keys, rows, holes = [], [], []
    for _ in range(steps * loader.accum_steps):
        batch = next(it)
        keys += [[k, e] for k, e in zip(batch["keys"], batch["epochs"])]
        rows.append(batch["rows"])
        holes += [m["url"] for m in batch["holes"]]
    state = loader.state_dict()  # collective
    out = {"keys": keys, "rows": rows, "holes": holes, "state": state}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    shutdown_distributed()  # main's models out of reach: the groups freed, their gloo threads joined
    # A group that this harness's DDP/FSDP objects still hold from C++ (seen after DDP's backward without an
    # optimizer) would meet a finalising interpreter and could abort the process after it wrote its JSON. The
    # library's own entry points leave none (tests/trainer/test_parallel.py); this harness needs only its output.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
