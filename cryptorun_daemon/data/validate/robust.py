"""The robust baseline and the spike detector behind the anomaly check.

One :class:`SeriesDetector` follows one series of one venue/symbol stream —
prices (judged on their returns) or trade sizes (judged on their level) — and
is driven either one sample at a time (:meth:`SeriesDetector.push`, the hot
tier) or over a whole array (:meth:`SeriesDetector.run`, partitions). Both
drives share one state machine and one estimator function, so they flag the
same samples by construction; ``run`` only skips ahead with vectorised
arithmetic across stretches where the scalar machine would accept every sample.

Each sample is turned into a positive value ``x``: the price ratio
``price / last accepted price`` for returns, the raw size for levels. The
statistics live in log space (``log x`` is the log return, or the log size),
but the per-sample test does not: a baseline is turned once into bounds
``lo = exp(median - limit)`` and ``hi = exp(median + limit)`` on ``x`` itself, and
``|log x - median| > limit`` is tested as ``x > hi or x < lo`` (the same
inequality, because ``exp`` is increasing; equal up to one rounding of the
bound, and both drives use the same bound). So no logarithm is taken per
sample — only over the samples a baseline is estimated from.

The state machine, per sample:

1. Warm-up: until ``min_samples`` samples are accepted there is no baseline
   (``lo = -inf``, ``hi = +inf``) and every sample is accepted.
2. The baseline is refreshed every ``min_samples`` accepted samples while the
   window fills, then every ``window`` accepted samples. Blocks, not a
   per-sample rolling median: the same statistics at a fraction of the cost.
3. The baseline estimator (:func:`estimator_sample`, :func:`baselines`): of the
   last ``w = min(window, accepted)`` accepted values, take every ``s``-th one
   counting back from the newest, ``s = ceil(w / baseline_samples)`` (default
   window 500, 128 samples: ``s = 4``, 125 values; windows of up to 128 values
   are used whole). Median and MAD are exact over that sample. A stride
   sample of a stationary window estimates the same median and MAD as the
   whole window with a larger but bounded error (docs/VALIDATION.md gives the
   numbers); the guards below, not the estimator's precision, keep noise from
   flagging.
4. Sigma is ``MAD / 0.6745``; when MAD is 0, ``1.253314 · MeanAD`` but at least
   the sample's smallest non-zero deviation (its observed tick); and never
   below ``floor_bps`` (or the configured tick over the price).
5. A sample is an outlier when ``|log x - median| / sigma > threshold`` (the
   Iglewicz–Hoaglin modified z-score) and ``|log x - median| >= guard`` (the
   minimum relative move), folded into the bounds above. Outliers are not
   accepted: they open a run and are judged against the pre-run price and
   baseline.
6. A run ends at the first non-outlier: the run was a *spike* (it reverted),
   its samples are flagged and never enter the baseline. A run longer than
   ``spike_horizon`` is a *level shift*: its samples are accepted in order as
   the new regime (flagged only if ``flag_level_shifts``).
7. A run still open when the data ends is not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
TagArray = npt.NDArray[np.int64]
SeriesKind = Literal["return", "level"]
EventReason = Literal["spike", "level_shift"]

MAD_TO_SIGMA: Final = 0.6745  # MAD of a normal distribution in units of sigma
MEANAD_TO_SIGMA: Final = 1.253314  # sqrt(pi/2): mean absolute deviation to sigma
BPS: Final = 1e-4
# The most values one baseline is estimated from; windows up to this size are
# used whole. 128 keeps a 500-sample window's estimate within ~10 % of sigma
# (docs/VALIDATION.md) at a quarter of the selection work.
BASELINE_SAMPLES: Final = 128
_FIRST_LOOKAHEAD_BLOCKS: Final = 128
_MAX_LOOKAHEAD_BLOCKS: Final = 512


@dataclass(frozen=True)
class DetectorParams:
    """The knobs of one series detector (see the module docstring for their roles)."""

    window: int
    min_samples: int
    threshold: float
    guard: float
    floor: float
    tick_size: float = 0.0
    spike_horizon: int = 3
    two_sided: bool = True
    flag_level_shifts: bool = False
    baseline_samples: int = BASELINE_SAMPLES

    def next_refresh(self, at: int) -> int:
        """The accepted-sample count of the refresh after the one at ``at``."""
        step = self.min_samples if at < self.window else self.window
        return at + max(1, step)


def sample_stride(width: int, most: int) -> int:
    """The stride ``s = ceil(width / most)`` of the estimator's sample of a window."""
    return max(1, -(-width // max(1, most)))


def estimator_sample(window: FloatArray, most: int) -> FloatArray:
    """The values of ``window`` (oldest first) a baseline is estimated from.

    Every ``s``-th value counting back from the newest, ``s`` from
    :func:`sample_stride`; the batch drive gathers the same positions without
    building the window (see ``SeriesDetector._chunk_bounds``).
    """
    width = window.shape[-1]
    stride = sample_stride(width, most)
    return np.ascontiguousarray(window[..., (width - 1) % stride :: stride])


def _row_medians(rows: FloatArray) -> FloatArray:
    """Median of each row; ``rows`` is reordered in place (callers pass copies)."""
    width = rows.shape[1]
    half = width // 2
    rows.partition(half, axis=1)
    if width % 2:
        middle: FloatArray = rows[:, half].copy()
        return middle
    # One selection plus a max over the lower half is several times faster
    # than selecting both middle elements at once (numpy's multi-kth path).
    mean_of_middles: FloatArray = (rows[:, :half].max(axis=1) + rows[:, half]) * 0.5
    return mean_of_middles


def baselines(samples: FloatArray, floors: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Median and robust sigma of each row of ``samples`` (log values, shape ``(k, m)``).

    Every caller — one refresh or a thousand — goes through this function, so
    a baseline never depends on how many were computed together.
    """
    return _baselines_in_place(samples.copy(), floors)


def _baselines_in_place(samples: FloatArray, floors: FloatArray) -> tuple[FloatArray, FloatArray]:
    """:func:`baselines` reordering a C-contiguous ``samples`` the caller gives up.

    Selection reorders each row deterministically, so rows equal on input
    give equal statistics however many rows there are.
    """
    medians = _row_medians(samples)
    deviations = samples
    np.subtract(samples, medians[:, None], out=deviations)
    np.abs(deviations, out=deviations)
    mads = _row_medians(deviations)
    sigmas = mads / MAD_TO_SIGMA
    flat = mads == 0.0
    if flat.any():
        dev = deviations[flat]
        # MeanAD alone under-states the spread of a mostly flat window (one
        # tick among 499 zeros); the observed tick is the honest lower bound.
        ticks = np.where(dev > 0.0, dev, np.inf).min(axis=1)
        ticks[np.isinf(ticks)] = 0.0
        sigmas[flat] = np.maximum(MEANAD_TO_SIGMA * dev.mean(axis=1), ticks)
    return medians, np.maximum(sigmas, floors)


def bounds(
    medians: FloatArray, sigmas: FloatArray, params: DetectorParams
) -> tuple[FloatArray, FloatArray]:
    """Per-baseline bounds ``(lo, hi)`` on ``x``: outside them a sample is an outlier.

    ``|log x - median| / sigma > threshold`` and ``|log x - median| >= guard``
    fold into ``|log x - median| > limit``, which is ``x > exp(median + limit)``
    or ``x < exp(median - limit)``; one-sided series (volume) only have ``hi``.
    """
    below_guard = np.nextafter(params.guard, -np.inf)
    limit = np.maximum(params.threshold * sigmas, below_guard)
    if not params.two_sided:
        hi: FloatArray = np.exp(medians + np.maximum(limit, 0.0))
        return np.full(hi.shape, -np.inf), hi
    return np.exp(medians - limit), np.exp(medians + limit)


class _History:
    """The last ``size`` accepted values in a ring buffer; :meth:`values` reads them oldest first.

    A numpy ring rather than a deque of floats: the batch drive writes and
    reads whole windows, which a deque would box and unbox value by value.
    """

    def __init__(self, size: int) -> None:
        self._buf = np.empty(max(1, size))
        self._written = 0

    def __len__(self) -> int:
        return min(self._written, len(self._buf))

    def append(self, value: float) -> None:
        self._buf[self._written % len(self._buf)] = value
        self._written += 1

    def extend(self, values: FloatArray) -> None:
        size = len(self._buf)
        values = values[-size:]
        at = self._written % size
        head = min(len(values), size - at)
        self._buf[at : at + head] = values[:head]
        self._buf[: len(values) - head] = values[head:]
        self._written += len(values)

    def values(self) -> FloatArray:
        size = len(self._buf)
        if self._written <= size:
            return self._buf[: self._written]
        at = self._written % size
        return np.concatenate([self._buf[at:], self._buf[:at]])


@dataclass(frozen=True, slots=True)
class Event:
    """A judged sample: its caller tag (row or record index), raw value and verdict."""

    tag: int
    raw: float
    reason: EventReason


class SeriesDetector:
    """The per-series state machine; see the module docstring.

    Resource handling: holds at most ``window`` accepted values plus an open
    run of at most ``spike_horizon + 1`` samples.
    """

    def __init__(self, params: DetectorParams, kind: SeriesKind) -> None:
        self.params = params
        self.kind = kind
        self.history = _History(params.window)
        self.accepted = 0
        self.next_refresh = max(1, params.min_samples)
        # No baseline yet: nothing is outside (-inf, +inf).
        self.lo = -np.inf
        self.hi = np.inf
        self.last_raw: float | None = None
        self.run_tags: list[int] = []
        self.run_raws: list[float] = []
        self._lookahead = _FIRST_LOOKAHEAD_BLOCKS

    # --- shared pieces -------------------------------------------------------------

    def _floors(self, raws: FloatArray) -> FloatArray:
        """The sigma floor at each refresh, given the last accepted raw value there."""
        floor = self.params.floor
        if self.params.tick_size > 0.0:
            return np.maximum(floor, self.params.tick_size / raws)
        return np.full(raws.shape, floor)

    def _estimate(self, samples: FloatArray, raws: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Bounds from estimator samples of ``x`` (shape ``(k, m)``), one row per refresh."""
        logs = np.log(samples, out=samples) if samples.flags.owndata else np.log(samples)
        med, sig = _baselines_in_place(logs, self._floors(raws))
        return bounds(med, sig, self.params)

    def _refresh(self) -> None:
        sample = estimator_sample(self.history.values(), self.params.baseline_samples)
        raw = self.last_raw if self.last_raw is not None else 1.0
        lo, hi = self._estimate(sample[None, :], np.array([raw]))
        self.lo, self.hi = float(lo[0]), float(hi[0])
        self.next_refresh = self.params.next_refresh(self.accepted)

    def _value(self, raw: float) -> float:
        if self.kind == "level" or self.last_raw is None:
            return raw
        return raw / self.last_raw

    def _accept(self, raw: float) -> None:
        if self.kind == "return" and self.last_raw is None:
            self.last_raw = raw  # first price: no return yet
            return
        self.history.append(self._value(raw))
        self.accepted += 1
        self.last_raw = raw
        if self.accepted == self.next_refresh:
            self._refresh()

    # --- one sample ------------------------------------------------------------------

    def push(self, tag: int, raw: float) -> list[Event]:
        """Feed one positive finite value; returns the samples judged by it (possibly earlier)."""
        if self.kind == "return" and self.last_raw is None:
            self._accept(raw)
            return []
        x = self._value(raw)
        if not (x > self.hi or x < self.lo):
            events = [
                Event(t, r, "spike") for t, r in zip(self.run_tags, self.run_raws, strict=True)
            ]
            self._clear_run()
            self._accept(raw)
            return events
        self.run_tags.append(tag)
        self.run_raws.append(raw)
        if len(self.run_tags) <= self.params.spike_horizon:
            return []
        # Too long to be a glitch: a new regime. Accept it as ordinary data.
        events = (
            [Event(self.run_tags[0], self.run_raws[0], "level_shift")]
            if self.params.flag_level_shifts
            else []
        )
        for run_raw in self.run_raws:
            self._accept(run_raw)
        self._clear_run()
        return events

    def _clear_run(self) -> None:
        self.run_tags.clear()
        self.run_raws.clear()

    # --- a whole array -----------------------------------------------------------------

    def run(
        self, values: FloatArray, tags: TagArray | None = None, *, offset: int = 0
    ) -> list[Event]:
        """Feed every value in order; same verdicts as calling :meth:`push` per value.

        ``values`` must be positive and finite. A sample's tag is ``tags[i]``,
        or ``offset + i`` without ``tags``. Calls may follow each other over
        consecutive pieces of one series (the state carries over).
        """
        events: list[Event] = []
        pos, size = 0, len(values)
        while pos < size:
            if self.run_tags or (self.kind == "return" and self.last_raw is None):
                tag = int(tags[pos]) if tags is not None else offset + pos
                events += self.push(tag, float(values[pos]))
                pos += 1
                continue
            taken, clean = self._skip_clean(values, pos)
            pos += taken
            # Grow the look-ahead over clean data, shrink it near outliers, so
            # work thrown away after an outlier stays small.
            if clean:
                self._lookahead = min(self._lookahead * 2, _MAX_LOOKAHEAD_BLOCKS)
            else:
                self._lookahead = max(16, self._lookahead // 2)
                tag = int(tags[pos]) if tags is not None else offset + pos
                events += self.push(tag, float(values[pos]))
                pos += 1
        return events

    def _refresh_points(self, reach: int) -> TagArray:
        """Accepted counts of the next refreshes within ``reach`` samples, look-ahead capped."""
        base, blocks = self.accepted, self._lookahead
        warm: list[int] = []
        at = self.next_refresh
        while at - base <= reach and len(warm) < blocks and at < self.params.window:
            warm.append(at)
            at = self.params.next_refresh(at)
        head = np.array(warm, dtype=np.int64)
        if at - base > reach or len(warm) >= blocks:
            return head
        # From here on the refresh step is the window, constant.
        step = max(1, self.params.window)
        count = min(blocks - len(warm), (reach - (at - base)) // step + 1)
        return np.concatenate([head, at + step * np.arange(count, dtype=np.int64)])

    def _chunk_values(self, chunk: FloatArray) -> FloatArray:
        if self.kind == "level":
            return chunk
        x = np.empty_like(chunk)
        x[0] = chunk[0] / self.last_raw if self.last_raw is not None else chunk[0]
        np.divide(chunk[1:], chunk[:-1], out=x[1:])
        return x

    def _skip_clean(self, values: FloatArray, pos: int) -> tuple[int, bool]:
        """Accept, vectorised, the samples from ``pos`` up to the next outlier.

        Returns how many samples were accepted and whether the look-ahead ran
        out without meeting an outlier (``False`` leaves it at ``pos + taken``).
        """
        base = self.accepted
        points = self._refresh_points(len(values) - pos)
        # Look ahead to the last reachable refresh, or to the data's end when
        # fewer refreshes than the look-ahead are reachable.
        span = len(values) - pos
        if len(points) == self._lookahead:
            span = int(points[-1]) - base
        chunk = values[pos : pos + span]
        x = self._chunk_values(chunk)
        ends = points - base  # chunk offset where each refresh's baseline starts
        lo, hi = self._chunk_bounds(x, chunk, ends)
        # Segment j runs from starts[j] under bounds j; a refresh at the very
        # end of the look-ahead starts no segment here.
        starts = np.concatenate([np.zeros(1, dtype=np.int64), ends])
        starts = starts[starts < span]
        used = len(starts)
        bad = np.maximum.reduceat(x, starts) > hi[:used]
        if self.params.two_sided:
            bad |= np.minimum.reduceat(x, starts) < lo[:used]
        first = span
        if bad.any():
            seg = int(np.argmax(bad))
            stop = int(starts[seg + 1]) if seg + 1 < used else span
            piece = x[starts[seg] : stop]
            first = int(starts[seg]) + int(np.argmax((piece > hi[seg]) | (piece < lo[seg])))
        self._bulk_accept(x[:first], chunk[:first], points, lo, hi)
        return first, first == span

    def _chunk_bounds(
        self, x: FloatArray, chunk: FloatArray, ends: TagArray
    ) -> tuple[FloatArray, FloatArray]:
        """The bounds in force before each refresh of the chunk, and after each.

        Refresh ``j`` estimates from the accepted values ending at chunk offset
        ``ends[j]`` (exclusive): the same positions :func:`estimator_sample`
        picks from the history, gathered directly; positions before the chunk
        come from the history.
        """
        lo = np.empty(len(ends) + 1)
        hi = np.empty(len(ends) + 1)
        lo[0], hi[0] = self.lo, self.hi
        if not len(ends):
            return lo, hi
        widths = np.minimum(self.params.window, self.accepted + ends)
        if widths[0] == widths[-1]:  # widths never shrink: one group (the steady state)
            samples = self._gather_samples(x, ends, int(widths[0]))
            lo[1:], hi[1:] = self._estimate(samples, chunk[ends - 1])
            return lo, hi
        for width in np.unique(widths).tolist():
            rows = np.flatnonzero(widths == width)
            at = ends[rows]
            samples = self._gather_samples(x, at, width)
            lo[1 + rows], hi[1 + rows] = self._estimate(samples, chunk[at - 1])
        return lo, hi

    def _gather_samples(self, x: FloatArray, ends: TagArray, width: int) -> FloatArray:
        """Estimator samples of the windows of ``width`` values ending at ``ends`` (ascending).

        Position ``e - 1 - s·j`` for ``j = m-1 … 0``: the same values, in the
        same order, as :func:`estimator_sample` of that window.
        """
        stride = sample_stride(width, self.params.baseline_samples)
        count = -(-width // stride)
        span = stride * (count - 1)  # from the first sampled value to the newest
        samples = np.empty((len(ends), count))
        # Windows that start before the chunk (ends ascend: they lead) read
        # the history; there are at most a few.
        early = int(np.searchsorted(ends, width))
        if early:
            tail = self.history.values()
            ext = np.concatenate([tail, x[: int(ends[early - 1])]])
            back = np.arange(span, -1, -stride, dtype=np.int64)
            np.take(ext, ends[:early, None] - 1 - back[None, :] + len(tail), out=samples[:early])
        late = ends[early:]
        if not len(late):
            return samples
        if len(late) == 1 or bool((np.diff(late) == width).all()):
            # Back-to-back windows (the steady state): a strided view of the
            # chunk holds every sample, copied once.
            blocks = x[int(late[0]) - width : int(late[-1])].reshape(len(late), width)
            samples[early:] = blocks[:, width - 1 - span :: stride]
        else:
            back = np.arange(span, -1, -stride, dtype=np.int64)
            np.take(x, late[:, None] - 1 - back[None, :], out=samples[early:])
        return samples

    def _bulk_accept(
        self, xs: FloatArray, raws: FloatArray, points: TagArray, lo: FloatArray, hi: FloatArray
    ) -> None:
        taken = len(xs)
        if taken == 0:
            return
        self.history.extend(xs)
        self.accepted += taken
        self.last_raw = float(raws[-1])
        passed = int(np.searchsorted(points, self.accepted, side="right"))
        if passed:
            self.lo, self.hi = float(lo[passed]), float(hi[passed])
            self.next_refresh = self.params.next_refresh(int(points[passed - 1]))
