"""One schema for a read across partitions written at different schema versions.

Each data file's Arrow schema is fingerprinted exactly as its manifest
records it (:func:`cryptorun_daemon.storage.manifest.schema_fingerprint`).
When a read spans several fingerprints, :func:`unify_schemas` either builds
one schema — columns in first-seen order, a column missing from a file read
as nulls, a type widened only when every value survives (``int32`` →
``int64``, ``float32`` → ``float64``, ``int32`` → ``float64``, timestamps to
a finer unit in the same zone, ``null`` → anything) — or, with
``on_drift="refuse"`` or for a pair of types with no lossless common type,
raises :class:`~cryptorun_daemon.errors.SchemaDriftError` naming both
fingerprints and the column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import pyarrow as pa

from cryptorun_daemon.errors import SchemaDriftError
from cryptorun_daemon.reader.request import DriftPolicy
from cryptorun_daemon.storage.manifest import schema_fingerprint

_SIGNED: Final = (pa.int8(), pa.int16(), pa.int32(), pa.int64())
_UNSIGNED: Final = (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())
_FLOATS: Final = (pa.float16(), pa.float32(), pa.float64())
_TIME_UNITS: Final = ("s", "ms", "us", "ns")
# Integers a float64 holds exactly (53-bit mantissa): up to 32 bits.
_EXACT_IN_FLOAT64: Final = (*_SIGNED[:3], *_UNSIGNED[:3])


def lossless_common_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The narrowest type holding every value of ``a`` and of ``b`` exactly, or ``None``."""
    if a == b:
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    for family in (_SIGNED, _UNSIGNED, _FLOATS):
        if a in family and b in family:
            return max(a, b, key=family.index)
    for signed, unsigned in ((a, b), (b, a)):
        if signed in _SIGNED and unsigned in _UNSIGNED:
            width = max(_SIGNED.index(signed), _UNSIGNED.index(unsigned) + 1)
            return _SIGNED[width] if width < len(_SIGNED) else None
    for integer, floating in ((a, b), (b, a)):
        if integer in _EXACT_IN_FLOAT64 and floating == pa.float64():
            return pa.float64()
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b) and a.tz == b.tz:
        unit = max(a.unit, b.unit, key=_TIME_UNITS.index)
        return pa.timestamp(unit, tz=a.tz)
    if {a, b} == {pa.string(), pa.large_string()}:
        return pa.large_string()
    return None


def unify_schemas(schemas: Sequence[pa.Schema], policy: DriftPolicy) -> pa.Schema:
    """One schema for ``schemas`` (see the module docstring); metadata is dropped.

    Error handling: :class:`SchemaDriftError` naming the fingerprints of the
    first schema and the first one that cannot join it (and the column).
    """
    if not schemas:
        return pa.schema([])
    base = schemas[0].remove_metadata()
    base_print = schema_fingerprint(base)
    fields: dict[str, pa.Field] = {f.name: f for f in base}
    order = [f.name for f in base]
    for raw in schemas[1:]:
        schema = raw.remove_metadata()
        if schema.equals(base):
            continue
        other_print = schema_fingerprint(schema)
        if policy == "refuse":
            raise SchemaDriftError(
                f"schema drift: fingerprint {base_print} and {other_print} differ "
                "(on_drift=refuse; use on_drift=unify to read both)",
                fingerprints=(base_print, other_print),
            )
        present = set(schema.names)
        for name in order:
            if name not in present:
                fields[name] = fields[name].with_nullable(True)
        for field in schema:
            held = fields.get(field.name)
            if held is None:
                fields[field.name] = field.with_nullable(True)
                order.append(field.name)
                continue
            common = lossless_common_type(held.type, field.type)
            if common is None:
                raise SchemaDriftError(
                    f"schema drift: column {field.name!r} is {held.type} under fingerprint "
                    f"{base_print} and {field.type} under {other_print}; no lossless common type",
                    fingerprints=(base_print, other_print),
                )
            fields[field.name] = held.with_type(common).with_nullable(
                held.nullable or field.nullable
            )
    return pa.schema([fields[name] for name in order])


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` in ``schema``'s column order and types; absent columns as nulls.

    Casts are the lossless ones :func:`unify_schemas` chose, so they never fail
    or truncate.
    """
    if batch.schema.remove_metadata().equals(schema):
        return batch
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        if index < 0:
            columns.append(pa.nulls(batch.num_rows, type=field.type))
        else:
            column = batch.column(index)
            columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
