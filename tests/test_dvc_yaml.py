"""dvc.yaml and the committed dvc.lock: five stages, each depending on its script and the whole
library; every path written once, in dvc.yaml's vars; and a fresh clone's `dvc status` naming
no modified dependency (the committed lock describes the committed code)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, dvc, run

SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = SPEC["stages"]
PATHS = next(entry["paths"] for entry in SPEC["vars"] if "paths" in entry)


def test_five_stages_each_on_its_script_and_the_library() -> None:
    assert list(STAGES) == ["prepare", "tune", "train_best", "evaluate", "plot"]
    for name, stage in STAGES.items():
        assert stage["cmd"] == f"python stages/{name}.py"
        assert stage["deps"][:2] == [f"stages/{name}.py", "stages/hpo"]
        assert stage.get("desc")


def test_the_code_names_no_path_that_dvc_yaml_does_not_declare() -> None:
    """Every `paths.NAME` the code reads is one of dvc.yaml's `paths` variables."""
    used = set()
    for source in (REPO / "stages").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            is_path = isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "paths"
            if is_path and node.attr.isupper():
                used.add(node.attr.lower())
    assert used, "the stages read their paths through hpo.paths"
    assert used <= set(PATHS), f"not in dvc.yaml's vars: {used - set(PATHS)}"


def test_a_fresh_clone_has_no_modified_dependency(tmp_path: Path) -> None:
    """The committed dvc.lock describes the committed code, params and data: in a clone of
    HEAD, `dvc status` may find outputs missing (they live in DVC's cache), never a source
    file, a param or the data changed."""
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(REPO), str(clone))
    status = json.loads(dvc(clone, "status", "--json").stdout or "{}")
    stale = []
    for stage, changes in status.items():
        for change in (c for c in changes if isinstance(c, dict)):
            for kind in ("changed deps", "changed params"):
                stale += [(stage, dep, how) for dep, how in change.get(kind, {}).items()]
    # An output of an earlier stage, missing in a clone, is a "deleted" dependency: not stale.
    stale = [entry for entry in stale if entry[2] != "deleted"]
    assert not stale, f"dvc.lock is stale; run `dvc repro` and commit it: {stale}"


@pytest.mark.parametrize("name", sorted(PATHS))
def test_each_declared_path_is_used(name: str) -> None:
    """No path is declared and then forgotten: each is in a stage or read by the code."""
    in_stages = f"${{paths.{name}}}" in (REPO / "dvc.yaml").read_text().split("stages:", 1)[1]
    in_code = any(
        f"paths.{name.upper()}" in source.read_text() for source in (REPO / "stages").rglob("*.py")
    )
    assert in_stages or in_code
