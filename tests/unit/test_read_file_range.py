"""read_file_range: a local range read into one buffer, short at the file's end."""

from __future__ import annotations

import os
from pathlib import Path

from cryptorun_daemon.storage.bucket_commit import read_file_range


def test_reads_the_range_into_a_bytearray_and_names_a_short_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 4096 + 17)
    path = tmp_path / "part.bin"
    path.write_bytes(data)

    middle = read_file_range(path, 4096, 8192)
    assert isinstance(middle, bytearray)  # filled in place, no intermediate copy
    assert middle == data[4096 : 4096 + 8192]
    tail = read_file_range(path, 3 * 4096, 4096)  # only 17 bytes are left
    assert tail == data[3 * 4096 :]
    assert len(tail) == 17
    assert read_file_range(path, len(data), 10) == b""
