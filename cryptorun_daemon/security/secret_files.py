"""Reading secrets (bearer tokens, private keys) from files that only the daemon can read.

Like ssh with a private key, the daemon refuses a secret file that its group
or other users can read: a token that leaked through a loose mode is a token
someone else may already hold. The check names the file and its mode, so the
fix (``chmod 600 FILE``) is obvious.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptorun_daemon.errors import ConfigError, ConfigProblem

# Bits that let anyone but the owner read, write or execute the file.
_LOOSE_BITS = stat.S_IRWXG | stat.S_IRWXO


def check_private(path: Path, *, source: str, key: str) -> ConfigProblem | None:
    """The problem with ``path`` as a secret file, or ``None`` when it is private.

    ``source`` and ``key`` say where the path was configured (config file and
    key) so the message points at both the setting and the file.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return ConfigProblem(source, key, f"cannot read {path}: {exc.strerror}")
    if not stat.S_ISREG(mode):
        return ConfigProblem(source, key, f"{path} is not a regular file")
    if mode & _LOOSE_BITS:
        return ConfigProblem(
            source,
            key,
            f"{path} has mode {stat.S_IMODE(mode):04o}: a secret must not be readable by "
            f"group or others (run: chmod 600 {path})",
        )
    return None


def read_secret(path: Path, *, source: str, key: str) -> str:
    """The stripped contents of a private secret file.

    Error handling: raises :class:`ConfigError` (exit 2) when the file is
    missing, not a regular file, readable by group/others, or empty. The
    secret itself never appears in a message.
    """
    problem = check_private(path, source=source, key=key)
    if problem is not None:
        raise ConfigError([problem])
    value = path.read_text(encoding="utf-8").strip()
    if not value:
        raise ConfigError([ConfigProblem(source, key, f"{path} is empty")])
    return value
