"""Named fail points: crash (or stall) the process between two steps of a write, on demand.

The etcd ``gofail`` idea: a call such as ``failpoint("seal.after_data")`` sits
between two steps of every multi-step write whose crash-safety matters
(sealing, staging, late fill, re-seal, replica commit, journal segment roll). It is
compiled in and **inert** unless the environment variable
``CRYPTORUN_FAILPOINTS`` names it when the process starts::

    CRYPTORUN_FAILPOINTS="seal.after_data=exit"
    CRYPTORUN_FAILPOINTS="late.after_data=exit(3),journal.roll.after_open=sleep(200)"

Actions:

``exit``
    ``os._exit(EXIT_CODE)`` at once: no ``finally`` blocks, no flushing of
    Python's buffers, no shutdown code — the same as ``kill -9`` at that
    instant (the kernel keeps what was already written). A line
    ``failpoint <name>: exit`` goes to stderr first, unbuffered.
``exit(N)``
    the same with exit code ``N``.
``sleep(MS)``
    block the calling thread for ``MS`` milliseconds, then continue (widens a
    race window for a test).

This is a test and debugging facility (docs/OPERATIONS.md): never set the
variable on a production daemon. When it is unset a fail point costs one
truthiness check of a module-level dict.

Every name the code uses is listed in :data:`KNOWN` (with what has happened
when it fires); a spec naming anything else is refused, so a typo in a test
cannot silently test nothing.

Error handling: an invalid ``CRYPTORUN_FAILPOINTS`` raises
:class:`~cryptorun_daemon.errors.ConfigError` at import, i.e. when the daemon
starts. Resource handling: holds nothing; this module owns the only global
fail-point state, and :func:`configure` resets it (tests).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Final

from cryptorun_daemon.errors import ConfigError, ConfigProblem

ENV_VAR: Final = "CRYPTORUN_FAILPOINTS"
# An exit code no other path of the daemon uses, so a test can tell "died at
# the fail point" from a crash or an orderly exit.
EXIT_CODE: Final = 86

KNOWN: Final[dict[str, str]] = {
    # Hot → warm sealing of a closed window (hot/sealer.py, hot/partition_writer.py).
    "reseal.after_unseal": "a sealed partition's _SUCCESS is unlinked, its data not yet replaced",
    "seal.after_data": "a window's data file is in place, the partition not yet (re)sealed",
    "seal.after_manifest": "_manifest.json is written, _SUCCESS not yet",
    "seal.after_success": "the partition is sealed, the sealer state not yet saved",
    # Late fill (hot/sealer.py).
    "late.after_intent": "the late-fill intent is saved, no late file written yet",
    "late.after_data": "a late-fill file is in place, the partition not yet re-sealed",
    "late.after_seal": "the partition is re-sealed, late_through not yet saved",
    "sealer.after_state": "the sealer state is saved, fully sealed segments not yet deleted",
    # Streaming staging (hot/sealer.py, hot/staging.py).
    "stage.after_batch": "a batch of unsealed rows is staged, the read position not yet saved",
    "staging.after_drop": "sealed windows' staging is removed, journal segments not yet deleted",
    # Replica commit (replication/, storage/seal.py).
    "replica.after_fetch": "every file of a partition is fetched, not yet validated",
    "replica.before_commit": "the files are validated, the manifest not yet written",
    "replica.after_manifest": "the replica's manifest is written, _SUCCESS not yet",
    "replica.after_commit": "the replica's _SUCCESS is written",
    "replica.divergence_walk": "the divergence walk read a sealed manifest, not yet judged it",
    # Object-store tiers (storage/multipart.py).
    "multipart.after_part": "a multipart part is stored and recorded in _state, the next not yet",
    # Journal segment roll (hot/journal.py).
    "journal.roll.after_open": "a new journal segment exists, its checkpoint lines not yet written",
    "journal.roll.after_checkpoint": "the new segment holds its checkpoint lines",
}

_ACTION = re.compile(r"^(?P<kind>exit|sleep)(?:\((?P<arg>\d+)\))?$")


@dataclass(frozen=True)
class Action:
    """What an armed fail point does: ``exit`` with ``arg`` as code, or ``sleep`` ``arg`` ms."""

    kind: str
    arg: int

    def run(self, name: str) -> None:
        if self.kind == "exit":
            # Unbuffered: Python's own buffers are deliberately not flushed.
            os.write(2, f"failpoint {name}: exit {self.arg}\n".encode())
            os._exit(self.arg)
        time.sleep(self.arg / 1000)


def parse(spec: str) -> dict[str, Action]:
    """``name=action[,name=action...]`` → armed fail points.

    Error handling: raises :class:`ConfigError` naming every unknown fail
    point and malformed action at once.
    """
    armed: dict[str, Action] = {}
    problems: list[ConfigProblem] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, text = item.partition("=")
        name, text = name.strip(), text.strip()
        match = _ACTION.match(text)
        if name not in KNOWN:
            problems.append(ConfigProblem(ENV_VAR, name, "no such fail point"))
        elif match is None:
            problems.append(
                ConfigProblem(ENV_VAR, name, f"action {text!r} is not exit, exit(N) or sleep(MS)")
            )
        else:
            default = EXIT_CODE if match["kind"] == "exit" else 0
            arg = int(match["arg"]) if match["arg"] is not None else default
            armed[name] = Action(match["kind"], arg)
    if problems:
        raise ConfigError(problems)
    return armed


# name -> action; empty (the normal case) makes ``failpoint`` a single check.
_armed: dict[str, Action] = parse(os.environ.get(ENV_VAR, ""))


def configure(spec: str) -> None:
    """Replace the armed fail points (tests; the daemon reads the environment at import)."""
    global _armed  # this module owns the process-wide fail-point state
    _armed = parse(spec)


def failpoint(name: str) -> None:
    """Run the action armed for ``name``, if any (see the module docstring)."""
    if _armed:
        action = _armed.get(name)
        if action is not None:
            action.run(name)
