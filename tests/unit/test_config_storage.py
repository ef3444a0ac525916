"""``[storage.tiers.*]``: object-store tiers in the config, validated with precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptorun_daemon.config import ObjectStoreTier, load_config
from cryptorun_daemon.errors import ConfigError

BASE = """
region = "eu-central"

[admin]
listen = "127.0.0.1:9100"
token_file = "admin.token"

[storage]
root = "data/eu-central"
"""


def _write(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "admin.token").write_text("secret\n")
    path = tmp_path / "region.toml"
    path.write_text(BASE + extra)
    return path


def _problems(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, extra))
    return [f"{p.key}: {p.message}" for p in info.value.problems]


def test_no_tier_section_keeps_local_disk(tmp_path: Path) -> None:
    """Without [storage.tiers.*] every tier stays on local disk (today's behaviour)."""
    assert load_config(_write(tmp_path, "")).storage.tiers == {}


def test_object_store_tier_is_read_into_typed_values(tmp_path: Path) -> None:
    """A cold tier on s3://bucket/prefix with an endpoint: bucket, prefix, flags, sizes and
    durations are typed; warm stays on disk."""
    config = load_config(
        _write(
            tmp_path,
            """
[storage.tiers.cold]
url = "s3://market-cold/eu/v1"
endpoint_url = "http://127.0.0.1:9000"
region = "eu-central-1"
allow_http = true
part_size = 8388608
orphan_upload_age = "2h"
""",
        )
    )
    cold = config.storage.tiers["cold"]
    assert cold == ObjectStoreTier(
        url="s3://market-cold/eu/v1",
        bucket="market-cold",
        prefix="eu/v1",
        endpoint_url="http://127.0.0.1:9000",
        region="eu-central-1",
        allow_http=True,
        part_size=8 << 20,
        orphan_upload_age=7200.0,
    )
    assert "warm" not in config.storage.tiers
    assert cold.accept_weak_fencing is False


def test_credentials_in_the_config_are_refused_without_echoing_them(tmp_path: Path) -> None:
    """Keys or a URL carrying credentials are errors that say where credentials come from,
    and the secret itself never appears in the message."""
    found = _problems(
        tmp_path,
        """
[storage.tiers.cold]
url = "s3://AKIAX:topsecret@market-cold/p"
secret_access_key = "topsecret"
""",
    )
    assert any(p.startswith("storage.tiers.cold.secret_access_key: credentials") for p in found)
    assert any(p.startswith("storage.tiers.cold.url: holds credentials") for p in found)
    assert not any("topsecret" in p for p in found)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[storage.tiers.hot]\nurl = "s3://b-hot/x"', "storage.tiers.hot: only warm, cold"),
        ('[storage.tiers.cold]\nurl = "gs://bucket/x"', "must start with s3://"),
        ('[storage.tiers.cold]\nurl = "s3://B_ad/x"', "not a valid bucket name"),
        ('[storage.tiers.cold]\nurl = "s3://bucket/../x"', "must be plain segments"),
        (
            '[storage.tiers.cold]\nurl = "s3://bucket/x"\nendpoint_url = "http://127.0.0.1:9"',
            "set allow_http = true",
        ),
        (
            '[storage.tiers.cold]\nurl = "s3://bucket/x"\nendpoint_url = "http://minio.lan:9000"'
            "\nallow_http = true",
            "plain HTTP is allowed on loopback only",
        ),
        ('[storage.tiers.cold]\nurl = "s3://bucket/x"\npart_size = 1024', "must be >= 5242880"),
        ('[storage.tiers.cold]\nurl = "s3://bucket/x"\nbucket = "y"', "cold.bucket: unknown key"),
        ('[storage.tiers.cold]\nendpoint_url = "https://s3.example"', "cold.url: is required"),
    ],
)
def test_bad_object_store_tiers_are_reported_with_their_key(
    tmp_path: Path, extra: str, expected: str
) -> None:
    """Each wrong value is one problem naming its key path and what is wrong."""
    found = _problems(tmp_path, extra)
    assert any(expected in p for p in found), found
