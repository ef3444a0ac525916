"""Hand freed memory back to the operating system (glibc's malloc).

The daemon moves data in part-sized buffers (object-store multipart parts of
8 MiB, ranged GETs, copier batches) that are allocated in one thread and
often freed in another: obstore's Rust runtime threads, the default executor's
workers, the event loop. glibc serves such blocks by ``mmap`` only until the
first one is freed; from then on its *dynamic* threshold rises to the freed
block's size, so later blocks of that size come from the per-thread arenas,
and a freed block inside an arena stays resident until the arena's top can be
trimmed. Measured with ``mallinfo2`` during a 450 MB bucket → bucket
replication (``bench/object_store.py``): 30–80 MB in use, 55–106 MB free but
resident, so the process's RSS followed the number of arenas that had ever
held a part, not the configured number of part buffers.

:func:`return_large_blocks` fixes the threshold at :data:`MMAP_THRESHOLD`
(``mallopt(M_MMAP_THRESHOLD)``, which also turns the dynamic adjustment off):
every block of 1 MiB or more is its own mapping and goes back to the kernel
when freed, so memory follows what is live. Blocks that size are few (a
handful per part), so the extra ``mmap``/``munmap`` calls cost nothing
measurable (docs/BENCHMARKS.md, object-store section).

:func:`~cryptorun_daemon.runtime.event_loop.run` calls it, so the daemon and
anything run the way the daemon runs (the benches' children) get it.
:func:`trim_heap` (``malloc_trim``) returns the free pages of smaller blocks
after a burst, e.g. a validation (``replication/verify.py``). On a C library
without these calls (musl, macOS) both do nothing.

:func:`decode_pool` is the Arrow memory pool validation decodes Parquet into:
Arrow's jemalloc pool. Measured with two threads validating 15 MiB files
back to back (docs/BENCHMARKS.md, object-store section): Arrow's default
(mimalloc) released after each file cost 50 ms of CPU per file and 107 MB of
peak; the system allocator, whose blocks of 1 MiB or more are unmapped when
freed (above), 95 ms and 62 MB, every buffer faulted in again; jemalloc 19 ms
and 60 MB, reusing its pages between files and returning them by itself about
a second after the last use. :func:`release_decode_pool` returns them at once
(the verifier calls it when its last validation in flight ends).
"""

from __future__ import annotations

import ctypes
import functools
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import pyarrow as pa

#: ``M_MMAP_THRESHOLD`` in glibc's ``<malloc.h>``.
M_MMAP_THRESHOLD: Final = -3
#: Blocks of this size or larger are mapped on their own and unmapped when freed.
MMAP_THRESHOLD: Final = 1 << 20

_done: bool | None = None


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD`; whether it took effect.

    Idempotent (the first call decides). Error handling: none raised — a C
    library without ``mallopt`` or one that refuses the value leaves the
    allocator as it was and the call returns ``False``.
    """
    global _done
    if _done is None:
        _done = _set_mmap_threshold(MMAP_THRESHOLD)
    return _done


def trim_heap() -> None:
    """Return the free pages of glibc's heaps to the kernel (blocking, a few milliseconds)."""
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _load_libc() -> ctypes.CDLL | None:
    # The process's own symbols (libc among them): no ``find_library`` subprocess.
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC: Final = _load_libc()


def _set_mmap_threshold(size: int) -> bool:
    mallopt = getattr(_LIBC, "mallopt", None) if _LIBC is not None else None
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, size))  # glibc: 1 on success, 0 on error


@functools.cache
def decode_pool() -> pa.MemoryPool:
    """Arrow's jemalloc pool, or the system allocator's where Arrow was built without it."""
    import pyarrow as pa  # here: only the validators need Arrow

    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:
        return pa.system_memory_pool()


def release_decode_pool() -> None:
    """Hand the decode pool's free pages back to the OS now (any thread, milliseconds)."""
    decode_pool().release_unused()
