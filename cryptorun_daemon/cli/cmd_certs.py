"""``cryptorun certs init``: a private CA and one certificate per region."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from cryptorun_daemon.config import is_region_name
from cryptorun_daemon.errors import UsageError
from cryptorun_daemon.security.certs import init_certs


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def run_certs_init(
    directory: str, *, regions: str, hosts: str, days: int, force: bool, out: TextIO
) -> int:
    """Write the files and print what goes where in each region's config."""
    names = _split(regions)
    for name in names:
        if not is_region_name(name):
            raise UsageError(f"--regions: {name!r} must match [a-z][a-z0-9-]*")
    if days <= 0:
        raise UsageError("--days must be positive")
    if not names:
        raise UsageError("--regions names no region")
    issued = init_certs(Path(directory), names, hosts=_split(hosts), days=days, force=force)
    out.write(f"CA certificate: {issued.ca_cert}\n")
    out.write(f"CA key (keep offline; only needed to issue more): {issued.ca_key}\n")
    for region, (cert, key) in issued.regions.items():
        out.write(
            f'{region}: [admin] tls_cert = "{cert}", tls_key = "{key}", '
            f'tls_client_ca = "{issued.ca_cert}"; [peers] ca_file = "{issued.ca_cert}"\n'
        )
    return 0
