"""What a user sees in the MLflow UI, in a real headless Chromium driven by Playwright.

A fresh store is produced the way the pipeline produces it (configs/tiny.yaml through the pipeline's step
functions: prepare, shard, pretrain, evaluate into the training run, register, promote, finish), served with the
command the demo prints (``mlflow ui --backend-store-uri sqlite:///...``), and four pages are opened: the
experiment (runs table), the training run's metric charts, the evaluation report artefact and the registered
model version (aliases). Screenshots go to ``$VLM_TEST_ARTIFACTS/mlflow-ui`` (default: pytest's temp folder);
the test prints where. Needs Debian's ``chromium`` (``make browser-deps``); skipped, saying so, without it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.servers import _stop, serve_mlflow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium on these machines: no sandbox as root, no GPU, and nothing that phones home (the network is closed).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_TIMEOUT_MS = 60_000

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="Debian's chromium is not installed (make browser-deps, as root)")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """A store with one tiny pipeline run: ``{dir, tracking_uri, experiment_id, train_run_id, model, version}``."""
    from vlm import steps, tracking
    from vlm.config import load_config
    from vlm.train import train

    work = tmp_path_factory.mktemp("demo-store")
    data = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config_yaml = yaml.safe_dump(steps.resolve_paths(data, work), sort_keys=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("OMP_NUM_THREADS", "1")
        run = steps.prepare(config_yaml, run_tag="ui-check")
        config_uri, parent = run["config_uri"], run["parent_run_id"]
        for partition in steps.shard_partitions(config_uri, run["data"]):  # the pipeline's fan-out, in line
            steps.shard_partition(config_uri, run["data"], partition)
        steps.shard(config_uri, run["data"], parent)
        mp.setenv(tracking.PARENT_ENV, parent)  # what the pipeline hands torchrun
        trained = train(load_config(config_uri), "pretrain", run["data"], run["pretrain"])
        mp.delenv(tracking.PARENT_ENV)
        evaluation = steps.evaluate(config_uri, run["pretrain"], run["data"], run["eval"],
                                    train_run_id=trained.run_id)
        registered = steps.register(config_uri, run["pretrain"], evaluation["metrics"], data_uri=run["data"],
                                    train_run_id=trained.run_id, parent_run_id=parent)
        steps.promote(config_uri)
        steps.finish(config_yaml, "ui-check", "SUCCEEDED", parent_run_id=parent)
        cfg = load_config(config_uri)
        from mlflow import MlflowClient

        tracking.configure(cfg.tracking.uri)
        experiment = MlflowClient().get_experiment_by_name(cfg.experiment_name())
        import mlflow

        mlflow.set_tracking_uri(None)
    return {"dir": work, "tracking_uri": cfg.tracking.uri, "experiment": experiment, "parent_run_id": parent,
            "train_run_id": trained.run_id, "model": registered["name"], "version": registered["version"]}


def test_the_platform_marks_its_experiment_as_model_training(demo_store):
    """Experiments the platform creates carry MLflow 3's experiment kind (the UI's selector writes the same tag)."""
    from vlm.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING

    assert demo_store["experiment"].tags.get(EXPERIMENT_KIND_TAG) == MODEL_TRAINING


@pytest.fixture(scope="module")
def mlflow_ui(demo_store):
    """``mlflow ui`` on the demo store, as the demo's summary tells the user to start it; yields its URL."""
    url, proc = serve_mlflow("ui", ["--backend-store-uri", demo_store["tracking_uri"]], demo_store["dir"])
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    root = os.environ.get("VLM_TEST_ARTIFACTS")
    folder = Path(root) / "mlflow-ui" if root else tmp_path_factory.mktemp("mlflow-ui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser_page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(tempfile.mkdtemp(prefix="vlm-chromium-"),
                                                        executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
                                                        viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        try:
            yield page
        finally:
            context.close()


def _close_assistant(page) -> None:
    """MLflow 3.17 opens an "MLflow Assistant" side pane; close it so the screenshots show the page."""
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count() and close.first.is_visible():
        close.first.click()
        close.first.wait_for(state="hidden")


@needs_chromium
def test_mlflow_ui_shows_runs_metrics_report_and_model(demo_store, mlflow_ui, browser_page, screenshots, capsys):
    from vlm.tracking import experiment_url

    page = browser_page
    exp_id = demo_store["experiment"].experiment_id
    run_id = demo_store["train_run_id"]
    with capsys.disabled():
        print(f"\nMLflow UI screenshots: {screenshots}")

    # 1. the experiment, through the link the platform gives: the runs table (MLflow 3's "Model training" view)
    page.goto(experiment_url(mlflow_ui, exp_id))
    page.get_by_text(re.compile(r"\d+ matching runs?")).wait_for()
    page.get_by_text("pipeline-ui-check").first.wait_for()
    _close_assistant(page)
    body = page.inner_text("body")
    assert "pipeline-ui-check" in body, "the pipeline's parent run is listed"
    assert "Run Name" in body and "Model registry" in body
    assert not {"Usage", "Quality", "Tool calls"} & set(body.splitlines()), "opened on the GenAI overview"
    page.screenshot(path=str(screenshots / "1-experiment-runs.png"))

    # 2. the training run's metric charts: the training loss is drawn
    page.goto(f"{mlflow_ui}/#/experiments/{exp_id}/runs/{run_id}/model-metrics?workflowType=machine_learning")
    page.get_by_placeholder(re.compile("Search metric charts", re.I)).fill("train/loss")
    line = page.locator(".js-plotly-plot path.js-line").first
    line.wait_for()
    page.get_by_text("pretrain (train/loss)").wait_for()  # the chart's legend
    _close_assistant(page)
    assert len(re.findall(r"[ML]", line.get_attribute("d"))) == 4, "one point per logged step (train.steps: 4)"
    page.screenshot(path=str(screenshots / "2-training-run-metrics.png"))

    # 3. the evaluation report, an artefact of the training run, rendered by MLflow's artefact viewer
    page.goto(f"{mlflow_ui}/#/experiments/{exp_id}/runs/{run_id}/artifacts/eval/report.html"
              "?workflowType=machine_learning")
    page.get_by_text("eval/report.html").first.wait_for()
    frame = page.frame_locator("iframe").first
    frame.locator("table#summary").wait_for()
    headings = frame.locator("h2").all_inner_texts()
    assert headings[:3] == ["Summary", "Per question type", "Examples"], headings
    summary = frame.locator("table#summary").inner_text()
    assert "vqa_accuracy" in summary and "cider" in summary and "majority answer" in summary
    assert frame.locator("table#examples img[src^='data:image/jpeg;base64,']").count() >= 1
    _close_assistant(page)
    page.screenshot(path=str(screenshots / "3-evaluation-report.png"))

    # 4. the registered model version with its aliases
    name, version = demo_store["model"], demo_store["version"]
    page.goto(f"{mlflow_ui}/#/models/{name}/versions/{version}?workflowType=machine_learning")
    page.get_by_text("Aliases").first.wait_for()
    page.get_by_text("champion").first.wait_for()
    _close_assistant(page)
    body = page.inner_text("body").replace("\xa0", " ")
    assert f"Version {version}" in body and "@ champion" in body and "@ challenger" in body
    assert "predict({'image': ['photo.jpg']" in body, "the version's description shows how to use it"
    page.screenshot(path=str(screenshots / "4-model-version.png"))
    assert all((screenshots / n).stat().st_size > 20_000 for n in (
        "1-experiment-runs.png", "2-training-run-metrics.png", "3-evaluation-report.png", "4-model-version.png"))
