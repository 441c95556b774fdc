"""The dependency direction of CONVENTIONS.md, checked by parsing every import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {"pricing", "ledger", "api", "reports"}
#: pricing <- ledger <- reports <- api: what each package may import of the project.
MAY_IMPORT = {
    "pricing": {"pricing"},
    "ledger": {"pricing", "ledger"},
    "reports": {"pricing", "ledger", "reports"},
    "api": PROJECT,
}
#: Third-party packages only one package may import.
ONLY_UNDER = {
    "fastapi": "api",
    "starlette": "api",
    "uvicorn": "api",
    "typer": "api",
    "pandas": "reports",
}
#: pricing is pure: no database, no web framework.
PRICING_FORBIDS = {"sqlalchemy", "sqlmodel", "psycopg", "alembic", "httpx", "requests"}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


SOURCES = sorted(p for pkg in PROJECT for p in (ROOT / pkg).rglob("*.py"))


def test_every_package_has_sources() -> None:
    assert {p.relative_to(ROOT).parts[0] for p in SOURCES} == PROJECT


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_dependency_direction(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    found = imports(path)
    assert found & PROJECT <= MAY_IMPORT[package], f"{path} imports {found & PROJECT}"
    for module, owner in ONLY_UNDER.items():
        assert module not in found or package == owner, f"{path} imports {module}"
    if package == "pricing":
        assert not found & PRICING_FORBIDS, f"{path} imports {found & PRICING_FORBIDS}"
