"""The MLflow UI read in a browser, as a reviewer reads it: collected in
`test_production_stack.py`, on the compose stack's MLflow server, reached by its service name
with the admin login (fixtures `stack`, `approved`, `held`, `held_id`, `mlflow_uri`,
`mlflow_login` come from there)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tasks.requests import RequestLedger

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
def browser(stack):
    """Chromium resolving the service names as the stack's processes do."""
    from playwright.sync_api import sync_playwright

    rules = ",".join(f"MAP {name} {address}" for name, address in stack.hosts.items())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", f"--host-resolver-rules={rules}"],
        )
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, mlflow_login):
    """Opens pages logged in to MLflow."""
    login = {"username": mlflow_login[0], "password": mlflow_login[1]}
    return lambda: browser.new_page(
        viewport={"width": 1400, "height": 1100}, http_credentials=login
    )


@pytest.fixture
def champion_page(new_page, mlflow_uri, approved):
    """The champion's version page, rendered, with MLflow's assistant panel out of the way."""
    from playwright.sync_api import expect

    settings, _, _ = approved
    page = new_page()
    page.goto(f"{mlflow_uri}/#/models/{settings.model_name}/versions/2")
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
    expect(page.get_by_role("link", name=outcome["request_id"], exact=True)).to_be_visible()

    # the headline: verdict and request, then what was selected, how many samples, the reason
    expect(
        page.get_by_role("heading", name=f"APPROVED — request {outcome['request_id']}: every gate")
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
    flow_run_id = RequestLedger(settings.ledger_path).get(outcome["request_id"]).flow_run_id
    expect(page.locator(f'a[href$="/runs/flow-run/{flow_run_id}"]')).to_be_visible()
    audit = page.get_by_role("link", name=f"audit/{outcome['request_id']}.json")
    expect(audit).to_be_visible()
    page.screenshot(path=str(shots / "mlflow-champion-version.png"))

    # The tags are a table that scrolls on its own; request_id is the last row.
    request_row = page.get_by_role("row").filter(
        has=page.get_by_role("cell", name="request_id", exact=True)
    )
    request_row.scroll_into_view_if_needed()
    expect(request_row).to_be_visible()
    expect(request_row).to_contain_text(outcome["request_id"])
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
    new_page, mlflow_uri, approved, held, held_id, shots
):
    from playwright.sync_api import expect

    settings, _, _ = approved
    page = new_page()
    page.goto(f"{mlflow_uri}/#/models/{settings.model_name}/versions/{held}")
    expect(page.get_by_role("heading", name=f"Version {held}")).to_be_visible(
        timeout=RENDER_TIMEOUT_MS
    )
    close_assistant(page)
    expect(
        page.get_by_role(
            "heading", name=f"REJECTED — request {held_id}: failed test_accuracy_retained"
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
    page.goto(f"{mlflow_uri}/#/models/{settings.model_name}")
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
def test_its_source_run_holds_the_gate_report_and_the_plots(champion_page, approved, shots):
    from playwright.sync_api import expect

    _, outcome, _ = approved
    page = champion_page
    page.get_by_role("link", name=outcome["request_id"], exact=True).click()
    expect(page.get_by_role("heading", name=outcome["request_id"])).to_be_visible(
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
