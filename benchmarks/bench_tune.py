"""Fastest to a good model: this pipeline's tune stage against the strongest simple peers.

    python benchmarks/bench_tune.py                        # 100 trials, sampler seeds 0-4
    python benchmarks/bench_tune.py --trials 20 --seeds 0 1 --png anytime.png
    python benchmarks/bench_tune.py --systems pipeline --set tune.pruner.n_warmup_steps=40
    python benchmarks/bench_tune.py --seeds 5 6 7 8 9 --runs runs.jsonl  # pool with earlier runs

Three systems search the same space (model.families.xgboost.search_space) with the same data,
folds, XGBoost settings (the family's `fixed`, `hist`), TPE settings and median-rule settings
for the peers' pruning (params.yaml; `--set KEY=VALUE` changes one for all; the pipeline prunes
with its own tune.pruner), tune.parallel_trials
trials at a time, once per sampler seed (--seeds replaces tune.sampler.seed), interleaved seed
by seed, so that a slow spell of a shared machine hits all of them:

* pipeline: the real tune stage (`python stages/tune.py` in a scratch copy of this repository,
  MLflow on), timed from the moment the process starts;
* xgb.cv + callback: the way optuna-examples tunes XGBoost - `xgb.cv` with all folds advancing
  together and a pruning callback reporting every round, Optuna's `n_jobs`, one thread per fit;
* plain loop: what one writes first - XGBoost's scikit-learn API fold by fold, the running
  mean reported after each fold and pruned there by the median rule, Optuna's `n_jobs`, one
  thread per fit. Its pruner counts folds, not rounds, so the warm-up and interval of
  params.yaml (in rounds) do not apply to it: it checks after every fold, from the first.

Every system minimises the same objective, the mean k-fold MSE after exactly n_estimators
rounds (for xgb.cv, mean RMSE² + std² of the folds' RMSE, which is their mean MSE): the
pipeline's tune.metric mse, so the params must keep data.task regression, model.family xgboost
and tune.metric mse (or default). Reported:
best-so-far CV MSE against wall time (anytime performance), the time each run takes to reach
the target (the best peer's median final CV MSE, or --target), the test RMSE after refitting
the best params on the whole training split, medians and spread over the seeds, and the
pipeline's driver cost per trial. A PNG of the best-so-far curves (median and min-max band
per system) is written to --png. Timings on a shared machine are noisy: compare within one
run.

With --runs FILE, each finished run is appended to FILE as a JSON line, system-seed pairs
already there are not run again, and the report covers the seeds in FILE that every system has
run: a verdict over more seeds can be built up over several invocations (each on a quiet
machine), and a killed benchmark keeps its finished runs. FILE holds runs of one setting only:
the same params.yaml values, --trials, --set and trial code.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import xgboost as xgb  # noqa: E402
import yaml  # noqa: E402
from optuna.pruners import BasePruner, MedianPruner  # noqa: E402
from scratch_project import (  # noqa: E402
    dvc,
    make_scratch_project,
    project_path,
    run,
    set_params,
)
from sklearn.metrics import mean_squared_error as mse  # noqa: E402
from sklearn.model_selection import KFold  # noqa: E402

from hpo.config import Params, load_params  # noqa: E402
from hpo.data import Split, read_split  # noqa: E402
from hpo.models import load_family  # noqa: E402
from hpo.protocol.identity import this_process_identity  # noqa: E402
from hpo.search.space import distributions, make_pruner, make_sampler  # noqa: E402

PIPELINE, XGB_CV, PLAIN = "pipeline", "xgb.cv + callback", "plain loop"
SYSTEMS = (PIPELINE, XGB_CV, PLAIN)
PEERS = (XGB_CV, PLAIN)
# What the peers are written for: XGBoost regression, scored by the mean k-fold MSE.
FAMILY, TASK, METRIC = "xgboost", "regression", "mse"


@dataclass
class Run:
    """One system's run for one seed."""

    system: str
    seed: int
    wall_s: float
    finished: list[tuple[float, float | None]]  # (seconds from start, CV MSE or None) per trial
    best_params: dict
    boosting_rounds: int  # summed over trials and folds: the work, whatever the machine
    driver_ms_per_trial: float | None = None  # the pipeline's main-thread CPU per trial
    test_rmse: float = 0.0
    curve: list[tuple[float, float]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        best = float("inf")
        for seconds, value in sorted(self.finished):
            if value is not None and value < best:
                best = value
                self.curve.append((seconds, best))

    @property
    def best_cv_mse(self) -> float:
        return self.curve[-1][1]

    def time_to(self, target: float) -> float | None:
        return next((seconds for seconds, best in self.curve if best <= target), None)


def run_settings(overrides: dict[str, object]) -> dict[str, object]:
    """What every run pooled in one --runs file shares: the params and the trials' code."""
    base = json.dumps(load_params(REPO / "params.yaml").model_dump(mode="json"), sort_keys=True)
    return {
        "overrides": overrides,
        "params_sha256": hashlib.sha256(base.encode()).hexdigest(),
        "trial_code_sha256": this_process_identity(FAMILY),
    }


def load_runs(path: Path, settings: dict[str, object]) -> list[Run]:
    """The runs saved in `path` (JSON lines): one per system and seed, all with these settings."""
    runs: list[Run] = []
    lines = path.read_text().splitlines() if path.exists() else []
    for number, line in enumerate(lines, start=1):
        try:
            saved = json.loads(line)
        except json.JSONDecodeError:
            raise SystemExit(f"error: {path}:{number} is not a saved run (cut off?)") from None
        if saved.pop("settings") != settings:
            raise SystemExit(
                f"error: {path}:{number} holds a run with other params, --set or trial code"
            )
        saved["finished"] = [tuple(pair) for pair in saved["finished"]]
        run = Run(**saved)
        if any((r.system, r.seed) == (run.system, run.seed) for r in runs):
            raise SystemExit(f"error: {path}:{number} repeats {run.system}, seed {run.seed}")
        runs.append(run)
    return runs


def save_run(path: Path, run: Run, settings: dict[str, object]) -> None:
    """Append one run as a JSON line (its curve is derived again when loaded)."""
    saved = {k: v for k, v in asdict(run).items() if k != "curve"}
    with path.open("a") as file:
        file.write(json.dumps({**saved, "settings": settings}) + "\n")


def same_seeds(runs: list[Run]) -> list[Run]:
    """The runs of the seeds that every system has run: medians over other seeds mislead."""
    systems, seeds = {r.system for r in runs}, {r.seed for r in runs}
    common = {seed for seed in seeds if {r.system for r in runs if r.seed == seed} == systems}
    left_out = sorted(seeds - common)
    if left_out:
        print(f"seeds {left_out} are left out: not every system has run them")
    return [r for r in runs if r.seed in common]


def _elapsed(trials: list[optuna.trial.FrozenTrial], start: datetime.datetime) -> list:
    return [
        ((t.datetime_complete - start).total_seconds(), t.value)
        for t in trials
        if t.state.is_finished() and t.datetime_complete is not None
    ]


# --- the systems ----------------------------------------------------------------------------


def pipeline(project: Path, params: Params, seed: int) -> Run:
    """The tune stage from an empty study store, in the prepared scratch project."""
    for stale in ("STUDY_STORE", "STUDY_COPY", "MLFLOW_DB"):
        project_path(project, stale).unlink(missing_ok=True)
    run(project, "git", "checkout", "-q", "--", "params.yaml")
    set_params(project, {"tune.sampler.seed": seed})
    start = datetime.datetime.now()
    wall = run(project, sys.executable, "stages/tune.py")
    summary = json.loads(project_path(project, "TUNE_SUMMARY").read_text())
    study = optuna.load_study(
        study_name=summary["study_name"],
        storage=f"sqlite:///{project_path(project, 'STUDY_COPY')}",
    )
    trials = study.get_trials()
    folds = params.tune.cv_folds
    return Run(
        PIPELINE,
        seed,
        wall,
        _elapsed(trials, start),
        summary["best_params"],
        sum(_pipeline_rounds(t, folds, params.tune.pruner.name) for t in trials),
        1000 * summary["main_thread_cpu_seconds"] / len(trials),
    )


def _pipeline_rounds(trial: optuna.trial.FrozenTrial, folds: int, pruner: str) -> int:
    """Boosting rounds of a pipeline trial, over its folds: the Wilcoxon pruner's trials run
    whole folds one after another and report at fold indexes, the others' folds advance
    together and report at rounds."""
    if pruner == "wilcoxon" and trial.state == optuna.trial.TrialState.PRUNED:
        return trial.params["n_estimators"] * len(trial.intermediate_values)
    return _rounds_per_fold(trial) * folds


def _rounds_per_fold(trial: optuna.trial.FrozenTrial) -> int:
    """Rounds each fold of a trial was boosted, for the systems whose folds advance together."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return trial.params["n_estimators"]
    return max(trial.intermediate_values, default=0)


def _study(params: Params, seed: int, pruner: BasePruner) -> optuna.Study:
    """A study with TPE of the pipeline's TPE settings, seeded once (Optuna's way)."""
    seeded = params.tune.sampler.model_copy(update={"seed": seed, "name": "tpe"})
    return optuna.create_study(sampler=make_sampler(seeded, trial_number=0), pruner=pruner)


def _fold_pruner(params: Params) -> BasePruner:
    """The median rule at fold steps: every fold from the first, after the same startup trials."""
    return MedianPruner(n_startup_trials=params.tune.pruner.n_startup_trials, n_warmup_steps=0)


def _suggest(trial: optuna.Trial, params: Params) -> dict:
    suggested = {}
    for name, dist in distributions(params.model.chosen.search_space).items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            suggested[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            suggested[name] = trial.suggest_int(
                name, dist.low, dist.high, step=dist.step, log=dist.log
            )
        else:
            suggested[name] = trial.suggest_float(
                name, dist.low, dist.high, step=dist.step, log=dist.log
            )
    return suggested


def _optimize(
    system: str,
    params: Params,
    seed: int,
    objective: Callable[[optuna.Trial], float],
    rounds: Callable[[optuna.trial.FrozenTrial], int],
    pruner: BasePruner,
) -> Run:
    study = _study(params, seed, pruner)
    start = datetime.datetime.now()
    wall = time.perf_counter()
    study.optimize(objective, n_trials=params.tune.n_trials, n_jobs=params.tune.parallel_trials)
    wall = time.perf_counter() - wall
    trials = study.get_trials()
    best = study.best_params
    return Run(system, seed, wall, _elapsed(trials, start), best, sum(map(rounds, trials)))


class _PruneEveryRound(xgb.callback.TrainingCallback):
    """optuna-integration's XGBoostPruningCallback, reporting the folds' mean MSE."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial

    def after_iteration(self, model: object, epoch: int, evals_log: dict) -> bool:
        mean, std = evals_log["test"]["rmse"][-1]
        self._trial.report(mean**2 + std**2, epoch + 1)
        if self._trial.should_prune():
            raise optuna.TrialPruned(f"pruned at round {epoch + 1}")
        return False


def xgb_cv_peer(params: Params, seed: int, x: pd.DataFrame, y: np.ndarray) -> Run:
    dtrain = xgb.DMatrix(x, label=y)
    folds = params.tune.cv_folds

    def objective(trial: optuna.Trial) -> float:
        tuned = _suggest(trial, params)
        booster = {
            "objective": "reg:squarederror",
            "eval_metric": "rmse",
            "tree_method": "hist",
            **params.model.chosen.fixed,
            "nthread": 1,
            "seed": params.model.seed,
            **{k: v for k, v in tuned.items() if k != "n_estimators"},
        }
        history = xgb.cv(
            booster,
            dtrain,
            num_boost_round=tuned["n_estimators"],
            nfold=folds,
            seed=params.tune.cv_seed,
            callbacks=[_PruneEveryRound(trial)],
        )
        mean, std = history["test-rmse-mean"].iloc[-1], history["test-rmse-std"].iloc[-1]
        return float(mean**2 + std**2)

    def rounds(trial: optuna.trial.FrozenTrial) -> int:
        return _rounds_per_fold(trial) * folds

    median = make_pruner(params.tune.pruner.model_copy(update={"name": "median"}))
    return _optimize(XGB_CV, params, seed, objective, rounds, median)


def plain_peer(params: Params, seed: int, x: pd.DataFrame, y: np.ndarray) -> Run:
    folds = params.tune.cv_folds
    splits = list(KFold(folds, shuffle=True, random_state=params.tune.cv_seed).split(x))

    def objective(trial: optuna.Trial) -> float:
        tuned = _suggest(trial, params)
        scores = []
        for step, (fit_rows, check_rows) in enumerate(splits):
            model = xgb.XGBRegressor(
                **tuned,
                tree_method="hist",
                **params.model.chosen.fixed,
                n_jobs=1,
                random_state=params.model.seed,
            )
            model.fit(x.iloc[fit_rows], y[fit_rows])
            scores.append(mse(y[check_rows], model.predict(x.iloc[check_rows])))
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    def rounds(trial: optuna.trial.FrozenTrial) -> int:
        trained = folds if trial.state.name == "COMPLETE" else len(trial.intermediate_values)
        return trial.params["n_estimators"] * trained

    return _optimize(PLAIN, params, seed, objective, rounds, _fold_pruner(params))


# --- the report -----------------------------------------------------------------------------


def test_rmse(params: Params, best_params: dict, train: Split, test: Split) -> float:
    """The best params refit on the whole training split as train_best does, on the test split."""
    family = load_family(FAMILY)
    model = family.fit(params.setup(train.n_classes), best_params, train.x, train.y)
    return mse(test.y, family.predict(model, test.x)) ** 0.5


def _spread(values: list[float], digits: int) -> str:
    return f"{median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def report(runs: list[Run], target: float | None) -> float:
    """Print the per-run table and the medians; return the target CV MSE.

    Without a given target, it is the best peer's median final CV MSE, and times are also
    given as a ratio of that peer's median time to it.
    """
    by_system = {s: [r for r in runs if r.system == s] for s in SYSTEMS}
    by_system = {s: rs for s, rs in by_system.items() if rs}
    finals = {s: median(r.best_cv_mse for r in rs) for s, rs in by_system.items()}
    best_peer = min((s for s in PEERS if s in finals), key=finals.get, default=None)
    if target is None:
        target = finals[best_peer]
        print(f"\ntarget: {best_peer}'s median final CV MSE, {target:.5f}\n")
    else:
        print(f"\ntarget: {target:.5f} (given)\n")
    print(f"{'system':<20}{'seed':>5}{'wall s':>9}{'to target s':>13}{'rounds':>9}", end="")
    print(f"{'best CV MSE':>13}{'test RMSE':>11}{'driver ms/trial':>17}")
    for r in runs:
        reached = r.time_to(target)
        driver = "" if r.driver_ms_per_trial is None else f"{r.driver_ms_per_trial:.1f}"
        print(
            f"{r.system:<20}{r.seed:>5}{r.wall_s:>9.1f}"
            f"{'-' if reached is None else f'{reached:.1f}':>13}{r.boosting_rounds:>9}"
            f"{r.best_cv_mse:>13.5f}{r.test_rmse:>11.4f}{driver:>17}"
        )
    print("\nmedian [min-max] over seeds (a run that never reaches the target counts its wall)")
    peer_time = best_peer and median(_time_or_wall(r, target) for r in by_system[best_peer])
    for system, rs in by_system.items():
        to_target = [_time_or_wall(r, target) for r in rs]
        reached = sum(r.time_to(target) is not None for r in rs)
        ratio = f"; {median(to_target) / peer_time:.2f} of {best_peer}" if peer_time else ""
        print(
            f"{system:<20} wall {_spread([r.wall_s for r in rs], 1)} s; to target "
            f"{_spread(to_target, 1)} s ({reached}/{len(rs)} reached{ratio}); "
            f"best CV MSE {_spread([r.best_cv_mse for r in rs], 5)}; "
            f"test RMSE {_spread([r.test_rmse for r in rs], 4)}"
        )
    return target


def _time_or_wall(r: Run, target: float) -> float:
    """Time to the target; a run that never reached it counts with its whole wall time."""
    reached = r.time_to(target)
    return r.wall_s if reached is None else reached


def plot(runs: list[Run], target: float, path: Path) -> None:
    """Best-so-far CV MSE against wall time: the median and min-max band of each system."""
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    end = max(r.wall_s for r in runs)
    grid = np.linspace(0, end, 400)
    for system in SYSTEMS:
        rs = [r for r in runs if r.system == system]
        if not rs:
            continue
        curves = np.array([_step(r.curve, grid) for r in rs])
        with warnings.catch_warnings():  # before a system's first complete trial: no value
            warnings.simplefilter("ignore", RuntimeWarning)
            low, mid, high = (f(curves, axis=0) for f in (np.nanmin, np.nanmedian, np.nanmax))
        line = axes.plot(grid, mid, label=f"{system} (median)")[0]
        axes.fill_between(
            grid, low, high, alpha=0.2, color=line.get_color(),
            label=f"{system} (min-max over {len(rs)} seeds)",
        )  # fmt: skip
    axes.axhline(target, color="black", linestyle=":", label=f"target {target:.4f}")
    finals = [r.best_cv_mse for r in runs]
    axes.set_ylim(min(finals) * 0.98, max(finals) * 1.25)
    axes.set_xlabel("wall time (s)")
    axes.set_ylabel("best CV MSE so far")
    axes.set_title("Best-so-far CV MSE against wall time")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _step(curve: list[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    values = np.full(grid.shape, np.nan)
    for seconds, best in curve:
        values[grid >= seconds] = best
    return values


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--png", type=Path, default=Path("bench_tune.png"))
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        type=_override, help="a params.yaml value for every system, e.g. tune.cv_folds=3",
    )  # fmt: skip
    parser.add_argument("--target", type=float, help="CV MSE to time (default: best peer's median)")
    parser.add_argument("--runs", type=Path, help="JSON lines file to pool runs in (see above)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    overrides = {"tune.n_trials": args.trials, **dict(args.overrides)}
    settings = run_settings(overrides)
    runs = load_runs(args.runs, settings) if args.runs else []
    if args.target is None and not ({r.system for r in runs} | set(args.systems)) & set(PEERS):
        parser.error("without a peer in --systems or --runs, give the --target CV MSE to time")
    done = {(r.system, r.seed) for r in runs}
    pending = [(seed, system) for seed in args.seeds for system in args.systems
               if (system, seed) not in done]  # fmt: skip
    if pending:
        with tempfile.TemporaryDirectory(prefix="bench-tune-") as scratch:
            for result in run_systems(Path(scratch) / "p", overrides, pending):
                runs.append(result)
                if args.runs:
                    save_run(args.runs, result, settings)
    runs = same_seeds(sorted(runs, key=lambda r: (r.seed, SYSTEMS.index(r.system))))
    target = report(runs, args.target)
    plot(runs, target, args.png)
    print(f"\nbest-so-far curves: {args.png}")


def run_systems(
    project: Path, overrides: dict[str, object], pending: list[tuple[int, str]]
) -> Iterator[Run]:
    """Each (seed, system) run in order, in a scratch project with the overrides applied."""
    make_scratch_project(project, overrides)
    params = load_params(project / "params.yaml")
    chosen = (params.data.task, params.model.family, params.metric)
    if chosen != (TASK, FAMILY, METRIC):
        raise SystemExit(
            f"error: the peers tune {FAMILY} {TASK} by CV {METRIC}; these params give "
            f"data.task {chosen[0]}, model.family {chosen[1]}, tune.metric {chosen[2]}"
        )
    dvc(project, "repro", "prepare")
    train = read_split(project_path(project, "TRAIN"), params.data)
    test = read_split(project_path(project, "TEST"), params.data)
    for seed, system in pending:
        if system == PIPELINE:
            result = pipeline(project, params, seed)
        elif system == XGB_CV:
            result = xgb_cv_peer(params, seed, train.x, train.y)
        else:
            result = plain_peer(params, seed, train.x, train.y)
        result.test_rmse = test_rmse(params, result.best_params, train, test)
        print(f"seed {seed} {system}: {result.wall_s:.1f} s", flush=True)
        yield result


if __name__ == "__main__":
    main()
