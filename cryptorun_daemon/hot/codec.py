"""The JSON codec of the hot path: msgspec first, the standard library as the reference.

Every record is encoded once at the origin and decoded at least once by every
subscriber, so the codec sets the hot tier's ceiling. msgspec (C, typed
structs) does both several times faster than :mod:`json`. Where the two
libraries disagree, the standard library's behaviour is the contract (it is
what wrote and read every journal before this module existed):

- *encoding*: msgspec writes ``NaN``/``Infinity`` as ``null`` where
  ``json`` (``allow_nan=False``) refuses them; :func:`encode` scans the output
  for ``null`` and, only when it finds one, walks the value to refuse a
  non-finite float with ``ValueError``, as before. msgspec writes non-ASCII
  characters as UTF-8 and floats in shortest form (``0.00001``), where
  ``json`` wrote ``\\u00e9`` and ``1e-05``: the same JSON values, and every
  reader decodes both, so journals written before and after an upgrade mix
  freely (tests/unit/test_hot_codec.py).
- *decoding*: msgspec refuses a few inputs ``json`` accepted (``NaN`` and
  ``Infinity`` literals, ``1e400``, lone surrogates); :func:`decode` then
  falls back to ``json``, so nothing that decoded before fails now.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

import msgspec

ENCODER: Final = msgspec.json.Encoder()  # raw: no NaN check (callers that batch do their own)
_DECODER: Final = msgspec.json.Decoder()
# The reference codec: what every journal line was written and read with before msgspec.
_STDLIB_DECODE: Final = json.JSONDecoder().decode

# What a decode that failed raises: msgspec's errors, and deep nesting in either library.
DECODE_ERRORS: Final = (msgspec.DecodeError, RecursionError)


def _refuse_non_finite(value: Any) -> None:
    """Raise ``ValueError`` when ``value`` holds a NaN or an infinity anywhere."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    elif kind is dict:
        for item in value.values():
            _refuse_non_finite(item)
    elif kind in (list, tuple):
        for item in value:
            _refuse_non_finite(item)
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _refuse_non_finite(getattr(value, name))


def encode(value: Any) -> bytes:
    """Compact JSON bytes (keys in insertion/declaration order, no spaces).

    Error handling: ``ValueError`` for a NaN or infinity anywhere in ``value``
    and for a value JSON cannot carry (an arbitrary object), like ``json``.
    """
    try:
        data = ENCODER.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ValueError(f"not JSON-serialisable: {exc}") from None
    if b"null" in data:
        # A NaN became null (or a real None / a "null" inside a string is there):
        # only then is the value walked, so the common record pays one byte scan.
        _refuse_non_finite(value)
    return data


def decode(data: bytes | str) -> Any:
    """Decode one JSON document the way ``json.loads`` does, fast.

    Error handling: ``ValueError`` (from ``json``) or ``RecursionError`` when
    neither library can decode it.
    """
    try:
        return _DECODER.decode(data)
    except DECODE_ERRORS:
        return _STDLIB_DECODE(data.decode("utf-8") if isinstance(data, bytes) else data)
