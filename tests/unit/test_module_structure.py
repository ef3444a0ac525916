"""Import structure that keeps modules changeable: no cycles, no import-by-name indirection."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cryptorun_daemon"


def imported_modules(relative: str) -> set[str]:
    """Every module ``relative`` imports, at any level (functions and TYPE_CHECKING too)."""
    tree = ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_failover_api_does_not_import_the_component() -> None:
    """The API drives the component through a protocol: only component.py imports api.py,
    never the other way round (not even for type checking)."""
    assert "cryptorun_daemon.failover.component" not in imported_modules("failover/api.py")
    assert "cryptorun_daemon.failover.api" in imported_modules("failover/component.py")
    for helper in ("failover/peers.py", "failover/roles.py", "failover/auto.py"):
        imports = imported_modules(helper)
        assert "cryptorun_daemon.failover.api" not in imports, helper
        assert "cryptorun_daemon.failover.component" not in imports, helper


def test_hot_component_imports_the_kraken_connector_directly() -> None:
    """The Kraken connector and handler are ordinary imports, not looked up by name."""
    imports = imported_modules("hot/component.py")
    assert "importlib" not in imports
    assert "cryptorun_daemon.ingest.kraken.connector" in imports
    assert "cryptorun_daemon.ingest.kraken.handler" in imports
