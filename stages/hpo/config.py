"""params.yaml, parsed and validated before any stage does work.

Every section is a strict pydantic model: unknown keys, missing keys, wrong types (a float
where an integer belongs) and impossible ranges are rejected with the key path that is wrong.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from hpo.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
# Rows of the shipped raw file (its checksum is verified): what the split and the folds divide.
RAW_ROWS = 20640
# Seeds go to NumPy, scikit-learn and Optuna, which take 0 <= seed < 2**32. The sampler of
# trial k is seeded with seed + k: its seed leaves room for 2**31 trials.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class IntRange(_Strict):
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _check_bounds(self) -> IntRange:
        _check_range(self.low, self.high, self.log)
        return self


class FloatRange(_Strict):
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check_bounds(self) -> FloatRange:
        _check_range(self.low, self.high, self.log)
        return self


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got {low}")


class PrepareParams(_Strict):
    test_size: float = Field(gt=0, lt=1)
    split_seed: Seed


class ModelParams(_Strict):
    seed: Seed
    # The folds are quantised once (QuantileDMatrix), which only `hist` can train on.
    tree_method: Literal["hist"]
    max_bin: int = Field(ge=2, le=2**31 - 1)


class SamplerParams(_Strict):
    name: Literal["tpe"]
    seed: int = Field(ge=0, le=2**31 - 1)
    n_startup_trials: int = Field(ge=0)
    n_ei_candidates: int = Field(ge=1)
    multivariate: bool
    constant_liar: bool


class PrunerParams(_Strict):
    name: Literal["median", "none"]
    n_startup_trials: int = Field(ge=0)
    n_warmup_steps: int = Field(ge=0)
    interval_steps: int = Field(ge=1)


class SearchSpace(_Strict):
    n_estimators: IntRange
    max_depth: IntRange
    learning_rate: FloatRange
    subsample: FloatRange
    colsample_bytree: FloatRange
    min_child_weight: FloatRange
    gamma: FloatRange

    @model_validator(mode="after")
    def _check_xgboost_domains(self) -> SearchSpace:
        if self.n_estimators.low < 1:
            raise ValueError("n_estimators.low must be at least 1")
        for name in ("max_depth", "min_child_weight", "gamma"):
            if getattr(self, name).low < 0:
                raise ValueError(f"{name}.low must be at least 0, got {getattr(self, name).low}")
        for name in ("subsample", "colsample_bytree"):
            bounds: FloatRange = getattr(self, name)
            if bounds.low <= 0 or bounds.high > 1:
                raise ValueError(f"{name} must lie in (0, 1], got [{bounds.low}, {bounds.high}]")
        return self


class TuneParams(_Strict):
    n_trials: int = Field(ge=1)
    parallel_trials: int = Field(ge=1)
    lookahead: int = Field(ge=0)
    cv_folds: int = Field(ge=2)
    cv_seed: Seed
    sampler: SamplerParams
    pruner: PrunerParams
    search_space: SearchSpace


class PlotParams(_Strict):
    importance_evaluator: Literal["fanova", "ped_anova", "mean_decrease_impurity"]
    importance_seed: Seed


class Params(_Strict):
    prepare: PrepareParams
    model: ModelParams
    tune: TuneParams
    plot: PlotParams

    @model_validator(mode="after")
    def _check_split_leaves_rows_for_the_folds(self) -> Params:
        test_rows = math.ceil(RAW_ROWS * self.prepare.test_size)  # as scikit-learn rounds
        train_rows = RAW_ROWS - test_rows
        if train_rows < self.tune.cv_folds:
            raise ValueError(
                f"prepare.test_size {self.prepare.test_size} leaves {train_rows} training rows "
                f"for tune.cv_folds = {self.tune.cv_folds} folds"
            )
        return self


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file; raise PipelineError naming every bad key."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(
            f"{path.absolute()}: not found; stages run from the project root (the folder of "
            "dvc.yaml and params.yaml), e.g. `dvc repro` or `python stages/tune.py` there"
        ) from None
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({_one_line(str(exc))})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{path}: {_describe(error)}" for error in exc.errors()]
        raise PipelineError("\n".join(problems)) from None


def _describe(error: ErrorDetails) -> str:
    """One validation error as 'key.path: problem, got value'."""
    key_path = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = _unknown_key(error["loc"])
    elif error["type"] == "missing":
        message = "missing key"
    elif error["type"] == "int_type" and isinstance(error.get("input"), float):
        message = f"must be an integer (no decimal point), got {error['input']!r}"
    elif "input" in error and not isinstance(error["input"], dict):
        message = f"{message}, got {error['input']!r}"
    # A check across sections (no key path) names its keys in its message.
    return f"{key_path}: {message}" if key_path else message


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    """'unknown key', with the closest known key of that section when there is one."""
    section: type[BaseModel] = Params
    for part in loc[:-1]:
        section = section.model_fields[str(part)].annotation
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key (typo?)"
