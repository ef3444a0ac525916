"""cryptorun-daemon: multi-region replication of crypto market data.

One daemon per region replicates the hot tier active-active over WebSocket and
the warm and cold tiers active-passive as sealed Parquet partitions.
"""

__version__ = "0.1.0"
