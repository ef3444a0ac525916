"""A thin asyncio client for etcd v3 through its JSON (gRPC) gateway.

Only what the state store needs: range, put, delete, txn, lease grant /
keep-alive / revoke, and watch. Requests are JSON ``POST`` to ``/v3/...``;
keys and values are base64 in JSON and ``bytes`` here; 64-bit integers travel
as decimal strings and fields equal to their zero value are omitted, so every
parser below treats a missing number as 0. Why this and not a client library:
docs/FAILOVER_STORES.md.

TLS and authentication: ``ssl_context`` (built from ``[state] etcd_ca_file``,
``etcd_cert``, ``etcd_key``) is passed on every request, so etcd is verified
against its own CA whatever the shared session trusts for peers, and this
region's client certificate answers etcd's ``--client-cert-auth``. With a
user (etcd's ``auth enable``), the client calls ``/v3/auth/authenticate``
before its first request and again when etcd says the token is no longer
valid (simple tokens expire after ``--auth-token-ttl`` idle seconds); the
token travels in the ``Authorization`` header. The password never appears in
an error message.

Error handling: every failure surfaces as
:class:`~cryptorun_daemon.errors.StateStoreError` with the endpoint, the call
and etcd's own message; connection failures move on to the next endpoint
before giving up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp

from cryptorun_daemon.errors import StateStoreError

CompareTarget = Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
CompareResult = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]

# gRPC status NOT_FOUND, which etcd uses for "requested lease not found".
GRPC_NOT_FOUND: Final = 5
# etcd's messages for a token it no longer accepts: expired (--auth-token-ttl
# idle seconds), dropped (auth disabled and enabled again), or issued before a
# change to users or roles (the auth revision clientv3 also retries on).
_TOKEN_REJECTED: Final = ("invalid auth token", "revision of auth store is old")
# A watch frame is one JSON document per line; ours are a few KiB. The cap
# turns a runaway or non-etcd stream into a clear error instead of memory growth.
MAX_WATCH_FRAME: Final = 4 << 20

# aiohttp >= 3.10 tells a connect timeout from a read timeout; older ones do not.
_CONNECT_TIMEOUT: Final[Any] = getattr(aiohttp, "ConnectionTimeoutError", ())

_COMPARE_FIELD: Final[dict[CompareTarget, str]] = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    return base64.b64decode(text) if text else b""


def _int(value: Any) -> int:
    return int(value) if value not in (None, "") else 0


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


# --- values --------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyValue:
        return cls(
            key=_unb64(data.get("key")),
            value=_unb64(data.get("value")),
            create_revision=_int(data.get("create_revision")),
            mod_revision=_int(data.get("mod_revision")),
            version=_int(data.get("version")),
            lease=_int(data.get("lease")),
        )


@dataclass(frozen=True)
class RangeResult:
    """Keys found and the store revision the read was served at."""

    kvs: tuple[KeyValue, ...]
    revision: int


@dataclass(frozen=True)
class Compare:
    """One guard of a transaction: ``target(key) result value``.

    Build with the named constructors; they pick the JSON field that matches
    the target, which is the part that is easy to get wrong by hand.
    """

    key: bytes
    target: CompareTarget
    result: CompareResult
    operand: int | bytes

    @classmethod
    def mod_revision(cls, key: bytes, revision: int, result: CompareResult = "EQUAL") -> Compare:
        """The key was last modified at ``revision`` (0: the key does not exist)."""
        return cls(key, "MOD", result, revision)

    @classmethod
    def absent(cls, key: bytes) -> Compare:
        """The key does not exist (its create revision is 0)."""
        return cls(key, "CREATE", "EQUAL", 0)

    @classmethod
    def value_equals(cls, key: bytes, value: bytes) -> Compare:
        return cls(key, "VALUE", "EQUAL", value)

    def to_json(self) -> dict[str, Any]:
        field = _COMPARE_FIELD[self.target]
        operand = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {"key": _b64(self.key), "target": self.target, "result": self.result, field: operand}


@dataclass(frozen=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


def _key_range(key: bytes, range_end: bytes) -> dict[str, str]:
    """A key, or a ``[key, range_end)`` range, as etcd's gateway spells it."""
    body = {"key": _b64(key)}
    if range_end:
        body["range_end"] = _b64(range_end)
    return body


@dataclass(frozen=True)
class Get:
    key: bytes
    range_end: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {"request_range": _key_range(self.key, self.range_end)}


@dataclass(frozen=True)
class Delete:
    key: bytes
    range_end: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {"request_delete_range": _key_range(self.key, self.range_end)}


Operation = Put | Get | Delete


@dataclass(frozen=True)
class TxnResult:
    """Whether the guards held, the revision after the txn, and each ``Get``'s keys in order."""

    succeeded: bool
    revision: int
    ranges: tuple[tuple[KeyValue, ...], ...]


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True)
class WatchBatch:
    """Events delivered together, and the revision the server was at."""

    revision: int
    events: tuple[WatchEvent, ...]


class EtcdClient:
    """Calls to one etcd cluster through any of its client URLs.

    ``timeout`` bounds each unary call (connect plus answer). Watches only
    bound the connect; a watch is expected to stay open.

    Resource handling: owns its :class:`aiohttp.ClientSession` unless one is
    passed in; :meth:`close` closes only an owned session.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        ssl_context: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        if not endpoints:
            raise StateStoreError("etcd: no endpoints configured")
        self.endpoints = tuple(url.rstrip("/") for url in endpoints)
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._preferred = 0
        self._closed = False
        # An explicit context on every request: the shared session's default
        # context trusts the peers' CA, not necessarily etcd's.
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._user = user
        self._password = password
        self._auth_token: str | None = None

    async def close(self) -> None:
        """Close the owned session; later calls fail instead of reopening one."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise StateStoreError("etcd client is closed")
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise StateStoreError("etcd: the shared HTTP session is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    # --- KV -------------------------------------------------------------------------------

    async def range(self, key: bytes, range_end: bytes = b"") -> RangeResult:
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end:
            body["range_end"] = _b64(range_end)
        reply = await self._call("/v3/kv/range", body)
        return RangeResult(
            kvs=tuple(KeyValue.from_json(kv) for kv in reply.get("kvs", ())),
            revision=_revision(reply),
        )

    async def range_prefix(self, prefix: bytes) -> RangeResult:
        return await self.range(prefix, prefix_range_end(prefix))

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Store ``value`` at ``key`` (on ``lease`` when non-zero); returns the revision."""
        body = Put(key, value, lease).to_json()["request_put"]
        return _revision(await self._call("/v3/kv/put", body))

    async def delete(self, key: bytes, range_end: bytes = b"") -> int:
        """Delete ``key`` (or the range); returns how many keys were deleted."""
        body = Delete(key, range_end).to_json()["request_delete_range"]
        return _int((await self._call("/v3/kv/deleterange", body)).get("deleted"))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Operation] = (),
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        """Run ``success`` if every guard in ``compare`` holds, else ``failure``, atomically."""
        reply = await self._call(
            "/v3/kv/txn",
            {
                "compare": [c.to_json() for c in compare],
                "success": [op.to_json() for op in success],
                "failure": [op.to_json() for op in failure],
            },
        )
        ranges = tuple(
            tuple(KeyValue.from_json(kv) for kv in item["response_range"].get("kvs", ()))
            for item in reply.get("responses", ())
            if "response_range" in item
        )
        return TxnResult(
            succeeded=bool(reply.get("succeeded", False)), revision=_revision(reply), ranges=ranges
        )

    # --- leases ---------------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> Lease:
        """A new lease; etcd may raise ``ttl`` to its minimum (about 2 s by default)."""
        reply = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise StateStoreError(f"etcd lease grant refused: {reply['error']}")
        return Lease(id=_int(reply.get("ID")), ttl=_int(reply.get("TTL")))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew a lease once; returns its new TTL, 0 when it has already expired.

        The gateway maps the bidirectional stream onto one request: it sends our
        single message, answers once and ends the stream.
        """
        reply = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        result = reply.get("result")
        if not isinstance(result, dict):
            raise StateStoreError(f"etcd lease keepalive: unexpected reply {reply!r}")
        return _int(result.get("TTL"))

    async def lease_revoke(self, lease_id: int) -> bool:
        """Revoke a lease and delete its keys; ``False`` when it no longer existed."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdReplyError as exc:
            if exc.grpc_code == GRPC_NOT_FOUND:
                return False
            raise
        return True

    # --- watch ----------------------------------------------------------------------------

    async def watch(
        self,
        key: bytes,
        range_end: bytes = b"",
        *,
        start_revision: int = 0,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Yield batches of events on ``[key, range_end)`` from ``start_revision`` on.

        When nothing arrives for ``idle_timeout`` seconds the generator simply
        ends: a silently dead connection (peer gone without a FIN) looks
        exactly like a quiet one, so callers re-read and re-watch periodically.

        Error handling: raises :class:`StateStoreError` when the stream cannot
        be opened, breaks, is cancelled by the server, or when the requested
        revision was compacted away (the caller must re-read and re-watch).
        Resource handling: the HTTP response is released when the generator is
        closed or cancelled; use :func:`contextlib.aclosing`.
        """
        request: dict[str, Any] = {"key": _b64(key)}
        if range_end:
            request["range_end"] = _b64(range_end)
        if start_revision:
            request["start_revision"] = str(start_revision)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=idle_timeout
        )
        url = f"{self.endpoints[self._preferred]}/v3/watch"
        try:
            headers = await self._auth_headers()
            async with self._http().post(
                url,
                json={"create_request": request},
                timeout=timeout,
                ssl=self._ssl,
                headers=headers,
            ) as resp:
                if resp.status != 200 and self._token_rejected(resp.status, await resp.text()):
                    self._auth_token = None  # the next watch authenticates again
                if resp.status != 200:
                    raise _reply_error("watch", url, resp.status, await resp.text())
                async for frame in _json_lines(resp, url):
                    if "error" in frame:
                        raise _reply_error("watch", url, 200, json.dumps(frame["error"]))
                    result = frame.get("result", {})
                    if result.get("compact_revision"):
                        raise StateStoreError(
                            f"etcd watch {url}: revision {start_revision} compacted "
                            f"(oldest kept {result['compact_revision']})"
                        )
                    if result.get("canceled"):
                        reason = result.get("cancel_reason", "no reason given")
                        raise StateStoreError(f"etcd watch {url}: cancelled by server: {reason}")
                    events = tuple(
                        WatchEvent(
                            kind="delete" if ev.get("type") == "DELETE" else "put",
                            kv=KeyValue.from_json(ev.get("kv", {})),
                        )
                        for ev in result.get("events", ())
                    )
                    if events:
                        yield WatchBatch(revision=_revision(result), events=events)
        except aiohttp.ServerTimeoutError as exc:
            if isinstance(exc, _CONNECT_TIMEOUT):
                raise StateStoreError(f"etcd watch {url}: connect timed out") from exc
            return  # idle for idle_timeout: end quietly, the caller resyncs
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._preferred = (self._preferred + 1) % len(self.endpoints)
            raise StateStoreError(f"etcd watch {url}: {_describe(exc)}") from exc

    # --- transport ------------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` as the configured user (if any); see :meth:`_call_once`.

        A reply saying the auth token is no longer valid authenticates again
        and retries once.
        """
        try:
            return await self._call_once(path, body, await self._auth_headers())
        except EtcdReplyError as exc:
            if self._user is None or not self._token_rejected(exc.status, str(exc)):
                raise
        self._auth_token = None
        return await self._call_once(path, body, await self._auth_headers())

    async def _auth_headers(self) -> dict[str, str]:
        if self._user is None:
            return {}
        if self._auth_token is None:
            reply = await self._call_once(
                "/v3/auth/authenticate", {"name": self._user, "password": self._password or ""}, {}
            )
            token = reply.get("token")
            if not isinstance(token, str) or not token:
                raise StateStoreError(f"etcd authenticate as {self._user!r}: no token in reply")
            self._auth_token = token
        return {"Authorization": self._auth_token}

    @staticmethod
    def _token_rejected(status: int, text: str) -> bool:
        return status == 401 or any(marker in text for marker in _TOKEN_REJECTED)

    async def _call_once(
        self, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        """POST ``body`` to ``path``, trying each endpoint once, starting with the last good one.

        Error handling: an answer from etcd that is an error (any non-200, or
        a JSON error document) is final and raised as :class:`EtcdReplyError`;
        only transport failures (refused, reset, timeout) try the next endpoint.
        """
        failures: list[str] = []
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        for attempt in range(len(self.endpoints)):
            index = (self._preferred + attempt) % len(self.endpoints)
            url = f"{self.endpoints[index]}{path}"
            try:
                async with self._http().post(
                    url, json=body, timeout=timeout, ssl=self._ssl, headers=headers
                ) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise _reply_error(path, url, resp.status, text)
                    self._preferred = index
                    return _parse_object(text, url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{url}: {_describe(exc)}")
        raise StateStoreError("etcd unreachable: " + "; ".join(failures))


class EtcdReplyError(StateStoreError):
    """etcd answered with an error; ``grpc_code`` is its gRPC status code."""

    def __init__(self, message: str, *, status: int, grpc_code: int | None) -> None:
        self.status = status
        self.grpc_code = grpc_code
        super().__init__(message)


def _reply_error(call: str, url: str, status: int, text: str) -> EtcdReplyError:
    code: int | None = None
    message = text.strip()[:500]
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        doc = json.loads(text)
        code = int(doc["code"]) if "code" in doc else None
        message = str(doc.get("message") or doc.get("error") or message)
    return EtcdReplyError(
        f"etcd {call} at {url} failed (HTTP {status}): {message}", status=status, grpc_code=code
    )


def _parse_object(text: str, url: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise StateStoreError(f"etcd {url}: answer is not JSON: {text[:200]!r}") from None
    if not isinstance(doc, dict):
        raise StateStoreError(f"etcd {url}: answer is not a JSON object")
    return doc


def _revision(reply: dict[str, Any]) -> int:
    header = reply.get("header") or {}
    return _int(header.get("revision"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def _json_lines(resp: aiohttp.ClientResponse, url: str) -> AsyncIterator[dict[str, Any]]:
    """Split a streamed gateway response into its newline-delimited JSON documents."""
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield _parse_object(line.decode("utf-8", "replace"), url)
        if len(buffer) > MAX_WATCH_FRAME:
            raise StateStoreError(f"etcd watch {url}: frame larger than {MAX_WATCH_FRAME} bytes")
    raise StateStoreError(f"etcd watch {url}: stream ended by the server")
