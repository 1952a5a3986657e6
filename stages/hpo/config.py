"""params.yaml, parsed and validated before any stage does work: strict pydantic models, and
one line per wrong key path (unknown, missing, repeated, wrong type, impossible range)."""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from hpo.errors import RUN_FROM_ROOT, PipelineError
from hpo.tasks import DEFAULT_METRIC, METRICS, Task

PARAMS_FILE = Path("params.yaml")
# The model families: the modules of hpo/models (hpo.models.load_family imports one).
FAMILIES = tuple(sorted(p.stem for p in (Path(__file__).parent / "models").glob("[!_]*.py")))
# Seeds go to NumPy, scikit-learn and Optuna, which take 0 <= seed < 2**32.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
Scalar = pydantic.StrictStr | pydantic.StrictInt | pydantic.StrictFloat | pydantic.StrictBool


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every fit of a study shares besides the tuned values (hpo.models)."""

    task: str  # regression, binary or multiclass (hpo.tasks)
    n_classes: int  # 0 for regression
    seed: int
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # untuned library params


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
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self


class FloatDimension(_Strict):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_bounds(self) -> FloatDimension:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class CategoricalDimension(_Strict):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_choices(self) -> CategoricalDimension:
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ValueError(f"choices repeat a value: {self.choices}")
        return self


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise ValueError(f"log scale needs low > 0, got {low}")
    if log and step is not None:
        raise ValueError("log scale takes no step (Optuna samples it continuously)")
    # Optuna would cut the range to the last step below high, with a warning.
    span = decimal.Decimal(str(high)) - decimal.Decimal(str(low))
    if step is not None and span % decimal.Decimal(str(step)):
        raise ValueError(f"step {step} does not divide the range {low}..{high}")


# One hyperparameter of the search space, by its `type`: int, float or categorical.
Dimension = Annotated[
    IntDimension | FloatDimension | CategoricalDimension, Field(discriminator="type")
]
DIMENSION_KINDS = dict(int=IntDimension, float=FloatDimension, categorical=CategoricalDimension)
# Hyperparameter name -> its dimension, in params.yaml order (the order trials sample in).
SearchSpace = dict[str, Dimension]


class DataParams(_Strict):
    path: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    target: str = Field(min_length=1)
    task: Task
    drop: list[str] = []

    @model_validator(mode="after")
    def _check_columns(self) -> DataParams:
        if self.target in self.drop:
            raise ValueError(f"drop: names the target {self.target!r}")
        if len(set(self.drop)) != len(self.drop):
            raise ValueError(f"drop: repeats a column: {self.drop}")
        return self


class PrepareParams(_Strict):
    test_size: float = Field(gt=0, lt=1)
    split_seed: Seed


class FamilyParams(_Strict):
    fixed: dict[str, Scalar] = {}  # the library's own params, not tuned
    search_space: SearchSpace = Field(min_length=1)


class ModelParams(_Strict):
    family: str
    seed: Seed
    families: dict[str, FamilyParams]

    @model_validator(mode="before")
    @classmethod
    def _check_family_names(cls, raw: Any) -> Any:
        for name in raw.get("families", {}) if isinstance(raw, dict) else ():
            if name not in FAMILIES:
                raise ValueError(f"families.{name}: unknown family (one of {_or(FAMILIES)})")
        return raw

    @model_validator(mode="after")
    def _check_family(self) -> ModelParams:
        if self.family not in FAMILIES:
            raise ValueError(f"family: unknown family {self.family!r} (one of {_or(FAMILIES)})")
        if self.family not in self.families:
            raise ValueError(f"families: no settings for the chosen family {self.family!r}")
        return self

    @property
    def chosen(self) -> FamilyParams:
        return self.families[self.family]


class TPESettings(_Strict):
    n_ei_candidates: int = Field(default=24, ge=1)
    multivariate: bool = True
    constant_liar: bool = True


class GPSettings(_Strict):
    deterministic_objective: bool = False


class CmaEsSettings(_Strict):
    sigma0: float | None = Field(default=None, gt=0)
    popsize: int | None = Field(default=None, ge=2)
    with_margin: bool = False
    consider_pruned_trials: bool = False


class QMCSettings(_Strict):
    qmc_type: Literal["sobol", "halton"] = "sobol"
    scramble: bool = True


class SamplerParams(_Strict):
    """The sampler `name` with its own settings; the sections of other samplers are ignored."""

    name: Literal["tpe", "gp", "cmaes", "qmc", "random"]
    seed: int = Field(ge=0, le=2**31 - 1)
    n_startup_trials: int = Field(default=10, ge=0)  # random trials first (tpe, gp, cmaes)
    tpe: TPESettings = TPESettings()
    gp: GPSettings = GPSettings()
    cmaes: CmaEsSettings = CmaEsSettings()
    qmc: QMCSettings = QMCSettings()

    @property
    def settings(self) -> dict[str, Any]:
        """The chosen sampler's own settings."""
        if self.name in ("qmc", "random"):
            return {} if self.name == "random" else self.qmc.model_dump()
        return {"n_startup_trials": self.n_startup_trials, **getattr(self, self.name).model_dump()}


class PercentileSettings(_Strict):
    percentile: float = Field(default=25.0, ge=0, le=100)


class HalvingSettings(_Strict):
    min_resource: int = Field(default=10, ge=1)  # boosting rounds before the first rung
    reduction_factor: int = Field(default=3, ge=2)
    min_early_stopping_rate: int = Field(default=0, ge=0)
    bootstrap_count: int = Field(default=0, ge=0)


class WilcoxonSettings(_Strict):
    p_threshold: float = Field(default=0.1, gt=0, lt=1)
    n_startup_steps: int = Field(default=2, ge=0)  # folds before a trial can be pruned


# Hyperband assigns trials to brackets by their number in the live study; a trial's pruner sees
# only its evidence (docs/design.md), so it cannot be made deterministic here.
HYPERBAND_REFUSAL = (
    "hyperband is not offered: its brackets follow the live study's trial numbers, which a "
    "trial's pruner does not see under the pipeline's protocol; successive_halving is one bracket"
)


class PrunerParams(_Strict):
    """The pruner `name` with its own settings; the sections of other pruners are ignored."""

    name: Literal["median", "percentile", "successive_halving", "wilcoxon", "none"]
    n_startup_trials: int = Field(default=10, ge=0)  # median, percentile: complete trials first
    n_warmup_steps: int = Field(default=50, ge=0)  # median, percentile: rounds first
    interval_steps: int = Field(ge=1)  # rounds between checkpoints (reported values)
    percentile: PercentileSettings = PercentileSettings()
    successive_halving: HalvingSettings = HalvingSettings()
    wilcoxon: WilcoxonSettings = WilcoxonSettings()

    @model_validator(mode="before")
    @classmethod
    def _refuse_hyperband(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("name") == "hyperband":
            raise ValueError(f"name: {HYPERBAND_REFUSAL}")
        return raw

    @property
    def settings(self) -> dict[str, Any]:
        """The chosen pruner's settings."""
        if self.name in ("median", "percentile"):
            shared = {"n_startup_trials": self.n_startup_trials}
            shared["n_warmup_steps"] = self.n_warmup_steps
            extra = self.percentile.model_dump() if self.name == "percentile" else {}
            return {**shared, **extra}
        chosen = getattr(self, self.name, None)
        return {} if chosen is None else chosen.model_dump()


class WarmStartParams(_Strict):
    study: str | None = Field(default=None, min_length=1)  # an earlier study in the study store
    n_best: int = Field(default=10, ge=1)  # its best complete trials, evaluated first


class TuneParams(_Strict):
    metric: str  # one of the task's metrics, or "default"
    n_trials: int = Field(ge=1)
    parallel_trials: int = Field(ge=1)
    lookahead: int = Field(ge=0)
    cv_folds: int = Field(ge=2)
    cv_seed: Seed
    sampler: SamplerParams
    pruner: PrunerParams
    # Configurations evaluated first, in order (a hyperparameter left out is sampled).
    enqueue: list[dict[str, Scalar]] = []
    warm_start: WarmStartParams = WarmStartParams()  # then an earlier study's best ones

    def identity(self) -> dict[str, Any]:
        """What shapes the trial sequence: the chosen sampler's and pruner's settings only."""
        sampler, pruner = self.sampler, self.pruner
        return {
            **self.model_dump(mode="json", exclude={"n_trials", "metric", "sampler", "pruner"}),
            "sampler": {"name": sampler.name, "seed": sampler.seed, **sampler.settings},
            "pruner": {"name": pruner.name, "interval_steps": pruner.interval_steps,
                       **pruner.settings},
        }  # fmt: skip


class PlotParams(_Strict):
    importance_evaluator: Literal["fanova", "ped_anova", "mean_decrease_impurity"]
    importance_seed: Seed


class Params(_Strict):
    data: DataParams
    prepare: PrepareParams
    model: ModelParams
    tune: TuneParams
    plot: PlotParams

    @model_validator(mode="after")
    def _check_metric_fits_the_task(self) -> Params:
        task, metric = self.data.task, self.tune.metric
        if metric != "default" and metric not in METRICS[task]:
            raise ValueError(
                f"tune.metric: {metric!r} does not fit data.task {task!r} "
                f"(one of default, {_or(METRICS[task])})"
            )
        space = self.model.chosen.search_space
        for index, config in enumerate(self.tune.enqueue):
            for name, value in config.items():
                where = f"tune.enqueue.{index}.{name}"
                if name not in space:
                    raise ValueError(f"{where}: not in the search space of {self.model.family}")
                if not _fits(space[name], value):
                    raise ValueError(f"{where}: {value!r} is outside {space[name].model_dump()}")
        return self

    def why_wilcoxon_cannot_prune(self) -> str | None:
        """Why the Wilcoxon pruner can never prune on these folds, if it cannot: it compares the
        folds before a trial's last, and a signed-rank test of n of them has p >= 1 / 2**n."""
        pruner, folds = self.tune.pruner, self.tune.cv_folds
        settings, compared = pruner.wilcoxon, folds - 1
        if pruner.name != "wilcoxon" or (
            compared >= max(2, settings.n_startup_steps) and 0.5**compared <= settings.p_threshold
        ):
            return None
        return (
            f"tune.pruner.wilcoxon can never prune with tune.cv_folds {folds} (it compares at "
            f"most {compared} folds; n_startup_steps {settings.n_startup_steps}, p_threshold "
            f"{settings.p_threshold}): every trial runs all its folds"
        )

    @property
    def metric(self) -> str:
        """The metric trials are scored by: tune.metric, or the task's default."""
        return DEFAULT_METRIC[self.data.task] if self.tune.metric == "default" else self.tune.metric

    def setup(self, n_classes: int) -> Setup:
        """What every fit of the chosen family shares, for a target of `n_classes` classes."""
        return Setup(self.data.task, n_classes, self.model.seed, dict(self.model.chosen.fixed))


def _fits(dimension: IntDimension | FloatDimension | CategoricalDimension, value: Any) -> bool:
    """Whether `value` is one the dimension can sample (in range, on its step, or a choice)."""
    if isinstance(dimension, CategoricalDimension):
        return any(type(value) is type(c) and value == c for c in dimension.choices)
    kinds = (int,) if isinstance(dimension, IntDimension) else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        return False
    step = dimension.step
    offset = decimal.Decimal(str(value)) - decimal.Decimal(str(dimension.low))
    on_step = step is None or offset % decimal.Decimal(str(step)) == 0
    return dimension.low <= value <= dimension.high and on_step


def _or(names: Any) -> str:
    return ", ".join(names)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole params file; raise PipelineError naming every bad key."""
    try:
        raw: Any = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except FileNotFoundError:
        raise PipelineError(f"{path.absolute()}: not found; {RUN_FROM_ROOT}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise PipelineError(f"{path}: not valid YAML{where} ({problem})") from None
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {_describe(e)}" for e in _one_per_key(exc.errors())]
        raise PipelineError("\n".join(lines)) from None


def _one_per_key(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Pydantic's error per scalar kind (str, int, float, bool) for one value, merged into one."""
    seen, merged = set(), []
    scalar_errors = ("string_type", "int_type", "float_type", "bool_type")
    for error in errors:
        loc = error["loc"]
        if error["type"] in scalar_errors and loc[-1] in ("str", "int", "float", "bool"):
            if loc[:-1] in seen:
                continue
            seen.add(loc[:-1])
            error = {**error, "loc": loc[:-1], "msg": "expected text, a number or true/false"}
        merged.append(error)
    return merged


def _describe(error: ErrorDetails) -> str:
    """One validation error as 'key.path: problem, got value'."""
    loc = _as_written(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    kinds = _or(DIMENSION_KINDS)
    if error["type"] == "extra_forbidden":
        message = _unknown_key(error["loc"])
    elif error["type"] == "union_tag_not_found":
        message = f"missing key type ({kinds})"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown type {error['ctx']['tag']!r} (one of {kinds})"
    elif error["type"] == "model_attributes_type" and "search_space" in loc[:-1]:
        message = (
            f"expected a mapping like {{type: float, low: 0.0, high: 1.0}}, got {error['input']!r}"
        )
    elif error["type"] == "missing":
        message = "missing key"
    elif error["type"] == "int_type" and isinstance(error.get("input"), float):
        message = f"must be an integer (no decimal point), got {error['input']!r}"
    elif "input" in error and not isinstance(error["input"], dict):
        message = f"{message}, got {error['input']!r}"
    # A check of a whole section starts its message with the key it is about ("family: ...").
    key_path = ".".join(str(part) for part in loc)
    if key_path and re.match(r"[\w.]+: ", message):
        return f"{key_path}.{message}"
    return f"{key_path}: {message}" if key_path else message


def _as_written(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The key path as written: without the dimension `type` and dict-key steps pydantic adds."""
    parts = list(loc)
    if "search_space" in parts:
        at = parts.index("search_space") + 2
        if len(parts) > at and parts[at] in DIMENSION_KINDS:
            del parts[at]
    return tuple(part for part in parts if part != "[key]")


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    """'unknown key', with the closest known key of that section when there is one."""
    section: Any = Params
    for part in loc[:-1]:
        if section == "dimension":  # pydantic names the dimension's `type` after its name
            section = DIMENSION_KINDS[str(part)]
        elif get_origin(section) is dict:  # a key of a mapping (a family, a hyperparameter)
            value_type = get_args(section)[1]
            section = "dimension" if value_type is Dimension else value_type
        else:
            section = section.model_fields[str(part)].annotation
    is_model = isinstance(section, type) and issubclass(section, BaseModel)
    known = list(section.model_fields) if is_model else []
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f"unknown key (did you mean {close[0]}?)" if close else "unknown key (typo?)"
