"""The pipeline on grown-up stores: MLflow as a real `mlflow server` on PostgreSQL with its
artifacts on an S3-compatible server, and DVC's remote on the same S3 server."""

from __future__ import annotations

import json
import os
import re
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
HELD = DeletionRequest(
    request_id="servers-held", sample_ids=["digits-train-00003"], reason="a person asked"
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


@pytest.fixture(scope="module")
def held(approved) -> str:
    """A candidate the gates reject beside the champion (gates no model passes, `hold`): its
    version. Made after the test above counts the registry's versions."""
    from flows.unlearn import GatesFailed, unlearn_flow

    settings, _, _ = approved
    overrides = {
        **settings.overrides(),
        "on_gate_failure": "hold",
        "gates": {"max_ta_drop_pp": -50.0},
    }
    with pytest.raises(GatesFailed):
        unlearn_flow(HELD.model_dump(mode="json"), overrides)
    return RequestLedger(settings.ledger_path).get(HELD.request_id).model_version


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
PLOTS = (
    "before_after.png",
    "per_class_accuracy.png",
    "mia_histograms.png",
    "bias_probe.png",
    "loss_curves.png",
)
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


def description_rows(page) -> dict[str, list[str]]:
    """The version description's gate table as {gate: its cells' texts}, one `td` a cell."""
    from playwright.sync_api import expect

    table = page.locator("table", has=page.locator("th", has_text="threshold"))
    expect(table).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    rows = [row.locator("td").all_inner_texts() for row in table.locator("tbody tr").all()]
    assert all(cell[0] == "\u2002" == cell[-1] for row in rows for cell in row), rows  # padded
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


@needs_chromium
def test_the_champion_version_page_reads_as_a_decision(champion_page, approved, shots):
    from playwright.sync_api import expect

    page = champion_page
    settings, outcome, _ = approved
    expect(page.get_by_text("@ champion")).to_be_visible()
    expect(page.get_by_role("link", name=FAULTY.request_id, exact=True)).to_be_visible()

    # the headline: verdict and request, then what was selected, how many samples, the reason
    expect(
        page.get_by_role("heading", name=f"APPROVED — request {FAULTY.request_id}: every gate")
    ).to_be_visible()
    expect(page.locator("p").filter(has_text="samples removed")).to_contain_text(
        "123 samples removed — selected where source=faulty; reason: faulty source."
    )

    # the gates: before | after | threshold, every value a cell of its own
    report = outcome["gates"]
    gates = {g["name"]: g for g in report["gates"]}
    rows = description_rows(page)
    assert set(rows) == set(gates) >= set(GATES)
    ta = gates["test_accuracy_retained"]
    assert rows["test_accuracy_retained"] == [
        "test_accuracy_retained",
        f"{report['before']['TA']:.4f}",
        f"{ta['value']:.4f}",
        f"≥ {ta['threshold']:.4f}",
        str(ta["n"]),
        "pass",
        ta["rule"],
    ]
    assert rows["bias_asr"][1:4] == [
        f"{report['before']['bias_asr']:.4f}",
        f"{gates['bias_asr']['value']:.4f}",
        "≤ 0.1000",
    ]
    assert all(cells[5].startswith("pass") for cells in rows.values())

    # the links: the Prefect flow run (a server is known here) and the audit record, summary first
    flow_run_id = RequestLedger(settings.ledger_path).get(FAULTY.request_id).flow_run_id
    expect(page.locator(f'a[href$="/runs/flow-run/{flow_run_id}"]')).to_be_visible()
    audit = page.get_by_role("link", name=f"audit/{FAULTY.request_id}.json")
    expect(audit).to_be_visible()
    page.screenshot(path=str(shots / "mlflow-champion-version.png"))

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

    base = page.url.split("#", 1)[0].rstrip("/")
    page.goto(f"{base}/{audit.get_attribute('href')}")
    record = page.locator("pre").first
    expect(record).to_contain_text('"summary"', timeout=RENDER_TIMEOUT_MS)
    text = record.inner_text()
    assert text.index('"summary"') < text.index('"forgotten_id_hashes"')
    assert '"forgotten": "123 samples (where source=faulty)"' in text


@needs_chromium
def test_a_rejected_version_is_marked_as_rejected_and_never_champion(
    browser, mlflow_ui, approved, held, shots
):
    from playwright.sync_api import expect

    settings, _, _ = approved
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{mlflow_ui}/#/models/{settings.model_name}/versions/{held}")
    expect(page.get_by_role("heading", name=f"Version {held}")).to_be_visible(
        timeout=RENDER_TIMEOUT_MS
    )
    close_assistant(page)
    expect(
        page.get_by_role(
            "heading", name=f"REJECTED — request {HELD.request_id}: failed test_accuracy_retained"
        )
    ).to_be_visible()
    expect(page.locator("p").filter(has_text="sample removed")).to_contain_text(
        "1 sample removed — selected 1 id; reason: a person asked. Method uib, unlearned from "
        "version 2. Not promoted: the champion alias stays where it was"
    )
    assert description_rows(page)["test_accuracy_retained"][5] == "FAIL"
    expect(page.get_by_text("@ champion")).to_have_count(0)
    page.screenshot(path=str(shots / "mlflow-rejected-version.png"))

    # in the model's list of versions: the `rejected` tag first, no alias, the headline
    page.goto(f"{mlflow_ui}/#/models/{settings.model_name}")
    row = page.get_by_role("row").filter(
        has=page.get_by_role("link", name=f"Version {held}", exact=True)
    )
    expect(row).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    assert row.inner_text().split("\n")[2] == "rejected", row.inner_text()
    expect(row).to_contain_text("# REJECTED — request servers-")  # the column truncates
    expect(row).not_to_contain_text("champion")
    champion = page.get_by_role("row").filter(
        has=page.get_by_role("link", name="Version 2", exact=True)
    )
    expect(champion).to_contain_text("@ champion")
    page.close()


@needs_chromium
def test_its_source_run_holds_the_gate_report_and_the_plots(champion_page, shots):
    from playwright.sync_api import expect

    page = champion_page
    page.get_by_role("link", name=FAULTY.request_id, exact=True).click()
    expect(page.get_by_role("heading", name=FAULTY.request_id)).to_be_visible(
        timeout=RENDER_TIMEOUT_MS
    )

    # the Datasets panel: what trained (retain) and what was removed (forget), by data version
    retain = page.get_by_text(re.compile(r"^retain \(\w+\)$"))
    expect(retain).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    retain.click()
    drawer = page.get_by_role("dialog")
    expect(drawer).to_contain_text("2 datasets used")
    drawer.get_by_text(re.compile(r"^forget \(\w+\)$")).click()
    expect(drawer).to_contain_text("num rows: 123")
    expect(drawer).to_contain_text("selection: where source=faulty")
    expect(drawer).not_to_contain_text("digits-train")  # never an id of the erased samples
    page.screenshot(path=str(shots / "mlflow-run-datasets.png"))
    page.keyboard.press("Escape")
    expect(drawer).to_have_count(0)

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
        if plot == "before_after.png":
            page.screenshot(path=str(shots / "mlflow-run-plot.png"))
