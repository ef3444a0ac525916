"""Named, versioned record schemas: per-record, file-level and row-level checks.

(About 500 lines: the three checks below must agree field by field, so they
stay beside the one schema table they share.)

The registry holds ``trade@1`` and ``book@1``. A schema fixes each field's
type, nullability and value domain; :func:`arrow_schema` gives the Parquet
layout writers use and :func:`fingerprint` the stable hash manifests record.

Three checks share one field order, so their verdicts agree:

* :func:`schema_check` — per record (hot tier), first error wins;
* :func:`table_schema_errors` — file level: missing, wrong-typed or extra
  columns make the whole file unusable;
* :func:`schema_batch` — row level over a table whose columns are right:
  nulls, NaN/inf, out-of-domain values, list length mismatches.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryptorun_daemon.config import REGION_NAME_PATTERN
from cryptorun_daemon.data.validate.findings import (
    BatchResult,
    BoolMask,
    ErrorGroup,
    Record,
    ValidateFn,
    ValidationError,
    group_from_mask,
)
from cryptorun_daemon.data.validate.tables import (
    as_mask,
    float_chunks,
    int64_chunks,
    numbers,
    row_values,
    string_codes,
)

FieldKind = Literal["timestamp", "string", "float", "int", "bool", "float_list"]
ExtraPolicy = Literal["reject", "ignore"]

INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1
# Zones pyarrow may spell for "UTC"; anything else is a different clock.
_UTC_NAMES: Final = frozenset({"UTC", "utc", "+00:00", "Etc/UTC", "Z"})


@dataclass(frozen=True)
class FieldSpec:
    """One field: its kind, nullability and value domain.

    ``gt``/``ge`` bound numbers (each element for lists); ``choices`` and
    ``pattern`` constrain strings; ``same_length_as`` ties a list to another
    list field of the same record (book price and size levels).
    """

    name: str
    kind: FieldKind
    nullable: bool = False
    gt: float | None = None
    ge: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    same_length_as: str | None = None

    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self.kind]

    def domain_text(self) -> str:
        """What a good value looks like, for the ``expected`` of an error."""
        parts: list[str] = [self.kind]
        if self.kind in ("float", "float_list"):
            parts.append("finite")
        if self.gt is not None:
            parts.append(f"> {self.gt:g}")
        if self.ge is not None:
            parts.append(f">= {self.ge:g}")
        if self.choices:
            parts.append("one of " + "|".join(self.choices))
        if self.pattern:
            parts.append(f"matching {self.pattern}")
        return ", ".join(parts)


_ARROW_TYPES: Final[Mapping[FieldKind, pa.DataType]] = {
    "timestamp": pa.timestamp("ns", tz="UTC"),
    "string": pa.string(),
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "float_list": pa.list_(pa.float64()),
}


@dataclass(frozen=True)
class Schema:
    """A named, versioned record layout. ``extra`` says what unknown fields do."""

    name: str
    version: int
    fields: tuple[FieldSpec, ...]
    extra: ExtraPolicy = "reject"

    @property
    def ref(self) -> str:
        """``name@version``, e.g. ``trade@1``."""
        return f"{self.name}@{self.version}"

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def with_extra(self, policy: ExtraPolicy) -> Schema:
        """The same schema with another extra-field policy (fingerprint unchanged)."""
        return replace(self, extra=policy)


# Region names follow the contract; symbols are normalised BASE/QUOTE.
_REGION_RE: Final = f"^{REGION_NAME_PATTERN}$"
_SYMBOL_RE: Final = r"^[A-Za-z0-9]+/[A-Za-z0-9]+$"
_VENUE_RE: Final = r"^[a-z0-9][a-z0-9_.-]*$"

_TS = FieldSpec("ts", "timestamp")
_VENUE = FieldSpec("venue", "string", pattern=_VENUE_RE)
_SYMBOL = FieldSpec("symbol", "string", pattern=_SYMBOL_RE)
_INGEST_TS = FieldSpec("ingest_ts", "timestamp")
_ORIGIN = FieldSpec("origin", "string", pattern=_REGION_RE)
_SEQ = FieldSpec("seq", "int", ge=0)

TRADE_V1: Final = Schema(
    "trade",
    1,
    (
        _TS,
        _VENUE,
        _SYMBOL,
        FieldSpec("side", "string", choices=("buy", "sell")),
        FieldSpec("price", "float", gt=0.0),
        FieldSpec("qty", "float", ge=0.0),
        FieldSpec("trade_id", "int"),
        _INGEST_TS,
        _ORIGIN,
        _SEQ,
    ),
)

BOOK_V1: Final = Schema(
    "book",
    1,
    (
        _TS,
        _VENUE,
        _SYMBOL,
        FieldSpec("bids_px", "float_list", gt=0.0),
        FieldSpec("bids_qty", "float_list", ge=0.0, same_length_as="bids_px"),
        FieldSpec("asks_px", "float_list", gt=0.0),
        FieldSpec("asks_qty", "float_list", ge=0.0, same_length_as="asks_px"),
        FieldSpec("checksum", "int", nullable=True),
        FieldSpec("suspect", "bool"),
        _INGEST_TS,
        _ORIGIN,
        _SEQ,
    ),
)

REGISTRY: Final[Mapping[str, Schema]] = {s.ref: s for s in (TRADE_V1, BOOK_V1)}
LATEST: Final[Mapping[str, Schema]] = {"trade": TRADE_V1, "book": BOOK_V1}


def get_schema(name: str) -> Schema:
    """The schema ``name@version``, or the latest version of ``name``.

    Error handling: an unknown name raises ``KeyError`` naming the known refs.
    """
    schema = REGISTRY.get(name) or LATEST.get(name)
    if schema is None:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return schema


def arrow_schema(name: str | Schema) -> pa.Schema:
    """The Parquet/Arrow layout of a schema; writers pass it to ``pq.write_table``."""
    schema = get_schema(name) if isinstance(name, str) else name
    return pa.schema(
        [pa.field(f.name, f.arrow_type(), nullable=f.nullable) for f in schema.fields],
        metadata={b"cryptorun.schema": schema.ref.encode()},
    )


def fingerprint(name: str | Schema) -> str:
    """``sha256:<hex>`` of the canonical field list (name, Arrow type, nullability).

    Stable across processes and Python versions; domains are not part of it,
    because they constrain values, not the bytes a reader must understand.
    """
    schema = get_schema(name) if isinstance(name, str) else name
    canonical = {
        "name": schema.name,
        "version": schema.version,
        "fields": [[f.name, str(f.arrow_type()), f.nullable] for f in schema.fields],
    }
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


# --- per record ------------------------------------------------------------------


def is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _err(spec: FieldSpec, value: Any, reason: str, expected: str | None = None) -> ValidationError:
    return ValidationError("schema", spec.name, value, expected or spec.domain_text(), reason)


def _number_domain_error(spec: FieldSpec, number: float, value: Any) -> ValidationError | None:
    if not math.isfinite(number):
        return _err(spec, value, "not_finite")
    if (spec.gt is not None and not number > spec.gt) or (
        spec.ge is not None and not number >= spec.ge
    ):
        return _err(spec, value, "out_of_domain")
    return None


def _field_error(spec: FieldSpec, record: Record) -> ValidationError | None:
    """The first problem with one field of ``record``, in the batch form's order."""
    if spec.name not in record:
        return _err(spec, None, "missing")
    value = record[spec.name]
    if value is None:
        return None if spec.nullable else _err(spec, None, "null")
    kind = spec.kind
    if kind in ("timestamp", "int"):
        if not is_int(value) or not INT64_MIN <= int(value) <= INT64_MAX:
            return _err(spec, value, "wrong_type")
        if spec.ge is not None and not int(value) >= spec.ge:
            return _err(spec, value, "out_of_domain")
        return None
    if kind == "float":
        if not is_real(value):
            return _err(spec, value, "wrong_type")
        return _number_domain_error(spec, float(value), value)
    if kind == "bool":
        return None if isinstance(value, bool | np.bool_) else _err(spec, value, "wrong_type")
    if kind == "string":
        if not isinstance(value, str):
            return _err(spec, value, "wrong_type")
        if spec.choices and value not in spec.choices:
            return _err(spec, value, "out_of_domain")
        if spec.pattern and not re.fullmatch(spec.pattern, value):
            return _err(spec, value, "bad_format")
        return None
    # float_list: a real sequence whose every element is in the domain.
    if not isinstance(value, list | tuple | np.ndarray):
        return _err(spec, value, "wrong_type")
    for item in value:
        if item is None:
            return _err(spec, value, "not_finite")
        if not is_real(item):
            return _err(spec, value, "wrong_type")
    for item in value:
        if not math.isfinite(float(item)):
            return _err(spec, value, "not_finite")
    for item in value:
        if _number_domain_error(spec, float(item), value) is not None:
            return _err(spec, value, "out_of_domain")
    if spec.same_length_as is not None:
        other = record.get(spec.same_length_as)
        if isinstance(other, list | tuple | np.ndarray) and len(other) != len(value):
            return _err(spec, value, "length_mismatch", f"as many levels as {spec.same_length_as}")
    return None


def schema_check(schema: Schema | str) -> ValidateFn:
    """A per-record check: the first error in field order, then unknown fields.

    Timestamps are int nanoseconds since the epoch (UTC), as feeds produce them.
    Unknown fields are an ``extra_field`` error under the ``reject`` policy.
    """
    resolved = get_schema(schema) if isinstance(schema, str) else schema
    known = frozenset(resolved.field_names)

    def check(record: Record) -> ValidationError | None:
        for spec in resolved.fields:
            error = _field_error(spec, record)
            if error is not None:
                return error
        if resolved.extra == "reject":
            extras = sorted(str(k) for k in record if k not in known)
            if extras:
                return ValidationError(
                    "schema",
                    extras[0],
                    record[extras[0]],
                    "no field outside the schema",
                    "extra_field",
                )
        return None

    return check


# --- file level ------------------------------------------------------------------


def _type_matches(spec: FieldSpec, actual: pa.DataType) -> bool:
    if spec.kind == "string":
        # Readers may hand back dictionary-encoded strings (read_dictionary).
        if pa.types.is_dictionary(actual):
            actual = actual.value_type
        return bool(pa.types.is_string(actual) or pa.types.is_large_string(actual))
    if spec.kind == "timestamp":
        return bool(
            pa.types.is_timestamp(actual) and actual.unit == "ns" and actual.tz in _UTC_NAMES
        )
    if spec.kind == "float_list":
        return bool(
            (pa.types.is_list(actual) or pa.types.is_large_list(actual))
            and pa.types.is_float64(actual.value_type)
        )
    return bool(actual.equals(spec.arrow_type()))


def table_schema_errors(actual: pa.Schema, schema: Schema) -> list[ValidationError]:
    """Every column-level mismatch between ``actual`` and ``schema`` (empty = usable).

    Any error here makes the whole file a file-level failure: rows of a file
    with a missing or wrong-typed column cannot be judged one by one.
    """
    errors: list[ValidationError] = []
    names = set(actual.names)
    for spec in schema.fields:
        if spec.name not in names:
            errors.append(_err(spec, None, "missing", f"column of type {spec.arrow_type()}"))
            continue
        got = actual.field(spec.name).type
        if not _type_matches(spec, got):
            errors.append(_err(spec, str(got), "wrong_type", f"column of type {spec.arrow_type()}"))
    if schema.extra == "reject":
        for name in actual.names:
            if name not in schema.field_names:
                errors.append(
                    ValidationError(
                        "schema", name, None, "no column outside the schema", "extra_field"
                    )
                )
    return errors


# --- row level -------------------------------------------------------------------


def _domain_masks(spec: FieldSpec, values: np.ndarray) -> tuple[BoolMask, BoolMask]:
    finite = np.isfinite(values)
    bad = np.zeros(values.shape, dtype=np.bool_)
    if spec.gt is not None:
        bad |= ~(values > spec.gt)
    if spec.ge is not None:
        bad |= ~(values >= spec.ge)
    return ~finite, bad & finite


def _in_domain(spec: FieldSpec, low: Any, high: Any) -> bool:
    """Whether a chunk whose smallest/largest values are ``low``/``high`` is all in domain.

    NaN (numpy's min and max propagate it) fails every comparison, so it
    falls through to the full check like any other bad value.
    """
    if spec.kind == "float" and not (low > -math.inf and high < math.inf):
        return False
    return (spec.gt is None or bool(low > spec.gt)) and (spec.ge is None or bool(low >= spec.ge))


def _surely_clean(spec: FieldSpec, column: pa.ChunkedArray) -> bool:
    """A cheap proof that no row of ``column`` has a finding; ``False`` means "look closer".

    No nulls, and per chunk either two reductions (numbers: min and max
    against the domain) or a look at the chunk's dictionary (strings): the
    common clean partition costs about one pass over each numeric column and
    nothing for strings, timestamps without a domain, ints and bools.
    """
    if column.null_count:
        return False
    if spec.kind == "float" or (spec.kind in ("int", "timestamp") and spec.ge is not None):
        chunks = float_chunks(column) if spec.kind == "float" else int64_chunks(column)
        return all(_in_domain(spec, c.min(), c.max()) for c in chunks if c.size)
    if spec.kind == "string" and (spec.choices or spec.pattern):
        if not pa.types.is_dictionary(column.type):
            return False
        return all(
            _string_ok(spec, value)
            for chunk in column.chunks
            for value in chunk.dictionary.to_pylist()
        )
    return spec.kind != "float_list"


def _string_ok(spec: FieldSpec, value: Any) -> bool:
    if spec.choices and value not in spec.choices:
        return False
    return not (spec.pattern and not re.fullmatch(spec.pattern, str(value)))


def _field_groups(spec: FieldSpec, table: pa.Table) -> list[tuple[BoolMask, str, str]]:
    """``(mask, reason, expected)`` per failure mode of one column, mutually exclusive."""
    column = table.column(spec.name)
    n = table.num_rows
    if _surely_clean(spec, column):
        return []
    out: list[tuple[BoolMask, str, str]] = []
    null = as_mask(column.is_null()) if column.null_count else np.zeros(n, dtype=np.bool_)
    if not spec.nullable and column.null_count:
        out.append((null, "null", spec.domain_text()))
    ok = ~null
    if spec.kind == "float":
        nonfinite, bad = _domain_masks(spec, numbers(column))
        out += [
            (nonfinite & ok, "not_finite", spec.domain_text()),
            (bad & ok, "out_of_domain", spec.domain_text()),
        ]
    elif spec.kind in ("int", "timestamp") and spec.ge is not None:
        values = numbers(column.cast(pa.int64()))
        out.append((ok & ~(values >= spec.ge), "out_of_domain", spec.domain_text()))
    elif spec.kind == "string" and (spec.choices or spec.pattern):
        codes, dictionary = string_codes(column)
        bad_choice = [i for i, v in enumerate(dictionary) if spec.choices and v not in spec.choices]
        bad_format = [
            i
            for i, v in enumerate(dictionary)
            if i not in bad_choice and spec.pattern and not re.fullmatch(spec.pattern, str(v))
        ]
        out.append((np.isin(codes, bad_choice), "out_of_domain", spec.domain_text()))
        out.append((np.isin(codes, bad_format), "bad_format", spec.domain_text()))
    elif spec.kind == "float_list":
        out += _list_groups(spec, table, column, ok)
    return out


def _list_groups(
    spec: FieldSpec, table: pa.Table, column: pa.ChunkedArray, ok: BoolMask
) -> list[tuple[BoolMask, str, str]]:
    n = table.num_rows
    flat = pc.list_flatten(column)
    parents = np.asarray(pc.list_parent_indices(column).to_numpy(zero_copy_only=False))
    nonfinite_v, bad_v = _domain_masks(spec, numbers(flat))
    nonfinite = np.zeros(n, dtype=np.bool_)
    nonfinite[parents[nonfinite_v]] = True
    bad = np.zeros(n, dtype=np.bool_)
    bad[parents[bad_v]] = True
    bad &= ~nonfinite
    out = [
        (nonfinite & ok, "not_finite", spec.domain_text()),
        (bad & ok, "out_of_domain", spec.domain_text()),
    ]
    if spec.same_length_as is not None:
        other = table.column(spec.same_length_as)
        mine_len = numbers(pc.list_value_length(column))
        other_len = numbers(pc.list_value_length(other))
        # A null partner list is its own error; the per-record form skips it too.
        mismatch = (mine_len != other_len) & ~np.isnan(other_len) & ok & ~nonfinite & ~bad
        out.append((mismatch, "length_mismatch", f"as many levels as {spec.same_length_as}"))
    return out


def schema_batch(table: pa.Table, schema: Schema | str) -> BatchResult:
    """Row-level schema findings over a table whose columns match ``schema``.

    Behaviour: per field in schema order, rows that are null (when not
    nullable), NaN/inf, outside the value domain, of a bad format, or (book)
    whose level lists differ in length. Within a field the failure modes are
    exclusive, in the per-record form's order; a row failing several fields
    appears in each field's group.

    Error handling: call :func:`table_schema_errors` first; a table with
    missing or wrong-typed columns raises ``KeyError`` or ``pyarrow`` errors.
    """
    resolved = get_schema(schema) if isinstance(schema, str) else schema
    n = table.num_rows
    mask = np.zeros(n, dtype=np.bool_)
    groups: list[ErrorGroup] = []
    for spec in resolved.fields:
        values = partial(row_values, table, spec.name)
        for field_mask, reason, expected in _field_groups(spec, table):
            group = group_from_mask(
                field_mask,
                check="schema",
                field=spec.name,
                reason=reason,
                expected=expected,
                values=values,
            )
            if group is not None:
                mask |= field_mask
                groups.append(group)
    return BatchResult(mask=mask, groups=tuple(groups))
