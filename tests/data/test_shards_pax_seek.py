"""Regression test (a review found this, now fixed): `seek_to_sample` loops forever on a pax record whose length field reads 0.

shards.py `_pax_path`: `pos += length` with `length = int(data[pos:space])`; a record length of 0 (corruption in
a pax data block, which no checksum covers; webdataset's TarWriter writes a pax header with an `mtime` record
before every member) never advances `pos` and the worker spins at 100% CPU. Only the seek path (opening a shard
at a sample > 0: every resume, every range that starts mid-shard) is affected; reading in order lets tarfile
reject the header. Expected: `seek_to_sample` returns False ("anything unusual") or the shard reads as truncated.
"""

import signal

from open_vlm.data.shards import seek_to_sample
from tests.data.shardgen import write_text_shards


def test_seek_gives_up_on_a_zero_length_pax_record(tmp_path):
    (url,) = write_text_shards(tmp_path, "t", [6])
    data = bytearray(open(url, "rb").read())
    # members: [pax header][pax data "NN mtime=...\n"][file header][file data] = 4 blocks per sample
    second_pax_data = 4 * 512 + 512
    assert data[second_pax_data + 3 : second_pax_data + 9] == b"mtime="
    data[second_pax_data : second_pax_data + 2] = b"00"  # the record's length digits: 28 -> 00
    with open(url, "wb") as f:
        f.write(data)

    def hang(*_):
        raise TimeoutError("seek_to_sample did not return within 10 s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        with open(url, "rb") as f:
            seek_to_sample(f, 4)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
