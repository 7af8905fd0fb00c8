"""End to end, the requests the pipeline refuses or fails before it changes anything: real
Prefect, MLflow, DVC and GX, and nothing but the request's ledger row changes.

The module's state folder (`trained`, in conftest.py) is made by the real `train` flow, which
trains the original unless an earlier module on this pytest-xdist worker already did; the tests
of refused requests share it (a refusal changes nothing but the ledger). A test that makes a
champion of its own gets a folder of its own (`home`). The helpers are test_pipeline.py's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import champion_version, run, stored_state, versions

from tasks.data_versioning import DataRepo
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from uib.data import load_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.mark.parametrize(
    ("request_id", "request_fields", "reason"),
    [
        ("whole-class", {"where": {"original_label": "3"}}, "no class removed"),
        (
            "unknown-id",
            {"sample_ids": ["digits-train-00001", "digits-train-99999"]},
            "digits-train-99999",
        ),
        ("unknown-attribute", {"where": {"colour": "red"}}, "colour"),
    ],
)
def test_a_refused_request_versions_nothing_and_registers_nothing(
    trained, request_id, request_fields, reason
):
    from flows.unlearn import RequestRefused

    data_before = DataRepo(trained.data_repo).current()
    request = DeletionRequest(request_id=request_id, **request_fields)
    with pytest.raises(RequestRefused, match=reason):
        run(request, trained)
    assert DataRepo(trained.data_repo).current() == data_before
    assert versions(trained) == ["1"] and champion_version(trained) == "1"
    record = RequestLedger(trained.ledger_path).get(request_id)
    assert record.state == RequestState.REJECTED and reason in record.message


def poisoned(model, fault: str):
    """A copy of `model` whose weights are NaN, or whose last layer scores 3 classes."""
    import copy

    import torch

    bad = copy.deepcopy(model)
    if fault == "nan":
        with torch.no_grad():
            for parameter in bad.parameters():
                parameter.fill_(float("nan"))
    else:
        name, last = [(n, m) for n, m in bad.named_modules() if isinstance(m, torch.nn.Linear)][-1]
        parent, _, attribute = name.rpartition(".")
        setattr(bad.get_submodule(parent), attribute, torch.nn.Linear(last.in_features, 3))
    return bad


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("nan", "non-finite scores for 8 of 8"),
        ("wrong-shape", "scores 3 classes, the dataset has 10"),
    ],
)
def test_a_champion_that_cannot_answer_fails_the_request_naming_it_and_changes_nothing(
    home, original, monkeypatch, fault, named
):
    """A NaN-poisoned or wrong-shaped model made champion the pipeline's own way (logged,
    registered with the champion's tags, promoted): a request is failed before anything is
    versioned, naming the version and what is wrong; sent again once a sound version is
    champion, it runs (checked once)."""
    import mlflow
    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.registry import client_for, log_model, promote

    client = client_for(home)
    sound = client.get_model_version(home.model_name, "1")
    repo = DataRepo(home.data_repo)
    with mlflow.start_run(run_name=f"{fault}-champion"):
        x = load_dataset("digits").test.x
        bad = log_model(poisoned(original, fault), home, x, dict(sound.tags))
    promote(client, home, str(bad.version))
    before = stored_state(home)
    data_before = repo.current()
    monkeypatch.setenv("UIB_HOME", str(home.home))
    args = ["request", "delete", "--where", "source=faulty", "--request-id", "r", "--run-here"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"the champion, version {bad.version}, cannot be unlearned from" in result.output
    assert named in result.output and "Traceback" not in result.output
    assert "--debug" not in result.output  # one line, not a crash
    record = RequestLedger(home.ledger_path).get("r")
    assert record.state == RequestState.FAILED and named in record.message
    after = stored_state(home)
    assert {k: after[k] for k in ("data", "versions", "champion")} == {
        k: before[k] for k in ("data", "versions", "champion")
    }
    assert repo.current() == data_before
    if fault == "wrong-shape":
        return  # the re-send, once: it is the same for both
    promote(client, home, "1")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert RequestLedger(home.ledger_path).get("r").state == RequestState.APPROVED


def test_cli_request_exits_non_zero_with_the_reason_and_lists_the_request(trained, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("UIB_HOME", str(trained.home))
    runner = CliRunner()
    # The harness sets PREFECT_API_URL: `--run-here` runs the flow instead of sending the event.
    before = stored_state(trained)
    unknown = runner.invoke(
        app,
        ["request", "delete", "--ids", "digits-train-99999", "--request-id", "cli-0", "--run-here"],
    )
    assert unknown.exit_code == 2, unknown.output  # bad input: the same code as by event
    assert "sample_ids" in unknown.output and "digits-train-99999" in unknown.output
    assert stored_state(trained) == before  # refused before the ledger
    refused = runner.invoke(
        app,
        [
            "request",
            "delete",
            "--where",
            "original_label=3",
            "--request-id",
            "cli-1",
            "--reason",
            "user asked",
            "--run-here",
        ],
    )
    assert refused.exit_code == 1
    assert "cli-1 not approved" in refused.output and "no class removed" in refused.output
    bad = runner.invoke(app, ["request", "delete", "--where", "source"])
    assert bad.exit_code == 2 and "ATTR=VALUE" in bad.output
    invalid = runner.invoke(app, ["request", "delete", "--ids", "a", "--request-id", "../x"])
    assert invalid.exit_code == 2 and "request_id" in invalid.output
    listed = runner.invoke(app, ["requests", "--json"])
    assert listed.exit_code == 0
    rows = {r["request_id"]: r for r in json.loads(listed.output)}
    assert rows["cli-1"]["state"] == "rejected" and rows["cli-1"]["flow_run_id"]
    assert "no class removed" in rows["cli-1"]["message"] and "cli-0" not in rows


@pytest.mark.parametrize(
    ("request_id", "arguments", "environment", "named"),
    [
        ("whole-class-cli", ["--where", "original_label=5"], {}, "no class removed"),
        (
            "over-the-ceiling",
            ["--where", "source=faulty"],
            {"UIB_SHIFT__MAX_FORGET_FRACTION": "0.05"},
            "forget fraction",
        ),
        ("everything", ["--where", "split=train"], {}, "forget fraction"),
    ],
)
def test_a_request_the_shift_policy_refuses_exits_1_and_changes_only_its_ledger_row(
    trained, monkeypatch, request_id, arguments, environment, named
):
    """Well-formed requests refused by validation: the run records the refusal, and nothing
    else (data version, registry, champion, other requests) changes."""
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("UIB_HOME", str(trained.home))
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    before = stored_state(trained)
    result = CliRunner().invoke(
        app, ["request", "delete", *arguments, "--request-id", request_id, "--run-here"]
    )
    assert result.exit_code == 1, result.output
    assert named in result.output and "Traceback" not in result.output
    after = stored_state(trained)
    rows, rows_before = after.pop("ledger"), before.pop("ledger")
    assert after == before
    [row] = [r for r in rows if r["request_id"] == request_id]
    assert row["state"] == "rejected" and named in row["message"]
    assert [r for r in rows if r["request_id"] != request_id] == rows_before


def test_a_refused_request_prints_its_reason_once_without_a_traceback(trained):
    """As a person sees it, in a terminal: progress from the first line, no traceback, the
    reason once and exit 1 (README: refused); the tracebacks only with `--debug`."""
    from prefect.settings import PREFECT_API_URL
    from typer.testing import CliRunner

    from flows.cli import app

    args = ["request", "delete", "--where", "original_label=5", "--run-here"]
    env = {
        **os.environ,
        "UIB_HOME": str(trained.home),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    uib = str(Path(sys.executable).parent / "uib")
    shown = subprocess.run(
        [uib, *args, "--request-id", "cli-quiet"], env=env, capture_output=True, text=True
    )
    assert shown.returncode == 1, shown.stderr
    assert shown.stderr.startswith("uib: request delete: checking the request")
    assert "Traceback" not in shown.stderr + shown.stdout, shown.stderr
    assert shown.stderr.count("no class removed from retain") == 1, shown.stderr
    assert "request cli-quiet not approved: shift validation failed" in shown.stderr
    assert shown.stdout == ""

    debug = CliRunner().invoke(
        app, ["--debug", *args, "--request-id", "cli-debug"], env={"UIB_HOME": str(trained.home)}
    )
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.output and "RequestRefused" in debug.output
