"""What growing, cutting and restoring a study costs, against running it from scratch.

    python benchmarks/bench_growth.py                  # 100 -> 150 -> 100 -> committed
    python benchmarks/bench_growth.py --base 20 --grown 30

In one scratch project with the default params (MLflow on, the real `dvc` commands):

1. `dvc repro` with tune.n_trials = base, committed;
2. `dvc exp run -S tune.n_trials=grown`: grow the study;
3. `dvc exp run -S tune.n_trials=base`: cut it back;
4. `git checkout -- params.yaml dvc.lock && dvc repro`: return to the committed run;

and in a second project, `dvc repro` with tune.n_trials = grown from scratch. It prints each
command's wall time, the grow / from-scratch ratio, and whether the results are bit-identical
(trials, best params, the refit model's files) where they must be: grown with from-scratch, and
cut and restored with the committed run. Times are whole commands, every stage included.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import optuna
from scratch_project import commit, dvc, make_scratch_project, project_path, run


def snapshot(project: Path) -> dict:
    """What must be identical: every trial of the DVC output, the best params, the model."""
    summary = json.loads(project_path(project, "TUNE_SUMMARY").read_text())
    study = optuna.load_study(
        study_name=summary["study_name"],
        storage=f"sqlite:///{project_path(project, 'STUDY_COPY')}",
    )
    model = project_path(project, "MODEL")  # the family's model file(s), as train_best saved them
    return {
        "trials": [
            (t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials
        ],
        "best_params": summary["best_params"],
        "model": {file.name: file.read_bytes() for file in sorted(model.iterdir())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=100)
    parser.add_argument("--grown", type=int, default=150)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-growth-") as scratch:
        root = Path(scratch)
        project = make_scratch_project(root / "grown", {"tune.n_trials": args.base})
        times = {f"dvc repro, {args.base} trials": dvc(project, "repro")}
        commit(project, "the committed run")
        committed = snapshot(project)
        label = f"dvc exp run -S tune.n_trials={args.grown} (grow)"
        times[label] = dvc(project, "exp", "run", "-S", f"tune.n_trials={args.grown}")
        grown = snapshot(project)
        label = f"dvc exp run -S tune.n_trials={args.base} (cut)"
        times[label] = dvc(project, "exp", "run", "-S", f"tune.n_trials={args.base}")
        cut = snapshot(project)
        run(project, "git", "checkout", "--", "params.yaml", "dvc.lock")
        times["git checkout params.yaml dvc.lock; dvc repro (back)"] = dvc(project, "repro")
        back = snapshot(project)
        fresh = make_scratch_project(root / "fresh", {"tune.n_trials": args.grown})
        times[f"dvc repro, {args.grown} trials from scratch"] = dvc(fresh, "repro")
        from_scratch = snapshot(fresh)

    for label, seconds in times.items():
        print(f"{seconds:8.1f} s  {label}")
    scratch_s = times[f"dvc repro, {args.grown} trials from scratch"]
    grow_s = times[f"dvc exp run -S tune.n_trials={args.grown} (grow)"]
    print(f"grow / from scratch: {grow_s / scratch_s:.2f}")
    checks = {
        f"grown == {args.grown} from scratch": grown == from_scratch,
        "cut == committed": cut == committed,
        "back == committed": back == committed,
    }
    for name, same in checks.items():
        print(f"{'bit-identical' if same else 'DIFFERENT':>13}  {name}")
    if not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
