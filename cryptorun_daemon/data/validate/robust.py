"""The robust baseline and the spike detector behind the anomaly check.

One :class:`SeriesDetector` follows one series of one venue/symbol stream —
log prices (judged on their log returns) or log volumes — and is driven either
one sample at a time (:meth:`SeriesDetector.push`, the hot tier) or over a
whole array (:meth:`SeriesDetector.run`, partitions). Both drives share one
state machine and one set of numeric kernels, so they flag the same samples by
construction; ``run`` only skips ahead with vectorised arithmetic across
stretches where the scalar machine would accept every sample.

The state machine, per sample with deviation ``d`` (log return against the
last accepted price, or the log volume itself):

1. Warm-up: until ``min_samples`` samples are accepted there is no baseline
   and every sample is accepted.
2. The baseline (median and robust sigma of the last ``window`` accepted
   deviations) is refreshed every ``min_samples`` accepted samples while the
   window fills, then every ``window`` accepted samples. Blocks, not a
   per-sample rolling median: the same statistics at a fraction of the cost.
3. Sigma is ``MAD / 0.6745``; when MAD is 0, ``1.253314 · MeanAD`` but at least
   the window's smallest non-zero deviation (its observed tick); and never
   below ``floor_bps`` (or the configured tick over the price).
4. A sample is an outlier when ``|d - median| / sigma > threshold`` (the
   Iglewicz–Hoaglin modified z-score) and ``|d - median| >= guard`` (the
   minimum relative move). Outliers are not accepted: they open a run and are
   judged against the pre-run price and baseline.
5. A run ends at the first non-outlier: the run was a *spike* (it reverted),
   its samples are flagged and never enter the baseline. A run longer than
   ``spike_horizon`` is a *level shift*: its samples are accepted in order as
   the new regime (flagged only if ``flag_level_shifts``).
6. A run still open when the data ends is not judged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

FloatArray = npt.NDArray[np.float64]
SeriesKind = Literal["return", "level"]
EventReason = Literal["spike", "level_shift"]

MAD_TO_SIGMA: Final = 0.6745  # MAD of a normal distribution in units of sigma
MEANAD_TO_SIGMA: Final = 1.253314  # sqrt(pi/2): mean absolute deviation to sigma
BPS: Final = 1e-4
_MAX_CHUNK_BLOCKS: Final = 512


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

    def next_refresh(self, at: int) -> int:
        """The accepted-sample count of the refresh after the one at ``at``."""
        step = self.min_samples if at < self.window else self.window
        return at + max(1, step)


def _row_medians(rows: FloatArray) -> FloatArray:
    """Median of each row; ``rows`` is reordered in place (callers pass copies)."""
    width = rows.shape[1]
    half = width // 2
    if width % 2:
        rows.partition(half, axis=1)
        middle: FloatArray = rows[:, half].copy()
        return middle
    # One selection plus a max over the lower half is several times faster
    # than selecting both middle elements at once (numpy's multi-kth path).
    rows.partition(half, axis=1)
    mean_of_middles: FloatArray = (rows[:, :half].max(axis=1) + rows[:, half]) * 0.5
    return mean_of_middles


def baselines(windows: FloatArray, floors: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Median and robust sigma of each row of ``windows`` (shape ``(k, w)``).

    Every caller — one refresh or a thousand — goes through this function, so
    a baseline never depends on how many were computed together.
    """
    medians = _row_medians(windows.copy())
    deviations = np.abs(windows - medians[:, None])
    mads = _row_medians(deviations.copy())
    sigmas = mads / MAD_TO_SIGMA
    for row in np.flatnonzero(mads == 0.0).tolist():
        dev = deviations[row]
        nonzero = dev[dev > 0.0]
        # MeanAD alone under-states the spread of a mostly flat window (one
        # tick among 499 zeros); the observed tick is the honest lower bound.
        observed_tick = float(nonzero.min()) if nonzero.size else 0.0
        sigmas[row] = max(MEANAD_TO_SIGMA * float(np.mean(dev)), observed_tick)
    return medians, np.maximum(sigmas, floors)


def limits(sigmas: FloatArray, params: DetectorParams) -> FloatArray:
    """Per-baseline bound on ``|d - median|``: above it a sample is an outlier.

    ``|d - median| / sigma > threshold`` and ``|d - median| >= guard`` folded
    into one comparison, ``|d - median| > limit``, so the per-sample work is a
    subtraction, an absolute value and one compare.
    """
    below_guard = np.nextafter(params.guard, -np.inf)
    bound = np.maximum(params.threshold * sigmas, below_guard)
    return bound if params.two_sided else np.maximum(bound, 0.0)


def outliers(dev: FloatArray, limit: FloatArray, params: DetectorParams) -> npt.NDArray[np.bool_]:
    """The outlier test, elementwise (scalars are passed as 1-element arrays)."""
    # One-sided series (volume) only flag samples above the median.
    return (np.abs(dev) if params.two_sided else dev) > limit


@dataclass(frozen=True, slots=True)
class Event:
    """A judged sample: its caller tag (row or record index), raw value and verdict."""

    tag: int
    raw: float
    reason: EventReason


class SeriesDetector:
    """The per-series state machine; see the module docstring.

    Resource handling: holds at most ``window`` accepted deviations plus an
    open run of at most ``spike_horizon + 1`` samples.
    """

    def __init__(self, params: DetectorParams, kind: SeriesKind) -> None:
        self.params = params
        self.kind = kind
        self.history: deque[float] = deque(maxlen=max(1, params.window))
        self.accepted = 0
        self.next_refresh = max(1, params.min_samples)
        self.median = 0.0
        self.limit = 0.0
        self.has_baseline = False
        self.last_level: float | None = None
        self.last_raw = 0.0
        self.run_tags: list[int] = []
        self.run_levels: list[float] = []
        self.run_raws: list[float] = []

    # --- shared pieces -------------------------------------------------------------

    def _floor(self, raw: float) -> float:
        floor = self.params.floor
        if self.params.tick_size > 0.0 and raw > 0.0:
            floor = max(floor, self.params.tick_size / raw)
        return floor

    def _floors(self, raws: FloatArray) -> FloatArray:
        """:meth:`_floor` over many refresh-time prices, with the same arithmetic."""
        floors = np.full(raws.shape, self.params.floor)
        if self.params.tick_size > 0.0:
            return np.array([self._floor(float(raw)) for raw in raws.tolist()])
        return floors

    def _refresh(self) -> None:
        width = min(len(self.history), self.accepted)
        window = np.fromiter(self.history, dtype=np.float64, count=len(self.history))[-width:]
        med, sig = baselines(window[None, :], np.array([self._floor(self.last_raw)]))
        self.median, self.has_baseline = float(med[0]), True
        self.limit = float(limits(sig, self.params)[0])

    def _accept(self, level: float, raw: float) -> None:
        if self.kind == "return" and self.last_level is None:
            self.last_level, self.last_raw = level, raw  # first price: no return yet
            return
        self.history.append(self._deviation(level))
        self.accepted += 1
        self.last_level, self.last_raw = level, raw
        if self.accepted == self.next_refresh:
            self._refresh()
            self.next_refresh = self.params.next_refresh(self.accepted)

    def _deviation(self, level: float) -> float:
        if self.kind == "level" or self.last_level is None:
            return level
        return level - self.last_level

    def _is_outlier(self, level: float) -> bool:
        dev = np.array([self._deviation(level) - self.median])
        return bool(outliers(dev, np.array([self.limit]), self.params)[0])

    # --- one sample ------------------------------------------------------------------

    def push(self, tag: int, level: float, raw: float) -> list[Event]:
        """Feed one sample; returns the samples judged by it (possibly earlier ones)."""
        if not self.has_baseline or (self.kind == "return" and self.last_level is None):
            self._accept(level, raw)
            return []
        if not self._is_outlier(level):
            events = [Event(t, r, "spike") for t, r in zip(self.run_tags, self.run_raws,
                                                            strict=True)]
            self._clear_run()
            self._accept(level, raw)
            return events
        self.run_tags.append(tag)
        self.run_levels.append(level)
        self.run_raws.append(raw)
        if len(self.run_tags) <= self.params.spike_horizon:
            return []
        # Too long to be a glitch: a new regime. Accept it as ordinary data.
        events = (
            [Event(self.run_tags[0], self.run_raws[0], "level_shift")]
            if self.params.flag_level_shifts
            else []
        )
        for run_level, run_raw in zip(self.run_levels, self.run_raws, strict=True):
            self._accept(run_level, run_raw)
        self._clear_run()
        return events

    def _clear_run(self) -> None:
        self.run_tags.clear()
        self.run_levels.clear()
        self.run_raws.clear()

    # --- a whole array -----------------------------------------------------------------

    def run(self, levels: FloatArray, raws: FloatArray, tags: npt.NDArray[np.int64]) -> list[Event]:
        """Feed every sample in order; same verdicts as calling :meth:`push` per sample."""
        events: list[Event] = []
        pos, size, blocks = 0, len(levels), 4
        while pos < size:
            ready = self.has_baseline and not self.run_tags and self.last_level is not None
            if self.kind == "level":
                ready = self.has_baseline and not self.run_tags
            if not ready:
                events += self.push(int(tags[pos]), float(levels[pos]), float(raws[pos]))
                pos += 1
                continue
            taken, clean = self._skip_clean(levels, raws, pos, blocks)
            pos += taken
            # Grow the look-ahead over clean data, shrink it near outliers, so
            # work thrown away after an outlier stays small.
            blocks = min(blocks * 2, _MAX_CHUNK_BLOCKS) if clean else max(1, blocks // 2)
            if not clean:
                events += self.push(int(tags[pos]), float(levels[pos]), float(raws[pos]))
                pos += 1
        return events

    def _refresh_points(self, limit: int, blocks: int) -> list[int]:
        points: list[int] = []
        at = self.next_refresh
        while at - self.accepted <= limit and len(points) < blocks:
            points.append(at)
            at = self.params.next_refresh(at)
        return points

    def _skip_clean(
        self, levels: FloatArray, raws: FloatArray, pos: int, blocks: int
    ) -> tuple[int, bool]:
        """Accept, vectorised, the samples from ``pos`` up to the next outlier.

        Returns how many samples were accepted and whether the look-ahead ran
        out without meeting an outlier (``False`` leaves it at ``pos + taken``).
        """
        base = self.accepted
        points = self._refresh_points(len(levels) - pos, blocks)
        # Look ahead to the last reachable refresh, or to the data's end when
        # no refresh is reachable (the current baseline covers it all).
        span = (points[-1] - base) if points else len(levels) - pos
        if points and len(points) < blocks:
            span = len(levels) - pos
        chunk = levels[pos : pos + span]
        if self.kind == "return":
            dev = np.empty(span, dtype=np.float64)
            dev[0] = self._deviation(float(chunk[0]))
            np.subtract(chunk[1:], chunk[:-1], out=dev[1:])
        else:
            dev = chunk.copy()
        meds, lims = self._chunk_baselines(dev, raws[pos : pos + span], points)
        bounds = [p - base for p in points]
        counts = np.diff(np.array([0, *bounds, span]))
        hit = outliers(dev - np.repeat(meds, counts), np.repeat(lims, counts), self.params)
        first = int(np.argmax(hit))
        if not hit[first]:
            first = span
        self._bulk_accept(
            dev[:first], chunk[:first], raws[pos : pos + first], points=points, meds=meds, lims=lims
        )
        return first, first == span

    def _chunk_baselines(
        self, dev: FloatArray, raws: FloatArray, points: list[int]
    ) -> tuple[FloatArray, FloatArray]:
        """The baseline in force before each refresh point of the chunk, and after each."""
        base = self.accepted
        tail = np.fromiter(self.history, dtype=np.float64, count=len(self.history))
        ext = np.concatenate([tail, dev])
        meds, lims = [self.median], [self.limit]
        by_width: dict[int, list[int]] = {}
        for i, point in enumerate(points):
            by_width.setdefault(min(self.params.window, point), []).append(i)
        out_med = np.empty(len(points))
        out_lim = np.empty(len(points))
        for width, idx in by_width.items():
            ends = np.array([len(tail) + points[i] - base for i in idx])
            windows = sliding_window_view(ext, width)[ends - width]
            floors = self._floors(raws[np.array([points[i] - base - 1 for i in idx])])
            med, sig = baselines(windows, floors)
            out_med[idx], out_lim[idx] = med, limits(sig, self.params)
        return np.array(meds + out_med.tolist()), np.array(lims + out_lim.tolist())

    def _bulk_accept(
        self,
        dev: FloatArray,
        levels: FloatArray,
        raws: FloatArray,
        *,
        points: list[int],
        meds: FloatArray,
        lims: FloatArray,
    ) -> None:
        taken = len(dev)
        if taken == 0:
            return
        self.history.extend(dev[-self.params.window :].tolist())
        self.accepted += taken
        self.last_level, self.last_raw = float(levels[-1]), float(raws[-1])
        passed = sum(1 for p in points if p <= self.accepted)
        if passed:
            self.median, self.limit = float(meds[passed]), float(lims[passed])
            self.next_refresh = self.params.next_refresh(points[passed - 1])
