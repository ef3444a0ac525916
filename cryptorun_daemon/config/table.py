"""Typed reads from one TOML table that record problems instead of raising.

The loader (``loader.py``) describes the config file's shape with these
readers; this module only knows TOML value types. Every reader has a typed
result: with a default it returns the key's type (the default when the key is
absent or wrong), without one the key is required and the result is ``None``
when it is absent or wrong — always after a problem is recorded, so a
``None`` never reaches a :class:`Config` (``load_config`` raises first).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar, overload

from cryptorun_daemon.config.durations import parse_duration
from cryptorun_daemon.errors import ConfigProblem

T = TypeVar("T")
C = TypeVar("C", bound=str)


class Missing(enum.Enum):
    """The type of :data:`MISSING`: "no value", apart from a TOML value or a ``None`` default."""

    MISSING = enum.auto()


MISSING = Missing.MISSING


class Problems:
    """Every problem found in one config file, and paths resolved against its folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[ConfigProblem] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(str(self.path), key, message))

    def resolve(self, value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else (self.path.parent / candidate).resolve()


class Table:
    """Reads one TOML table, recording problems instead of raising.

    Every key read is remembered; :meth:`finish` reports the keys never read as
    unknown. Readers return their default (or ``None``) after recording a
    problem so loading continues and all problems surface in one pass.
    """

    def __init__(self, loader: Problems, data: object, path: str) -> None:
        self.loader = loader
        self.path = path
        self.seen: set[str] = set()
        if not isinstance(data, dict):
            loader.problem(path, f"must be a table, got {type_name(data)}")
            data = {}
        # tomllib only makes str keys; values are TOML values (str, int, float, bool,
        # datetime, list, dict), read only through the typed readers below.
        self.data: Mapping[str, object] = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str) -> object:
        """The value under ``name`` as TOML gave it, or :data:`MISSING`."""
        self.seen.add(name)
        return self.data.get(name, MISSING)

    def has(self, name: str) -> bool:
        return name in self.data

    def _typed(
        self, name: str, kinds: tuple[type[T], ...], label: str, *, required: bool
    ) -> T | Missing:
        """The value if it is one of ``kinds`` (a bool counts only as a bool, never as an
        int); otherwise :data:`MISSING`, after recording a problem unless the key is
        absent and not ``required``."""
        value = self.raw(name)
        if value is MISSING:
            if required:
                self.loader.problem(self.key(name), "is required")
            return MISSING
        # bool is an int in Python; a config that says `port = true` is still wrong.
        if isinstance(value, bool) and bool not in kinds:
            self.loader.problem(self.key(name), f"must be {label}, got a boolean")
            return MISSING
        if not isinstance(value, kinds):
            self.loader.problem(self.key(name), f"must be {label}, got {type_name(value)}")
            return MISSING
        return value

    @overload
    def string(self, name: str) -> str | None: ...
    @overload
    def string(self, name: str, default: str) -> str: ...
    @overload
    def string(self, name: str, default: None) -> str | None: ...
    def string(self, name: str, default: str | Missing | None = MISSING) -> str | None:
        value = self._typed(name, (str,), "a string", required=default is MISSING)
        return _or(value, default)

    @overload
    def boolean(self, name: str) -> bool | None: ...
    @overload
    def boolean(self, name: str, default: bool) -> bool: ...
    def boolean(self, name: str, default: bool | Missing = MISSING) -> bool | None:
        value = self._typed(name, (bool,), "true or false", required=default is MISSING)
        return _or(value, default)

    @overload
    def integer(self, name: str, *, minimum: int = 0) -> int | None: ...
    @overload
    def integer(self, name: str, default: int, *, minimum: int = 0) -> int: ...
    def integer(
        self, name: str, default: int | Missing = MISSING, *, minimum: int = 0
    ) -> int | None:
        value = self._typed(name, (int,), "an integer", required=default is MISSING)
        if isinstance(value, int) and value < minimum:
            self.loader.problem(self.key(name), f"must be >= {minimum}, got {value}")
            value = MISSING
        return _or(value, default)

    @overload
    def number(self, name: str, *, positive: bool = True) -> float | None: ...
    @overload
    def number(self, name: str, default: float, *, positive: bool = True) -> float: ...
    def number(
        self, name: str, default: float | Missing = MISSING, *, positive: bool = True
    ) -> float | None:
        """A TOML integer or float, as a float."""
        value = self._typed(name, (int, float), "a number", required=default is MISSING)
        if isinstance(value, int | float) and positive and value <= 0:
            self.loader.problem(self.key(name), f"must be greater than zero, got {value}")
            value = MISSING
        return _or(float(value) if isinstance(value, int | float) else value, default)

    @overload
    def duration(self, name: str) -> float | None: ...
    @overload
    def duration(self, name: str, default: float) -> float: ...
    @overload
    def duration(self, name: str, default: None) -> float | None: ...
    def duration(self, name: str, default: float | Missing | None = MISSING) -> float | None:
        """A duration string (``"250ms"``, ``"5m"``) in seconds."""
        text = self.string(name) if default is MISSING else self.string(name, None)
        if text is None:
            return None if default is MISSING else default
        try:
            return parse_duration(text)
        except ValueError as exc:
            self.loader.problem(self.key(name), str(exc))
            return None if default is MISSING else default

    @overload
    def choice(self, name: str, allowed: tuple[C, ...]) -> C | None: ...
    @overload
    def choice(self, name: str, allowed: tuple[C, ...], default: C) -> C: ...
    @overload
    def choice(self, name: str, allowed: tuple[C, ...], default: None) -> C | None: ...
    def choice(
        self, name: str, allowed: tuple[C, ...], default: C | Missing | None = MISSING
    ) -> C | None:
        """One of ``allowed``, typed as the ``Literal`` they spell."""
        text = self.string(name) if default is MISSING else self.string(name, None)
        for option in allowed:
            if text == option:
                return option
        if text is not None:
            self.loader.problem(self.key(name), f"{text!r} is not one of {', '.join(allowed)}")
        return None if default is MISSING else default

    @overload
    def strings(self, name: str) -> tuple[str, ...] | None: ...
    @overload
    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]: ...
    def strings(
        self, name: str, default: tuple[str, ...] | Missing = MISSING
    ) -> tuple[str, ...] | None:
        value = self._typed(name, (list,), "a list of strings", required=default is MISSING)
        if isinstance(value, list):
            items = tuple(item for item in value if isinstance(item, str))
            if len(items) == len(value):
                return items
            self.loader.problem(self.key(name), "must be a list of strings")
        return None if default is MISSING else default

    def table(self, name: str) -> Table:
        value = self.raw(name)
        return Table(self.loader, {} if value is MISSING else value, self.key(name))

    def finish(self) -> None:
        for name in sorted(set(self.data) - self.seen):
            self.loader.problem(self.key(name), "unknown key")


def _or(value: T | Missing, default: T | Missing | None) -> T | None:
    """``value`` when read, else ``default`` (``None`` for a required key)."""
    if value is not MISSING:
        return value
    return None if default is MISSING else default


def type_name(value: object) -> str:
    names: dict[type, str] = {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)
