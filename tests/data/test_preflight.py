"""`open_vlm/data/preflight.py`: a source's first shard, decoded by the loader's decoder before the run starts."""

import pytest
import webdataset as wds

from open_vlm.config.schema import SourceConfig
from open_vlm.data.preflight import check_first_shards, probe_shard
from open_vlm.errors import DataError
from tests.data.shardgen import write_shards


def test_shards_that_fit_pass_and_the_probe_reads_only_the_first_samples(tmp_path):
    urls = write_shards(tmp_path, "ok", 2, 20)
    check_first_shards([("data.sources[0]", SourceConfig(name="ok", urls=urls))])
    probe = probe_shard(urls[0], "image_text", limit=3)
    assert len(probe.samples) == 3 and probe.decoded == 3 and probe.members == ["jpg", "txt"]


def test_text_shards_named_image_text_say_which_modality_they_are(tmp_path):
    path = str(tmp_path / "wiki-0.tar")
    with wds.TarWriter(path) as sink:
        for i in range(4):
            sink.write({"__key__": f"doc{i}", "txt": f"document {i}"})
    source = SourceConfig(name="wiki", urls=[path], modality="image_text")
    with pytest.raises(DataError) as err:
        check_first_shards([("data.sources[1]", source)])
    message = str(err.value)
    assert message.startswith("data.sources[1] (wiki): none of the first 4 samples of")
    assert "(no jpg/png/webp image); members seen: txt;" in message
    assert message.endswith("they decode as modality text: set data.sources[1].modality text")
    assert err.value.exit_code == 1
