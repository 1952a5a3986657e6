"""Where the stages read and write, declared once in dvc.yaml's `paths` variables: `paths.TRAIN`
is its `paths.train`, relative to the project root, where every stage runs."""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from hpo.errors import RUN_FROM_ROOT, PipelineError

DVC_YAML = Path("dvc.yaml")


@functools.cache
def _declared(project: Path) -> dict[str, str]:
    try:
        entries = yaml.safe_load((project / DVC_YAML).read_text())["vars"]
    except FileNotFoundError:
        raise PipelineError(f"{project / DVC_YAML}: not found; {RUN_FROM_ROOT}") from None
    return next(entry["paths"] for entry in entries if "paths" in entry)


def __getattr__(name: str) -> Path:
    declared = _declared(Path.cwd())
    if name.lower() not in declared:
        raise AttributeError(f"dvc.yaml declares no path {name.lower()!r}")
    return Path(declared[name.lower()])
