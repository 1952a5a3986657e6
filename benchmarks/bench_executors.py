"""Side-by-side benchmark of what runs the trials: local fold threads against Dask on this machine.

    python benchmarks/bench_executors.py --trials 100 --repeats 2

Runs the real tune stage (`python stages/tune.py`, MLflow on) on the same prepared data and
params with each executor, interleaved, `--repeats` times:

* local-threads: the default, trials split into fold tasks on `parallel_trials` threads;
* dask-1x2: one `dask worker` process with 2 threads (Dask's own local execution);
* dask-2x1: two `dask worker` processes with 1 thread each.

The Dask scheduler and workers start once, before the first timing, on 127.0.0.1. It prints
each run's wall time, the median per executor, its ratio to local-threads, and whether every
executor produced the same trials (it must: where trials run never changes what they find).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from scratch_project import make_scratch_project, project_path, run  # noqa: E402
from services import dask_scheduler, dask_worker  # noqa: E402


def make_workdir(root: Path, n_trials: int) -> Path:
    """A copy of the project with `tune.n_trials` set, its prepare stage already run."""
    workdir = make_scratch_project(root / "project", {"tune.n_trials": n_trials})
    run(workdir, sys.executable, "stages/prepare.py")
    return workdir


def run_tune(workdir: Path, scheduler: str | None) -> dict:
    """One tune from an empty outputs/; its wall time and its trials."""
    shutil.rmtree(workdir / "outputs", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    if scheduler is not None:
        env["DASK_SCHEDULER_ADDRESS"] = scheduler
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "stages/tune.py"], cwd=workdir, env=env, check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.perf_counter() - started
    summary = json.loads(project_path(workdir, "TUNE_SUMMARY").read_text())
    return {"wall_s": wall, "trials": _trials(workdir), "summary": summary}


def _trials(workdir: Path) -> list[tuple]:
    with sqlite3.connect(project_path(workdir, "STUDY_COPY")) as connection:
        return connection.execute(
            "SELECT t.number, t.state, v.value FROM trials t "
            "LEFT JOIN trial_values v ON v.trial_id = t.trial_id ORDER BY t.number"
        ).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        workdir = make_workdir(root, args.trials)
        workers_env = {"PYTHONPATH": str(workdir / "stages")}
        one_by_two = stack.enter_context(dask_scheduler(root))
        stack.enter_context(dask_worker(one_by_two.address, 2, env=workers_env, nanny=True))
        two_by_one = stack.enter_context(dask_scheduler(root))
        for _ in range(2):
            stack.enter_context(dask_worker(two_by_one.address, 1, env=workers_env, nanny=True))
        executors = {
            "local-threads": None,
            "dask-1x2": one_by_two.address,
            "dask-2x1": two_by_one.address,
        }
        runs: dict[str, list[dict]] = {name: [] for name in executors}
        for repeat in range(args.repeats):
            for name, scheduler in executors.items():
                result = run_tune(workdir, scheduler)
                runs[name].append(result)
                print(f"repeat {repeat + 1} {name:<14} {result['wall_s']:7.1f} s", flush=True)
    _report(runs, args)


def _report(runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    print(f"\n{args.trials} trials, {args.repeats} interleaved repeats, median wall time:")
    baseline = median(r["wall_s"] for r in runs["local-threads"])
    for name, results in runs.items():
        wall = median(r["wall_s"] for r in results)
        print(f"  {name:<14} {wall:7.1f} s   ratio to local-threads {wall / baseline:.2f}")
    reference = runs["local-threads"][0]["trials"]
    same = all(r["trials"] == reference for results in runs.values() for r in results)
    print(f"identical trials across executors and repeats: {'yes' if same else 'NO'}")
    best = runs["local-threads"][0]["summary"]
    print(
        f"best CV {best['metric'].upper()} {best['best_value']:.5f} "
        f"(trial {best['best_trial_number']})"
    )


if __name__ == "__main__":
    main()
