"""argparse helpers for the contract's flag forms."""

from __future__ import annotations

import argparse
from typing import Any

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def add_bool_flag(
    parser: argparse.ArgumentParser, name: str, *, default: bool, help_text: str
) -> None:
    """Add ``--name`` (means true) that also accepts ``--name=true|false``.

    The original A3 spec writes ``--dry-run=false``, operators type ``--dry-run``;
    both must work.
    """
    parser.add_argument(
        name,
        nargs="?",
        const=True,
        default=default,
        type=parse_bool,
        metavar="BOOL",
        help=f"{help_text} (default: {str(default).lower()}; also --{name.lstrip('-')}=BOOL)",
    )


class HelpfulParser(argparse.ArgumentParser):
    """argparse that exits 2 with the usage and a one-line reason (its default), and
    never prints a traceback for bad input."""

    def error(self, message: str) -> Any:
        self.print_usage()
        self.exit(2, f"{self.prog}: error: {message}\n")
