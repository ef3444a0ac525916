"""The shared vocabulary of every check: records, structured errors, batch results.

A per-record check is a :data:`ValidateFn` that returns one
:class:`ValidationError` or ``None``. A batch check over a ``pyarrow.Table``
returns a :class:`BatchResult`: a per-row violation mask plus the findings
grouped by ``(check, field, reason)`` with the offending row indices. Both forms
use the same ``check``, ``field`` and ``reason`` strings, so a row flagged by one
form is flagged by the other with the same labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

Record = Mapping[str, Any]
Check = Literal["schema", "staleness", "drift", "anomaly", "corrupt"]
CHECKS: Final[tuple[Check, ...]] = ("schema", "staleness", "drift", "anomaly", "corrupt")

BoolMask = npt.NDArray[np.bool_]
RowIndex = npt.NDArray[np.int64]


def json_safe(value: Any) -> Any:
    """``value`` as something ``json.dumps`` writes as strict JSON.

    Non-finite floats become the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` (strict JSON has no literal for them), numpy scalars become
    Python numbers, sequences become lists, and anything else unknown becomes its
    ``repr`` so that a wrong-typed value can still be reported.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_safe(v) for v in value]
    return repr(value)


@dataclass(frozen=True, slots=True)
class ValidationError:
    """One finding about one record.

    ``check`` is the bounded check name, ``field`` the record field at fault
    (``""`` for the record as a whole), ``value`` what was found, ``expected``
    what the check wanted (human text), ``reason`` a stable machine code such as
    ``missing`` or ``spike``. ``lag`` is 0 when the finding is about the record
    just checked; the anomaly check confirms a spike only when a later record of
    the same venue and symbol reverts it, and then ``lag`` counts how many
    records of that stream back the flagged one lies.
    """

    check: Check
    field: str
    value: Any
    expected: str
    reason: str
    lag: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-safe dict of every attribute."""
        return {
            "check": self.check,
            "field": self.field,
            "value": json_safe(self.value),
            "expected": self.expected,
            "reason": self.reason,
            "lag": self.lag,
        }

    def to_json(self) -> str:
        """The error as one strict JSON object (no ``NaN`` literals)."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """``(check, field, reason)``: what batch results group findings by."""
        return (self.check, self.field, self.reason)


ValidateFn = Callable[[Record], ValidationError | None]


@dataclass(frozen=True)
class ErrorGroup:
    """Every row of one batch that failed one way: same check, field and reason.

    ``rows`` are sorted row indices into the table; ``examples`` are the first
    few findings fully materialised (with their values) for reports.
    """

    check: Check
    field: str
    reason: str
    expected: str
    rows: RowIndex
    examples: tuple[tuple[int, ValidationError], ...] = ()

    @property
    def count(self) -> int:
        return int(self.rows.size)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.check, self.field, self.reason)


@dataclass(frozen=True)
class BatchResult:
    """A batch check's verdict: ``mask[i]`` is true when row ``i`` has a finding.

    ``groups`` are ordered the way the per-record form evaluates a record, so
    the first group containing row ``i`` names the error the per-record form
    returns for that row.
    """

    mask: BoolMask
    groups: tuple[ErrorGroup, ...] = field(default_factory=tuple)

    @property
    def num_rows(self) -> int:
        return int(self.mask.size)

    @property
    def flagged(self) -> int:
        return int(np.count_nonzero(self.mask))

    def first_group_per_row(self) -> dict[int, ErrorGroup]:
        """For each flagged row, the first group (in evaluation order) that names it."""
        first: dict[int, ErrorGroup] = {}
        for group in self.groups:
            for row in group.rows.tolist():
                first.setdefault(row, group)
        return first

    def counts(self) -> dict[Check, int]:
        """Findings per check (a row failing two checks counts under both)."""
        out: dict[Check, int] = {}
        for group in self.groups:
            out[group.check] = out.get(group.check, 0) + group.count
        return out


def empty_result(num_rows: int) -> BatchResult:
    """A clean result for ``num_rows`` rows."""
    return BatchResult(mask=np.zeros(num_rows, dtype=np.bool_), groups=())


def merge_results(num_rows: int, results: Sequence[BatchResult]) -> BatchResult:
    """One result with the union mask and all groups, in the given order."""
    mask = np.zeros(num_rows, dtype=np.bool_)
    groups: list[ErrorGroup] = []
    for result in results:
        mask |= result.mask
        groups.extend(result.groups)
    return BatchResult(mask=mask, groups=tuple(groups))


def group_from_mask(
    mask: BoolMask,
    *,
    check: Check,
    field: str,
    reason: str,
    expected: str,
    values: Callable[[RowIndex], Sequence[Any]],
    max_examples: int = 5,
) -> ErrorGroup | None:
    """An :class:`ErrorGroup` for the true rows of ``mask``, or ``None`` when none are.

    ``values`` maps row indices to the offending values; it is called for the
    first ``max_examples`` rows only, so large groups cost one ``nonzero``.
    """
    rows = np.flatnonzero(mask).astype(np.int64, copy=False)
    if rows.size == 0:
        return None
    head = rows[:max_examples]
    examples = tuple(
        (int(row), ValidationError(check, field, value, expected, reason))
        for row, value in zip(head.tolist(), values(head), strict=True)
    )
    return ErrorGroup(check, field, reason, expected, rows, examples)
