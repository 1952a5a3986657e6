"""The code identity of a trial: what, besides params and data, decides its result.

One digest serves two checks. It is part of the study's name, so that after an edit to the
trial code or an upgrade of a library that shapes trials `dvc repro` runs new trials instead
of resuming a study made by other code; and a Dask worker refuses a trial whose driver has
another identity, so that trials from two setups never mix in one study.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

# The code that decides what a trial is: the params schema, the model and its CV, the
# evaluation, the search, and the protocol that fixes each trial's history. Storage, tracking,
# executors and the stage scripts are left out: editing them must not start a new study.
TRIAL_CODE = (
    "hpo.config",
    "hpo.trial.model",
    "hpo.trial.evaluation",
    "hpo.trial.space",
    "hpo.protocol.view",
    "hpo.protocol.runner",
)
# Libraries whose version can change a trial: the model, the sampler and pruner, the folds
# (scikit-learn's KFold on NumPy's generator), the data frames.
TRIAL_LIBRARIES = ("xgboost", "optuna", "sklearn", "numpy", "pandas")


def code_identity(
    modules: tuple[str, ...] = TRIAL_CODE, libraries: tuple[str, ...] = TRIAL_LIBRARIES
) -> str:
    """sha256 over the source of `modules` and the versions of the `libraries` imported."""
    digest = hashlib.sha256()
    for name in modules:
        source = Path(importlib.import_module(name).__file__)
        digest.update(name.encode() + b"\0" + source.read_bytes())
    for name in libraries:
        digest.update(f"{name}=={importlib.import_module(name).__version__}\0".encode())
    return digest.hexdigest()


@functools.cache
def this_process_identity() -> str:
    """The identity of the code this process runs (computed once: it reads files)."""
    return code_identity()
