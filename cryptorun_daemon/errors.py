"""Every error the daemon raises on purpose.

Errors are raised deep and mapped to exit codes (CLI) or HTTP statuses (admin
API) only at the edges, so one concern's failures read the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


class CryptorunError(Exception):
    """Root of every deliberate error. ``code`` is the stable machine name."""

    code = "error"


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file: where it is and what is wrong."""

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(CryptorunError):
    """A config file could not be loaded; carries every problem found at once."""

    code = "config"

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UsageError(CryptorunError):
    """The command line or an API request was malformed (exit 2, HTTP 400)."""

    code = "bad_request"


class AdminClientError(CryptorunError):
    """A CLI call to a daemon's admin API failed (network, auth or refusal)."""

    code = "admin_client"

    def __init__(self, message: str, *, status: int | None = None, error: str = "") -> None:
        self.status = status
        self.error = error
        super().__init__(message)


class StorageError(CryptorunError):
    """A partition, manifest or journal on disk is unusable."""

    code = "storage"


class JournalDamagedError(StorageError):
    """Recovery cannot read the hot journal: a bad line that is not a torn tail.

    ``path`` and ``offset`` name the first damaged byte; ``cryptorun journal
    salvage`` moves everything from there aside. The CLI exits 2 on it (a
    restart cannot fix it, an operator must).
    """

    code = "journal_damaged"

    def __init__(self, path: object, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: unreadable journal line at byte {offset}: {reason}")


class JournalUnavailableError(StorageError):
    """The hot journal refuses appends for now (a write or fsync failed; retried)."""

    code = "journal_unavailable"


class PathRejectedError(StorageError):
    """A requested path would leave ``storage.root`` or is not a partition path."""

    code = "bad_path"


class ReplicationError(CryptorunError):
    """A replication step failed; ``reason`` is the bounded metric label."""

    code = "replication"

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class ValidationFailedError(CryptorunError):
    """Data failed validation in strict mode (the step fails with ``validation``)."""

    code = "validation"


class HotTierError(CryptorunError):
    """The hot log, replay buffer or mirror protocol hit an unrecoverable state."""

    code = "hot"


class ProtocolError(HotTierError):
    """A peer or exchange sent a frame that violates the protocol."""

    code = "protocol"


class IngestError(CryptorunError):
    """An exchange connector failed in a way the caller must see."""

    code = "ingest"


class FailoverError(CryptorunError):
    """A promotion or demotion could not be carried out."""

    code = "failover"


class ConflictError(FailoverError):
    """Stale epoch, promotion of the current primary, or a concurrent promotion (409)."""

    code = "conflict"


class FencedError(FailoverError):
    """A writer whose epoch is no longer current tried to seal or serve (409)."""

    code = "fenced"


class StateStoreError(CryptorunError):
    """The coordination store (file or etcd) could not be read or written."""

    code = "state_store"
