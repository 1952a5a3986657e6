"""Side-by-side benchmark: a plain Optuna loop against this pipeline's tune stage.

    python benchmarks/bench_tune.py --trials 100 --repeats 3

The plain loop is what one writes first: Optuna TPE, MedianPruner on the running mean after
each CV fold, XGBoost's scikit-learn API with 1 thread per trial, 2 trials in parallel
(`n_jobs=2`), no MLflow. The pipeline runs for real (`dvc repro` in a scratch copy of this
repository, MLflow on) with the same data, search space, folds and trial count. Both are
judged the same way: refit the best params on the training split, RMSE on the test split.
Not part of the test suite: timings on shared machines are noisy, so compare within one run,
and repeat: the plain loop's trials depend on thread timing (`n_jobs=2`), so its work varies
from run to run. "boosting rounds" (summed over trials and folds) is the work each side did,
independent of the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import xgboost as xgb  # noqa: E402
from scratch_project import make_scratch_project, run  # noqa: E402
from sklearn.model_selection import KFold  # noqa: E402

from hpo.config import load_params  # noqa: E402
from hpo.data import FEATURES, TARGET, derive_features, read_raw, split  # noqa: E402
from hpo.metrics import mse  # noqa: E402
from hpo.model import train_final  # noqa: E402
from hpo.xgb_params import distributions  # noqa: E402


def plain_loop(n_trials: int, folds: int, seed: int, x, y) -> dict:
    params = load_params(REPO / "params.yaml")
    space = distributions(params.tune.search_space)
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_indices = list(splitter.split(x))

    def objective(trial: optuna.Trial) -> float:
        tuned = {name: _suggest(trial, name, dist) for name, dist in space.items()}
        scores = []
        for step, (train_idx, valid_idx) in enumerate(fold_indices):
            model = xgb.XGBRegressor(**tuned, n_jobs=1, random_state=seed)
            model.fit(x.iloc[train_idx], y.iloc[train_idx])
            scores.append(mse(y.iloc[valid_idx], model.predict(x.iloc[valid_idx])))
            trial.report(float(np.mean(scores)), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(scores))

    study = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=seed), pruner=optuna.pruners.MedianPruner()
    )
    wall, cpu = time.perf_counter(), time.process_time()
    study.optimize(objective, n_trials=n_trials, n_jobs=2)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    states = [t.state for t in study.trials]
    folds_trained = {  # a pruned trial stopped after the fold it reported last
        t.number: folds
        if t.state == optuna.trial.TrialState.COMPLETE
        else len(t.intermediate_values)
        for t in study.trials
    }
    return {
        "wall_s": wall,
        "boosting_rounds": sum(
            t.params["n_estimators"] * folds_trained[t.number] for t in study.trials
        ),
        "cpu_cores": cpu / wall,
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "best_cv_mse": study.best_value,
        "best_params": study.best_params,
    }


def _suggest(trial: optuna.Trial, name: str, dist: optuna.distributions.BaseDistribution):
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def pipeline_tune(n_trials: int, folds: int, workdir: Path) -> dict:
    """The real tune stage, through dvc, in a scratch git+DVC copy of the repository."""
    project = make_scratch_project(
        workdir / "project", {"tune.n_trials": n_trials, "tune.cv_folds": folds}
    )

    def sh(*args: str) -> float:
        return run(project, *args)

    sh(sys.executable, "-m", "dvc", "repro", "prepare")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = sh(sys.executable, "-m", "dvc", "repro", "tune")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sh(sys.executable, "-m", "dvc", "repro")
    noop = sh(sys.executable, "-m", "dvc", "repro")
    summary = json.loads((project / "outputs/tune_summary.json").read_text())
    study = optuna.load_study(
        study_name=summary["study_name"],
        storage=f"sqlite:///{project / 'outputs/optuna_study.db'}",
    )
    return {
        "wall_s": wall,
        "boosting_rounds": sum(_rounds_per_fold(t) * folds for t in study.trials),
        "cpu_cores": cpu / wall,
        "complete": summary["n_trials"]["complete"],
        "pruned": summary["n_trials"]["pruned"],
        "best_cv_mse": summary["best_cv_mse"],
        "best_params": summary["best_params"],
        "optimization_s": summary["optimization_time_seconds"],
        "main_thread_busy_share": summary["main_thread_seconds"] / wall,
        "main_thread_cpu_share": summary["main_thread_cpu_seconds"] / cpu,
        "noop_repro_s": noop,
    }


def _rounds_per_fold(trial: optuna.trial.FrozenTrial) -> int:
    """Rounds each fold of a pipeline trial was boosted: all folds advance together."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        return trial.params["n_estimators"]
    return max(trial.intermediate_values, default=0)


def test_rmse(best_params: dict, train, test) -> float:
    params = load_params(REPO / "params.yaml")
    booster = train_final(params.model, best_params, train[FEATURES], train[TARGET])
    return mse(test[TARGET], booster.inplace_predict(test[FEATURES])) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs; medians shown")
    parser.add_argument("--skip-plain", action="store_true", help="only time the pipeline")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = load_params(REPO / "params.yaml")
    train, test = split(
        derive_features(read_raw(REPO / "data/raw/cal_housing.data.gz")),
        params.prepare.test_size,
        params.prepare.split_seed,
    )
    runs: list[dict[str, dict]] = []
    for _ in range(args.repeats):  # interleaved, so that a slow spell hits both sides
        pair = {}
        with tempfile.TemporaryDirectory() as workdir:
            pair[PIPELINE] = pipeline_tune(args.trials, args.folds, Path(workdir))
        if not args.skip_plain:
            pair[PLAIN] = plain_loop(
                args.trials, args.folds, params.tune.cv_seed, train[FEATURES], train[TARGET]
            )
        for row in pair.values():
            row["test_rmse"] = test_rmse(row["best_params"], train, test)
        runs.append(pair)
    _print_report(runs, args)


PIPELINE, PLAIN = "pipeline tune", "plain Optuna loop"


def _print_report(runs: list[dict[str, dict]], args: argparse.Namespace) -> None:
    print(f"\n{args.trials} trials, {args.folds}-fold CV, 2 parallel trials\n")
    header = f"{'':<24}{'wall s':>9}{'ratio':>8}{'CPU cores':>11}{'rounds':>9}{'complete':>10}"
    print(header + f"{'pruned':>8}{'best CV MSE':>13}{'test RMSE':>11}")
    for index, pair in enumerate(runs, start=1):
        reference = pair.get(PLAIN, pair[PIPELINE])["wall_s"]
        for name, row in pair.items():
            print(
                f"{name + f' #{index}':<24}{row['wall_s']:>9.1f}{row['wall_s'] / reference:>8.2f}"
                f"{row['cpu_cores']:>11.2f}{row['boosting_rounds']:>9}{row['complete']:>10}"
                f"{row['pruned']:>8}{row['best_cv_mse']:>13.5f}{row['test_rmse']:>11.4f}"
            )
    tunes = [pair[PIPELINE] for pair in runs]
    if PLAIN in runs[0]:
        ratios = [pair[PIPELINE]["wall_s"] / pair[PLAIN]["wall_s"] for pair in runs]
        loop_ratios = [pair[PIPELINE]["optimization_s"] / pair[PLAIN]["wall_s"] for pair in runs]
        work = [pair[PIPELINE]["boosting_rounds"] / pair[PLAIN]["boosting_rounds"] for pair in runs]
        print(
            f"\nmedian ratio pipeline / plain: wall {median(ratios):.2f}, optimisation loop alone "
            f"(without starting Python, dvc and MLflow) {median(loop_ratios):.2f}, "
            f"boosting rounds {median(work):.2f}"
        )
    busy = median(t["main_thread_busy_share"] for t in tunes)
    cpu_share = median(t["main_thread_cpu_share"] for t in tunes)
    print(
        f"pipeline (medians): main thread (sampler, study storage, MLflow) busy for {busy:.1%} "
        f"of tune's wall time, waiting for a core included; its CPU time is {cpu_share:.1%} of "
        f"tune's CPU time; `dvc repro` with nothing to do took "
        f"{median(t['noop_repro_s'] for t in tunes):.2f} s"
    )
    # The OS keeps one peak per process (and one over all finished children), not per run.
    stages_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    line = f"peak RSS over all runs: largest pipeline stage {stages_mb:.0f} MB"
    if PLAIN in runs[0]:
        own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        line += f"; this process, which ran the plain loop, {own_mb:.0f} MB"
    print(line)


if __name__ == "__main__":
    main()
