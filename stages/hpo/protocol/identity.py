"""The code identity of a trial: what, besides params and data, decides its result. It is part
of the study's name (an edit to the trial code or a library upgrade starts a new study), and a
Dask worker refuses a trial whose driver has another identity."""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

# The code that decides what a trial is. Storage, tracking, executors, the params schema and the
# stage scripts are left out: editing them must not start a new study.
TRIAL_CODE = (
    "hpo.models",
    "hpo.tasks",
    "hpo.search.trial",
    "hpo.search.evaluation",
    "hpo.search.space",
    "hpo.protocol.view",
    "hpo.protocol.runner",
)
# Libraries whose version can change a trial, besides the family's own: the sampler and
# pruner, the folds (scikit-learn's KFold on NumPy's generator), the data frames.
TRIAL_LIBRARIES = ("optuna", "sklearn", "numpy", "pandas")


@functools.cache
def this_process_identity(family: str) -> str:
    """sha256 of the trial code's sources and libraries' versions for `family` (once: it reads)."""
    digest = hashlib.sha256()
    family_module = importlib.import_module(f"hpo.models.{family}")
    for name in (*TRIAL_CODE, family_module.__name__):
        source = Path(importlib.import_module(name).__file__)
        digest.update(name.encode() + b"\0" + source.read_bytes())
    for name in (*TRIAL_LIBRARIES, *family_module.LIBRARIES):
        digest.update(f"{name}=={importlib.import_module(name).__version__}\0".encode())
    return digest.hexdigest()
