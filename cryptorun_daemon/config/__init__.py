"""Typed configuration: TOML → frozen dataclasses (see ``docs/CONFIG.md``)."""

from cryptorun_daemon.config.durations import format_duration, parse_duration
from cryptorun_daemon.config.loader import load_config
from cryptorun_daemon.config.model import (
    TIERS,
    AdminConfig,
    AnomalyConfig,
    Config,
    FeedConfig,
    HotConfig,
    LogConfig,
    Mode,
    ReplicationConfig,
    Rule,
    StateConfig,
    StorageConfig,
    Tier,
    ValidationConfig,
)

__all__ = [
    "TIERS",
    "AdminConfig",
    "AnomalyConfig",
    "Config",
    "FeedConfig",
    "HotConfig",
    "LogConfig",
    "Mode",
    "ReplicationConfig",
    "Rule",
    "StateConfig",
    "StorageConfig",
    "Tier",
    "ValidationConfig",
    "format_duration",
    "load_config",
    "parse_duration",
]
