"""Kraken WebSocket v2 ingest: trades and checksummed level-2 books.

One module per job:

* :mod:`.checksum` — Kraken's CRC32 over the top 10 levels (exact decimals);
* :mod:`.book` — one symbol's book: snapshot, ordered updates, truncation;
* :mod:`.messages` — decoding frames into typed messages, building requests;
* :mod:`.trades` — per-symbol ``trade_id`` gap detection and replay dedup;
* :mod:`.normalise` — messages → ``trade`` / ``book`` :class:`MarketRecord`;
* :mod:`.handler` — the protocol state machine (no I/O);
* :mod:`.connector` — :class:`KrakenFeed`, the connection and its health;
* :mod:`.simulator` and :mod:`.testserver` — a local Kraken-protocol server
  with fault injection, for tests and the demo.

See ``docs/KRAKEN.md``.
"""

from cryptorun_daemon.ingest.kraken.connector import DEFAULT_URL, KrakenFeed

__all__ = ["DEFAULT_URL", "KrakenFeed"]
