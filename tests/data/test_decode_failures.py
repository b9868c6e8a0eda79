"""Regression test (a review found this, now fixed): bad sample content that is not reported as a SampleError crashes the loader instead of becoming a hole.

Claim 4: bad samples (undecodable image, missing caption, ...) never stop the run: their rows are invalid copies,
counted per kind. Each case below is one realistic bad sample in an otherwise good shard; the loader should
yield every batch, with that one position marked invalid (`__valid__: False`) and counted in `bad_samples`.
"""

import gzip
import io
import tarfile

import numpy as np
import pytest

from open_vlm.data.decode import SampleError, decode_sample
from open_vlm.data.loader import Source
from open_vlm.data.manifest import write_manifest
from tests.data.shardgen import jpeg, make_loader


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(2))
    return buf.getvalue()


GOOD = {"image_text": lambda i: {"jpg": jpeg(i), "txt": b"fine"}, "text": lambda i: {"txt": b"fine"}}
GOOD["pretokenized"] = lambda i: {"input_ids.npy": npy(np.arange(3))}

# (modality, the bad sample's fields)
BAD = {
    "caption_not_utf8": ("image_text", {"jpg": jpeg(1), "txt": b"caf\xe9 au lait"}),  # latin-1 caption
    "text_not_utf8": ("text", {"txt": b"\xff\xfe"}),
    "json_not_utf8": ("image_text", {"jpg": jpeg(1), "json": b'{"caption": "caf\xe9"}'}),
    "json_not_an_object": ("image_text", {"jpg": jpeg(1), "json": b'["a caption"]'}),
    "txt_gz_not_gzip": ("image_text", {"jpg": jpeg(1), "txt.gz": b"plain text"}),
    "txt_gz_truncated": ("image_text", {"jpg": jpeg(1), "txt.gz": gzip.compress(b"a caption")[:12]}),
    "jpg_gz_corrupt": ("image_text", {"jpg.gz": b"\x1f\x8b\x08\x00garbage", "txt": b"fine"}),
    "npy_empty": ("pretokenized", {"input_ids.npy": b""}),
    "npy_of_strings": ("pretokenized", {"input_ids.npy": npy(np.array(["a", "b"]))}),
    "npy_is_npz": ("pretokenized", {"input_ids.npy": npz()}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_decoder_reports_bad_content_as_a_sample_error(case):
    modality, fields = BAD[case]
    with pytest.raises(SampleError):
        decode_sample({"__key__": "k", **fields}, modality, 8)


@pytest.mark.parametrize("case", sorted(BAD))
def test_one_bad_sample_becomes_a_counted_hole_not_a_crash(tmp_path, case):
    modality, fields = BAD[case]
    path = tmp_path / "s-00000.tar"
    with tarfile.open(path, "w") as tar:  # raw member bytes (webdataset's writer would gzip "*.gz" itself)
        for i in range(8):
            sample = fields if i == 3 else GOOD[modality](i)
            for suffix, data in sample.items():
                info = tarfile.TarInfo(f"s_{i:04d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    manifest = write_manifest([str(path)], str(tmp_path / "manifest.json"))
    loader = make_loader([Source("s", modality, 1.0, manifest)], num_streams=2, window=4)
    it = iter(loader)
    batches = [next(it) for _ in range(2)]  # one epoch: 8 positions
    assert sum(len(b["holes"]) for b in batches) == 1
    assert sum(loader.state_dict()["bad_samples"].values()) == 1
