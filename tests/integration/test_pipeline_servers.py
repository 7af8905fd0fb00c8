"""The pipeline on grown-up stores: MLflow as a real `mlflow server` on PostgreSQL with its
artifacts on an S3-compatible server, and DVC's remote on the same S3 server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from s3_server import CREDENTIALS
from stores import mlflow_server, postgres

from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "uib-store"
FAULTY = DeletionRequest(request_id="servers-faulty", where={"source": "faulty"},
                         reason="faulty source")


@pytest.fixture(scope="module")
def tracking_uri(s3_server, tmp_path_factory):
    """`mlflow server` on a fresh PostgreSQL database, artifacts proxied to s3://uib-store."""
    s3_server.create_bucket(BUCKET)
    env = {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    with postgres() as database, mlflow_server(
            database, tmp_path_factory.mktemp("mlflow"), f"s3://{BUCKET}/mlartifacts", env) as uri:
        yield uri, database


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        patch.delenv("UIB_HOME", raising=False)
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="module")
def approved(tracking_uri, s3_server, tmp_path_factory):
    """(settings, outcome, pushed): the faulty-source request approved on these stores."""
    from flows.train import train_flow
    from flows.unlearn import unlearn_flow

    uri, _ = tracking_uri
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        settings = Settings(home=tmp_path_factory.mktemp("servers") / "uib",
                            dvc_remote=f"s3://{BUCKET}/dvc",
                            s3_endpoint_url=s3_server.endpoint_url)
        assert settings.tracking_uri == uri
        assert train_flow(settings.overrides())["model_version"] == "1"
        pushed = s3_server.keys(BUCKET, "dvc/")
        outcome = unlearn_flow(FAULTY.model_dump(mode="json"), settings.overrides())
        yield settings, outcome, pushed


def test_a_request_on_mlflow_server_postgres_and_s3(approved, tracking_uri, s3_server):
    import psycopg2

    settings, outcome, pushed = approved
    uri, database = tracking_uri
    assert pushed, "the data version was not pushed to the S3 remote"
    assert outcome["state"] == "approved" and outcome["model_version"] == "2"
    assert RequestLedger(settings.ledger_path).get(FAULTY.request_id).state == (
        RequestState.APPROVED)

    client = MlflowClient(tracking_uri=uri)
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    assert str(champion.version) == "2" and champion.tags["request_id"] == FAULTY.request_id
    run_keys = s3_server.keys(BUCKET, "mlartifacts/")
    run_files = [k for k in run_keys if f"/{champion.run_id}/" in k]
    names = {k.rsplit("/", 1)[-1] for k in run_files}
    assert "gate_report.json" in names, run_files
    assert any(k.endswith(".png") for k in run_files)
    assert any("/audit/" in k for k in run_files)
    assert any("MLmodel" in k for k in run_keys)

    audit = json.loads(Path(outcome["audit_path"]).read_text())
    purged = audit["purged_objects"]
    assert purged
    remaining = s3_server.keys(BUCKET, "dvc/")
    stored = {k.split("/")[-2] + k.split("/")[-1] for k in remaining}
    assert not set(purged) & stored, "erased objects are still on the S3 remote"
    assert len(remaining) >= len(pushed) - len(purged)

    with psycopg2.connect(database.replace("+psycopg2", "")) as connection, \
            connection.cursor() as cursor:
        cursor.execute("SELECT version FROM model_versions WHERE name = %s ORDER BY version",
                       (settings.model_name,))
        assert [row[0] for row in cursor.fetchall()] == [1, 2]
        cursor.execute("SELECT value FROM model_version_tags WHERE name = %s AND version = 2 "
                       "AND key = 'request_id'", (settings.model_name,))
        assert cursor.fetchone() == (FAULTY.request_id,)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium (.ci/run installs it)")
def test_the_mlflow_ui_shows_the_request_its_gates_and_plots(approved, tracking_uri, s3_server,
                                                             tmp_path):
    """A fresh `mlflow server` on the store the request left; a reviewer's clicks in Chromium.

    Screenshots go to $UIB_SCREENSHOT_DIR (the README's come from here), else to tmp_path.
    """
    from playwright.sync_api import expect, sync_playwright

    settings, outcome, _ = approved
    _, database = tracking_uri
    shots = Path(os.environ.get("UIB_SCREENSHOT_DIR") or tmp_path)
    env = {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    with mlflow_server(database, tmp_path, f"s3://{BUCKET}/mlartifacts", env) as uri, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{uri}/#/models/{settings.model_name}/versions/2")
        expect(page.get_by_text("Version 2").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("@ champion").first).to_be_visible()
        expect(page.get_by_text(FAULTY.request_id).first).to_be_visible()
        for gate in ("test_accuracy_retained", "retain_accuracy_retained", "bias_asr"):
            expect(page.get_by_text(gate).first).to_be_visible()
        close_assistant(page)
        page.screenshot(path=str(shots / "mlflow-champion-version.png"))

        page.get_by_role("link", name=FAULTY.request_id).first.click()
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("gate_report.json", exact=True).first.click()
        expect(page.get_by_text("test_accuracy_retained").first).to_be_visible(timeout=30_000)
        page.get_by_text("plots", exact=True).first.click()
        for plot in ("per_class_accuracy.png", "bias_probe.png"):
            page.get_by_text(plot, exact=True).first.click()
            image = page.locator("img[src^='blob:']").first
            expect(image).to_be_visible(timeout=30_000)
            assert image.evaluate("img => img.naturalWidth") > 100, plot
        close_assistant(page)
        page.screenshot(path=str(shots / "mlflow-run-plot.png"))
        browser.close()


def close_assistant(page) -> None:
    """MLflow 3's assistant panel covers the right third of every page; close it when open."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() and close.first.is_visible():
        close.first.click()
