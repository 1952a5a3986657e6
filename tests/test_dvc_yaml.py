"""dvc.yaml must list, for every stage, each library module the stage's script imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _imported_library_modules(script: Path) -> set[str]:
    """hpo modules the script imports, directly or through other hpo modules."""
    seen: set[str] = set()
    pending = [script]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hpo"):
                # `from hpo.trial import model` imports a module; `from hpo.x import f`, x
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                names = [n if _source(n).exists() else node.module for n in names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("hpo.")]
            for name in names:
                if name not in seen and _source(name).exists():
                    seen.add(name)
                    pending.append(_source(name))
    return seen


def _source(module: str) -> Path:
    """The module's file (a package's __init__ holds only its docstring and is not listed)."""
    return REPO / "stages" / (module.replace(".", "/") + ".py")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_its_imports(stage: str) -> None:
    spec = STAGES[stage]
    script = REPO / "stages" / f"{stage}.py"
    assert spec["cmd"] == f"python stages/{stage}.py"
    expected = {f"stages/{m.replace('.', '/')}.py" for m in _imported_library_modules(script)}
    declared = {d for d in spec["deps"] if d.startswith("stages/hpo/")}
    assert f"stages/{stage}.py" in spec["deps"]
    assert declared == expected, "dvc.yaml deps and the script's imports differ"


def test_every_stage_has_a_description() -> None:
    assert set(STAGES) == {"prepare", "tune", "train_best", "evaluate", "plot"}
    assert all(spec.get("desc") for spec in STAGES.values())
