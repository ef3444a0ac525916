"""The ``cryptorun`` command line.

argparse rather than click/typer: it is in the standard library (one less
runtime dependency on every region host), and the only non-standard form we
need — ``--dry-run`` and ``--dry-run=false`` on the same flag — is one small
``type`` function (see ``flags.py``).

Typed errors raised anywhere below are mapped to exit codes only here:
0 done, 1 refused or failed, 2 usage or config error, or a damaged hot journal
(an operator must run ``cryptorun journal salvage``; restarting cannot help).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from cryptorun_daemon import __version__
from cryptorun_daemon.cli.client import AdminClient
from cryptorun_daemon.cli.flags import HelpfulParser, add_bool_flag
from cryptorun_daemon.cli.target import resolve_target
from cryptorun_daemon.config import TIERS, load_config
from cryptorun_daemon.errors import (
    AdminClientError,
    ConfigError,
    CryptorunError,
    JournalDamagedError,
    UsageError,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = HelpfulParser(prog="cryptorun", description="CryptoRun replication daemon")
    parser.add_argument("--version", action="version", version=f"cryptorun {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=HelpfulParser)

    daemon = commands.add_parser("daemon", help="run one region's daemon")
    daemon.add_argument("--config", required=True, metavar="PATH", help="region TOML config")
    daemon.add_argument(
        "--check", action="store_true", help="validate the config and exit (0 valid, 2 invalid)"
    )

    certs = commands.add_parser("certs", help="make a private CA and region certificates")
    certs_actions = certs.add_subparsers(dest="action", required=True, parser_class=HelpfulParser)
    certs_init = certs_actions.add_parser(
        "init", help="write ca.pem and one certificate + key per region into --dir"
    )
    certs_init.add_argument("--dir", required=True, metavar="DIR", help="output folder")
    certs_init.add_argument(
        "--regions", required=True, metavar="R1,R2", help="comma-separated region names"
    )
    certs_init.add_argument(
        "--hosts",
        default="",
        metavar="H1,H2",
        help="extra DNS names or IP addresses of the admin listeners (loopback always included)",
    )
    certs_init.add_argument("--days", type=int, default=365, help="validity of region certs")
    certs_init.add_argument("--force", action="store_true", help="replace existing files")

    demo = commands.add_parser("demo", help="run a two-region demo on loopback")
    demo.add_argument("--dir", default=None, help="where the demo keeps its data (default: temp)")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    demo.add_argument(
        "--object-store",
        action="store_true",
        help="warm and cold on two local S3 buckets (starts moto's server; the demo extra)",
    )
    demo.add_argument(
        "--kraken-url",
        default=None,
        metavar="URL",
        help="Kraken v2 WebSocket endpoint instead of the local test server",
    )

    replication = commands.add_parser("replication", help="talk to a running daemon")
    rep = replication.add_subparsers(dest="action", required=True, parser_class=HelpfulParser)

    def admin_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--admin-url",
            default=None,
            metavar="URL",
            help="daemon admin base URL (env CRYPTORUN_ADMIN_URL)",
        )
        p.add_argument(
            "--config",
            default=None,
            metavar="PATH",
            help="region config giving the admin address and token file",
        )
        p.add_argument(
            "--token-file",
            default=None,
            metavar="PATH",
            help="bearer token file (env CRYPTORUN_ADMIN_TOKEN)",
        )
        p.add_argument(
            "--cacert",
            default=None,
            metavar="PATH",
            help="CA bundle verifying an https daemon (env CRYPTORUN_ADMIN_CA; "
            "default: the config's [peers] ca_file, else the system store)",
        )
        p.add_argument("--json", action="store_true", help="print one JSON document")

    simulate = rep.add_parser("simulate", help="show the replication plan for a window")
    simulate.add_argument("--from", dest="src", required=True, metavar="REGION")
    simulate.add_argument("--to", dest="dst", required=True, metavar="REGION")
    simulate.add_argument("--tier", required=True, choices=TIERS)
    simulate.add_argument("--window", required=True, metavar="START/END")
    add_bool_flag(simulate, "--strict", default=False, help_text="fail at the first violation")
    admin_flags(simulate)

    failover = rep.add_parser("failover", help="promote one region and demote another")
    failover.add_argument("--tier", required=True, choices=TIERS)
    failover.add_argument("--promote", required=True, metavar="REGION")
    failover.add_argument("--demote", required=True, metavar="REGION")
    add_bool_flag(failover, "--dry-run", default=False, help_text="show the actions only")
    failover.add_argument(
        "--expected-epoch",
        type=int,
        default=None,
        metavar="N",
        help="refuse (409) unless the tier is still at epoch N",
    )
    admin_flags(failover)

    status = rep.add_parser("status", help="roles, epochs, lag and stream positions")
    status.add_argument("--tier", default=None, choices=TIERS)
    status.add_argument("--region", default=None, metavar="REGION")
    admin_flags(status)

    partitions = commands.add_parser("partitions", help="work on partitions on local disk")
    part = partitions.add_subparsers(dest="action", required=True, parser_class=HelpfulParser)
    seal = part.add_parser("seal", help="seal partition directories written by another tool")
    seal.add_argument("dirs", nargs="+", metavar="DIR")
    seal.add_argument(
        "--region",
        default=None,
        help="writer region recorded in the manifest (default: from --config)",
    )
    seal.add_argument("--config", default=None, metavar="PATH", help="region config")
    seal.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="writer epoch (default: the tier's current epoch from the fence)",
    )

    journal = commands.add_parser("journal", help="check or salvage the hot journal on disk")
    jrn = journal.add_subparsers(dest="action", required=True, parser_class=HelpfulParser)
    for action, text in (
        ("check", "report damage the daemon would refuse to start on (exit 1 if any)"),
        ("salvage", "move a damaged journal tail aside (kept) and record the gap"),
    ):
        sub = jrn.add_parser(action, help=text)
        sub.add_argument("--config", required=True, metavar="PATH", help="region TOML config")
        sub.add_argument("--json", action="store_true", help="print one JSON document")

    read = commands.add_parser(
        "read", help="read a window of sealed data (point-in-time, as-of, quarantine-aware)"
    )
    read.add_argument("dataset", metavar="DATASET", help="trade, book, ...")
    source = read.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", default=None, metavar="PATH", help="storage root to read")
    source.add_argument(
        "--config", default=None, metavar="PATH", help="region config (its storage.root)"
    )
    read.add_argument("--start", required=True, metavar="RFC3339", help="window start (inclusive)")
    read.add_argument("--end", required=True, metavar="RFC3339", help="window end (exclusive)")
    read.add_argument("--venue", action="append", metavar="VENUE", help="repeatable")
    read.add_argument("--symbol", action="append", metavar="BASE-QUOTE", help="repeatable")
    read.add_argument("--column", action="append", metavar="NAME", help="repeatable (default: all)")
    read.add_argument(
        "--tier", action="append", choices=TIERS, help="cascade order (default: cold, warm)"
    )
    read.add_argument("--as-of", default=None, metavar="RFC3339", help="knowledge time")
    read.add_argument("--quarantine", default=None, choices=("drop", "keep", "only"))
    read.add_argument("--on-drift", default=None, choices=("unify", "refuse"))
    read.add_argument(
        "--include-unsealed", action="store_true", help="also read unsealed partitions"
    )
    read.add_argument("--format", required=True, choices=("parquet", "csv", "arrow", "table"))
    read.add_argument("-o", "--output", default=None, metavar="FILE", help="default: stdout")
    read.add_argument("--limit", type=int, default=20, help="rows shown by --format table")
    read.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    validate = commands.add_parser("validate", help="validate partitions or Parquet files offline")
    validate.add_argument("paths", nargs="+", metavar="PATH")
    validate.add_argument("--tier", default="warm", choices=TIERS)
    validate.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    out = out if out is not None else sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        return _dispatch(args, out)
    except ConfigError as exc:
        sys.stderr.write(f"config invalid ({len(exc.problems)} problems):\n")
        for problem in exc.problems:
            sys.stderr.write(f"  {problem}\n")
        return EXIT_USAGE
    except UsageError as exc:
        sys.stderr.write(f"cryptorun: error: {exc}\n")
        return EXIT_USAGE
    except JournalDamagedError as exc:
        # Exit 2, like a config error: restarting cannot fix it (systemd's
        # RestartPreventExitStatus=2 stops the loop), an operator command can.
        from cryptorun_daemon.cli.cmd_journal import fix_hint

        config_path = getattr(args, "config", None) or "PATH"
        sys.stderr.write(
            f"cryptorun: hot journal damaged: segment {exc.path}, byte {exc.offset}: "
            f"{exc.reason}\n"
            f"cryptorun: inspect with `cryptorun journal check --config {config_path}`; "
            f"fix with `{fix_hint(config_path)}` (moves the damaged tail aside, "
            "deletes nothing)\n"
        )
        return EXIT_USAGE
    except (AdminClientError, CryptorunError) as exc:
        sys.stderr.write(f"cryptorun: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "daemon":
        config = load_config(args.config)
        if args.check:
            from cryptorun_daemon.security.transport import check_transport_files

            check_transport_files(config)  # secrets private, certificates loadable
            out.write(f"{args.config}: ok (region {config.region}, {len(config.rules)} rules)\n")
            return EXIT_OK
        from cryptorun_daemon.daemon import run_daemon_from_config

        run_daemon_from_config(config)
        return EXIT_OK
    if args.command == "certs":
        from cryptorun_daemon.cli.cmd_certs import run_certs_init

        return run_certs_init(
            args.dir,
            regions=args.regions,
            hosts=args.hosts,
            days=args.days,
            force=args.force,
            out=out,
        )
    if args.command == "demo":
        from cryptorun_daemon.demo.runner import run_demo

        return run_demo(
            directory=args.dir,
            duration=args.duration,
            kraken_url=args.kraken_url,
            out=out,
            object_store=args.object_store,
        )
    if args.command == "validate":
        from cryptorun_daemon.data.validate.cli import run_validate

        return run_validate(args.paths, tier=args.tier, as_json=args.json, out=out)
    if args.command == "read":
        from cryptorun_daemon.cli.cmd_read import read_values, run_read

        return run_read(
            args.dataset,
            root=args.root,
            config=args.config,
            values=read_values(args),
            output_format=args.format,
            output=args.output,
            limit=args.limit,
            progress=not args.no_progress,
            out=out,
        )
    if args.command == "partitions":
        from cryptorun_daemon.cli.cmd_partitions import run_seal

        region = args.region or (load_config(args.config).region if args.config else None)
        if region is None:
            raise UsageError("partitions seal needs --region REGION or --config PATH")
        return run_seal(args.dirs, region=region, epoch=args.epoch, out=out)
    if args.command == "journal":
        from cryptorun_daemon.cli.cmd_journal import run_check, run_salvage

        config = load_config(args.config)
        if args.action == "check":
            return run_check(config, config_path=args.config, as_json=args.json, out=out)
        return run_salvage(config, as_json=args.json, out=out)
    if args.command == "replication":
        return asyncio.run(_replication(args, out))
    raise UsageError(f"unknown command {args.command!r}")


async def _replication(args: argparse.Namespace, out: TextIO) -> int:
    target = resolve_target(args)
    async with AdminClient(target.url, target.token, ssl_context=target.ssl_context) as client:
        if args.action == "status":
            from cryptorun_daemon.cli.cmd_status import run_status

            return await run_status(
                client, tier=args.tier, region=args.region, as_json=args.json, out=out
            )
        if args.action == "simulate":
            from cryptorun_daemon.cli.cmd_simulate import run_simulate

            return await run_simulate(
                client,
                src=args.src,
                dst=args.dst,
                tier=args.tier,
                window=args.window,
                strict=args.strict,
                as_json=args.json,
                out=out,
            )
        if args.action == "failover":
            from cryptorun_daemon.cli.cmd_failover import run_failover

            return await run_failover(
                client,
                tier=args.tier,
                promote=args.promote,
                demote=args.demote,
                dry_run=args.dry_run,
                as_json=args.json,
                out=out,
                expected_epoch=args.expected_epoch,
            )
    raise UsageError(f"unknown replication action {args.action!r}")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
