"""Every error the daemon raises on purpose.

Errors are raised deep and mapped to exit codes (CLI) or HTTP statuses (admin
API) only at the edges, so one concern's failures read the same everywhere.

Each class carries its own answer, as aiohttp's ``web_exceptions`` do:
``code`` is the stable machine name (the ``error`` key of an admin API error
body) and ``http_status`` the status the admin API answers with when a handler
raises it. The admin middleware reads both from the exception; there is no
table from error type to status to keep in step. 500 (the default) means "a
bug or an unexpected state": the middleware logs it with its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class CryptorunError(Exception):
    """Root of every deliberate error. ``code`` is the stable machine name."""

    code = "error"
    http_status = 500


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
    http_status = 400


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
    http_status = 400


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
    """A peer or exchange sent a frame that violates the protocol.

    ``reason`` is the bounded ``cryptorun_hot_protocol_errors_total`` label
    (``malformed`` unless the raiser knows better, e.g. ``line_origin``).
    """

    code = "protocol"

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        self.reason = reason
        super().__init__(message)


class IngestError(CryptorunError):
    """An exchange connector failed in a way the caller must see."""

    code = "ingest"


class FailoverError(CryptorunError):
    """A promotion or demotion could not be carried out."""

    code = "failover"


class ConflictError(FailoverError):
    """Stale epoch, promotion of the current primary, or a concurrent promotion (409)."""

    code = "conflict"
    http_status = 409


class FencedError(FailoverError):
    """A writer whose epoch is no longer current tried to seal or serve (409)."""

    code = "fenced"
    http_status = 409


class StateStoreError(CryptorunError):
    """The coordination store (file or etcd) could not be read or written."""

    code = "state_store"
    # The store is unreachable or unreadable: a client should retry later.
    http_status = 503


class SealRefusedError(FailoverError):
    """This region holds the tier as primary but may not seal yet (503, retry later).

    A file-store region that restarted trusts its stored role only once it has
    compared epochs with its peers (``write_refusal`` in ``/v1/status``). The
    refusal is temporary, unlike :class:`FencedError`: the same request
    succeeds once the peers answer, or is fenced (409) if one of them was
    promoted meanwhile.
    """

    code = "seal_refused"
    http_status = 503


class WriteRefusedError(FailoverError):
    """This region may not write as primary right now (503, retry later).

    Raised at a write's commit point when the region's hold on its role
    cannot be vouched for: its etcd lease has no more than the safety margin
    left, or the state store is unreachable. ``reason`` is the stable name
    shown in status (``lease_expiring``, ``state_store_unreachable``).
    """

    code = "write_refused"
    http_status = 503

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


class ReadError(CryptorunError):
    """A research read could not be served (a partition unreadable mid-read)."""

    code = "read"


class SchemaDriftError(ReadError):
    """Partitions in one read have schemas that cannot be unified losslessly (409).

    ``fingerprints`` names both schema fingerprints so the caller can find the
    partitions on each side (their manifests record the same fingerprint).
    """

    code = "schema_drift"
    http_status = 409

    def __init__(self, message: str, *, fingerprints: tuple[str, str]) -> None:
        self.fingerprints = fingerprints
        super().__init__(message)


class ReadBusyError(ReadError):
    """Every concurrent-read slot of the admin server is taken (503, retry later)."""

    code = "read_busy"
    http_status = 503
