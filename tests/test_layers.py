"""The import layers, read from the source (no import runs): a lower layer never imports an upper one. The
intervention layer sits beside the training core, below the drivers: it reads the agent's roles and
capabilities from what the config layer hands it (plastic.config.make_intervention), never from agents/."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DRIVERS = ("plastic.trainer", "plastic.jit_trainer", "plastic.cli", "plastic.config", "experiments")
# package (a folder of the repository) -> modules it must not import (a prefix forbids its submodules too)
FORBIDDEN = {
    "plastic/interventions": ("agents", *DRIVERS),
    "agents": ("plastic.interventions", *DRIVERS),
    "metrics": ("agents", "plastic.interventions", *DRIVERS),
}


def imports(path: Path):
    """(line, module) of every import in a file, top-level or nested."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def hits(module: str, forbidden) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no python files under {package}"
    bad = [f"{f.relative_to(ROOT)}:{line} imports {mod}" for f in files for line, mod in imports(f)
           if hits(mod, FORBIDDEN[package])]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_sees_an_upward_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\n\ndef g():\n    from agents.td3 import TD3\n    import plastic.trainer as t\n")
    found = [m for _, m in imports(f) if hits(m, FORBIDDEN["plastic/interventions"])]
    assert found == ["agents.td3", "plastic.trainer"]
