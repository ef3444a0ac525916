"""Time order across partitions that overlap: slots and a bounded k-way merge by ``ts``.

Parts are read oldest first. Parts whose spans overlap — several markets in
the same hour, a cold day beside another market's warm hours, an hour's
first file and its late-fill file — form one *slot*; the files of a slot are
merged by ``ts`` so the result is in time order across them. Each file is
sorted by ``ts`` (the writers sort what they write), so the merge needs only
one batch per file in memory: it repeatedly emits every row up to the
smallest "last ``ts``" among the files' current batches (the watermark),
sorted, and refills the file that ran dry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

ORDER_COLUMN: Final = "ts"
_NULL_FIRST: Final = np.iinfo(np.int64).min


def slots(spans: Sequence[tuple[datetime, datetime]], owners: Sequence[int]) -> list[list[int]]:
    """Group item indices into slots of transitively overlapping spans.

    ``spans`` are the parts' ``(start, end)`` sorted by start; ``owners[i]`` is
    the part of item ``i`` (items of one part are contiguous, in part order).
    """
    part_slot: list[int] = []
    slot_end: datetime | None = None
    for start, end in spans:
        if slot_end is None or start >= slot_end:
            part_slot.append(part_slot[-1] + 1 if part_slot else 0)
            slot_end = end
        else:
            part_slot.append(part_slot[-1])
            slot_end = max(slot_end, end)
    grouped: list[list[int]] = [[] for _ in range(part_slot[-1] + 1)] if part_slot else []
    for index, owner in enumerate(owners):
        grouped[part_slot[owner]].append(index)
    return [group for group in grouped if group]


def merge_by_time(streams: Sequence[Iterator[pa.RecordBatch]]) -> Iterator[pa.RecordBatch]:
    """Merge streams each sorted by ``ts`` into one stream sorted by ``ts``.

    Holds one batch per stream plus the batch being emitted. A stream that is
    not sorted still loses no row; its rows may then come out of order.
    """
    heads: list[pa.RecordBatch | None] = [None] * len(streams)

    def refill(index: int) -> bool:
        head = heads[index]
        while head is None or head.num_rows == 0:
            head = next(streams[index], None)
            if head is None:
                heads[index] = None
                return False
        heads[index] = head
        return True

    active = [i for i in range(len(streams)) if refill(i)]
    while active:
        if len(active) == 1:
            (only,) = active
            head = heads[only]
            if head is not None:
                yield head
            yield from streams[only]
            return
        keys = {i: _keys(heads[i]) for i in active}
        lasts = {i: int(keys[i][-1]) for i in active}
        leader = min(active, key=lambda i: lasts[i])
        watermark = lasts[leader]
        pieces = []
        for i in active:
            head = heads[i]
            if head is None:
                continue
            # The leader is taken whole, so every round makes progress even on unsorted input.
            take = (
                head.num_rows if i == leader else int(np.searchsorted(keys[i], watermark, "right"))
            )
            if take:
                pieces.append(head.slice(0, take))
                heads[i] = head.slice(take)
        merged = pa.Table.from_batches(pieces).sort_by(ORDER_COLUMN).combine_chunks()
        yield from merged.to_batches()
        active = [i for i in active if refill(i)]


def _keys(batch: pa.RecordBatch | None) -> npt.NDArray[np.int64]:
    if batch is None:
        return np.zeros(0, dtype=np.int64)
    column = pc.fill_null(batch.column(ORDER_COLUMN).cast(pa.int64()), _NULL_FIRST)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64)
