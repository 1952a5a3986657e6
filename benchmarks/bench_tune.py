"""Side-by-side benchmark: a plain Optuna loop against this pipeline's tune stage.

    python benchmarks/bench_tune.py --trials 100

The plain loop is what one writes first: Optuna TPE, MedianPruner on the running mean after
each CV fold, XGBoost's scikit-learn API with 1 thread per trial, 2 trials in parallel
(`n_jobs=2`), no MLflow. The pipeline runs for real (`dvc repro` in a scratch copy of this
repository, MLflow on) with the same data, search space, folds and trial count. Both are
judged the same way: refit the best params on the training split, RMSE on the test split.
Not part of the test suite: timings on shared machines are noisy, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import xgboost as xgb  # noqa: E402
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
    return {
        "wall_s": wall,
        "cpu_cores": cpu / wall,
        "complete": states.count(optuna.trial.TrialState.COMPLETE),
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "best_cv_mse": study.best_value,
        "best_params": study.best_params,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _suggest(trial: optuna.Trial, name: str, dist: optuna.distributions.BaseDistribution):
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def pipeline_tune(n_trials: int, folds: int, workdir: Path) -> dict:
    """The real tune stage, through dvc, in a scratch git+DVC copy of the repository."""
    project = workdir / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml", "stages", "data/raw", ".dvcignore", ".gitignore"):
        source, target = REPO / name, project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    text = (project / "params.yaml").read_text()
    text = text.replace("n_trials: 100", f"n_trials: {n_trials}")
    text = text.replace("cv_folds: 5", f"cv_folds: {folds}")
    (project / "params.yaml").write_text(text)
    env_path = f"{Path(sys.executable).parent}:{__import__('os').environ['PATH']}"

    def sh(*args: str) -> float:
        started = time.perf_counter()
        subprocess.run(args, cwd=project, check=True, capture_output=True, env={"PATH": env_path})
        return time.perf_counter() - started

    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    sh(sys.executable, "-m", "dvc", "repro", "prepare")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = sh(sys.executable, "-m", "dvc", "repro", "tune")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sh(sys.executable, "-m", "dvc", "repro")
    noop = sh(sys.executable, "-m", "dvc", "repro")
    summary = json.loads((project / "outputs/tune_summary.json").read_text())
    results = json.loads((project / "outputs/results.json").read_text())
    return {
        "wall_s": wall,
        "cpu_cores": cpu / wall,
        "complete": summary["n_trials"]["complete"],
        "pruned": summary["n_trials"]["pruned"],
        "best_cv_mse": summary["best_cv_mse"],
        "best_params": summary["best_params"],
        "optimization_s": summary["optimization_time_seconds"],
        "main_thread_busy_share": summary["main_thread_seconds"] / wall,
        "main_thread_cpu_share": summary["main_thread_cpu_seconds"] / cpu,
        "pipeline_test_rmse": results["test_rmse"],
        "noop_repro_s": noop,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def test_rmse(best_params: dict, train, test) -> float:
    params = load_params(REPO / "params.yaml")
    booster = train_final(params.model, best_params, train[FEATURES], train[TARGET])
    return mse(test[TARGET], booster.inplace_predict(test[FEATURES])) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--skip-plain", action="store_true", help="only time the pipeline")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = load_params(REPO / "params.yaml")
    train, test = split(
        derive_features(read_raw(REPO / "data/raw/cal_housing.data.gz")),
        params.prepare.test_size,
        params.prepare.split_seed,
    )
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        rows["pipeline tune"] = pipeline_tune(args.trials, args.folds, Path(workdir))
    if not args.skip_plain:
        rows["plain Optuna loop"] = plain_loop(
            args.trials, args.folds, params.tune.cv_seed, train[FEATURES], train[TARGET]
        )
    for row in rows.values():
        row["test_rmse"] = test_rmse(row["best_params"], train, test)

    print(f"\n{args.trials} trials, {args.folds}-fold CV, 2 parallel trials\n")
    header = f"{'':<20}{'wall s':>9}{'ratio':>8}{'CPU cores':>11}{'complete':>10}{'pruned':>8}"
    print(header + f"{'best CV MSE':>13}{'test RMSE':>11}{'peak RSS MB':>13}")
    reference = rows.get("plain Optuna loop", rows["pipeline tune"])["wall_s"]
    for name, row in rows.items():
        print(
            f"{name:<20}{row['wall_s']:>9.1f}{row['wall_s'] / reference:>8.2f}"
            f"{row['cpu_cores']:>11.2f}{row['complete']:>10}{row['pruned']:>8}"
            f"{row['best_cv_mse']:>13.5f}{row['test_rmse']:>11.4f}{row['peak_rss_mb']:>13.0f}"
        )
    tune = rows["pipeline tune"]
    if "plain Optuna loop" in rows:
        print(
            f"\npipeline's optimisation loop alone (without starting Python, dvc and MLflow): "
            f"{tune['optimization_s']:.1f} s, ratio "
            f"{tune['optimization_s'] / reference:.2f}"
        )
    print(
        f"pipeline: main thread (sampler, study storage, MLflow) busy for "
        f"{tune['main_thread_busy_share']:.1%} of tune's wall time, waiting for a core "
        f"included; its CPU time is {tune['main_thread_cpu_share']:.1%} of tune's CPU time"
    )
    print(f"pipeline: `dvc repro` with nothing to do took {tune['noop_repro_s']:.2f} s")


if __name__ == "__main__":
    main()
