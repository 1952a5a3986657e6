"""The tuning driver under the load of a big cluster, simulated: how many trials/s can one take?

    python benchmarks/bench_driver.py          # 8, 32, 128 slots x 100 trials; 32 and 128 x 1000
    python benchmarks/bench_driver.py --slots 32 --trials 100 1000 5000 --extra  # the cost floor
    python benchmarks/bench_driver.py --quick

Everything on the driver's side is real: `driver_session` builds the tune stage's session from
the library's parts as hpo/session.py does (the `StudyRunner` with its window and out-of-turn
saves, the TPE sampler of params.yaml, each `TrialTask` with its `PrunerEvidence`, the study's
MLflow run, and the `WriteBehind` process that stores trials in a SQLite Optuna study and
records them in a SQLite MLflow store), each cell in a fresh temporary directory. Only the
workers are simulated: `slots` worker slots whose "fit" sleeps for a trial duration replayed
from a reference run (the outputs/optuna_study.db that `dvc repro` left in --reference,
default this checkout; cycled), scaled to a mean of --mean-trial seconds (0.86 s, about what a
trial of the default search costs on one core: a slot is then roughly one single-core worker),
then return that reference trial's outcome under the asked trial's number and params.

A zero-cost driver would reach `slots / mean duration` trials/s only if every slot were busy
all the time; the in-order window (docs/design.md) already idles slots behind a long
head-of-line trial. "bound" is the efficiency that protocol allows with a driver that costs
nothing (a discrete-event replay of the same durations), so that what the driver loses and
what the protocol loses are told apart. Beside each cell, Optuna alone (an in-memory study,
one TPESampler of the same settings, ask + tell) at the same trial count is the floor of what
driving this sampler costs.

Numbers from a shared machine are noisy: note the load (printed), and compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import logging
import os
import pickle
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

import optuna  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from hpo.config import Params, load_params  # noqa: E402
from hpo.protocol.runner import StudyRunner  # noqa: E402
from hpo.search.space import distributions, make_sampler  # noqa: E402
from hpo.search.trial import (  # noqa: E402
    FOLD_SCORES_ATTR,
    CVResult,
    TrialOutcome,
    TrialTask,
)
from hpo.session import STOPPED_WRITER_EXIT_S, WRITER_EXIT_S, make_runner  # noqa: E402
from hpo.storage import studies  # noqa: E402
from hpo.storage.writer import WriteBehind, WriterConfig  # noqa: E402
from hpo.tasks import direction  # noqa: E402
from hpo.tracking import mlflow as tracking  # noqa: E402
from hpo.tracking.study_run import StudyRun  # noqa: E402

# The goals: efficiency by slots at >= GOAL_TRIALS trials, and the driver's main-thread cost
# per trial against Optuna's own ask + tell at the same study size.
EFFICIENCY_GOALS, GOAL_TRIALS, GOAL_FLOOR_RATIO = {32: 0.8, 128: 0.6}, 1000, 2.0


# --- the reference run, replayed ------------------------------------------------------------


@dataclass(frozen=True)
class ReplayedTrial:
    """What a worker hands back for one trial of the reference run, and how long it took."""

    duration_s: float
    state: TrialState
    reported: dict[int, float]
    fold_scores: list[float]  # each fold's final score (tune.metric); empty unless complete


def load_reference(project: Path) -> list[ReplayedTrial]:
    """The trials of the project's last tune run in number order, read from a copy (the DVC
    output stays untouched: opening a SQLite file in WAL mode can write beside it)."""
    db, summary = project / "outputs/optuna_study.db", project / "outputs/tune_summary.json"
    if not db.is_file() or not summary.is_file():
        raise SystemExit(
            f"bench_driver: no tune run in {project}/outputs (optuna_study.db and "
            "tune_summary.json): run `dvc repro tune` there first, or pass --reference PROJECT"
        )
    name = json.loads(summary.read_text())["study_name"]
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / db.name
        shutil.copy2(db, copy)
        storage = studies.open_storage(copy)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            trials = study.get_trials(deepcopy=False)
        finally:
            studies.close_storage(storage)
    return [
        ReplayedTrial(
            duration_s=(t.datetime_complete - t.datetime_start).total_seconds(),
            state=t.state,
            reported=dict(t.intermediate_values),
            fold_scores=list(t.user_attrs.get(FOLD_SCORES_ATTR, [])),
        )
        for t in trials
        if t.state.is_finished() and t.datetime_start and t.datetime_complete
    ]


def replayed_outcome(task: TrialTask, ref: ReplayedTrial, started: float) -> TrialOutcome:
    """The reference trial's result as if the asked trial had produced it."""
    result = None
    if ref.state in (TrialState.COMPLETE, TrialState.PRUNED):
        pruned = ref.state == TrialState.PRUNED
        result = CVResult(
            curve=dict(ref.reported),
            fold_scores=[] if pruned else list(ref.fold_scores),
            stopped_early=pruned,
        )
    error = "replayed failure" if ref.state == TrialState.FAIL else None
    return TrialOutcome(
        task.number, task.params, ref.state, result, dict(ref.reported), error, started, time.time()
    )


# --- the simulated cluster --------------------------------------------------------------------


class ReplayExecutor:
    """A TrialExecutor whose `slots` workers sleep for the replayed duration of each trial.

    One timer thread plays all the workers (a heap of finish times, a FIFO queue for tasks
    that find no free slot), so the simulated cluster takes almost no CPU or GIL time from the
    driver: 128 sleeping pool threads would wake and contend for the GIL at each completion.
    A task is pickled on submit, in the caller's thread, as a real remote executor must send
    it: that cost belongs to the driver and grows with the snapshot of completed trials.
    """

    def __init__(self, replay: list[ReplayedTrial], slots: int, time_scale: float) -> None:
        self.tags = {"hpo.executor": "simulated", "hpo.workers": str(slots)}
        self._replay = replay
        self._scale = time_scale
        self._free = slots
        self._heap: list[tuple[float, int, Future[TrialOutcome], TrialTask, float]] = []
        self._queue: deque[tuple[Future[TrialOutcome], TrialTask]] = deque()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.pickle_cpu_s = 0.0
        self.task_bytes: list[int] = []
        self._timer = threading.Thread(target=self._run, name="simulated-workers", daemon=True)
        self._timer.start()

    def duration(self, number: int) -> float:
        return self._replay[number % len(self._replay)].duration_s / self._scale

    def submit(self, task: TrialTask) -> Future[TrialOutcome]:
        self._encode(task)
        future: Future[TrialOutcome] = Future()
        with self._cond:
            if self._free:
                self._free -= 1
                self._start(future, task, time.time())
            else:
                self._queue.append((future, task))
        return future

    def _encode(self, task: TrialTask) -> bytes:
        """Serialise the task as a remote executor would; its size and CPU time are kept."""
        cpu = time.thread_time()
        data = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        self.pickle_cpu_s += time.thread_time() - cpu
        self.task_bytes.append(len(data))
        return data

    def _start(self, future: Future[TrialOutcome], task: TrialTask, at: float) -> None:
        """Occupy a slot from `at` (caller holds the lock)."""
        deadline = at + self.duration(task.number)
        heapq.heappush(self._heap, (deadline, next(self._seq), future, task, at))
        self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.time()):
                    timeout = self._heap[0][0] - time.time() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                done = []
                while self._heap and self._heap[0][0] <= time.time():
                    deadline, _, future, task, started = heapq.heappop(self._heap)
                    done.append((future, task, started))
                    if self._queue:  # the freed worker takes the oldest waiting task at once
                        self._start(*self._queue.popleft(), deadline)
                    else:
                        self._free += 1
            for future, task, started in done:  # outside the lock: wakes the driver
                ref = self._replay[task.number % len(self._replay)]
                with contextlib.suppress(InvalidStateError):  # cancelled by a shutdown
                    future.set_result(replayed_outcome(task, ref, started))

    def shutdown(self, cancel: bool = False) -> None:
        with self._cond:
            self._closed = True
            pending = [item[2] for item in self._heap] + [item[0] for item in self._queue]
            self._cond.notify()
        if cancel:
            for future in pending:
                future.cancel()
        if threading.current_thread() is not self._timer:
            self._timer.join()


def window_bound(durations: list[float], slots: int, window: int) -> float:
    """Wall time of the run under the in-order window with a driver that costs nothing.

    Trial k is asked when trial k - window is told, starts on the first free slot (FIFO),
    and is told once it and every earlier trial have finished.
    """
    free_at = [0.0] * slots
    told: list[float] = []
    for k, duration in enumerate(durations):
        asked = told[k - window] if k >= window else 0.0
        start = max(asked, heapq.heappop(free_at))
        heapq.heappush(free_at, start + duration)
        told.append(max(start + duration, told[-1] if told else 0.0))
    return told[-1]


# --- one cell: a real driver over the simulated cluster ---------------------------------------


@dataclass
class Cell:
    slots: int
    trials: int
    window: int
    wall_s: float = 0.0
    ideal_per_s: float = 0.0
    bound_efficiency: float = 0.0
    main_cpu_s: float = 0.0  # the driver's main thread over all of run()
    writer_cpu_s: float = 0.0  # the writer process (study and MLflow writes)
    floor_ms: float = 0.0  # Optuna alone, per trial, at the same study size
    task_kb_last: float = 0.0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    mlflow_runs: int = 0  # child runs found in the store afterwards: every trial recorded

    @property
    def per_s(self) -> float:
        return self.trials / self.wall_s

    @property
    def efficiency(self) -> float:
        return self.per_s / self.ideal_per_s

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.main_cpu_s / self.trials

    @property
    def floor_ratio(self) -> float:
        return self.cpu_ms / self.floor_ms


class MlflowTemplate:
    """A freshly created, empty MLflow store with the experiment, copied into each cell.

    Creating a SQLite store runs MLflow's migrations (seconds); a copy of a new store is a new
    store, and leaves the cells' time for the driver.
    """

    def __init__(self, directory: Path, experiment: str) -> None:
        self.db = directory / "mlflow.db"
        self.experiment = experiment
        client = MlflowClient(f"sqlite:///{self.db}")
        client.create_experiment(experiment, artifact_location=(directory / "mlruns").as_uri())

    def fresh(self, directory: Path) -> tuple[MlflowClient, str]:
        """A copy in `directory`, in WAL mode as hpo.tracking.mlflow.connect leaves the stage's
        store; its client and the experiment's id."""
        target = directory / "mlflow.db"
        with (
            contextlib.closing(sqlite3.connect(self.db)) as source,
            contextlib.closing(sqlite3.connect(target)) as copy,
        ):
            source.backup(copy)  # consistent even with a WAL beside the template
            copy.execute("PRAGMA journal_mode=WAL")
        client = MlflowClient(f"sqlite:///{target}")
        return client, client.get_experiment_by_name(self.experiment).experiment_id


@dataclass(frozen=True)
class DriverSession:
    runner: StudyRunner
    study_run: StudyRun


@contextlib.contextmanager
def driver_session(
    params: Params,
    directory: Path,
    executor: ReplayExecutor,
    mlflow_store: tuple[MlflowClient, str],
    name: str,
) -> Iterator[DriverSession]:
    """The tune stage's session as hpo/session.py builds it, around the simulated cluster: the
    study `name` in a SQLite store in `directory`, its MLflow run in `mlflow_store`, the writer
    process and the runner. When the block ends, the writer has applied every write."""
    metric = params.metric
    client, experiment_id = mlflow_store
    study_db = directory / "optuna_study.db"
    mlflow_db = client.tracking_uri.removeprefix("sqlite:///")
    writer = WriteBehind()  # it imports its libraries while the stores are opened
    try:
        storage = studies.open_storage(study_db)
        try:
            study = studies.load_or_create(storage, name, direction(metric), metric)
            run_params = params.model_dump(mode="json", exclude={"tune": {"n_trials"}})
            tags = {**tracking.provenance_tags(run_params), **executor.tags}
            study_run = StudyRun.open(client, experiment_id, study, metric, run_params, tags)
            writer.configure(WriterConfig(
                storage_url=f"sqlite:///{study_db}", study_name=name, study_label=str(study_db),
                tracking_uri=client.tracking_uri, tracking_label=mlflow_db,
                experiment_id=experiment_id, run_id=study_run.run_id, metric=metric, tags=tags,
                patient=(), files={str(study_db): str(study_db), mlflow_db: mlflow_db},
            ))  # fmt: skip
            yield DriverSession(make_runner(study, params, executor, writer), study_run)
            writer.close(WRITER_EXIT_S)
        finally:
            studies.close_storage(storage)
    finally:
        writer.close(STOPPED_WRITER_EXIT_S)


def optuna_floor_ms(params: Params, replay: list[ReplayedTrial], n_trials: int) -> float:
    """Optuna alone: main-thread CPU ms per trial of ask + tell on an in-memory study with one
    sampler of the pipeline's settings, over the same space, for `n_trials` trials (the
    replayed values told as complete). What any driver of this sampler must pay at least."""
    sampler = make_sampler(params.tune.sampler, trial_number=0)
    study = optuna.create_study(direction=direction(params.metric), sampler=sampler)
    space = distributions(params.model.chosen.search_space)
    values = [_replayed_value(replay[k % len(replay)]) for k in range(n_trials)]
    cpu = time.thread_time()
    for value in values:
        trial = study.ask(space)
        study.tell(trial, value)
    return 1000 * (time.thread_time() - cpu) / n_trials


def _replayed_value(ref: ReplayedTrial) -> float:
    if ref.fold_scores:
        return mean(ref.fold_scores)
    return ref.reported[max(ref.reported)] if ref.reported else 1.0


def run_cell(
    params: Params,
    replay: list[ReplayedTrial],
    template: MlflowTemplate,
    slots: int,
    n_trials: int,
    time_scale: float,
) -> Cell:
    """One (slots, trials) cell in a fresh temporary study and MLflow store."""
    tune = params.tune.model_copy(update={"n_trials": n_trials, "parallel_trials": slots})
    window = slots + tune.lookahead
    cell = Cell(slots, n_trials, window)
    durations = [replay[k % len(replay)].duration_s / time_scale for k in range(n_trials)]
    cell.ideal_per_s = slots / mean(durations)
    cell.bound_efficiency = n_trials / window_bound(durations, slots, window) / cell.ideal_per_s
    cell_params = params.model_copy(update={"tune": tune})
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as scratch:
        directory = Path(scratch)
        mlflow_store = template.fresh(directory)
        executor = ReplayExecutor(replay, slots, time_scale)
        children = _children_cpu_s()
        try:
            name = f"bench-driver-{slots}x{n_trials}"
            with driver_session(cell_params, directory, executor, mlflow_store, name) as session:
                # Timed like the tune stage: from the first ask to the last trial stored.
                wall, cpu = time.perf_counter(), time.thread_time()
                progress = session.runner.run()
                cell.wall_s = time.perf_counter() - wall
                cell.main_cpu_s = time.thread_time() - cpu
        finally:
            executor.shutdown(cancel=True)
        cell.writer_cpu_s = _children_cpu_s() - children  # the writer process has ended
        cell.mlflow_runs = len(session.study_run.recorded_numbers())
    cell.complete, cell.pruned, cell.failed = progress.complete, progress.pruned, progress.failed
    cell.task_kb_last = executor.task_bytes[-1] / 1024 if executor.task_bytes else 0.0
    return cell


def _children_cpu_s() -> float:
    """CPU seconds of this process's ended and waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- report -----------------------------------------------------------------------------------


def print_table(cells: list[Cell], time_scale: float) -> None:
    print(
        f"\nsimulated workers: replayed reference durations / {time_scale:g}; "
        "window = slots + lookahead\n"
    )
    header = (
        f"{'slots':>5}{'trials':>7}{'wall s':>8}{'trials/s':>9}{'ideal/s':>9}{'effic.':>7}"
        f"{'bound':>7}{'driver ms':>10}{'optuna ms':>10}{'ratio':>7}{'writer ms':>10}"
        f"{'task KB':>8}{'C/P/F':>12}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        print(
            f"{cell.slots:>5}{cell.trials:>7}{cell.wall_s:>8.1f}{cell.per_s:>9.1f}"
            f"{cell.ideal_per_s:>9.1f}{cell.efficiency:>7.2f}{cell.bound_efficiency:>7.2f}"
            f"{cell.cpu_ms:>10.2f}{cell.floor_ms:>10.2f}{cell.floor_ratio:>7.2f}"
            f"{1000 * cell.writer_cpu_s / cell.trials:>10.2f}{cell.task_kb_last:>8.1f}"
            f"{f'{cell.complete}/{cell.pruned}/{cell.failed}':>12}"
        )
    print(
        "\nefficiency = trials/s / ideal (slots / mean scaled duration); bound = the efficiency\n"
        "the in-order window allows a driver that costs nothing; driver ms = the driver's main\n"
        "thread, CPU per trial over all of run(); optuna ms = Optuna alone (in-memory study, one\n"
        "TPESampler, ask + tell) at the same trial count; ratio = driver / optuna; writer ms =\n"
        "the writer process's CPU per trial (study and MLflow writes, off the driver's thread);\n"
        "task KB = the last task pickled; C/P/F = complete/pruned/failed."
    )


def print_lookahead(
    replay: list[ReplayedTrial], slots_list: list[int], n_trials: int, time_scale: float
) -> None:
    """What the in-order window alone allows, by lookahead: the protocol's own limit."""
    lookaheads = [0, 2, 4, 8, 16, 32, 64, 128]
    durations = [replay[k % len(replay)].duration_s / time_scale for k in range(n_trials)]
    ideal_s = mean(durations)
    print(f"\nwindow bound by lookahead ({n_trials} replayed trials, driver cost zero)")
    print(f"{'slots':>5}" + "".join(f"{f'+{la}':>7}" for la in lookaheads))
    for slots in slots_list:
        bounds = [
            n_trials / window_bound(durations, slots, slots + la) / (slots / ideal_s)
            for la in lookaheads
        ]
        print(f"{slots:>5}" + "".join(f"{b:>7.2f}" for b in bounds))


def print_goals(cells: list[Cell]) -> None:
    print("\ngoals")
    for cell in cells:
        goal = EFFICIENCY_GOALS.get(cell.slots)
        if goal is not None and cell.trials >= GOAL_TRIALS:
            verdict = "met" if cell.efficiency >= goal else "MISSED"
            print(
                f"  efficiency >= {goal} at {cell.slots} slots, {cell.trials} trials: "
                f"{cell.efficiency:.2f} ({verdict}); the window alone allows "
                f"{cell.bound_efficiency:.2f}"
            )
    for cell in cells:
        verdict = "met" if cell.floor_ratio <= GOAL_FLOOR_RATIO else "MISSED"
        print(
            f"  driver <= {GOAL_FLOOR_RATIO}x Optuna alone at {cell.slots} slots, {cell.trials} "
            f"trials: {cell.cpu_ms:.2f} / {cell.floor_ms:.2f} ms = {cell.floor_ratio:.2f} "
            f"({verdict})"
        )


# --- command line -----------------------------------------------------------------------------


def parse_cells(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(slots, trials) for every cell to run."""
    pairs = {(s, n) for s in args.slots for n in args.trials}
    for extra in args.extra:
        slots, trials = (int(part) for part in extra.lower().split("x"))
        pairs.add((slots, trials))
    return sorted(pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--trials", type=int, nargs="+", default=[100])
    parser.add_argument(
        "--extra",
        nargs="*",
        default=["32x1000", "128x1000"],
        metavar="SLOTSxTRIALS",
        help="cells added to the grid, e.g. 32x5000",
    )
    parser.add_argument(
        "--mean-trial",
        type=float,
        default=0.86,
        metavar="SECONDS",
        help="replayed durations are scaled to this mean (0.86 s: about one trial of the "
        "default search on one core)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small grid: 4 and 16 slots, 50 and 200 trials"
    )
    parser.add_argument(
        "--lookahead",
        type=int,
        help="tune.lookahead for every cell (default: params.yaml's); a larger one lets more "
        "slots work behind a long head-of-line trial",
    )
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument(
        "--reference",
        type=Path,
        default=REPO,
        metavar="PROJECT",
        help="the project whose last tune run is replayed (default: this checkout)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.slots, args.trials, args.extra = [4, 16], [50, 200], []
    _quiet()
    params = load_params(args.reference / "params.yaml")
    if args.lookahead is not None:
        tune = params.tune.model_copy(update={"lookahead": args.lookahead})
        params = params.model_copy(update={"tune": tune})
    replay = load_reference(args.reference)
    reference_mean = mean(r.duration_s for r in replay)
    time_scale = reference_mean / args.mean_trial
    print(
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} "
        f"cores; reference run: {len(replay)} trials, mean {reference_mean:.2f} s "
        f"(scaled to {args.mean_trial:.3f} s); lookahead {params.tune.lookahead}; sampler "
        f"{params.tune.sampler.model_dump()}",
        flush=True,
    )
    cells: list[Cell] = []
    floors: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-driver-mlflow-") as scratch:
        experiment = tracking.names(params.model.family, params.data.path)
        template = MlflowTemplate(Path(scratch), experiment)
        for slots, n_trials in parse_cells(args):
            started = time.perf_counter()
            cell = run_cell(params, replay, template, slots, n_trials, time_scale)
            if n_trials not in floors:  # measured beside the cells, on the same machine
                floors[n_trials] = optuna_floor_ms(params, replay, n_trials)
            cell.floor_ms = floors[n_trials]
            cells.append(cell)
            print(
                f"  {slots:>4} slots x {n_trials:>5} trials: {cell.per_s:6.1f} trials/s, "
                f"efficiency {cell.efficiency:.2f}, driver {cell.cpu_ms:.2f} ms CPU/trial, "
                f"Optuna alone {cell.floor_ms:.2f} ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    print_table(cells, time_scale)
    print_lookahead(
        replay, sorted({c.slots for c in cells}), max(c.trials for c in cells), time_scale
    )
    print_goals(cells)
    print(f"load average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        rows = [
            {**vars(c), "per_s": c.per_s, "efficiency": c.efficiency, "cpu_ms": c.cpu_ms}
            for c in cells
        ]
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def _quiet() -> None:
    """No MLflow store messages, no Optuna trial lines, and MLflow on the files we give it."""
    if os.environ.pop(tracking.TRACKING_VAR, None):
        print(f"note: {tracking.TRACKING_VAR} ignored: the benchmark uses its own SQLite store")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


if __name__ == "__main__":
    main()
