"""The repository stands alone: no tracked file needs a path outside it.

A user's clone has nothing beside it, so a link into a sibling folder, a test
fixture read from a sibling folder, or a machine-specific absolute path works
on one developer's machine and nowhere else. The checker below reads every
tracked text file and reports each reference that leaves the repository.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Markdown links and images: [text](target) — the target up to whitespace or ')'.
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# The folders that sit beside the repository on a developer's machine (and on no
# user's): a relative path climbing into one, or Python joining one to a parent.
# Hostile inputs in tests ("../../../etc") name no such folder and are left alone.
_SIBLINGS = r"(?:shared|main|wt)"
_PARENT_PATH = re.compile(rf"(?<![\w.])(?:\.\./)+{_SIBLINGS}\b")
_PARENT_JOIN = re.compile(rf"\.parent\s*/\s*[\"']{_SIBLINGS}[\"']")
# Absolute paths of the machines this project was built on.
_MACHINE_PATH = re.compile(rf"(?<![\w.])/work/{_SIBLINGS}\b")
_SKIP_SUFFIXES = {".parquet", ".png", ".jpg", ".gz", ".ico"}


def tracked_files(root: Path) -> list[Path]:
    """Files git tracks under ``root`` (every file when ``root`` is not a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"],
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in root.rglob("*") if p.is_file()]
    return [root / name for name in out.decode().split("\0") if name]


def outside_references(root: Path, files: list[Path]) -> Iterator[str]:
    """Yield ``file:line: reference`` for each reference that leaves ``root``.

    Markdown links must also land on a file that exists (a link into a
    folder that only exists beside the repository fails both ways).
    """
    root = root.resolve()
    for path in files:
        if path.suffix in _SKIP_SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(root)
        for lineno, line in enumerate(text.splitlines(), start=1):
            hits: list[str] = []
            if path.suffix == ".md":
                for target in _MD_LINK.findall(line):
                    if "://" in target or target.startswith(("#", "mailto:")):
                        continue
                    resolved = (path.parent / target.split("#", 1)[0]).resolve()
                    if not resolved.is_relative_to(root) or not resolved.exists():
                        hits.append(target)
            # Relative to the file or to the repository root (how prose uses it),
            # a climb into a sibling folder's name never lands on a real file here.
            hits.extend(_PARENT_PATH.findall(line))
            hits.extend(_PARENT_JOIN.findall(line))
            hits.extend(_MACHINE_PATH.findall(line))
            for hit in dict.fromkeys(hits):
                yield f"{rel}:{lineno}: {hit}"


def test_no_tracked_file_refers_outside_the_repository() -> None:
    """Every link, fixture path and doc reference resolves inside the clone."""
    files = [p for p in tracked_files(REPO_ROOT) if p.name != "CHANGELOG.md"]
    problems = list(outside_references(REPO_ROOT, files))
    assert problems == [], "references outside the repository:\n" + "\n".join(problems)


def test_checker_finds_each_kind_of_outside_reference(tmp_path: Path) -> None:
    """The checker is not vacuous: it flags a sibling link, a parent path and a machine path."""
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    # Built at run time so this file itself holds none of the strings it plants.
    sibling, machine = "../" + "shared", "/work" + "/shared"
    (repo / "docs" / "A.md").write_text(
        f"see [contract](../{sibling}/CONTRACT.md) and [ok](B.md) and [web](https://x.org/a)\n"
        "and [up](../../elsewhere.md)\n"
    )
    (repo / "docs" / "B.md").write_text("fine\n")
    (repo / "t.py").write_text(
        f'VECTOR = "{sibling}/data/x.json"\nOTHER = "{machine}/y"\n'
        f'JOINED = ROOT.parent / "{sibling[3:]}" / "x"\nHOSTILE = "../../../etc"\n'
    )
    found = list(outside_references(repo, tracked_files(repo)))
    assert any(f"docs/A.md:1: ../{sibling}/CONTRACT.md" in f for f in found), found
    assert any("docs/A.md:2: ../../elsewhere.md" in f for f in found), found
    assert any(f.startswith("t.py:1:") and sibling in f for f in found), found
    assert any(f.startswith("t.py:2:") and machine in f for f in found), found
    assert any(f.startswith("t.py:3:") for f in found), found
    assert not any("B.md" in f or "x.org" in f or "t.py:4" in f for f in found), found
