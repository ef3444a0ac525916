"""TOML file → :class:`Config`, reporting every problem at once.

Each problem names the file, the key path (``rules[1].lag_slo``) and what is
wrong. Unknown keys are errors so a typo never silently becomes a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import get_args
from urllib.parse import urlsplit

from cryptorun_daemon.config.loader_security import (
    PEER_TLS_KEYS,
    check_admin_exposure,
    check_peer_url,
    is_loopback,
    read_admin_security,
    read_etcd_security,
    read_peer_tls,
)
from cryptorun_daemon.config.loader_storage import check_sources, read_storage
from cryptorun_daemon.config.model import (
    DEFAULT_MODE,
    REGION_NAME_PATTERN,
    TIERS,
    AdminConfig,
    AnomalyConfig,
    Config,
    FeedConfig,
    FeedKind,
    HotConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    Mode,
    ReplicationConfig,
    Rule,
    StateBackend,
    StateConfig,
    ValidationConfig,
    is_region_name,
)
from cryptorun_daemon.config.table import MISSING, Problems, Table
from cryptorun_daemon.errors import ConfigError, ConfigProblem

# The choices each Literal allows, typed as that Literal (get_args alone gives Any).
MODES: tuple[Mode, ...] = get_args(Mode)
FEED_KINDS: tuple[FeedKind, ...] = get_args(FeedKind)
STATE_BACKENDS: tuple[StateBackend, ...] = get_args(StateBackend)
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)


def load_config(path: str | Path) -> Config:
    """Load and validate one region's TOML config.

    Error handling: raises :class:`ConfigError` carrying every problem found
    (unreadable file, TOML syntax, unknown keys, wrong types, bad durations,
    unknown regions, contradictory rules, missing token file).
    """
    path = Path(path)
    loader = Problems(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(str(path), "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"cannot read: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(str(path), "", f"invalid TOML: {exc}")]) from None

    top = Table(loader, data, "")
    region = top.string("region")
    if isinstance(region, str) and not is_region_name(region):
        loader.problem("region", f"{region!r} must match {REGION_NAME_PATTERN}")

    admin = _admin(top.table("admin"), loader)
    storage = read_storage(top.table("storage"), loader)
    peers_table = top.table("peers")
    peer_tls = read_peer_tls(peers_table, loader)
    peers = _peers(peers_table, loader, region)
    for name, url in peers.items():
        check_peer_url(
            peers_table.key(name),
            url,
            loader,
            allow_plaintext=bool(admin and admin.allow_plaintext),
        )
    if storage is not None:
        check_sources(storage, peers, loader)
    known_regions = {r for r in (region, *peers) if isinstance(r, str)}
    rules = _rules(top.raw("rules"), loader, known_regions)
    log = _log(top.table("log"))
    state = _state(top.table("state"), loader)
    replication = _replication(top.table("replication"))
    hot = _hot(top.table("hot"))
    feeds = _feeds(top.raw("feeds"), loader)
    validation = _validation(top.table("validation"))
    top.finish()

    # A required value is None only after its problem was recorded; the checks of
    # None are for the type checker.
    if loader.problems or region is None or admin is None or storage is None:
        raise ConfigError(loader.problems)
    return Config(
        source=path,
        region=region,
        admin=admin,
        storage=storage,
        peers=peers,
        rules=rules,
        log=log,
        state=state,
        replication=replication,
        hot=hot,
        feeds=feeds,
        validation=validation,
        peer_tls=peer_tls,
    )


def _admin(t: Table, loader: Problems) -> AdminConfig | None:
    listen = t.string("listen", "127.0.0.1:9100")
    token_file = t.string("token_file", None)
    max_request_bytes = t.integer("max_request_bytes", 1 << 20, minimum=1024)
    shutdown_timeout = t.duration("shutdown_timeout", 10.0)
    security = read_admin_security(t, loader)
    t.finish()
    host_port = _split_listen(listen, t.key("listen"), loader) if isinstance(listen, str) else None
    token_path = loader.resolve(token_file) if isinstance(token_file, str) else None
    if token_path is not None and not token_path.is_file():
        loader.problem(t.key("token_file"), f"token file {token_path} does not exist")
    elif token_path is not None and not token_path.read_text(encoding="utf-8").strip():
        loader.problem(t.key("token_file"), f"token file {token_path} is empty")
    if host_port is None:
        return None
    host, port = host_port
    open_reads = check_admin_exposure(t, loader, host, listen, security)
    if token_path is None and not security.tokens.by_scope() and not is_loopback(host):
        loader.problem(
            t.key("token_file"),
            f"is required when admin.listen ({listen}) is not a loopback address",
        )
    return AdminConfig(
        host=host,
        port=port,
        token_file=token_path,
        max_request_bytes=max_request_bytes,
        shutdown_timeout=shutdown_timeout,
        tls_cert=security.tls_cert,
        tls_key=security.tls_key,
        tls_client_ca=security.tls_client_ca,
        allow_plaintext=security.allow_plaintext,
        open_reads=open_reads,
        tokens=security.tokens,
    )


def _split_listen(listen: str, key: str, loader: Problems) -> tuple[str, int] | None:
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        loader.problem(key, f"{listen!r} must be host:port, e.g. 127.0.0.1:9100")
        return None
    return host, int(port_text)


def _peers(t: Table, loader: Problems, region: str | None) -> dict[str, str]:
    peers: dict[str, str] = {}
    for name in list(t.data):
        if name in PEER_TLS_KEYS:
            continue  # TLS settings, read by read_peer_tls
        url = t.string(name)
        key = t.key(name)
        if not is_region_name(name):
            loader.problem(key, f"peer region name {name!r} must match {REGION_NAME_PATTERN}")
            continue
        if name == region:
            loader.problem(key, "a region cannot be its own peer")
            continue
        if not isinstance(url, str):
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            loader.problem(key, f"{url!r} must be an http(s):// base URL")
            continue
        peers[name] = url.rstrip("/")
    return peers


def _rules(raw: object, loader: Problems, regions: set[str]) -> tuple[Rule, ...]:
    if raw is MISSING:
        return ()
    if not isinstance(raw, list):
        loader.problem("rules", "must be an array of tables ([[rules]])")
        return ()
    rules: list[Rule] = []
    primaries: dict[str, tuple[str, int]] = {}
    for index, item in enumerate(raw):
        t = Table(loader, item, f"rules[{index}]")
        tier = t.choice("tier", TIERS)
        mode = t.choice("mode", MODES, None)
        src = t.string("from")
        dst = t.strings("to")
        slo = t.duration("lag_slo")
        t.finish()
        if tier is None:
            continue
        mode = mode or DEFAULT_MODE[tier]
        if mode != DEFAULT_MODE[tier]:
            loader.problem(
                t.key("mode"),
                f"{mode!r} makes no sense for the {tier} tier: "
                + (
                    "each region ingests its own hot feeds, so hot is active-active"
                    if tier == "hot"
                    else f"sealed partitions have exactly one writer, so {tier} is active-passive"
                ),
            )
        for name, key in ([(src, t.key("from"))] if isinstance(src, str) else []) + [
            (d, f"{t.key('to')}[{i}]") for i, d in enumerate(dst or ())
        ]:
            if name not in regions:
                loader.problem(key, f"unknown region {name!r} (not this region and not a peer)")
        if isinstance(src, str) and dst and src in dst:
            loader.problem(t.key("to"), f"lists {src!r}, which is the rule's own 'from'")
        if dst is not None and not dst:
            loader.problem(t.key("to"), "must name at least one region")
        if mode == "active-passive" and isinstance(src, str):
            earlier = primaries.get(tier)
            if earlier and earlier[0] != src:
                loader.problem(
                    t.key("from"),
                    f"{tier} already replicates from {earlier[0]!r} in rules[{earlier[1]}]; "
                    "an active-passive tier has exactly one primary",
                )
            primaries.setdefault(tier, (src, index))
        if src is None or dst is None or slo is None:
            continue
        rules.append(Rule(tier=tier, mode=mode, from_region=src, to_regions=dst, lag_slo=slo))
    return tuple(rules)


def _log(t: Table) -> LogConfig:
    level = t.choice("level", LOG_LEVELS, "info")
    fmt = t.choice("format", LOG_FORMATS, "auto")
    t.finish()
    return LogConfig(level=level, format=fmt)


def _state(t: Table, loader: Problems) -> StateConfig:
    d = StateConfig()
    backend = t.choice("backend", STATE_BACKENDS, d.backend)
    endpoints = t.strings("etcd_endpoints", d.etcd_endpoints)
    prefix = t.string("etcd_prefix", d.etcd_prefix)
    lease_ttl = t.duration("lease_ttl", d.lease_ttl)
    auto = t.boolean("auto_failover", d.auto_failover)
    min_interval = t.duration("auto_failover_min_interval", d.auto_failover_min_interval)
    margin = t.duration("lease_safety_margin", None)
    etcd_security = read_etcd_security(t, loader)
    t.finish()
    if margin is not None and not 0 <= margin < lease_ttl * 2 / 3:
        # Heartbeats renew every lease_ttl / 3: a margin at or above two thirds of
        # the TTL would refuse writes between two perfectly healthy renewals.
        loader.problem(
            t.key("lease_safety_margin"),
            f"must be at least 0 and below two thirds of lease_ttl ({lease_ttl * 2 / 3:g} s)",
        )
        margin = None
    if backend == "etcd" and not endpoints:
        loader.problem(t.key("etcd_endpoints"), "is required when state.backend = 'etcd'")
    if auto and backend != "etcd":
        loader.problem(
            t.key("auto_failover"),
            "needs state.backend = 'etcd': automatic failover requires a real coordinator",
        )
    return StateConfig(
        backend=backend,
        etcd_endpoints=endpoints,
        etcd_prefix=prefix,
        lease_ttl=lease_ttl,
        auto_failover=auto,
        auto_failover_min_interval=min_interval,
        lease_safety_margin=margin,
        etcd_ca_file=etcd_security.ca_file,
        etcd_cert=etcd_security.cert,
        etcd_key=etcd_security.key,
        etcd_user=etcd_security.user,
        etcd_password_file=etcd_security.password_file,
    )


def _replication(t: Table) -> ReplicationConfig:
    d = ReplicationConfig()
    cfg = ReplicationConfig(
        max_concurrency=t.integer("max_concurrency", d.max_concurrency, minimum=1),
        step_max_partitions=t.integer("step_max_partitions", d.step_max_partitions, minimum=1),
        request_timeout=t.duration("request_timeout", d.request_timeout),
        peer_down_after=t.duration("peer_down_after", d.peer_down_after),
        retry_attempts=t.integer("retry_attempts", d.retry_attempts, minimum=1),
        feed_retention=t.integer("feed_retention", d.feed_retention, minimum=1),
        feed_poll_interval=t.duration("feed_poll_interval", d.feed_poll_interval),
        anti_entropy_interval=t.duration("anti_entropy_interval", d.anti_entropy_interval),
        scrub_interval=t.duration("scrub_interval", d.scrub_interval),
        max_validations=t.integer("max_validations", d.max_validations, minimum=1),
        max_bucket_validations=t.integer(
            "max_bucket_validations", d.max_bucket_validations, minimum=1
        ),
        bucket_spool_partitions=t.integer(
            "bucket_spool_partitions", d.bucket_spool_partitions, minimum=1
        ),
    )
    t.finish()
    return cfg


def _hot(t: Table) -> HotConfig:
    d = HotConfig()
    cfg = HotConfig(
        buffer_records=t.integer("buffer_records", d.buffer_records, minimum=1),
        buffer_bytes=t.integer("buffer_bytes", d.buffer_bytes, minimum=1024),
        fsync_interval=t.duration("fsync_interval", d.fsync_interval),
        fsync_records=t.integer("fsync_records", d.fsync_records, minimum=1),
        segment_bytes=t.integer("segment_bytes", d.segment_bytes, minimum=4096),
        partition_length=t.duration("partition_length", d.partition_length),
        seal_grace=t.duration("seal_grace", d.seal_grace),
        heartbeat_interval=t.duration("heartbeat_interval", d.heartbeat_interval),
        max_frame_bytes=t.integer("max_frame_bytes", d.max_frame_bytes, minimum=1024),
        freshness_gate=t.duration("freshness_gate", d.freshness_gate),
        max_tracked_markets=t.integer("max_tracked_markets", d.max_tracked_markets, minimum=1),
        max_subscribers=t.integer("max_subscribers", d.max_subscribers, minimum=1),
        subscriber_timeout=t.duration("subscriber_timeout", d.subscriber_timeout),
    )
    t.finish()
    return cfg


def _feeds(raw: object, loader: Problems) -> tuple[FeedConfig, ...]:
    if raw is MISSING:
        return ()
    if not isinstance(raw, list):
        loader.problem("feeds", "must be an array of tables ([[feeds]])")
        return ()
    feeds: list[FeedConfig] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        t = Table(loader, item, f"feeds[{index}]")
        kind = t.choice("kind", FEED_KINDS)
        name = t.string("name", f"{kind}-{index}")
        venue = t.string("venue", "kraken" if kind == "kraken" else "synthetic")
        symbols = t.strings("symbols", ("BTC/USD", "ETH/USD", "SOL/USD"))
        rate = t.number("rate", 10.0)
        seed = t.integer("seed", 1)
        path_text = t.string("path", None)
        url = t.string("url", None)
        depth = t.integer("book_depth", 10, minimum=1)
        speed = t.number("speed", 1.0)
        heartbeat_timeout = t.duration("heartbeat_timeout", 15.0)
        t.finish()
        if name in names:
            loader.problem(t.key("name"), f"feed name {name!r} is used twice")
        names.add(name)
        if kind == "replay" and path_text is None:
            loader.problem(t.key("path"), "is required for a replay feed")
        if kind == "kraken" and depth not in (10, 25, 100, 500, 1000):
            loader.problem(t.key("book_depth"), "Kraken allows 10, 25, 100, 500 or 1000")
        if kind is None:
            continue
        feeds.append(
            FeedConfig(
                name=name,
                kind=kind,
                venue=venue,
                symbols=symbols,
                rate=rate,
                seed=seed,
                path=loader.resolve(path_text) if path_text else None,
                url=url,
                book_depth=depth,
                speed=speed,
                heartbeat_timeout=heartbeat_timeout,
            )
        )
    return tuple(feeds)


def _validation(t: Table) -> ValidationConfig:
    d = ValidationConfig()
    strict = t.boolean("strict", d.strict)
    stale_table = t.table("staleness")
    staleness = {tier: stale_table.duration(tier, d.staleness[tier]) for tier in TIERS}
    stale_table.finish()
    drift = t.duration("drift_tolerance", d.drift_tolerance)
    a = t.table("anomaly")
    da = AnomalyConfig()
    anomaly = AnomalyConfig(
        window=a.integer("window", da.window, minimum=3),
        min_samples=a.integer("min_samples", da.min_samples, minimum=1),
        threshold=a.number("threshold", da.threshold),
        min_relative_move=a.number("min_relative_move", da.min_relative_move, positive=False),
        floor_bps=a.number("floor_bps", da.floor_bps),
    )
    a.finish()
    t.finish()
    return ValidationConfig(
        strict=strict, staleness=staleness, drift_tolerance=drift, anomaly=anomaly
    )
