"""Regression test (a review found this, now fixed): `open-vlm view CKPT` lists consumed files computed on today's data, not the checkpoint's.

Claim 5: the consumed record (`open-vlm view CKPT --json`) matches exactly what was read. `view._consumed_files`
rebuilds the order from the *current* manifests (`source_manifest`) without comparing them to the dataset
versions saved in `data.json` (`versions`), which `load_state_dict` does compare. After a shard of the source is
rewritten with a different sample count (resume would be refused: DataVersionError), `view` silently reports
other files and counts than the checkpoint read.
"""

import json

from open_vlm.config.load import dump_config
from open_vlm.config.schema import RunConfig, SourceConfig
from open_vlm.data.consumed import consumed_files
from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from open_vlm.view import _consumed_files
from tests.data.shardgen import make_loader, write_text_shards


def test_view_does_not_report_consumed_files_of_changed_data(tmp_path):
    shards = tmp_path / "shards"
    write_text_shards(shards, "v", [10, 10, 10])
    source = Source("v", "text", 1.0, read_manifest(str(shards / "manifest.json")))
    loader = make_loader([source], num_streams=4, window=2)
    it = iter(loader)
    for _ in range(6):  # 3 steps of 8: 24 of 30 samples
        next(it)
    state = loader.state_dict()
    truth = consumed_files(loader.orders, loader.sources, state["positions"])
    cfg = RunConfig()
    cfg.data.sources = [SourceConfig(name="v", urls=[str(shards / "v-{00000..00002}.tar")], modality="text")]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "data.json").write_text(json.dumps(state))
    meta = {"config": dump_config(cfg)}

    assert _consumed_files(str(ckpt), meta) == truth  # unchanged data: the same list

    write_text_shards(shards, "v", [25, 10, 10])  # shard 0 rewritten (and the manifest with it)
    listed = _consumed_files(str(ckpt), meta)
    # Either the truth, or None ("cannot list: showing the summary"); never another list presented as the truth.
    assert listed is None or listed == truth, json.dumps(listed, indent=1)
