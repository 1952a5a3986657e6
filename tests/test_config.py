"""params.yaml validation: the shipped file loads; every malformed file stops a real stage
with one 'error: params.yaml: key.path: problem' line, exit code 2 and no output written."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, run, run_stage_script

from hpo.config import IntRange, load_params

PARAMS = REPO / "params.yaml"
RAW_DATA = REPO / "data" / "raw" / "cal_housing.data.gz"

Mutation = Callable[[dict[str, Any]], None]


def _set(dotted: str, value: object) -> Mutation:
    """Set params[a][b][c] = value for dotted 'a.b.c'."""

    def mutate(params: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        assert last in node, f"{dotted} is not in params.yaml; the case would test nothing"
        node[last] = value

    return mutate


def _delete(dotted: str) -> Mutation:
    def mutate(params: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


def _add(dotted: str, value: object) -> Mutation:
    def mutate(params: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        assert last not in node
        node[last] = value

    return mutate


SS = "tune.search_space"

# (params.yaml text or a mutation of the shipped params, key path or None for a top-level
# problem, a substring of the problem description)
CASES = [
    pytest.param(_delete("tune"), "tune", "missing key", id="missing-section"),
    pytest.param(_delete("tune.cv_folds"), "tune.cv_folds", "missing key", id="missing-key"),
    pytest.param(
        _add("tune.n_trails", 100),
        "tune.n_trails",
        "unknown key (did you mean n_trials?)",
        id="typo-key",
    ),
    pytest.param(
        _add(f"{SS}.max_dept", {"low": 1, "high": 2}),
        f"{SS}.max_dept",
        "unknown key (did you mean max_depth?)",
        id="typo-nested",
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
    pytest.param(_set("tune.n_trials", 0), "tune.n_trials", "greater than or equal to 1", id="n0"),
    pytest.param(
        _set("tune.parallel_trials", 0),
        "tune.parallel_trials",
        "greater than or equal to 1",
        id="parallel-0",
    ),
    pytest.param(_set("tune.cv_folds", 1), "tune.cv_folds", "greater than or equal to 2", id="cv1"),
    pytest.param(_set("prepare.test_size", 0), "prepare.test_size", "greater than 0", id="ts-0"),
    pytest.param(_set("prepare.test_size", 1.5), "prepare.test_size", "less than 1", id="ts-1.5"),
    pytest.param(_set("tune.pruner.name", "hyperband"), "tune.pruner.name", "median", id="pruner"),
    pytest.param(_set("tune.sampler.name", "random"), "tune.sampler.name", "tpe", id="sampler"),
    pytest.param(
        _set("plot.importance_evaluator", "shap"),
        "plot.importance_evaluator",
        "fanova",
        id="evaluator",
    ),
    pytest.param(_set(f"{SS}.subsample.high", 1.5), SS, "subsample must lie in", id="subsample>1"),
    pytest.param(_set(f"{SS}.gamma.low", float("nan")), f"{SS}.gamma.low", "finite", id="nan"),
    # Values the schema once accepted and a library rejected later, one per key.
    pytest.param(_set("model.tree_method", "approx"), "model.tree_method", "hist", id="approx"),
    pytest.param(_set("model.tree_method", "exact"), "model.tree_method", "hist", id="exact"),
    pytest.param(_set("model.max_bin", 2**31), "model.max_bin", "less than", id="max-bin"),
    pytest.param(_set("model.seed", -1), "model.seed", "greater than", id="model-seed"),
    pytest.param(_set("prepare.split_seed", 2**32), "prepare.split_seed", "less", id="split-seed"),
    pytest.param(_set("tune.cv_seed", -1), "tune.cv_seed", "greater than", id="cv-seed"),
    pytest.param(_set("tune.sampler.seed", 2**31), "tune.sampler.seed", "less", id="tpe-seed"),
    pytest.param(
        _set("tune.sampler.n_ei_candidates", 0),
        "tune.sampler.n_ei_candidates",
        "greater than or equal to 1",
        id="ei-candidates-0",
    ),
    pytest.param(
        _set("plot.importance_seed", -5), "plot.importance_seed", "greater", id="imp-seed"
    ),
    pytest.param(_set(f"{SS}.gamma.low", -0.1), SS, "gamma.low must be at least 0", id="gamma<0"),
    pytest.param(_set(f"{SS}.min_child_weight.low", -1.0), SS, "min_child_weight.low", id="mcw<0"),
    pytest.param(_set(f"{SS}.max_depth.low", -1), SS, "max_depth.low", id="depth<0"),
    pytest.param(
        _set("prepare.test_size", 0.99985), None, "leaves 3 training rows", id="no-rows-for-folds"
    ),
    pytest.param("- prepare\n- tune\n", None, "expected a mapping of sections", id="yaml-list"),
    pytest.param("tune: [1, 2\nplot: {}\n", None, "not valid YAML", id="bad-yaml"),
    pytest.param("", None, "expected a mapping of sections", id="empty-file"),
]


def _write_params(directory: Path, case: str | Mutation) -> None:
    if isinstance(case, str):
        text = case
    else:
        params = copy.deepcopy(yaml.safe_load(PARAMS.read_text()))
        case(params)
        text = yaml.safe_dump(params, sort_keys=False)
    (directory / "params.yaml").write_text(text)


# prepare's main under run_stage, as `python stages/prepare.py` runs it, once per directory in
# one interpreter: the imports take seconds, a case milliseconds. Anything that escapes
# run_stage is printed as the traceback a real run would show.
PREPARE_IN_EACH = """
import contextlib, io, json, os, sys, traceback
from hpo.errors import run_stage
import prepare
results = {}
for directory in sys.argv[1:]:
    os.chdir(directory)
    stderr, code = io.StringIO(), 0
    with contextlib.redirect_stderr(stderr):
        try:
            run_stage(prepare.main)
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            traceback.print_exc()
            code = 1
    results[directory] = [code, stderr.getvalue()]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def stage_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Run prepare once per selected case, every case in one interpreter."""
    selected = {
        item.callspec.id
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_malformed_params_stop_the_prepare_stage"
    }
    directories: dict[str, Path] = {}
    for param in CASES:
        if param.id not in selected:
            continue
        case = param.values[0]
        assert isinstance(case, str) or callable(case)
        assert param.id is not None
        directory = tmp_path_factory.mktemp(f"params-{param.id}")
        _write_params(directory, case)
        # Real data in place: if validation wrongly passed, prepare would write data/prepared.
        (directory / "data" / "raw").mkdir(parents=True)
        (directory / "data" / "raw" / RAW_DATA.name).symlink_to(RAW_DATA)
        directories[param.id] = directory
    if not directories:
        return {}
    args = [sys.executable, "-c", PREPARE_IN_EACH, *map(str, directories.values())]
    done = run(REPO, *args, env={"PYTHONPATH": str(REPO / "stages")}, timeout=300)
    results = json.loads(done.stdout.splitlines()[-1])
    runs = {}
    for case_id, directory in directories.items():
        code, stderr = results[str(directory)]
        runs[case_id] = (directory, subprocess.CompletedProcess(args, code, "", stderr))
    return runs


def test_shipped_params_load_with_the_search_space_of_params_yaml() -> None:
    params = load_params(PARAMS)

    space = params.tune.search_space.model_dump()
    assert space == {
        "n_estimators": {"low": 50, "high": 300, "log": False},
        "max_depth": {"low": 3, "high": 10, "log": False},
        "learning_rate": {"low": 0.001, "high": 0.3, "log": True},
        "subsample": {"low": 0.6, "high": 1.0, "log": False},
        "colsample_bytree": {"low": 0.6, "high": 1.0, "log": False},
        "min_child_weight": {"low": 1.0, "high": 10.0, "log": False},
        "gamma": {"low": 0.0, "high": 0.5, "log": False},
    }
    assert isinstance(params.tune.search_space.n_estimators, IntRange)
    assert isinstance(params.tune.search_space.max_depth, IntRange)


@pytest.mark.parametrize(("case", "key_path", "problem"), CASES)
def test_malformed_params_stop_the_prepare_stage(
    request: pytest.FixtureRequest,
    stage_runs: dict[str, tuple[Path, subprocess.CompletedProcess[str]]],
    case: str | Mutation,
    key_path: str | None,
    problem: str,
) -> None:
    directory, result = stage_runs[request.node.callspec.id]

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    prefix = "error: params.yaml: " if key_path is None else f"error: params.yaml: {key_path}: "
    assert line.startswith(prefix), line
    assert problem in line
    assert not (directory / "data" / "prepared").exists()


def test_a_stage_run_outside_the_project_says_where_it_looked(tmp_path: Path) -> None:
    result = run_stage_script(tmp_path, "prepare")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {tmp_path / 'params.yaml'}: not found")
    assert "stages run from the project root" in line


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    def three_mistakes(params: dict[str, Any]) -> None:
        params["tune"]["n_trails"] = 5
        _set("tune.cv_folds", 1)(params)
        _set("model.seed", -1)(params)

    _write_params(tmp_path, three_mistakes)
    result = run_stage_script(tmp_path, "prepare")
    assert result.returncode == 2
    assert sorted(result.stderr.splitlines()) == [
        "error: params.yaml: model.seed: Input should be greater than or equal to 0, got -1",
        "error: params.yaml: tune.cv_folds: Input should be greater than or equal to 2, got 1",
        "error: params.yaml: tune.n_trails: unknown key (did you mean n_trials?)",
    ]
