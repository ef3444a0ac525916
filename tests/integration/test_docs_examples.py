"""Docs that stay true: the shell examples in README.md, CONTRIBUTING.md and docs/*.md
are checked.

Every fenced shell block (```sh, ```bash, ```shell, ```console, ```zsh) carries a
marker comment on the line right before its opening fence (the convention is
documented in docs/CONTRIBUTING_DOCS.md):

``<!-- runnable -->`` / ``<!-- runnable: exit=N -->``
    run with ``bash -euo pipefail`` against two live daemons started from the
    shipped ``config/eu-central.toml`` and ``config/us-east.toml``; the block
    must exit 0 (or N), and a block expected to succeed must not print the
    admin API's JSON error shape (``{"error": ...}``), so ``curl -s`` examples
    that get a 401 or 404 fail too.
``<!-- syntax-only -->`` / ``<!-- syntax-only: why -->``
    for what cannot run here (systemctl, journalctl, sudo, apt, placeholders):
    ``bash -n``, and every ``cryptorun ...`` command in it is parsed by
    ``build_parser()``, so a renamed flag or command still fails the test.

Before a runnable block runs, the documented addresses and host paths are
mapped onto the live set-up (``LOCAL_PATHS`` and the two ports), and the block
gets a fresh working directory that mirrors the repository layout:
``config/{eu-central,us-east}.toml``, ``config/secrets/`` (the scoped tokens
and the TLS certificates the daemons use) and ``data/`` (the daemons'
storage, shared). The primary (eu-central) holds six
sealed warm hours of 2025-09-01, replicated to us-east before any block runs.

The daemons are real subprocesses on 127.0.0.1 (``tests/harness/daemons.py``);
nothing is mocked and nothing is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from cryptorun_daemon.cli.main import build_parser
from cryptorun_daemon.security.certs import init_certs
from cryptorun_daemon.security.tls import client_context
from tests.harness.daemons import start_daemon_process, stop_process, wait_until_ready
from tests.harness.net import free_port
from tests.harness.testdata import seed_partitions
from tests.harness.tools import require_binary

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = (REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md")))
PLAYBOOK = REPO / "docs" / "DATA_MULTI_REGION.md"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console", "zsh"})
REGIONS = ("eu-central", "us-east")
# The admin addresses the shipped configs (and so the docs) use, per region.
DOCUMENTED_ADDRESSES = {"eu-central": "127.0.0.1:9100", "us-east": "127.0.0.1:9200"}
# Host paths from docs/OPERATIONS.md mapped onto the repository layout of the
# block's working directory (the secrets live in config/secrets/ in both).
LOCAL_PATHS = (
    ("/etc/cryptorun/", "config/"),
    ("/var/lib/cryptorun/", "data/"),
)
# Sealed warm hours on the primary, so validate/simulate examples have data.
SEED_START = datetime(2025, 9, 1, tzinfo=UTC)
SEED_HOURS = 6
BLOCK_TIMEOUT = 30.0  # seconds; a hung example fails instead of stalling the suite

MARKER = re.compile(r"^\s*<!--\s*(?P<kind>runnable|syntax-only)\s*(?::(?P<options>.*?))?\s*-->\s*$")
ANY_MARKER = re.compile(r"^\s*<!--\s*(runnable|syntax-only)\b")
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`]*)")
API_ERROR = re.compile(r'\{\s*"error"\s*:')


@dataclass(frozen=True)
class DocBlock:
    """One fenced code block of a Markdown file and the marker above it."""

    path: Path
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    lang: str
    code: str
    marker: str | None  # "runnable", "syntax-only" or None
    options: str

    @property
    def ident(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.lang.lower() in SHELL_LANGUAGES

    @property
    def expected_exit(self) -> int:
        """``exit=N`` from ``<!-- runnable: exit=N -->``; 0 when absent."""
        match = re.fullmatch(r"\s*(?:exit=(\d+))?\s*", self.options)
        if match is None:
            raise ValueError(
                f"{self.ident}: unknown runnable option {self.options!r} "
                "(only exit=N is understood)"
            )
        return int(match.group(1) or 0)


def extract_blocks(path: Path) -> list[DocBlock]:
    """Every fenced block of ``path``, with the marker on the line before its fence.

    Fences may be indented (inside list items); the indentation of the opening
    fence is removed from the block's lines.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[DocBlock] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        # Drop the fence's indentation, but never more than a line's own leading blanks.
        body = [
            line[min(indent, len(line) - len(line.lstrip())) :] for line in lines[index + 1 : end]
        ]
        marker = MARKER.match(lines[index - 1]) if index > 0 else None
        blocks.append(
            DocBlock(
                path=path,
                line=index + 1,
                end=end + 1,
                lang=opening["lang"],
                code="\n".join(body) + "\n",
                marker=marker["kind"] if marker else None,
                options=(marker["options"] or "") if marker else "",
            )
        )
        index = end + 1
    return blocks


def fenced_lines(path: Path) -> set[int]:
    """1-based numbers of the lines inside or on the fences of ``path``'s code blocks."""
    return {n for b in extract_blocks(path) for n in range(b.line, b.end + 1)}


ALL_BLOCKS = [block for doc in DOC_FILES for block in extract_blocks(doc)]
RUNNABLE = [block for block in ALL_BLOCKS if block.marker == "runnable"]
SYNTAX_ONLY = [block for block in ALL_BLOCKS if block.marker == "syntax-only"]


def _ids(blocks: list[DocBlock]) -> list[str]:
    return [block.ident for block in blocks]


# --- the live two-region set-up ----------------------------------------------------------


@dataclass(frozen=True)
class LiveRegions:
    """Two running daemons and the directory their configs, token and data live in."""

    root: Path
    ports: dict[str, int]

    def localise(self, code: str) -> str:
        """The block with documented addresses and host paths mapped to this set-up."""
        for region, address in DOCUMENTED_ADDRESSES.items():
            code = code.replace(address, f"127.0.0.1:{self.ports[region]}")
        for documented, local in LOCAL_PATHS:
            code = code.replace(documented, local)
        return code

    def workdir(self, parent: Path) -> Path:
        """A fresh directory mirroring the repo layout: its own config copy, shared data.

        Each block gets its own ``config/`` so an example that (re)creates the
        token file or edits a config cannot disturb the daemons or later blocks.
        """
        work = parent / "work"
        (work / "config").mkdir(parents=True)
        for region in REGIONS:
            shutil.copy2(self.root / "config" / f"{region}.toml", work / "config")
        shutil.copytree(self.root / "config" / "secrets", work / "config" / "secrets")
        (work / "data").symlink_to(self.root / "data", target_is_directory=True)
        return work


def _write_live_configs(root: Path, ports: dict[str, int]) -> list[Path]:
    """Copies of the shipped configs with their admin and peer ports moved to ``ports``."""
    config_dir = root / "config"
    (config_dir / "secrets").mkdir(parents=True)
    init_certs(config_dir / "secrets" / "tls", REGIONS)
    for scope in ("operator", "peer", "read"):
        token = config_dir / "secrets" / f"{scope}.token"
        token.write_text(secrets.token_urlsafe(32) + "\n")
        token.chmod(0o600)
    paths = []
    for region in REGIONS:
        text = (REPO / "config" / f"{region}.toml").read_text()
        for name, address in DOCUMENTED_ADDRESSES.items():
            assert address in text, f"config/{region}.toml no longer mentions {address}"
            text = text.replace(address, f"127.0.0.1:{ports[name]}")
        path = config_dir / f"{region}.toml"
        path.write_text(text)
        paths.append(path)
    return paths


async def _replicate_once(base_url: str, token: str, ca: Path) -> None:
    """Run one warm pass on the replica now, so the seeded hours are on both sides."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(ca))) as http,
        http.post(
            f"{base_url}/v1/replication/sync", json={"tier": "warm"}, headers=headers
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 200, body
        assert all(report["ok"] for report in body["passes"]), body


@pytest.fixture(scope="module")
def live_regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRegions]:
    """eu-central and us-east as real daemon processes from the shipped configs.

    Resource handling: both processes are stopped (SIGTERM, then SIGKILL) when
    the module's tests are done, whatever happened.
    """
    require_binary("curl", "curl")
    root = tmp_path_factory.mktemp("docs-live")
    ports = {region: free_port() for region in REGIONS}
    configs = _write_live_configs(root, ports)
    ca = root / "config" / "secrets" / "tls" / "ca.pem"
    seed_partitions(root / "data" / "eu-central", start=SEED_START, count=SEED_HOURS, rows=500)
    processes = [start_daemon_process(path) for path in configs]
    try:
        for path, process in zip(configs, processes, strict=True):
            region = path.stem
            asyncio.run(
                wait_until_ready(
                    f"https://127.0.0.1:{ports[region]}",
                    proc=process,
                    log_path=path.with_suffix(".log"),
                    ssl_context=client_context(ca),
                )
            )
        token = (root / "config" / "secrets" / "operator.token").read_text().strip()
        asyncio.run(_replicate_once(f"https://127.0.0.1:{ports['us-east']}", token, ca))
        yield LiveRegions(root, ports)
    finally:
        for process in processes:
            stop_process(process)


def _shell_env() -> dict[str, str]:
    """The environment an operator has: ``cryptorun`` on PATH, no CRYPTORUN_* overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTORUN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# --- checking commands without running them ------------------------------------------------

# Words that start a shell command (after them comes a command, not an argument).
_COMMAND_SEPARATORS = frozenset({"|", "||", "&", "&&", ";", ";;", "(", ")", "$(", "`", "\n"})
_REDIRECTS = re.compile(r"^\d*[<>]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Prefixes that run the command after them: their own options are skipped.
_WRAPPERS = {
    "sudo": {"-u", "-g", "-C", "-D", "-h", "-p", "-U"},
    "env": set(),
    "exec": set(),
    "time": set(),
    "nohup": set(),
    "command": set(),
    "watch": {"-n"},
}
# Shell keywords after which a command follows.
_KEYWORDS = frozenset({"if", "then", "else", "elif", "do", "while", "until", "!", "{"})


def _logical_lines(code: str) -> list[str]:
    """Lines with backslash continuations joined (comments are dropped by shlex later)."""
    return code.replace("\\\n", " ").splitlines()


def cryptorun_commands(code: str) -> list[list[str]]:
    """Argument lists of every ``cryptorun`` (or ``python -m cryptorun_daemon``) command.

    Only words in command position count, so ``sudo -u cryptorun …`` or
    ``chown cryptorun:cryptorun …`` are not mistaken for the CLI.
    """
    found: list[list[str]] = []
    for raw in _logical_lines(code):
        line = re.sub(r"(?<=\s)\d+(?=[<>])", "", raw)  # 2>&1: the fd is not an argument
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            words = list(lexer)
        except ValueError:  # unbalanced quotes: bash -n reports it
            continue
        at_command = True
        index = 0
        while index < len(words):
            word = words[index]
            if word in _COMMAND_SEPARATORS or set(word) <= set(";&|()"):
                at_command = True
                index += 1
                continue
            if not at_command:
                index += 1
                continue
            if _ASSIGNMENT.match(word) or word in _KEYWORDS:
                index += 1
                continue
            if word in _WRAPPERS:
                index += 1
                while index < len(words) and words[index].startswith("-"):
                    takes_value = words[index] in _WRAPPERS[word]
                    index += 2 if takes_value else 1
                continue
            at_command = False
            args: list[str] = []
            name = word.rsplit("/", 1)[-1]
            rest = words[index + 1 :]
            if name == "cryptorun":
                args = rest
            elif name.startswith("python") and rest[:2] == ["-m", "cryptorun_daemon"]:
                args = rest[2:]
            else:
                index += 1
                continue
            cut = next(
                (
                    i
                    for i, w in enumerate(args)
                    if w in _COMMAND_SEPARATORS or set(w) <= set(";&|()<>") or _REDIRECTS.match(w)
                ),
                len(args),
            )
            found.append(args[:cut])
            index += 1 + cut
    return found


def _parse_cli(args: list[str]) -> str | None:
    """None when ``build_parser()`` accepts ``args``, else argparse's complaint."""
    parser = build_parser()
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            reason = complaint.getvalue().strip().splitlines()[-1:] or ["rejected"]
            return f"cryptorun {shlex.join(args)}: {reason[0]}"
    return None


# --- the tests --------------------------------------------------------------------------------


def test_every_shell_block_in_the_docs_is_marked() -> None:
    """Every ```sh/```bash (and shell/console/zsh) block in README.md and docs/*.md has a
    runnable or syntax-only marker on the line before it, every marker sits right above
    a fence, and runnable options are understood — so no example goes unchecked."""
    unmarked = [b.ident for b in ALL_BLOCKS if b.is_shell and b.marker is None]
    assert not unmarked, (
        "shell blocks without <!-- runnable --> or <!-- syntax-only --> on the line "
        f"before the fence (see docs/CONTRIBUTING_DOCS.md): {unmarked}"
    )
    fence_lines = {(b.path, b.line) for b in ALL_BLOCKS}
    orphans = []
    for doc in DOC_FILES:
        inside = fenced_lines(doc)
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
            if number in inside or not ANY_MARKER.search(line):
                continue
            if (doc, number + 1) not in fence_lines:
                orphans.append(f"{doc.relative_to(REPO)}:{number}")
            elif not MARKER.match(line):
                orphans.append(f"{doc.relative_to(REPO)}:{number} (malformed marker)")
    assert not orphans, f"markers not directly above a code fence: {orphans}"
    assert RUNNABLE, "no runnable examples found; the marker parser is broken"
    # The exit code each runnable block is held to is the one its marker line names
    # (read here from the raw line, apart from the parser), and 0 when it names none.
    bad_options, wrong_exit = [], []
    for block in RUNNABLE:
        raw = block.path.read_text(encoding="utf-8").splitlines()[block.line - 2]
        named = re.search(r"exit=(\d+)", raw)
        try:
            expected = block.expected_exit
        except ValueError as exc:
            bad_options.append(str(exc))
            continue
        if expected != (int(named[1]) if named else 0):
            wrong_exit.append(f"{block.ident}: marker {raw.strip()!r}, parsed exit={expected}")
    assert not bad_options, bad_options
    assert not wrong_exit, wrong_exit


@pytest.mark.parametrize(
    ("options", "expected"),
    [("", 0), (" ", 0), ("exit=1", 1), (" exit=22 ", 22)],
)
def test_a_runnable_marker_names_the_exit_code_its_block_must_return(
    options: str, expected: int
) -> None:
    """``<!-- runnable -->`` holds a block to exit 0 and ``<!-- runnable: exit=N -->`` to N."""
    block = DocBlock(REPO / "README.md", 2, 4, "sh", "true\n", "runnable", options)
    assert block.expected_exit == expected


@pytest.mark.parametrize("options", ["exit=", "exit=-1", "exit=1 slow", "timeout=5"])
def test_an_unknown_runnable_option_is_an_error_naming_the_block(options: str) -> None:
    """A marker option other than ``exit=N`` fails with the block's file and line, so a typo
    cannot silently turn into "expect exit 0"."""
    block = DocBlock(REPO / "README.md", 2, 4, "sh", "true\n", "runnable", options)
    with pytest.raises(ValueError, match=r"README\.md:2: unknown runnable option"):
        _ = block.expected_exit


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading's text (before duplicate suffixes)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def playbook_anchors() -> set[str]:
    """Anchors of every heading in docs/DATA_MULTI_REGION.md, with GitHub's -1, -2 … suffixes."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    inside = fenced_lines(PLAYBOOK)
    for number, line in enumerate(PLAYBOOK.read_text(encoding="utf-8").splitlines(), start=1):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if number in inside or heading is None:
            continue
        slug = github_anchor(heading.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_every_alert_runbook_anchor_is_a_playbook_heading() -> None:
    """Each ``runbook_url`` in deploy/prometheus/alerts.yml points at the playbook and
    its ``#anchor`` is the GitHub anchor of a heading in docs/DATA_MULTI_REGION.md."""
    import yaml  # PyYAML: in the [test] extras

    rules = [
        rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    anchors = playbook_anchors()
    missing = set()
    for rule in rules:
        url, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert url.endswith("/docs/DATA_MULTI_REGION.md"), (rule["alert"], url)
        if anchor not in anchors:
            missing.add(anchor)
    assert rules
    assert not missing, f"runbook anchors without a heading in {PLAYBOOK.name}: {sorted(missing)}"


def test_cli_parser_finds_cryptorun_commands_in_command_position() -> None:
    """The extractor picks up ``cryptorun`` after sudo, pipes, ``&&`` and continuations,
    and ignores the service user's name in ``sudo -u cryptorun`` or ``chown``."""
    code = (
        "sudo -u cryptorun /opt/cryptorun/venv/bin/cryptorun daemon \\\n"
        "    --config /etc/cryptorun/eu-central.toml --check\n"
        "chown cryptorun:cryptorun /etc/cryptorun/admin.token  # cryptorun validate x\n"
        "X=1 cryptorun replication status --json | python3 -m json.tool && cryptorun --version\n"
        "python3 -m cryptorun_daemon validate a b --tier cold > out.txt\n"
    )
    assert cryptorun_commands(code) == [
        ["daemon", "--config", "/etc/cryptorun/eu-central.toml", "--check"],
        ["replication", "status", "--json"],
        ["--version"],
        ["validate", "a", "b", "--tier", "cold"],
    ]


@pytest.mark.parametrize("block", SYNTAX_ONLY, ids=_ids(SYNTAX_ONLY))
def test_syntax_only_example_parses(block: DocBlock) -> None:
    """A block marked syntax-only is valid bash (``bash -n``) and each ``cryptorun``
    command in it is accepted by the real CLI parser."""
    result = subprocess.run(
        ["bash", "-n"],
        input=block.code,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{block.ident}: bash -n failed:\n{result.stderr}"
    problems = [p for args in cryptorun_commands(block.code) if (p := _parse_cli(args))]
    assert not problems, f"{block.ident}: {problems}"


@pytest.mark.parametrize("block", RUNNABLE, ids=_ids(RUNNABLE))
def test_runnable_example_runs(block: DocBlock, live_regions: LiveRegions, tmp_path: Path) -> None:
    """A block marked runnable, run with ``bash -euo pipefail`` against the two live
    daemons (documented ports and host paths mapped), exits with its expected code;
    one expected to succeed prints no admin API error document."""
    code = live_regions.localise(block.code)
    work = live_regions.workdir(tmp_path)
    try:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            cwd=work,
            env=_shell_env(),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.ident}: still running after {BLOCK_TIMEOUT}s:\n{code}\n{exc}")
    report = (
        f"{block.ident} exited {result.returncode} (expected {block.expected_exit})\n"
        f"--- script ---\n{code}--- stdout ---\n{result.stdout}"
        f"--- stderr ---\n{result.stderr}"
    )
    assert result.returncode == block.expected_exit, report
    if block.expected_exit == 0:
        assert not API_ERROR.search(result.stdout), f"admin API error in the output\n{report}"
