"""Rebuilding the hot log's state from its journal segments at start-up.

Reads every segment oldest first through :func:`journal_repair.scan_segment`
(so start-up and ``cryptorun journal check`` agree on what is damage), and
returns each origin's replid and last seq, the local origin's newest records
(to refill the replay buffer), recorded gaps and whether the journal ended with
a clean-close marker. A torn last line of the newest segment is truncated here.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from cryptorun_daemon.hot.journal_reader import LocalIndex
from cryptorun_daemon.hot.journal_repair import Tail, scan_segment, segment_indexes, segment_path
from cryptorun_daemon.hot.record import HotRecord

log = structlog.get_logger("cryptorun.hot.journal")


@dataclass
class OriginState:
    """What the journal says about one origin: its current replid and last seq."""

    replid: str
    last_seq: int = 0


@dataclass
class Recovery:
    """The state rebuilt from the journal at start-up.

    ``clean`` is true when the last line written was a clean-close marker; a
    local log recovered from an unclean journal must take a new replid because
    peers may hold records this region lost in the unsynced window. ``sizes``
    are the segment sizes after any truncation; ``local_replid`` the local
    origin's newest replid line.
    """

    origins: dict[str, OriginState] = field(default_factory=dict)
    tail: list[HotRecord] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    clean: bool = False
    empty: bool = True
    torn_bytes: int = 0
    sizes: dict[int, int] = field(default_factory=dict)
    local_replid: str | None = None
    # Highest local seq ever reserved (``reserve`` lines): no seq up to it may be reissued.
    reserved: int = 0


def read_journal(
    directory: Path,
    *,
    local_origin: str,
    local_index: LocalIndex,
    tail_records: int,
    tail_bytes: int,
    gaps_kept: int,
) -> Recovery:
    """Read every segment, truncating a torn tail; fills ``local_index`` as it goes.

    ``tail`` gets the local origin's newest records under its current replid,
    within ``tail_records``/``tail_bytes`` (the replay buffer's limits).

    Error handling: :class:`JournalDamagedError` (from ``scan_segment``) for a
    bad line that is not the newest segment's torn tail; nothing is changed then.
    """
    local_index.reset(0)
    result = Recovery()
    tail: deque[HotRecord] = deque()
    tail_size = 0
    last_was_close = False
    indexes = segment_indexes(directory)
    for position, index in enumerate(indexes):
        path = segment_path(directory, index)
        # Streamed in chunks: recovery never holds a whole segment in memory.
        segment_tail = Tail()
        for line_start, _line, body, record in scan_segment(
            path, newest=position == len(indexes) - 1, tail=segment_tail
        ):
            result.empty = False
            ctl = body.get("ctl")
            last_was_close = ctl == "close"
            if ctl == "replid":
                origin, replid = str(body["o"]), str(body["r"])
                known = result.origins.get(origin)
                if known is not None and known.replid == replid:
                    # A checkpoint at a segment start: same stream, nothing resets.
                    known.last_seq = max(known.last_seq, int(body.get("s", 0)))
                    continue
                result.origins[origin] = OriginState(replid, int(body.get("s", 0)))
                if origin == local_origin:
                    tail.clear()
                    tail_size = 0
                    local_index.reset(int(body.get("s", 0)))
                    result.local_replid = replid
            elif ctl == "reserve" and body.get("o") == local_origin:
                result.reserved = max(result.reserved, int(body.get("s", 0)))
            elif ctl == "gap":
                gap = {k: v for k, v in body.items() if k != "ctl"}
                result.gaps.append(gap)
                del result.gaps[:-gaps_kept]
                missing_to = gap.get("missing_to")
                if gap.get("origin") == local_origin and isinstance(missing_to, int):
                    # Seqs of a salvaged (lost) range are never handed out again.
                    local = result.origins.setdefault(local_origin, OriginState(""))
                    local.last_seq = max(local.last_seq, missing_to)
            elif record is not None:
                state = result.origins.get(record.origin)
                if state is None:
                    state = result.origins[record.origin] = OriginState("")
                state.last_seq = max(state.last_seq, record.seq)
                if record.origin == local_origin:
                    local_index.note(record.seq, index, line_start)
                    tail.append(record)
                    tail_size += record.size
                    while len(tail) > 1 and (len(tail) > tail_records or tail_size > tail_bytes):
                        tail_size -= tail.popleft().size
        result.sizes[index] = path.stat().st_size
        if segment_tail.torn is not None:
            result.torn_bytes = result.sizes[index] - segment_tail.end
            log.warning(
                "truncating torn journal tail",
                path=str(path),
                offset=segment_tail.end,
                bytes=result.torn_bytes,
                reason=segment_tail.torn,
            )
            with path.open("r+b") as handle:
                handle.truncate(segment_tail.end)
                os.fsync(handle.fileno())
            result.sizes[index] = segment_tail.end
    result.clean = last_was_close
    result.tail = list(tail)
    return result
