"""read_file_range: one buffer per part, the bytes botocore sends without copying."""

from __future__ import annotations

import os
from pathlib import Path

from cryptorun_daemon.storage.bucket_commit import read_file_range


def test_reads_the_range_into_a_bytearray_and_names_a_short_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 4096 + 17)
    path = tmp_path / "part.bin"
    path.write_bytes(data)

    middle = read_file_range(path, 4096, 8192)
    assert isinstance(middle, bytearray)  # botocore checksums and sends it as it is
    assert middle == data[4096 : 4096 + 8192]
    tail = read_file_range(path, 3 * 4096, 4096)  # only 17 bytes are left
    assert tail == data[3 * 4096 :]
    assert len(tail) == 17
    assert read_file_range(path, len(data), 10) == b""
