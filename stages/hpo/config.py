"""params.yaml, parsed and validated before any stage does work.

Every section is a strict pydantic model: unknown keys, missing keys, wrong types (a float
where an integer belongs) and impossible ranges are rejected with the key path that is wrong.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
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


class IntDimension(_Strict):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check_bounds(self) -> IntDimension:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("log scale takes no step (Optuna samples it continuously)")
        return self


class FloatDimension(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> FloatDimension:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("log scale takes no step (Optuna samples it continuously)")
        return self


class CategoricalDimension(_Strict):
    type: Literal["categorical"]
    choices: list[StrictStr | StrictInt | StrictFloat | StrictBool] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_choices(self) -> CategoricalDimension:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices repeat a value: {self.choices}")
        return self


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got {low}")


# One hyperparameter of the search space, by its `type`: int, float or categorical.
Dimension = Annotated[
    IntDimension | FloatDimension | CategoricalDimension, Field(discriminator="type")
]
DIMENSION = "dimension"  # a marker for _unknown_key's walk through the search space
DIMENSION_KINDS = {
    "int": IntDimension,
    "float": FloatDimension,
    "categorical": CategoricalDimension,
}
# Hyperparameter name -> its dimension, in params.yaml order (the order trials sample in).
SearchSpace = dict[str, Dimension]


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


class TuneParams(_Strict):
    n_trials: int = Field(ge=1)
    parallel_trials: int = Field(ge=1)
    lookahead: int = Field(ge=0)
    cv_folds: int = Field(ge=2)
    cv_seed: Seed
    sampler: SamplerParams
    pruner: PrunerParams
    search_space: SearchSpace = Field(min_length=1)


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
    loc = _without_dimension_tag(error["loc"])
    key_path = ".".join(str(part) for part in loc)
    message = error["msg"].removeprefix("Value error, ")
    kinds = ", ".join(DIMENSION_KINDS)
    if error["type"] == "extra_forbidden":
        message = _unknown_key(error["loc"])
    elif error["type"] == "union_tag_not_found":
        message = f"missing key type ({kinds})"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown type {error['ctx']['tag']!r} (one of {kinds})"
    elif error["type"] == "model_attributes_type" and loc[:2] == ("tune", "search_space"):
        message = (
            f"expected a mapping like {{type: float, low: 0.0, high: 1.0}}, got {error['input']!r}"
        )
    elif error["type"] == "missing":
        message = "missing key"
    elif error["type"] == "int_type" and isinstance(error.get("input"), float):
        message = f"must be an integer (no decimal point), got {error['input']!r}"
    elif "input" in error and not isinstance(error["input"], dict):
        message = f"{message}, got {error['input']!r}"
    # A check across sections (no key path) names its keys in its message.
    return f"{key_path}: {message}" if key_path else message


def _without_dimension_tag(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The key path as the user wrote it: pydantic adds a dimension's `type` after its name."""
    if loc[:2] == ("tune", "search_space") and len(loc) > 3 and loc[3] in DIMENSION_KINDS:
        return loc[:3] + loc[4:]
    return loc


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    """'unknown key', with the closest known key of that section when there is one."""
    section: Any = Params
    for part in loc[:-1]:
        if get_origin(section) is dict:  # the search space: any name is a hyperparameter
            section = DIMENSION
        elif section is DIMENSION:  # pydantic puts the dimension's `type` in the path
            section = DIMENSION_KINDS[str(part)]
        else:
            section = section.model_fields[str(part)].annotation
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key (typo?)"
