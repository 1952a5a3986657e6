"""params.yaml validation: the shipped file loads; every malformed file stops a real stage
with one 'error: params.yaml: key.path: problem' line per problem, exit code 2 and no output
written. The schema is checked by every stage (here: prepare); what the chosen model family's
library makes of its fixed settings and search space is checked by tune before any trial."""

from __future__ import annotations

import copy
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, TINY_PARAMS, deep_update, run, tiered
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from sklearn.datasets import load_diabetes

from hpo.config import FAMILIES, load_params
from hpo.errors import PipelineError
from hpo.models import Setup, load_family
from hpo.search.space import distributions
from hpo.tasks import DEFAULT_METRIC, METRICS

PARAMS = REPO / "params.yaml"
SHIPPED_TABLE = REPO / "data" / "california_housing.csv.gz"
XGB, LGBM = "model.families.xgboost", "model.families.lightgbm"
SS = f"{XGB}.search_space"

Mutation = Callable[[dict[str, Any]], None]


def _parent(params: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    return node, last


def _set(dotted: str, value: object) -> Mutation:
    """Set params[a][b][c] = value for dotted 'a.b.c', a key the shipped file has."""

    def mutate(params: dict[str, Any]) -> None:
        node, last = _parent(params, dotted)
        assert last in node, f"{dotted} is not in params.yaml; the case would test nothing"
        node[last] = value

    return mutate


def _put(dotted: str, value: object) -> Mutation:
    """Set a key the shipped file may or may not have (an optional one)."""

    def mutate(params: dict[str, Any]) -> None:
        node, last = _parent(params, dotted)
        node[last] = value

    return mutate


def _delete(dotted: str) -> Mutation:
    def mutate(params: dict[str, Any]) -> None:
        node, last = _parent(params, dotted)
        del node[last]

    return mutate


def _add(dotted: str, value: object) -> Mutation:
    def mutate(params: dict[str, Any]) -> None:
        node, last = _parent(params, dotted)
        assert last not in node
        node[last] = value

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(params: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(params)

    return mutate


def _line_of(fragment: str) -> int:
    """The number of the line of params.yaml where `fragment` (written once there) begins."""
    text = PARAMS.read_text()
    assert text.count(fragment) == 1, f"{fragment!r} is not in params.yaml once"
    return text[: text.index(fragment)].count("\n") + 1


def _shipped_text(old: str, new: str) -> str:
    """params.yaml's text with `old` (written once there) replaced by `new`."""
    text = PARAMS.read_text()
    assert text.count(old) == 1, f"{old!r} is not in params.yaml once"
    return text.replace(old, new)


SPLIT_SEED = "  split_seed: 42\n"
MAX_DEPTH = "max_depth: {type: int, low: 3, high: 10}"
TASKS = "'regression', 'binary' or 'multiclass'"

# (mutation of the shipped params or params.yaml text, key path or None for a problem of the
# whole file, a substring of the problem description)
CASES = [
    pytest.param(_delete("tune"), "tune", "missing key", id="missing-section"),
    pytest.param(_delete("tune.cv_folds"), "tune.cv_folds", "missing key", id="missing-key"),
    pytest.param(_delete("data.target"), "data.target", "missing key", id="no-target"),
    pytest.param(
        _add("tune.n_trails", 100),
        "tune.n_trails",
        "unknown key (did you mean n_trials?)",
        id="typo-key",
    ),
    pytest.param(
        _add(f"{SS}.max_depth.hgh", 2),
        f"{SS}.max_depth.hgh",
        "unknown key (did you mean high?)",
        id="typo-in-a-dimension",
    ),
    pytest.param(
        _add(f"{XGB}.fixd", {"max_bin": 256}),
        f"{XGB}.fixd",
        "unknown key (did you mean fixed?)",
        id="typo-in-a-family",
    ),
    pytest.param(_add("tune.zzz", 1), "tune.zzz", "unknown key (typo?)", id="unknown-key"),
    pytest.param(_set("tune.n_trials", "many"), "tune.n_trials", "integer", id="str-for-int"),
    pytest.param(_set("tune.n_trials", True), "tune.n_trials", "integer", id="bool-for-int"),
    pytest.param(_set(f"{SS}.max_depth.low", 11), f"{SS}.max_depth", "greater than", id="low>high"),
    pytest.param(_set(f"{SS}.learning_rate.low", 0), f"{SS}.learning_rate", "log", id="log-low-0"),
    pytest.param(
        _set(f"{SS}.max_depth.low", 3.5), f"{SS}.max_depth.low", "must be an integer", id="int-3.5"
    ),
    pytest.param(
        _set(f"{SS}.n_estimators.high", 300.0),
        f"{SS}.n_estimators.high",
        "must be an integer (no decimal point), got 300.0",
        id="int-300.0",
    ),
    pytest.param(_set(f"{SS}.gamma.low", float("nan")), f"{SS}.gamma.low", "finite", id="nan"),
    pytest.param(
        _set(f"{SS}.gamma.type", "flot"), f"{SS}.gamma", "unknown type 'flot'", id="typo-kind"
    ),
    pytest.param(_delete(f"{SS}.gamma.type"), f"{SS}.gamma", "missing key type", id="no-kind"),
    pytest.param(_set(f"{SS}.gamma", 0.1), f"{SS}.gamma", "expected a mapping", id="bare-value"),
    pytest.param(
        _add(f"{SS}.grow_policy", {"type": "categorical", "choices": []}),
        f"{SS}.grow_policy.choices",
        "at least 1 item",
        id="no-choices",
    ),
    pytest.param(
        _add(f"{SS}.grow_policy", {"type": "categorical", "choices": ["lossguide", "lossguide"]}),
        f"{SS}.grow_policy",
        "choices repeat a value",
        id="repeated-choice",
    ),
    pytest.param(
        _add(f"{SS}.learning_rate.step", 0.01), f"{SS}.learning_rate", "no step", id="log-step"
    ),
    pytest.param(
        _add(f"{SS}.max_depth.step", 2),
        f"{SS}.max_depth",
        "step 2 does not divide the range 3..10",
        id="int-step-not-dividing",
    ),
    pytest.param(
        _add(f"{SS}.gamma.step", 0.3),
        f"{SS}.gamma",
        "step 0.3 does not divide the range 0.0..0.5",
        id="float-step-not-dividing",
    ),
    pytest.param(_set(SS, {}), SS, "at least 1 item", id="empty-space"),
    pytest.param(_delete(SS), SS, "missing key", id="no-space"),
    # A value none of the accepted types (text, integer, number, true/false) takes: one line.
    pytest.param(
        _set(f"{XGB}.fixed.max_bin", None), f"{XGB}.fixed.max_bin", "None", id="null-fixed"
    ),
    pytest.param(
        _add(f"{SS}.grow_policy", {"type": "categorical", "choices": ["depthwise", [1]]}),
        f"{SS}.grow_policy.choices.1",
        "[1]",
        id="list-choice",
    ),
    pytest.param(
        _set("model.family", "catboost"),
        "model.family",
        f"unknown family 'catboost' (one of {', '.join(FAMILIES)})",
        id="unknown-family",
    ),
    pytest.param(
        _add(
            "model.families.catboost",
            {"search_space": {"depth": {"type": "int", "low": 1, "high": 2}}},
        ),
        "model.families.catboost",
        f"unknown family (one of {', '.join(FAMILIES)})",
        id="settings-of-an-unknown-family",
    ),
    pytest.param(
        _both(_set("model.family", "lightgbm"), _delete(LGBM)),
        "model.families",
        "no settings for the chosen family 'lightgbm'",
        id="family-without-settings",
    ),
    pytest.param(
        _set("tune.metric", "auc"),
        "tune.metric",
        "'auc' does not fit data.task 'regression' (one of default, mse, rmse, mae)",
        id="metric-of-another-task",
    ),
    pytest.param(
        _both(_set("data.task", "binary"), _set("tune.metric", "rmse")),
        "tune.metric",
        "'rmse' does not fit data.task 'binary' (one of default, logloss, auc, error)",
        id="regression-metric-for-binary",
    ),
    pytest.param(
        _both(_set("data.task", "multiclass"), _set("tune.metric", "logloss")),
        "tune.metric",
        "'logloss' does not fit data.task 'multiclass' (one of default, mlogloss, merror)",
        id="binary-metric-for-multiclass",
    ),
    pytest.param(
        _set("tune.metric", "rmsle"), "tune.metric", "'rmsle' does not fit", id="unknown-metric"
    ),
    pytest.param(
        _set("data.task", "regresion"),
        "data.task",
        f"Input should be {TASKS}, got 'regresion'",
        id="task-typo",
    ),
    pytest.param(_put("data.sha256", "7c5eda"), "data.sha256", "pattern", id="sha256-short"),
    pytest.param(_put("data.sha256", "g" * 64), "data.sha256", "pattern", id="sha256-not-hex"),
    pytest.param(
        _set("data.drop", ["MedHouseVal"]),
        "data.drop",
        "names the target 'MedHouseVal'",
        id="drop-the-target",
    ),
    pytest.param(
        _set("data.drop", ["Population", "Population"]),
        "data.drop",
        "repeats a column",
        id="drop-repeated",
    ),
    pytest.param(_set("data.path", ""), "data.path", "at least 1 character", id="empty-path"),
    pytest.param(_set("tune.n_trials", 0), "tune.n_trials", "greater than or equal to 1", id="n0"),
    pytest.param(
        _set("tune.parallel_trials", 0),
        "tune.parallel_trials",
        "greater than or equal to 1",
        id="parallel-0",
    ),
    pytest.param(
        _set("tune.lookahead", -1), "tune.lookahead", "greater than or equal to 0", id="lookahead"
    ),
    pytest.param(_set("tune.cv_folds", 1), "tune.cv_folds", "greater than or equal to 2", id="cv1"),
    pytest.param(_set("prepare.test_size", 0), "prepare.test_size", "greater than 0", id="ts-0"),
    pytest.param(_set("prepare.test_size", 1.5), "prepare.test_size", "less than 1", id="ts-1.5"),
    pytest.param(_set("tune.pruner.name", "asha"), "tune.pruner.name", "median", id="pruner"),
    pytest.param(
        _set("tune.pruner.name", "hyperband"), "tune.pruner.name", "trial numbers", id="hyperband"
    ),
    pytest.param(_set("tune.sampler.name", "nsga2"), "tune.sampler.name", "tpe", id="sampler"),
    pytest.param(
        _put("tune.sampler.cmaes", {"popsize": 1}),
        "tune.sampler.cmaes.popsize",
        "greater",
        id="cmaes-popsize",
    ),
    pytest.param(
        _put("tune.sampler.gp", {"n_ei_candidates": 5}),
        "tune.sampler.gp.n_ei_candidates",
        "unknown key",
        id="tpe-setting-under-gp",
    ),
    pytest.param(
        _put("tune.pruner.percentile", {"percentile": 120}),
        "tune.pruner.percentile.percentile",
        "less than or equal to 100",
        id="percentile-120",
    ),
    pytest.param(
        _put("tune.pruner.wilcoxon", {"p_threshold": 0}),
        "tune.pruner.wilcoxon.p_threshold",
        "greater than 0",
        id="wilcoxon-p",
    ),
    pytest.param(
        _set("tune.enqueue", [{"max_depth": 30}]),
        "tune.enqueue.0.max_depth",
        "is outside",
        id="enqueue-outside",
    ),
    pytest.param(
        _set("tune.enqueue", [{"max_dept": 4}]),
        "tune.enqueue.0.max_dept",
        "not in the search",
        id="enqueue-unknown",
    ),
    pytest.param(
        _set("tune.enqueue", [{"max_depth": 4.5}]),
        "tune.enqueue.0.max_depth",
        "is outside",
        id="enqueue-float-for-int",
    ),
    pytest.param(
        _set("tune.warm_start", {"study": "", "n_best": 3}),
        "tune.warm_start.study",
        "at least 1 character",
        id="warm-start-empty",
    ),
    pytest.param(
        _set("plot.importance_evaluator", "shap"),
        "plot.importance_evaluator",
        "fanova",
        id="evaluator",
    ),
    pytest.param(_set("model.seed", -1), "model.seed", "greater than", id="model-seed"),
    pytest.param(_set("prepare.split_seed", 2**32), "prepare.split_seed", "less", id="split-seed"),
    pytest.param(_set("tune.cv_seed", -1), "tune.cv_seed", "greater than", id="cv-seed"),
    pytest.param(_set("tune.sampler.seed", 2**31), "tune.sampler.seed", "less", id="tpe-seed"),
    pytest.param(
        _set("tune.sampler.tpe.n_ei_candidates", 0),
        "tune.sampler.tpe.n_ei_candidates",
        "greater than or equal to 1",
        id="ei-candidates-0",
    ),
    pytest.param(
        _set("plot.importance_seed", -5), "plot.importance_seed", "greater", id="imp-seed"
    ),
    pytest.param(
        _shipped_text(SPLIT_SEED, SPLIT_SEED + "  split_seed: 7\n"),
        None,
        f"not valid YAML at line {_line_of(SPLIT_SEED) + 1} (key 'split_seed' given twice)",
        id="duplicate-key",
    ),
    pytest.param(
        _shipped_text(MAX_DEPTH, MAX_DEPTH.replace("}", ", low: 4}")),
        None,
        f"not valid YAML at line {_line_of(MAX_DEPTH)} (key 'low' given twice)",
        id="duplicate-key-in-a-dimension",
    ),
    pytest.param(
        PARAMS.read_text() + "plot: {importance_evaluator: fanova, importance_seed: 1}\n",
        None,
        f"not valid YAML at line {len(PARAMS.read_text().splitlines()) + 1} (key 'plot' given",
        id="duplicate-section",
    ),
    pytest.param("- prepare\n- tune\n", None, "expected a mapping of sections", id="yaml-list"),
    pytest.param("tune: [1, 2\nplot: {}\n", None, "not valid YAML", id="bad-yaml"),
    pytest.param("", None, "expected a mapping of sections", id="empty-file"),
]
CASES = tiered(
    CASES,
    {"missing-key", "typo-key", "typo-in-a-dimension", "int-300.0", "typo-kind", "null-fixed",
     "unknown-family", "metric-of-another-task", "duplicate-key", "float-step-not-dividing"},
)  # fmt: skip


def _params_text(case: str | Mutation) -> str:
    if isinstance(case, str):
        return case
    params = copy.deepcopy(yaml.safe_load(PARAMS.read_text()))
    case(params)
    return yaml.safe_dump(params, sort_keys=False)


def _shipped_table_in(project: Path) -> None:
    """The shipped table in place (with its checksum file, if any): if validation wrongly
    passed, prepare would write data/prepared."""
    (project / "data").mkdir()
    for shipped in SHIPPED_TABLE.parent.glob(f"{SHIPPED_TABLE.name}*"):
        (project / "data" / shipped.name).symlink_to(shipped)


def _small_project(project: Path, mutation: Mutation | None = None) -> Path:
    """A project of scikit-learn's diabetes table (442 rows, regression), TINY_PARAMS on the
    shipped params, then `mutation`: prepare takes a fraction of a second."""
    (project / "data").mkdir()
    load_diabetes(as_frame=True).frame.to_csv(project / "data" / "diabetes.csv", index=False)
    params = deep_update(yaml.safe_load(PARAMS.read_text()), copy.deepcopy(TINY_PARAMS))
    params["data"] = {"path": "data/diabetes.csv", "target": "target", "task": "regression"}
    if mutation is not None:
        mutation(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    return project


# --- the shipped params -----------------------------------------------------------------------


def test_the_shipped_params_load() -> None:
    raw = yaml.safe_load(PARAMS.read_text())
    params = load_params(PARAMS)

    assert params.data.path == raw["data"]["path"]
    assert params.data.target == raw["data"]["target"]
    assert params.model.family == raw["model"]["family"]
    assert params.model.chosen == params.model.families[raw["model"]["family"]]
    assert set(params.model.families) == set(FAMILIES)  # settings for every family there is
    metric = raw["tune"]["metric"]
    assert params.metric == (DEFAULT_METRIC[params.data.task] if metric == "default" else metric)
    assert params.metric in METRICS[params.data.task]
    setup = params.setup(n_classes=0)
    assert setup == Setup(params.data.task, 0, raw["model"]["seed"], params.model.chosen.fixed)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_shipped_spaces_become_distributions_the_library_accepts(family: str) -> None:
    declared = yaml.safe_load(PARAMS.read_text())["model"]["families"][family]["search_space"]
    params = load_params(PARAMS)
    chosen = params.model.families[family]

    space = distributions(chosen.search_space)

    assert list(space) == list(declared)  # params.yaml order: the order trials sample in
    kinds = {"int": IntDistribution, "float": FloatDistribution}
    for name, spec in declared.items():
        assert type(space[name]) is kinds[spec["type"]]
        assert (space[name].low, space[name].high) == (spec["low"], spec["high"])
        assert space[name].log == spec.get("log", False)
    setup = Setup(params.data.task, 0, params.model.seed, dict(chosen.fixed))
    assert load_family(family).problems(setup, chosen.search_space) == []


def test_a_categorical_dimension_becomes_a_categorical_distribution(tmp_path: Path) -> None:
    choices = ["depthwise", "lossguide"]
    path = tmp_path / "params.yaml"
    path.write_text(
        _params_text(_add(f"{SS}.grow_policy", {"type": "categorical", "choices": choices}))
    )

    space = distributions(load_params(path).model.chosen.search_space)

    assert space["grow_policy"] == CategoricalDistribution(choices)
    assert list(space)[-1] == "grow_policy"


@pytest.mark.parametrize(
    ("name", "low", "high", "step"),
    [
        pytest.param("max_depth", 3, 9, 2, id="int"),
        pytest.param("gamma", 0.0, 0.5, 0.1, id="from-zero"),
        pytest.param("gamma", 0.6, 1.0, 0.05, id="to-one"),
        # high - low is not exactly 0.2 in binary floating point (0.19999999999999998).
        pytest.param("gamma", 0.1, 0.3, 0.1, id="inexact-difference"),
        pytest.param("gamma", 0.7, 0.9, 0.1, id="inexact-difference-2"),
    ],
)
def test_a_step_that_divides_the_range_is_accepted(
    tmp_path: Path, name: str, low: float, high: float, step: float
) -> None:
    path = tmp_path / "params.yaml"
    kind = "int" if isinstance(step, int) else "float"
    dimension = {"type": kind, "low": low, "high": high, "step": step}
    path.write_text(_params_text(_set(f"{SS}.{name}", dimension)))

    space = distributions(load_params(path).model.chosen.search_space)

    assert (space[name].low, space[name].high, space[name].step) == (low, high, step)


# --- malformed params -------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "key_path", "problem"), CASES)
def test_malformed_params_stop_the_prepare_stage(
    tmp_path: Path, run_stage, case: str | Mutation, key_path: str | None, problem: str
) -> None:
    (tmp_path / "params.yaml").write_text(_params_text(case))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    _shipped_table_in(tmp_path)

    line = run_stage("prepare", tmp_path).one_error()

    prefix = "error: params.yaml: " if key_path is None else f"error: params.yaml: {key_path}: "
    assert line.startswith(prefix), line
    assert problem in line
    assert not (tmp_path / "data" / "prepared").exists()


def test_every_problem_gets_its_own_line(tmp_path: Path, run_stage) -> None:
    four_mistakes = _both(
        _add("tune.n_trails", 5),
        _set("tune.cv_folds", 1),
        _set("model.seed", -1),
        _set("data.task", "regresion"),
    )
    (tmp_path / "params.yaml").write_text(_params_text(four_mistakes))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")

    result = run_stage("prepare", tmp_path)

    assert result.exit_code == 2
    assert sorted(result.stderr.splitlines()) == [
        f"error: params.yaml: data.task: Input should be {TASKS}, got 'regresion'",
        "error: params.yaml: model.seed: Input should be greater than or equal to 0, got -1",
        "error: params.yaml: tune.cv_folds: Input should be greater than or equal to 2, got 1",
        "error: params.yaml: tune.n_trails: unknown key (did you mean n_trials?)",
    ]


def test_a_stage_run_outside_the_project_says_where_it_looked(tmp_path: Path, run_stage) -> None:
    line = run_stage("prepare", tmp_path).one_error()

    assert line.startswith(f"error: {tmp_path / 'params.yaml'}: not found"), line
    assert "stages run from the project root" in line


def test_a_stage_run_without_dvc_yaml_says_where_it_looked(tmp_path: Path, run_stage) -> None:
    project = _small_project(tmp_path)
    (project / "dvc.yaml").unlink()

    line = run_stage("prepare", project).one_error()

    assert line.startswith(f"error: {project / 'dvc.yaml'}: not found"), line
    assert "stages run from the project root" in line
    assert not (project / "data" / "prepared").exists()


# --- what the family's library refuses, asked before any trial --------------------------------

# (family, mutation, key under model.families.<family>, a substring of the problem)
SPACE_CASES = [
    pytest.param(
        "xgboost",
        _add(f"{SS}.max_dept", {"type": "int", "low": 3, "high": 5}),
        "search_space.max_dept",
        "not an XGBoost parameter (did you mean max_depth?)",
        id="unknown-name",
    ),
    pytest.param(
        "xgboost",
        _set(f"{SS}.subsample.high", 1.5),
        "search_space.subsample",
        "XGBoost refuses 1.5",
        id="sub>1",
    ),
    pytest.param(
        "xgboost",
        _set(f"{SS}.gamma.low", -0.1),
        "search_space.gamma",
        "XGBoost refuses -0.1",
        id="gamma<0",
    ),
    pytest.param(
        "xgboost",
        _set(f"{SS}.max_depth.low", -1),
        "search_space.max_depth",
        "XGBoost refuses -1",
        id="depth<0",
    ),
    pytest.param(
        "xgboost",
        _add(f"{SS}.grow_policy", {"type": "categorical", "choices": ["depthwise", "sideways"]}),
        "search_space.grow_policy",
        "XGBoost refuses 'sideways'",
        id="bad-choice",
    ),
    pytest.param(
        "xgboost",
        _add(f"{SS}.seed", {"type": "int", "low": 0, "high": 9}),
        "search_space.seed",
        "set by the pipeline",
        id="reserved-name",
    ),
    pytest.param(
        "xgboost",
        _delete(f"{SS}.n_estimators"),
        "search_space.n_estimators",
        "needed, an int dimension with low >= 1",
        id="no-rounds",
    ),
    pytest.param(
        "xgboost",
        _set(f"{SS}.n_estimators", {"type": "float", "low": 50.0, "high": 300.0}),
        "search_space.n_estimators",
        "needed, an int dimension",
        id="float-rounds",
    ),
    pytest.param(
        "xgboost",
        _add(f"{XGB}.fixed.tree_method", "approx"),
        "fixed.tree_method",
        "set by the pipeline",
        id="fixed-reserved",
    ),
    pytest.param(
        "xgboost",
        _set(f"{XGB}.fixed.max_bin", 1),
        "fixed.max_bin",
        "XGBoost refuses 1",
        id="fixed-refused",
    ),
    pytest.param(
        "xgboost",
        _add(f"{XGB}.fixed.max_bni", 256),
        "fixed.max_bni",
        "not an XGBoost parameter (did you mean max_bin?)",
        id="fixed-unknown",
    ),
    pytest.param(
        "lightgbm",
        _add(f"{LGBM}.search_space.num_leafs", {"type": "int", "low": 8, "high": 32}),
        "search_space.num_leafs",
        "not a LightGBM parameter (did you mean num_leaves?)",
        id="lightgbm-unknown-name",
    ),
    pytest.param(
        "lightgbm",
        _set(f"{LGBM}.search_space.num_leaves.low", 1),
        "search_space.num_leaves",
        "LightGBM refuses 1",
        id="lightgbm-refused",
    ),
    pytest.param(
        "lightgbm",
        _add(f"{LGBM}.fixed.num_threads", 1),
        "fixed.num_threads",
        "set by the pipeline",
        id="lightgbm-reserved",
    ),
]
SPACE_CASES = tiered(SPACE_CASES, {"unknown-name", "sub>1", "fixed-reserved"})


@pytest.mark.parametrize(("family", "mutation", "key", "problem"), SPACE_CASES)
def test_a_setting_the_library_refuses_stops_tune_before_any_trial(
    tmp_path: Path, run_stage, family: str, mutation: Mutation, key: str, problem: str
) -> None:
    project = _small_project(tmp_path, _both(_set("model.family", family), mutation))
    prepared = run_stage("prepare", project)
    assert prepared.exit_code == 0, prepared.stderr  # the schema takes it; the library does not

    line = run_stage("tune", project).one_error()

    assert line.startswith(f"error: params.yaml: model.families.{family}.{key}: "), line
    assert problem in line
    assert not (project / "outputs").exists()


@pytest.mark.exhaustive
def test_tune_prints_only_its_line_when_lightgbm_refuses_a_value(tmp_path: Path, run_stage) -> None:
    """As a user runs it, in its own process: what LightGBM writes to the process's stderr
    (beyond what run_stage captures) is part of what the user reads."""
    mutation = _both(
        _set("model.family", "lightgbm"), _set(f"{LGBM}.search_space.num_leaves.low", 1)
    )
    project = _small_project(tmp_path, mutation)
    assert run_stage("prepare", project).exit_code == 0

    done = run(project, sys.executable, str(REPO / "stages" / "tune.py"), check=False)

    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: params.yaml: {LGBM}.search_space.num_leaves: "), lines


def test_load_params_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(_params_text(_set("tune.cv_folds", 1)))

    with pytest.raises(PipelineError) as error:
        load_params(path)

    assert str(error.value) == (
        f"{path}: tune.cv_folds: Input should be greater than or equal to 2, got 1"
    )


@pytest.mark.parametrize(
    ("level", "shown"), [("quiet", False), ("normal", True), ("verbose", True)]
)
def test_the_log_level_a_user_sets_decides_the_progress_lines(
    tmp_path: Path, run_stage, monkeypatch: pytest.MonkeyPatch, level: str, shown: bool
) -> None:
    project = _shipped_project(tmp_path)
    monkeypatch.setenv("HPO_LOG_LEVEL", level)
    done = run_stage("prepare", project)
    assert done.exit_code == 0, done.stderr
    assert ("prepared 16512 training and 4128 test rows" in done.stderr) is shown


def test_an_unknown_log_level_is_one_line(
    tmp_path: Path, run_stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _shipped_project(tmp_path)
    monkeypatch.setenv("HPO_LOG_LEVEL", "chatty")
    line = run_stage("prepare", project).one_error()
    assert line == "error: HPO_LOG_LEVEL: 'chatty' is not one of quiet, normal, verbose"
    assert not (project / "data/prepared").exists()


def _shipped_project(folder: Path) -> Path:
    """The shipped params, dvc.yaml and table in `folder`."""
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", folder / "dvc.yaml")
    _shipped_table_in(folder)
    return folder
