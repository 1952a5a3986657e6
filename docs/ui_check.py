"""Check what a person sees of a finished run, in headless Chromium, and save screenshots.

Three screens, each started the way the README starts it and read back from the rendered page:

- `mlflow ui`: the run's experiment (named after its model family and table) opens on the runs
  table (not MLflow 3's GenAI overview) with the study run (named as the study) and the
  final-model run; expanding the study shows its trials; the best trial's page shows its params
  and its CV metric (cv_<tune.metric>, and per fold).
- `optuna-dashboard`: its API lists the study with every trial, and the study page renders with
  the objective named as the study names it (cv_<metric>). On a run this script makes itself,
  the dashboard is also opened on the live study store while tune is still running, and must
  already serve finished trials.
- `dvc plots show`: the page draws every chart of dvc.yaml (the search's history and parameter
  importance, and the test split's, from the templates named after data.task) with Vega loaded
  from `.vega/` (the offline set-up in the README), never from the CDN, the charts with axis
  titles; and it shows every PNG of dvc.yaml (the test split's evaluation among them).

Usage (from the project root, after `pip install -e ".[dev]"` and the README's npm line):

    python docs/ui_check.py                      # a tiny run in a temp folder (CI)
    python docs/ui_check.py --project . --docs   # this checkout's run; refresh docs/*.png

Screenshots go to ui-screenshots/ (git-ignored). Exit 0 when every check passes; otherwise one
line per failed check and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import optuna
import yaml
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import deep_update, make_project, space, subprocess_env  # noqa: E402
from services import ServiceUnavailableError, web_ui  # noqa: E402

from hpo.tracking.mlflow import names  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Without the networking flags Chromium keeps calling Google's hosts, which this network refuses.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,1000",
)  # fmt: skip
# MLflow 3.17's UI ignores the experiment's kind tag and opens every experiment in the view of a
# per-browser GenAI / Model training switch (GenAI until changed); this query sets the switch.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
VEGA_DIR = REPO / ".vega"
DOCS_WIDTH = 900  # pixels: README screenshots stay small
WAIT_S = 60.0
DASHBOARD = str(Path(sys.executable).parent / "optuna-dashboard")  # no `python -m` entry


class CheckFailedError(AssertionError):
    """A screen did not show what it should; the message says what was missing."""


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            raise SystemExit(f"{path} not found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def wait_for(browser: webdriver.Chrome, condition: Callable[[], bool], what: str) -> None:
    try:
        WebDriverWait(browser, WAIT_S, poll_frequency=0.5).until(lambda _: condition())
    except TimeoutException:
        message = f"{browser.current_url}: {what} not shown after {WAIT_S:.0f} s"
        raise CheckFailedError(message) from None


def page_text(browser: webdriver.Chrome) -> str:
    return browser.find_element(By.TAG_NAME, "body").text


def wait_for_text(browser: webdriver.Chrome, *texts: str) -> None:
    for text in texts:
        wait_for(browser, lambda text=text: text in page_text(browser), repr(text))


def vega_plot_titles(project: Path) -> set[str]:
    """The top-level plots of dvc.yaml that Vega draws (the others are PNG files)."""
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    return {title for plot in plots if isinstance(plot, dict) for title in plot}


def png_plots(project: Path) -> list[str]:
    """The PNG files dvc.yaml lists among its plots, as paths (after ${paths.NAME})."""
    dvc_yaml = yaml.safe_load((project / "dvc.yaml").read_text())
    declared = next(entry["paths"] for entry in dvc_yaml["vars"] if "paths" in entry)
    pngs = []
    for plot in dvc_yaml["plots"]:
        if isinstance(plot, str):
            for name, value in declared.items():
                plot = plot.replace(f"${{paths.{name}}}", value)
            pngs.append(plot)
    return pngs


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


class Screens:
    """The checks, sharing one browser, one project and one screenshot folder."""

    def __init__(self, browser: webdriver.Chrome, project: Path, shots: Path) -> None:
        self.browser = browser
        self.project = project
        self.shots = shots
        self.summary = json.loads((project / "outputs/tune_summary.json").read_text())
        self.study = self.summary["study_name"]
        self.metric = f"cv_{self.summary['metric']}"  # the trials' CV metric in MLflow
        params = yaml.safe_load((project / "params.yaml").read_text())
        self.experiment = names(params["model"]["family"], params["data"]["path"])

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.browser.save_screenshot(str(path))
        return path

    def mlflow_ui(self) -> None:
        client = mlflow.MlflowClient(f"sqlite:///{self.project / 'outputs/mlflow.db'}")
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            raise CheckFailedError(f"no MLflow experiment {self.experiment!r}")
        study_run = self.study  # the study run is named as the study
        # The registered model's run: an earlier study's when this one refit the same bytes.
        results = json.loads((self.project / "outputs/results.json").read_text())
        model_run = client.get_run(results["mlflow"]["model_run_id"]).info.run_name
        best = f"trial-{self.summary['best_trial_number']:03d}"
        [best_run] = client.search_runs(
            [experiment.experiment_id],
            f"tags.mlflow.runName = '{best}' and "
            f"tags.mlflow.parentRunId = '{self.summary['mlflow_parent_run_id']}'",
        )
        args = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                "sqlite:///outputs/mlflow.db", "--workers", "1"]  # fmt: skip
        # No GenAI job runners, no telemetry calls to a network this may not have.
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        with web_ui(args, "mlflow ui", self.project, self.shots, "/health", env) as url:
            experiment_page = f"{url}/#/experiments/{experiment.experiment_id}"
            self.browser.get(f"{experiment_page}?{MODEL_TRAINING_VIEW}")
            wait_for_text(self.browser, "Run Name", study_run, model_run)
            if "Token Usage" in page_text(self.browser):
                raise CheckFailedError(f"{experiment_page}: opened on the GenAI overview")
            self._close_assistant()
            self._expand_run(study_run)
            wait_for_text(self.browser, "trial-000")
            self.screenshot("mlflow_runs")
            self.browser.get(f"{experiment_page}/runs/{best_run.info.run_id}?{MODEL_TRAINING_VIEW}")
            # Its params (one of them with its value) and its CV metric, overall and per fold.
            param = next(iter(self.summary["best_params"]))
            wanted = [best, self.metric, f"fold_0_{self.summary['metric']}"]
            wanted += [*self.summary["best_params"], best_run.data.params[param]]
            wait_for_text(self.browser, *wanted)
            parameters = f"//*[text()={json.dumps(param)}]"
            self.browser.execute_script(
                "arguments[0].scrollIntoView({block: 'center'})",
                self.browser.find_element(By.XPATH, parameters),
            )
            self.screenshot("mlflow_trial")
        print(
            f"ok  mlflow ui: experiment {self.experiment}, runs table with {study_run!r} and "
            f"its trials; {best}'s params and {self.metric}"
        )

    def _close_assistant(self) -> None:
        """Close MLflow 3's assistant panel (it opens by itself on a first visit)."""
        close = "button[data-component-id='mlflow.assistant.chat_panel.close']"
        for button in self.browser.find_elements(By.CSS_SELECTOR, close):
            button.click()

    def _expand_run(self, run_name: str) -> None:
        """Click the "+" that shows a parent run's children in the runs table."""
        cell = f"//*[text()={json.dumps(run_name)}]/ancestor::*[@role='gridcell'][1]"
        try:
            self.browser.find_element(By.XPATH, f"{cell}//button").click()
        except WebDriverException as exc:
            raise CheckFailedError(f"no expand button beside {run_name!r}: {exc.msg}") from None

    def optuna_dashboard(self, store: Path | None = None) -> None:
        """The dashboard on the run's study file, or on `store` (the live store) when given."""
        database = store or self.project / "outputs/optuna_study.db"
        objective = self._objective_name(self.project / "outputs/optuna_study.db")
        args = [DASHBOARD, f"sqlite:///{database}"]
        with web_ui(args, "optuna-dashboard", self.project, self.shots, "/api/studies") as url:
            study_id, trials = self._dashboard_trials(url)
            expected = self.summary["trial_budget"]
            if len(trials) != expected:
                raise CheckFailedError(f"{url}: serves {len(trials)} of {expected} trials")
            self.browser.get(f"{url}/dashboard/studies/{study_id}")
            wait_for_text(self.browser, self.study, "History", "Hyperparameter Importance")
            wait_for_text(self.browser, objective)  # the objective's axis, named
            self.screenshot("optuna_dashboard")
        print(
            f"ok  optuna-dashboard: {self.study} with {len(trials)} trials, objective {objective}"
        )

    def _objective_name(self, database: Path) -> str:
        """The name the study gives its objective (cv_<metric>), which the dashboard shows."""
        study = optuna.load_study(study_name=self.study, storage=f"sqlite:///{database}")
        if study.metric_names != [self.metric]:
            raise CheckFailedError(
                f"{database}: study {self.study} names its objective {study.metric_names}, "
                f"not [{self.metric!r}]"
            )
        return study.metric_names[0]

    def _dashboard_trials(self, url: str) -> tuple[int, list[dict]]:
        studies = get_json(f"{url}/api/studies")["study_summaries"]
        ids = [s["study_id"] for s in studies if s["study_name"] == self.study]
        if not ids:
            raise CheckFailedError(f"{url}/api/studies: no study {self.study}")
        return ids[0], get_json(f"{url}/api/studies/{ids[0]}?after=0")["trials"]

    def dvc_plots(self) -> None:
        out = self.project / "dvc_plots"
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "plots", "show", "-o", str(out)],
            cwd=self.project, env=subprocess_env(), capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise CheckFailedError(f"dvc plots show failed: {done.stderr.strip()[-300:]}")
        page = (out / "index.html").read_text()
        if "cdn.jsdelivr.net/npm/vega@" in page and "vega.min.js" not in page:
            raise CheckFailedError("dvc plots page loads Vega from the CDN only")
        self.browser.get((out / "index.html").as_uri())
        wait_for(
            self.browser,
            lambda: self.browser.execute_script("return typeof vegaEmbed") == "function",
            "Vega loaded",
        )
        sources = self.browser.execute_script(
            "return Array.from(document.scripts).map(s => s.src).filter(Boolean)"
        )
        if any("cdn.jsdelivr" in s for s in sources):
            raise CheckFailedError(f"Vega came from the CDN, not from {VEGA_DIR}")
        titles = vega_plot_titles(self.project)
        charts = ".vega-embed svg.marks"
        wait_for(
            self.browser,
            lambda: len(self.browser.find_elements(By.CSS_SELECTOR, charts)) == len(titles),
            f"{len(titles)} Vega charts",
        )
        shown = self.browser.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).map(svg => ["
            "  svg.querySelector('.role-title-text text')?.textContent,"
            "  Array.from(svg.querySelectorAll('.role-axis-title text')).map(t => t.textContent)"
            "])",
            charts,
        )
        for title, axis_titles in shown:
            if title not in titles or len(axis_titles) != 2 or "y" in axis_titles:
                raise CheckFailedError(f"dvc plots: chart {title!r} has axis titles {axis_titles}")
        if {title for title, _ in shown} != titles:
            raise CheckFailedError(f"dvc plots: charts {[t for t, _ in shown]}, not {titles}")
        images = self._images_shown(png_plots(self.project))
        self.screenshot("dvc_plots")
        print(
            f"ok  dvc plots show: {len(shown)} charts drawn with local Vega, axis titles set "
            f"({', '.join(sorted(titles))}); {len(images)} images shown ({', '.join(images)})"
        )

    def _images_shown(self, pngs: list[str]) -> list[str]:
        """Every PNG of dvc.yaml on the page, loaded and drawn at its own size (DVC copies it
        to static/, named after the revision and the path)."""
        script = (
            "return Array.from(document.images).map(img => "
            "[img.getAttribute('src'), img.complete, img.naturalWidth])"
        )
        wait_for(
            self.browser,
            lambda: all(done for _, done, _ in self.browser.execute_script(script)),
            "every image loaded",
        )
        shown = self.browser.execute_script(script)
        for png in pngs:
            suffix = png.replace("/", "_")
            found = [(src, width) for src, _, width in shown if src.endswith(suffix)]
            if len(found) != 1 or found[0][1] == 0:
                raise CheckFailedError(f"dvc plots: {png} not shown (images: {shown})")
            if not (self.project / png).is_file():
                raise CheckFailedError(f"dvc plots: {png} shown, but not in {self.project}")
            ours = Image.open(self.project / png).width
            if found[0][1] != ours:
                raise CheckFailedError(f"dvc plots: {png} {found[0][1]} px wide, not {ours}")
        if len(shown) != len(pngs):
            raise CheckFailedError(f"dvc plots: {len(shown)} images, not {len(pngs)}: {shown}")
        return [Path(png).name for png in pngs]


# Enough trials that tune outlasts its writer process's start (its imports take seconds on a
# busy machine, and the trials run meanwhile; they are then stored in one burst).
LIVE_TRIALS = 40


@contextlib.contextmanager
def tiny_run_checked_live(folder: Path, browser: webdriver.Chrome, shots: Path) -> Iterator[Path]:
    """Run the tiny pipeline with optuna-dashboard open on its study store from the start, as
    a user watching a run would, and check that the dashboard serves trials while tune runs."""
    # Trials of a second or so: a tiny run's trials take milliseconds, and the whole of tune
    # could pass between two polls of the dashboard.
    family = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["family"]
    slower = deep_update(
        {"tune": {"n_trials": LIVE_TRIALS}},
        space(family, {"n_estimators": {"low": 200, "high": 300}}),  # in every family
    )
    project = make_project(folder / "project", slower)
    if VEGA_DIR.is_dir():
        (project / ".vega").symlink_to(VEGA_DIR)
    store = project / "outputs/optuna_store.db"
    store.parent.mkdir(exist_ok=True)
    # An empty store, as Optuna makes it: the dashboard is then up before tune starts.
    optuna.storages.RDBStorage(f"sqlite:///{store}").engine.dispose()
    log_path = folder / "dvc-repro.log"
    args = [DASHBOARD, f"sqlite:///{store}"]
    dashboard = web_ui(args, "optuna-dashboard (live)", project, shots, "/api/studies")
    with dashboard as url, open(log_path, "wb") as log:
        repro = subprocess.Popen(
                [sys.executable, "-m", "dvc", "repro"], cwd=project, env=subprocess_env(),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _check_dashboard_while_tuning(url, repro, browser, shots)
            if repro.wait(timeout=900) != 0:
                raise CheckFailedError(f"dvc repro failed; log {log_path}")
        finally:
            if repro.poll() is None:
                repro.terminate()
                repro.wait()
    yield project


def _check_dashboard_while_tuning(
    url: str, repro: subprocess.Popen, browser: webdriver.Chrome, shots: Path
) -> None:
    """Poll the dashboard's API until it serves a finished trial while the study still lacks
    some (tune is running: its writer process may store several trials at once on a busy
    machine, so a RUNNING row need not be there at the moment of a poll)."""
    deadline = time.monotonic() + 600
    seen: list[int] = []  # the finished counts served, for the failure's message
    while repro.poll() is None and time.monotonic() < deadline:
        studies = get_json(f"{url}/api/studies")["study_summaries"]
        if studies:
            study_page = f"{url}/api/studies/{studies[0]['study_id']}?after=0"
            states = [t["state"] for t in get_json(study_page)["trials"]]
            finished = sum(state in ("Complete", "Pruned") for state in states)
            if not seen or seen[-1] != finished:
                seen.append(finished)
            if 0 < finished < LIVE_TRIALS:
                browser.get(f"{url}/dashboard/studies/{studies[0]['study_id']}")
                wait_for_text(browser, "History")
                browser.save_screenshot(str(shots / "optuna_dashboard_live.png"))
                print(f"ok  optuna-dashboard while tune runs: {finished} finished trials served")
                return
        time.sleep(0.2)
    if repro.poll():
        raise CheckFailedError(
            f"live dashboard: dvc repro failed with exit code {repro.returncode}"
        )
    raise CheckFailedError(
        f"live dashboard: no poll while dvc repro ran saw between 1 and {LIVE_TRIALS - 1} "
        f"finished trials (finished counts served, in order: {seen})"
    )


def write_docs_screenshots(shots: Path, project: Path) -> None:
    """Small copies for the README: the runs table, the history figure and the dashboard."""
    sources = {
        "mlflow_runs": shots / "mlflow_runs.png",
        "optimization_history": project / "outputs/optimization_history.png",
        "optuna_dashboard": shots / "optuna_dashboard.png",
    }
    for name, source in sources.items():
        image = Image.open(source).convert("RGB")
        if image.width > DOCS_WIDTH:
            image = image.resize((DOCS_WIDTH, round(image.height * DOCS_WIDTH / image.width)))
        image.save(REPO / "docs" / f"{name}.png", optimize=True)
        print(f"wrote docs/{name}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a finished run (default: a tiny new one)")
    parser.add_argument("--screenshots", type=Path, default=REPO / "ui-screenshots")
    parser.add_argument("--docs", action="store_true", help="also refresh docs/*.png")
    args = parser.parse_args(argv)
    args.screenshots.mkdir(parents=True, exist_ok=True)
    failures = []
    with contextlib.ExitStack() as stack:
        browser = stack.enter_context(chromium())
        if args.project is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ui-check-")))
            try:
                project = stack.enter_context(
                    tiny_run_checked_live(folder, browser, args.screenshots)
                )
            except (CheckFailedError, ServiceUnavailableError) as exc:
                print(f"FAIL {exc}")
                return 1
        else:
            project = args.project.resolve()
        screens = Screens(browser, project, args.screenshots)
        for check in (screens.mlflow_ui, screens.optuna_dashboard, screens.dvc_plots):
            try:
                check()
            except (CheckFailedError, ServiceUnavailableError) as exc:
                failures.append(str(exc))
                print(f"FAIL {exc}")
                screens.screenshot(f"failed-{check.__name__}")
        if args.docs and not failures:
            write_docs_screenshots(args.screenshots, project)
    print(f"screenshots in {args.screenshots}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
