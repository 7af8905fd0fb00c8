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

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

BUCKET = "uib-store"
FAULTY = DeletionRequest(
    request_id="servers-faulty", where={"source": "faulty"}, reason="faulty source"
)


@pytest.fixture(scope="module")
def tracking_uri(s3_server, tmp_path_factory):
    """`mlflow server` on a fresh PostgreSQL database, artifacts proxied to s3://uib-store."""
    s3_server.create_bucket(BUCKET)
    env = {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    with (
        postgres() as database,
        mlflow_server(
            database, tmp_path_factory.mktemp("mlflow"), f"s3://{BUCKET}/mlartifacts", env
        ) as uri,
    ):
        yield uri, database


@pytest.fixture(scope="module")
def approved(tracking_uri, s3_server, tmp_path_factory):
    """(settings, outcome, pushed): the faulty-source request approved on these stores."""
    from flows.train import train_flow
    from flows.unlearn import unlearn_flow

    uri, _ = tracking_uri
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        settings = Settings(
            home=tmp_path_factory.mktemp("servers") / "uib",
            dvc_remote=f"s3://{BUCKET}/dvc",
            s3_endpoint_url=s3_server.endpoint_url,
        )
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
        RequestState.APPROVED
    )

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

    with (
        psycopg2.connect(database.replace("+psycopg2", "")) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "SELECT version FROM model_versions WHERE name = %s ORDER BY version",
            (settings.model_name,),
        )
        assert [row[0] for row in cursor.fetchall()] == [1, 2]
        cursor.execute(
            "SELECT value FROM model_version_tags WHERE name = %s AND version = 2 "
            "AND key = 'request_id'",
            (settings.model_name,),
        )
        assert cursor.fetchone() == (FAULTY.request_id,)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
GATES = (
    "test_accuracy_retained",
    "retain_accuracy_retained",
    "forget_like_unseen",
    "bias_asr",
    "sanity",
)
PLOTS = ("per_class_accuracy.png", "mia_histograms.png", "bias_probe.png", "loss_curves.png")
RENDER_TIMEOUT_MS = 60_000
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no chromium at {CHROMIUM} (.ci/run installs Debian's)"
)


@pytest.fixture(scope="module")
def mlflow_ui(approved, tracking_uri, s3_server, tmp_path_factory) -> str:
    """A fresh `mlflow server` on the store the approved request left, as a reviewer starts it."""
    _, database = tracking_uri
    env = {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url}
    with mlflow_server(
        database, tmp_path_factory.mktemp("mlflow-ui"), f"s3://{BUCKET}/mlartifacts", env
    ) as uri:
        yield uri


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield browser
        browser.close()


@pytest.fixture
def champion_page(browser, mlflow_ui, approved):
    """The champion's version page, rendered, with MLflow's assistant panel out of the way."""
    from playwright.sync_api import expect

    settings, _, _ = approved
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{mlflow_ui}/#/models/{settings.model_name}/versions/2")
    expect(page.get_by_role("heading", name="Version 2")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    close_assistant(page)
    yield page
    page.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: $UIB_SCREENSHOT_DIR (`=docs` refreshes the README's), else tmp."""
    folder = Path(os.environ.get("UIB_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def close_assistant(page) -> None:
    """MLflow 3's assistant panel covers the right third of a page on first visit."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() and close.first.is_visible():
        close.first.click()


@needs_chromium
def test_the_champion_version_page_shows_the_request_and_its_gates(champion_page, shots):
    from playwright.sync_api import expect

    page = champion_page
    expect(page.get_by_text("@ champion")).to_be_visible()
    expect(page.get_by_role("link", name=FAULTY.request_id)).to_be_visible()

    # The description is the gate table; every gate has its own row, and passed.
    for gate in GATES:
        row = page.get_by_role("row").filter(has=page.get_by_text(gate, exact=True))
        expect(row).to_contain_text("pass")

    # The tags are a table that scrolls on its own; request_id is the last row.
    request_row = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name="request_id", exact=True)
    )
    request_row.scroll_into_view_if_needed()
    expect(request_row).to_be_visible()
    expect(request_row).to_contain_text(FAULTY.request_id)
    for tag, value in (("gates", "passed"), ("parent_model_version", "1")):
        expect(
            page.get_by_role("row").filter(has=page.get_by_role("cell", name=tag, exact=True))
        ).to_contain_text(value)
    page.screenshot(path=str(shots / "mlflow-champion-version.png"))


@needs_chromium
def test_its_source_run_holds_the_gate_report_and_the_plots(champion_page, shots):
    from playwright.sync_api import expect

    page = champion_page
    page.get_by_role("link", name=FAULTY.request_id).click()
    expect(page.get_by_role("heading", name=FAULTY.request_id)).to_be_visible(
        timeout=RENDER_TIMEOUT_MS
    )
    page.get_by_role("tab", name="Artifacts").click()

    page.get_by_text("gate_report.json", exact=True).click()
    report = page.locator("pre")
    expect(report).to_contain_text('"passed": true,', timeout=RENDER_TIMEOUT_MS)
    for gate in GATES:
        expect(report).to_contain_text(f'"name": "{gate}"')

    # Each plot comes from S3 through the server and is shown as a decoded image of its own.
    page.get_by_text("plots", exact=True).click()
    previous = None
    for plot in PLOTS:
        page.get_by_text(plot, exact=True).click()
        expect(page.get_by_text(f"plots/{plot}", exact=True)).to_be_visible(
            timeout=RENDER_TIMEOUT_MS
        )
        image = page.locator("img[src^='blob:']").filter(visible=True)
        expect(image).to_have_count(1, timeout=RENDER_TIMEOUT_MS)
        if previous:
            expect(image).not_to_have_attribute("src", previous, timeout=RENDER_TIMEOUT_MS)
        previous = image.get_attribute("src")
        page.wait_for_function("img => img.complete", arg=image.element_handle())
        assert image.evaluate("img => img.naturalWidth") >= 400, plot
        if plot == "per_class_accuracy.png":
            page.screenshot(path=str(shots / "mlflow-run-plot.png"))
