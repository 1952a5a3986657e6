"""The tuning driver under the load of a big cluster, simulated: how many trials/s can one take?

    python benchmarks/bench_driver.py                  # 8, 32, 128 slots x 100 trials; 32 x 1000
    python benchmarks/bench_driver.py --slots 32 --trials 100 5000 --extra    # most of an hour
    python benchmarks/bench_driver.py --quick
    python benchmarks/bench_driver.py --profile        # where the main thread's CPU goes, 32x1000
    python benchmarks/bench_driver.py --profile --profile-cell 32x300 --prefill 0 4700

Everything on the driver's side is real: `StudyRunner` (ask, tell, the window, the out-of-turn
saves, the file lock), the TPE sampler built from params.yaml, `TrialTask.build`, a SQLite
Optuna study and `StudyRun` on a SQLite MLflow store, each cell in a
fresh temporary directory. Only the workers are simulated: `slots` worker slots whose "fit"
sleeps for a trial duration replayed from a reference run (the outputs/optuna_study.db that
`dvc repro` left in --reference, default this checkout; cycled), divided by --time-scale,
then return that reference trial's outcome (state, reported values, fold MSE/R²) under the
asked trial's number and params. The default scale 10 makes the
mean trial 0.86 s, about the 0.9 CPU-seconds a trial of the default search costs on one core:
a slot is then roughly one single-core worker.

A zero-cost driver would reach `slots / mean duration` trials/s only if every slot were busy
all the time; the in-order window (docs/design.md) already idles slots behind a long
head-of-line trial. "window bound" is the efficiency that protocol allows with a driver that
costs nothing (a discrete-event replay of the same durations), so that what the driver loses
and what the protocol loses are told apart.

Numbers from a shared machine are noisy: note the load (printed), and compare within a run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import heapq
import itertools
import json
import logging
import math
import os
import pickle
import pstats
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))

import optuna  # noqa: E402
from optuna.distributions import BaseDistribution, FloatDistribution  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from hpo.config import Params, load_params  # noqa: E402
from hpo.protocol.runner import summarize  # noqa: E402
from hpo.session import start_session  # noqa: E402
from hpo.storage import tracking  # noqa: E402
from hpo.storage.settings import TRACKING_VAR  # noqa: E402
from hpo.storage.studies import close_storage, open_storage  # noqa: E402
from hpo.storage.study_run import StudyRun  # noqa: E402
from hpo.trial.evaluation import TrialOutcome, TrialTask  # noqa: E402
from hpo.trial.model import CVResult  # noqa: E402
from hpo.trial.space import distributions  # noqa: E402

# The goals of the issue: efficiency at 32 slots, and the growth of the driver's cost per trial.
GOAL_SLOTS, GOAL_EFFICIENCY, GOAL_COST_RATIO = 32, 0.8, 2.0


# --- the reference run, replayed ------------------------------------------------------------


@dataclass(frozen=True)
class ReplayedTrial:
    """What a worker hands back for one trial of the reference run, and how long it took."""

    duration_s: float
    state: TrialState
    reported: dict[int, float]
    fold_mse: list[float]
    fold_r2: list[float]


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
        storage = open_storage(copy)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            trials = study.get_trials(deepcopy=False)
        finally:
            close_storage(storage)
    return [
        ReplayedTrial(
            duration_s=(t.datetime_complete - t.datetime_start).total_seconds(),
            state=t.state,
            reported=dict(t.intermediate_values),
            fold_mse=list(t.user_attrs.get("fold_mse", [])),
            fold_r2=list(t.user_attrs.get("fold_r2", [])),
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
            fold_mse=[] if pruned else list(ref.fold_mse),
            fold_r2=[] if pruned else list(ref.fold_r2),
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


def segments(n_trials: int, window: int) -> tuple[range, range] | None:
    """Told-trial ranges for the driver's cost early and late in a run, or None if too short.

    Both lie in the steady state, where each tell is followed by one ask: not the first
    `window` tells (all of their trials were asked up front, untold) and not the last `window`
    (nothing is asked any more), either of which would distort a per-trial cost.
    """
    span = max(10, n_trials // 10)
    early = range(window, window + span)
    late = range(n_trials - window - span, n_trials - window)
    if late.start < early.stop:
        return None
    return early, late


class SegmentProfiler:
    """cProfile of the main thread, with a snapshot after given numbers of told trials."""

    def __init__(self, told_counts: set[int]) -> None:
        # The default (wall) clock, scaled to the measured CPU afterwards (_as_cpu_ms): a CPU
        # clock costs a system call per profiled event, which doubled the overhead here.
        self.profiler = cProfile.Profile()
        self.told_counts = told_counts
        self.snapshots: dict[int, dict[Any, Any]] = {}

    def snapshot(self) -> dict[Any, Any]:
        self.profiler.disable()
        stats = pstats.Stats(self.profiler).stats  # type: ignore[attr-defined]
        return stats

    def told(self, count: int) -> None:
        if count in self.told_counts:
            self.snapshots[count] = self.snapshot()
            self.profiler.enable()


class TimedRecorder:
    """The real StudyRun, with the main thread's CPU clock read after each record.

    The marks give the driver's cost per trial at each point of the run (not only its mean),
    which shows whether a trial costs more when the study is larger.
    """

    def __init__(
        self, inner: StudyRun, profiler: SegmentProfiler | None, prefilled: int = 0
    ) -> None:
        self.inner = inner
        self.profiler = profiler
        self.prefilled = prefilled
        self.cpu_marks: list[float] = []

    def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        self.inner.record(trial, outcome)
        self.cpu_marks.append(time.thread_time())
        if self.profiler is not None:
            self.profiler.told(len(self.cpu_marks))

    def recorded_numbers(self) -> set[int]:
        """Prefilled trials count as recorded: back-filling them in MLflow is not the load."""
        return self.inner.recorded_numbers() | set(range(self.prefilled))

    def cost_ms(self, told: range) -> float:
        """Main-thread CPU ms per trial over the told trials `told` (indices from 0)."""
        return 1000 * (self.cpu_marks[told.stop - 1] - self.cpu_marks[told.start - 1]) / len(told)


@dataclass
class Cell:
    slots: int
    trials: int  # asked and told in this run
    window: int
    prefill: int = 0  # finished trials already in the study when the run starts
    wall_s: float = 0.0
    ideal_per_s: float = 0.0
    bound_efficiency: float = 0.0
    main_cpu_s: float = 0.0  # the main thread's whole CPU time in run()
    accounted_cpu_s: float = 0.0  # what Progress accounts (summarize)
    accounted_busy_s: float = 0.0  # Progress's wall time of the same blocks
    other_threads_cpu_s: float = 0.0
    pickle_cpu_s: float = 0.0
    task_kb_last: float = 0.0
    early_ms: float | None = None  # CPU per trial, steady state, start of the run
    late_ms: float | None = None  # the same near the end, while the driver still asks
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    mlflow_runs: int = 0  # child runs found in the store afterwards: every trial recorded
    profile: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.slots}x{self.trials}" + (f"+{self.prefill}" if self.prefill else "")

    @property
    def per_s(self) -> float:
        return self.trials / self.wall_s

    @property
    def efficiency(self) -> float:
        return self.per_s / self.ideal_per_s

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.main_cpu_s / self.trials


class MlflowTemplate:
    """A freshly created, empty MLflow store, copied into each cell.

    Creating a SQLite store runs MLflow's migrations (4-5 s here); a copy of a new store is a
    new store, and leaves the cells' time for the driver.
    """

    def __init__(self, directory: Path) -> None:
        self.db = directory / "mlflow.db"
        tracking.connect(self.db, directory / "mlruns")

    def fresh(self, directory: Path) -> tuple[Any, str]:
        target = directory / "mlflow.db"
        with (
            contextlib.closing(sqlite3.connect(self.db)) as source,
            contextlib.closing(sqlite3.connect(target)) as copy,
        ):
            source.backup(copy)  # consistent even with a WAL beside the template
        return tracking.connect(target, directory / "mlruns")


def prefill_study(
    study: optuna.Study, replay: list[ReplayedTrial], space: dict[str, BaseDistribution], count: int
) -> None:
    """`count` finished trials, as an earlier session would have left them: params drawn at
    random in the space, outcomes replayed. The driver then works on a study that large without
    spending the benchmark's time to grow it (their MLflow runs are not written)."""
    rng = random.Random(0)
    trials = []
    for k in range(count):
        ref = replay[k % len(replay)]
        complete = ref.state == TrialState.COMPLETE
        trials.append(
            optuna.trial.create_trial(
                state=ref.state,
                value=mean(ref.fold_mse) if complete else None,
                params={name: _draw(rng, dist) for name, dist in space.items()},
                distributions=space,
                intermediate_values=dict(ref.reported),
                user_attrs={"fold_mse": ref.fold_mse, "fold_r2": ref.fold_r2} if complete else {},
            )
        )
    study.add_trials(trials)


def _draw(rng: random.Random, dist: BaseDistribution) -> float | int:
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    if not isinstance(dist, FloatDistribution):
        return rng.randint(low, high)
    if dist.log:
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def run_cell(
    params: Params,
    replay: list[ReplayedTrial],
    template: MlflowTemplate,
    slots: int,
    n_trials: int,
    time_scale: float,
    profile: bool = False,
    prefill: int = 0,
) -> Cell:
    """One (slots, trials) cell in a fresh temporary study and MLflow store."""
    budget = prefill + n_trials
    tune = params.tune.model_copy(update={"n_trials": budget, "parallel_trials": slots})
    window = slots + tune.lookahead
    cell = Cell(slots, n_trials, window, prefill)
    numbers = range(prefill, budget)
    durations = [replay[k % len(replay)].duration_s / time_scale for k in numbers]
    cell.ideal_per_s = slots / mean(durations)
    cell.bound_efficiency = n_trials / window_bound(durations, slots, window) / cell.ideal_per_s
    parts = segments(n_trials, window)
    profiler = None
    if profile and parts is not None:
        profiler = SegmentProfiler({part.start for part in parts} | {part.stop for part in parts})
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as scratch:
        directory = Path(scratch)
        storage = open_storage(directory / "optuna_study.db")
        executor = ReplayExecutor(replay, slots, time_scale)
        try:
            client, experiment_id = template.fresh(directory)
            cell_params = params.model_copy(update={"tune": tune})
            session = start_session(
                cell_params,
                storage,
                executor,
                client,
                experiment_id,
                f"bench-driver-{cell.label}",
                log=lambda _line: None,
            )
            prefill_study(session.study, replay, distributions(tune.search_space), prefill)
            recorder = TimedRecorder(session.study_run, profiler, prefill)
            session.runner.recorder = recorder
            runner = session.runner
            wall, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
            if profiler is not None:
                profiler.profiler.enable()
            try:
                progress = runner.run()
            finally:
                if profiler is not None:
                    profiler.snapshots[-1] = profiler.snapshot()
            cell.wall_s = time.perf_counter() - wall
            cell.main_cpu_s = time.thread_time() - cpu
            cell.other_threads_cpu_s = time.process_time() - process - cell.main_cpu_s
            summary = summarize(session.study.study_name, progress)
            cell.mlflow_runs = len(recorder.recorded_numbers()) - prefill
        finally:
            executor.shutdown(cancel=True)
            close_storage(storage)
    cell.accounted_cpu_s = summary["main_thread_cpu_seconds"]
    cell.accounted_busy_s = summary["main_thread_seconds"]
    counts = summary["n_trials"]  # of this run's trials
    complete = sum(replay[k % len(replay)].state == TrialState.COMPLETE for k in range(prefill))
    cell.complete, cell.pruned = (
        counts["complete"] - complete,
        counts["pruned"] - prefill + complete,
    )
    cell.failed = counts["failed"]
    cell.pickle_cpu_s = executor.pickle_cpu_s
    cell.task_kb_last = executor.task_bytes[-1] / 1024 if executor.task_bytes else 0.0
    if parts is not None and len(recorder.cpu_marks) == n_trials:
        cell.early_ms, cell.late_ms = (recorder.cost_ms(part) for part in parts)
    if profiler is not None and parts is not None:
        snaps = profiler.snapshots
        columns = [(f"whole run ({n_trials})", snaps[-1], n_trials, cell.cpu_ms)]
        columns += [
            (
                f"told {part.start}-{part.stop - 1}",
                _difference(snaps[part.stop], snaps[part.start]),
                len(part),
                recorder.cost_ms(part),
            )
            for part in parts
        ]
        cell.profile = {
            name: _as_cpu_ms(breakdown(raw), trials, cpu_ms)
            for name, raw, trials, cpu_ms in columns
        }
    return cell


# --- where the driver's time goes -------------------------------------------------------------

# (label, function, caller or None): the function's cumulative time, through that caller only
# when one is given. Chosen so that no two overlap; "other" is the rest of the main thread.
_HPO, _OPTUNA, _BENCH = "stages/hpo/", "optuna/", "bench_driver.py"
WAIT = "wait for workers (futures.wait; wall, not CPU)"
_TPE = _OPTUNA + "samplers/_tpe/sampler.py"
_VIEW_ASK = "ask: in-memory protocol view (study.ask on it, but TPE)"
COMPONENTS: list[tuple[str, tuple[str, str], tuple[str, str] | None]] = [
    (
        "ask: is trial k stored? (_stored_trial)",
        (_HPO + "protocol/runner.py", "_stored_trial"),
        None,
    ),
    ("ask: TPESampler construction", (_HPO + "trial/space.py", "make_sampler"), None),
    (
        "ask: TPE infer_relative_search_space (+trial read)",
        (_TPE, "infer_relative_search_space"),
        None,
    ),
    ("ask: TPE sample_relative", (_TPE, "sample_relative"), None),
    ("ask: TPE before_trial", (_TPE, "before_trial"), None),
    (_VIEW_ASK, (_HPO + "protocol/view.py", "sample"), None),
    (
        "ask: storage (one new trial, one write)",
        (_HPO + "protocol/runner.py", "_create_trial"),
        None,
    ),
    ("submit: TrialTask.build (snapshot)", (_HPO + "trial/evaluation.py", "build"), None),
    ("submit: pickle the task (transport)", (_BENCH, "_encode"), None),
    (
        "tell: trial.report, one write per value",
        (_OPTUNA + "trial/_trial.py", "report"),
        (_HPO + "protocol/runner.py", "_tell"),
    ),
    (
        "tell: set_user_attr(fold_mse, fold_r2, clock)",
        (_OPTUNA + "trial/_trial.py", "set_user_attr"),
        (_HPO + "protocol/runner.py", "_tell"),
    ),
    (
        "tell: study.tell",
        (_OPTUNA + "study/study.py", "tell"),
        (_HPO + "protocol/runner.py", "_tell"),
    ),
    ("tell: MLflow child run (StudyRun.record)", (_HPO + "storage/study_run.py", "record"), None),
    ("tell: protocol view", (_HPO + "protocol/view.py", "tell"), None),
    (
        "save out-of-turn outcome (pending_outcome)",
        (_OPTUNA + "trial/_trial.py", "set_user_attr"),
        (_HPO + "protocol/runner.py", "_wait_for_head"),
    ),
    (
        WAIT,
        ("concurrent/futures/_base.py", "wait"),
        (_HPO + "protocol/runner.py", "_wait_for_head"),
    ),
    ("file lock (ask_lock)", (_HPO + "storage/studies.py", "study_lock"), None),
    ("start: record missing MLflow runs", (_HPO + "protocol/runner.py", "_record_missing"), None),
]
# Parts of the view's ask that have their own line above, subtracted from its line.
_VIEW_ASK_PARTS = [label for label, (path, _name), _ in COMPONENTS if path == _TPE]
_VIEW_ASK_PARTS.append("ask: TPESampler construction")
OTHER, TOTAL = "other (loop, progress line, ...)", "total: main-thread CPU"
PROFILED = "(profiled wall time, before scaling)"


def _matches(key: tuple[str, int, str], target: tuple[str, str]) -> bool:
    filename, _line, name = key
    return name == target[1] and target[0] in filename.replace(os.sep, "/")


def breakdown(raw: dict[Any, Any]) -> dict[str, float]:
    """Seconds of the main thread per component, from cProfile's raw stats."""
    result: dict[str, float] = {}
    for label, target, caller in COMPONENTS:
        seconds = 0.0
        for key, (_cc, _nc, _tt, ct, callers) in raw.items():
            if not _matches(key, target):
                continue
            if caller is None:
                seconds += ct
            else:
                seconds += sum(edge[3] for who, edge in callers.items() if _matches(who, caller))
        result[label] = seconds
    result[_VIEW_ASK] -= sum(result[label] for label in _VIEW_ASK_PARTS)
    total = sum(tt for _cc, _nc, tt, _ct, _callers in raw.values())  # all profiled time
    result[OTHER] = total - sum(result.values())
    result[TOTAL] = total
    return result


def _difference(later: dict[Any, Any], earlier: dict[Any, Any]) -> dict[Any, Any]:
    """What the profiler counted between two snapshots."""

    def minus(now: tuple[Any, ...], then: tuple[Any, ...] | None) -> tuple[Any, ...]:
        return now if then is None else tuple(a - b for a, b in zip(now, then, strict=True))

    result = {}
    for key, (cc, nc, tt, ct, callers) in later.items():
        before = earlier.get(key)
        head = minus((cc, nc, tt, ct), before[:4] if before else None)
        old_callers = before[4] if before else {}
        edges = {who: minus(edge, old_callers.get(who)) for who, edge in callers.items()}
        result[key] = (*head, edges)
    return result


def _as_cpu_ms(seconds: dict[str, float], trials: int, cpu_ms: float) -> dict[str, float]:
    """Per-trial ms of main-thread CPU by component: the profile's wall times scaled to add up
    to the CPU the thread was measured to use over the same trials.

    On a machine shared with other work the thread waits for a core at random points, which a
    wall-clock profile counts in every component alike, and more in a busier spell: scaled, two
    parts of a run compare. Waiting for the workers is not CPU and stays as measured.
    """
    wall = {label: 1000 * value / trials for label, value in seconds.items()}
    busy = wall[TOTAL] - wall[WAIT]
    factor = cpu_ms / busy if busy > 0 else 1.0
    result = {
        label: value if label == WAIT else value * factor
        for label, value in wall.items()
        if label != TOTAL
    }
    result[TOTAL] = cpu_ms
    result[PROFILED] = wall[TOTAL]
    return result


# --- report -----------------------------------------------------------------------------------


def print_table(cells: list[Cell], time_scale: float) -> None:
    print(
        f"\nsimulated workers: replayed reference durations / {time_scale:g}; "
        "window = slots + lookahead\n"
    )
    header = (
        f"{'slots':>5}{'trials':>11}{'wall s':>8}{'trials/s':>9}{'ideal/s':>9}{'effic.':>7}"
        f"{'bound':>7}{'CPU ms/tr':>10}{'ratio':>7}{'early':>7}{'late':>7}{'acct ms':>8}"
        f"{'busy %':>7}{'task KB':>8}{'pickle ms':>10}{'C/P/F':>12}"
    )
    print(header)
    print("-" * len(header))
    for cell in cells:
        base = _base_cell(cells, cell.slots)
        ratio = cell.cpu_ms / base.cpu_ms
        early, late = ("-" if ms is None else f"{ms:.0f}" for ms in (cell.early_ms, cell.late_ms))
        print(
            f"{cell.slots:>5}{_trials(cell):>11}{cell.wall_s:>8.1f}{cell.per_s:>9.1f}"
            f"{cell.ideal_per_s:>9.1f}{cell.efficiency:>7.2f}{cell.bound_efficiency:>7.2f}"
            f"{cell.cpu_ms:>10.1f}{ratio:>7.2f}{early:>7}{late:>7}"
            f"{1000 * cell.accounted_cpu_s / cell.trials:>8.1f}"
            f"{100 * cell.accounted_busy_s / cell.wall_s:>7.0f}{cell.task_kb_last:>8.1f}"
            f"{1000 * cell.pickle_cpu_s / cell.trials:>10.2f}"
            f"{f'{cell.complete}/{cell.pruned}/{cell.failed}':>12}"
        )
    others = max(1000 * c.other_threads_cpu_s / c.trials for c in cells)
    print(
        "\nefficiency = trials/s / ideal (slots / mean scaled duration); bound = the efficiency\n"
        "the in-order window allows a driver that costs nothing; CPU ms/tr = the driver's main\n"
        "thread over all of run(); ratio = CPU ms/tr against the smallest study at the same\n"
        "slots; trials = prefilled+run; early, late = CPU ms per trial in the steady state (one\n"
        "ask per tell) over the first and the last tenth of the run; acct ms = what Progress\n"
        "accounts (its ask and tell blocks); busy % = Progress's wall time of those blocks /\n"
        "wall; task KB = the last task pickled; pickle ms = pickling per trial; C/P/F =\n"
        "complete/pruned/failed.\n"
        f"The simulated workers' thread used at most {others:.2f} ms CPU per trial."
    )


def _trials(cell: Cell) -> str:
    return f"{cell.prefill}+{cell.trials}" if cell.prefill else str(cell.trials)


def _size(cell: Cell) -> int:
    """Trials in the study at the end of the run."""
    return cell.prefill + cell.trials


def _base_cell(cells: list[Cell], slots: int) -> Cell:
    return min((c for c in cells if c.slots == slots), key=_size)


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
    at_goal = [c for c in cells if c.slots == GOAL_SLOTS]
    if not at_goal:
        print(f"  efficiency at {GOAL_SLOTS} slots: not measured (no cell with {GOAL_SLOTS} slots)")
    for cell in at_goal:
        verdict = "met" if cell.efficiency >= GOAL_EFFICIENCY else "MISSED"
        print(
            f"  efficiency >= {GOAL_EFFICIENCY} at {GOAL_SLOTS} slots, {cell.trials} trials: "
            f"{cell.efficiency:.2f} ({verdict}); the window alone allows "
            f"{cell.bound_efficiency:.2f}, a driver at {cell.cpu_ms:.0f} ms/trial at most "
            f"{1000 / cell.cpu_ms / cell.ideal_per_s:.2f}"
        )
    measured = False
    for slots in sorted({c.slots for c in cells}):
        base = _base_cell(cells, slots)
        largest = max((c for c in cells if c.slots == slots), key=_size)
        if largest is base:
            continue
        measured = True
        ratio = largest.cpu_ms / base.cpu_ms
        verdict = "met" if ratio <= GOAL_COST_RATIO else "MISSED"
        late = ""
        if largest.late_ms is not None and base.early_ms is not None:
            late = (
                f"; per trial at the end of the {_trials(largest)} run "
                f"{largest.late_ms / base.early_ms:.2f}x the start of the {_trials(base)} run"
            )
        print(
            f"  cost per trial at {_trials(largest)} / at {_trials(base)} trials, {slots} slots: "
            f"{largest.cpu_ms:.1f} / {base.cpu_ms:.1f} ms = {ratio:.2f} "
            f"(<= {GOAL_COST_RATIO}: {verdict}){late}"
        )
    if not measured:
        print("  cost growth: not measured (needs two trial counts at the same slots)")


def print_profile(cells: list[Cell]) -> None:
    """One cell: its whole run, and its steady state early and late. Several (one per --prefill):
    the whole run of each, side by side: what a trial costs on a small and on a large study."""
    if len(cells) == 1:
        columns = list(cells[0].profile.items())
        first, last, growth_name = columns[1][1], columns[2][1], "late/early"
        title = f"{cells[0].slots} slots x {cells[0].trials} trials"
    else:
        columns = [(f"{c.label} whole", next(iter(c.profile.values()))) for c in cells]
        first, last, growth_name = columns[0][1], columns[-1][1], "last/first"
        title = ", ".join(f"{c.trials} trials on {c.prefill} prefilled" for c in cells)
    print(
        f"\nwhere the driver's main thread spends its CPU, {title} (cProfile; ms of CPU per told "
        "trial, % of the column's total)"
    )
    print(
        f"{'component':<52}" + "".join(f"{name:>22}" for name, _ in columns) + f"{growth_name:>11}"
    )
    for label in columns[0][1]:
        line = f"{label:<52}"
        for _name, column in columns:
            share = (
                f"{100 * column[label] / column[TOTAL]:>6.0f}%" if label != PROFILED else " " * 7
            )
            line += f"{column[label]:>15.2f}{share}"
        growth = f"{last[label] / first[label]:.1f}" if first[label] >= 0.05 else "-"
        print(line + f"{growth:>11}")
    print(
        "(wall-clock profile scaled to the thread's measured CPU over the same trials; that CPU\n"
        "includes cProfile's overhead, so compare shares and growth, not absolute ms, with an\n"
        "unprofiled run; the ratio of the last two rows is the profiler's slowdown plus the\n"
        "time the thread waited for a core)"
    )


# --- command line -----------------------------------------------------------------------------


def parse_cells(args: argparse.Namespace) -> list[tuple[int, int, int]]:
    """(slots, trials, prefill) for every cell to run."""
    if args.profile:
        pairs = [_slots_x_trials(args.profile_cell)]
    else:
        pairs = [(s, n) for s in args.slots for n in args.trials]
        pairs += [_slots_x_trials(extra) for extra in args.extra]
    return sorted({(s, n, p) for s, n in pairs for p in args.prefill})


def _slots_x_trials(text: str) -> tuple[int, int]:
    slots, trials = (int(part) for part in text.lower().split("x"))
    return slots, trials


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--trials", type=int, nargs="+", default=[100])
    parser.add_argument(
        "--extra",
        nargs="*",
        default=["32x1000"],
        metavar="SLOTSxTRIALS",
        help="cells added to the grid: the large trial counts, where one cell is all there is "
        "time for (32x5000 takes most of an hour on a busy 2-core machine)",
    )
    parser.add_argument("--time-scale", type=float, default=10.0, help="durations divided by")
    parser.add_argument(
        "--quick", action="store_true", help="a small grid: 4 and 16 slots, 50 and 200 trials"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the driver in one cell (--profile-cell) instead of running the grid",
    )
    parser.add_argument("--profile-cell", default="32x1000", metavar="SLOTSxTRIALS")
    parser.add_argument(
        "--prefill",
        type=int,
        nargs="+",
        default=[0],
        metavar="N",
        help="finished trials put in each cell's study before the run (random params, replayed "
        "outcomes, no MLflow runs): the cost of a trial on a large study, without running the "
        "trials that made it large; e.g. --profile --profile-cell 32x300 --prefill 0 4700",
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
    replay = load_reference(args.reference)
    scaled = mean(r.duration_s for r in replay) / args.time_scale
    print(
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} "
        f"cores; reference run: {len(replay)} trials, mean {scaled * args.time_scale:.2f} s "
        f"(scaled {scaled:.3f} s); lookahead {params.tune.lookahead}; sampler "
        f"{params.tune.sampler.model_dump()}",
        flush=True,
    )
    plan = parse_cells(args)
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="bench-driver-mlflow-") as scratch:
        template = MlflowTemplate(Path(scratch))
        for slots, n_trials, prefill in plan:
            started = time.perf_counter()
            cell = run_cell(
                params, replay, template, slots, n_trials, args.time_scale, args.profile, prefill
            )
            cells.append(cell)
            on = f" on {prefill} prefilled" if prefill else ""
            print(
                f"  {slots:>4} slots x {n_trials:>5} trials{on}: {cell.per_s:6.1f} trials/s, "
                f"efficiency {cell.efficiency:.2f}, driver {cell.cpu_ms:.1f} ms CPU/trial "
                f"({time.perf_counter() - started:.0f} s with setup)",
                flush=True,
            )
    print_table(cells, args.time_scale)
    if args.profile:
        if all(cell.profile for cell in cells):
            print_profile(cells)
        else:
            print("(too few trials for a steady state to profile)")
    else:
        print_lookahead(
            replay, sorted({c.slots for c in cells}), max(map(_size, cells)), args.time_scale
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
    if os.environ.pop(TRACKING_VAR, None):
        print(f"note: {TRACKING_VAR} ignored: the benchmark uses its own SQLite store")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)


if __name__ == "__main__":
    main()
