"""The quarantine area's one record writer: why bytes were set aside, written beside them.

Everything quarantined lives under
``{storage.root}/_quarantine/{tier}/{region}/<partition path>/`` (the
directory name is :data:`~cryptorun_daemon.storage.layout.QUARANTINE_DIR`),
and every quarantined item ``<name>`` has a ``<name>.error.json`` record
beside it. Two kinds of writer produce one:

- ``file``: a data file that failed validation or a hash check
  (:func:`cryptorun_daemon.data.validate.quarantine.quarantine_file`);
- ``fenced``: a manifest refused because the fence proves a fenced writer
  sealed it (:func:`cryptorun_daemon.storage.write_fence.quarantine_fenced_manifest`).

Both write through :func:`write_quarantine_record`, so the record's shape
(the keys every record has, JSON with sorted keys and a trailing newline) and
its durability are defined once. The status quarantine counts
(:func:`~cryptorun_daemon.data.validate.quarantine.quarantine_counts`) count
these records, whatever their kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, get_args

from cryptorun_daemon.storage.atomic import atomic_write_bytes

ERROR_SUFFIX: Final = ".error.json"

#: ``file``: data bytes set aside; ``fenced``: a manifest refused by the fence.
QuarantineKind = Literal["file", "fenced"]

#: Keys every record carries, whatever its kind (the rest depends on the kind).
REQUIRED_KEYS: Final = ("kind", "tier", "region", "source", "quarantined_at")


def error_record_path(quarantined: Path) -> Path:
    """``<name>.error.json`` beside the quarantined item ``<name>``."""
    return quarantined.with_name(quarantined.name + ERROR_SUFFIX)


def write_quarantine_record(quarantined: Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as the ``.error.json`` beside ``quarantined``; return the record's path.

    Blocking (atomic replace with fsync). Error handling: ``ValueError`` when
    ``record`` lacks one of :data:`REQUIRED_KEYS`, names an unknown kind, or
    holds a value JSON cannot carry (NaN); :class:`OSError` when the write
    fails (the previous record, if any, is left as it was).
    """
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"quarantine record lacks {', '.join(missing)}")
    if record["kind"] not in get_args(QuarantineKind):
        raise ValueError(f"unknown quarantine kind {record['kind']!r}")
    path = error_record_path(quarantined)
    text = json.dumps(dict(record), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode())
    return path
