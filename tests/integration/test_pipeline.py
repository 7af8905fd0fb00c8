"""End to end: the train and unlearn flows against real Prefect, MLflow, DVC and GX."""

import os
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from prefect.artifacts import Artifact
from test_erasure import files_holding, stored_images

from tasks.data_versioning import DataRepo
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings
from uib.data import load_dataset
from uib.scenarios import build_scenario

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    """One temporary Prefect server (SQLite) for the module; flows report to it."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh state folder with the original trained and registered as champion."""
    from flows.train import train_flow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = {"home": str(tmp_path / "uib")}
    result = train_flow(settings)
    assert result == {**result, "model_version": "1", "trained": True}
    return Settings(**settings)


def client_of(settings: Settings) -> MlflowClient:
    from tasks.registry import client_for

    return client_for(settings)


def champion_version(settings: Settings) -> str:
    return str(client_of(settings).get_model_version_by_alias(settings.model_name, "champion").version)


def versions(settings: Settings) -> list[str]:
    return sorted(str(v.version) for v in client_of(settings).search_model_versions(f"name = '{settings.model_name}'"))


FAULTY = DeletionRequest(request_id="remove-faulty", where={"source": "faulty"}, reason="faulty source")


def test_approved_request_moves_the_champion_records_everything_and_runs_once(home):
    from flows.train import train_flow
    from flows.unlearn import unlearn_flow

    data_before = DataRepo(home.data_repo).current()
    outcome = unlearn_flow(FAULTY.model_dump(mode="json"), {"home": str(home.home)})
    assert outcome["state"] == "approved" and outcome["model_version"] == "2"
    assert champion_version(home) == "2"

    client = client_of(home)
    version = client.get_model_version(home.model_name, "2")
    data_after = DataRepo(home.data_repo).current()
    assert data_after.git_rev != data_before.git_rev
    assert version.tags["request_id"] == "remove-faulty"
    assert version.tags["data_version_before"] == data_before.git_rev
    assert version.tags["data_version_after"] == data_after.git_rev
    assert version.tags["method"] == "uib" and len(version.tags["config_hash"]) == 16
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"gx_validation_result.json", "gate_report.json", "remove-faulty.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert {"plots/per_class_accuracy.png", "plots/mia_histograms.png", "plots/bias_probe.png",
            "plots/loss_curves.png"} <= plots
    run = client.get_run(version.run_id)
    assert run.data.metrics["after_bias_asr"] <= 0.1 < run.data.metrics["before_bias_asr"]

    record = RequestLedger(home.ledger_path).get("remove-faulty")
    assert record.state == RequestState.APPROVED and record.model_version == "2"
    outcome_md = Artifact.get("request-remove-faulty").data
    assert "**approved**" in outcome_md and "| bias_asr |" in outcome_md
    assert "Data shift validation passed" in Artifact.get("shift-remove-faulty").data

    # erased: no byte sequence of a forgotten image in the DVC cache, the remote or the stage
    scenario = build_scenario(load_dataset("digits"), home.scenario)
    forgotten = stored_images(scenario.dataset.train.select(scenario.forget_ids))
    kept = set(stored_images(scenario.dataset.train.drop(scenario.forget_ids)))
    forgotten = [img for img in forgotten if img not in kept]
    assert len(forgotten) > 50
    assert files_holding(forgotten, home.data_repo / ".dvc" / "cache", Path(home.remote_url),
                         home.stage_dir("remove-faulty")) == {}
    retained, _ = DataRepo(home.data_repo).load()
    assert np.array_equal(retained.train.x, scenario.dataset.train.drop(scenario.forget_ids).x)

    # the same request again: acknowledged, nothing registered or versioned twice
    again = unlearn_flow(FAULTY.model_dump(mode="json"), {"home": str(home.home)})
    assert again["duplicate"] is True and again["model_version"] == "2"
    assert versions(home) == ["1", "2"]
    assert DataRepo(home.data_repo).current().git_rev == data_after.git_rev
    assert train_flow({"home": str(home.home)})["trained"] is False


def test_a_failed_gate_keeps_the_champion_and_the_request_open(home):
    from flows.unlearn import GatesFailed, unlearn_flow

    impossible = {"home": str(home.home), "gates": {"max_ta_drop_pp": -50.0}}
    with pytest.raises(GatesFailed, match="test_accuracy_retained"):
        unlearn_flow(FAULTY.model_dump(mode="json"), impossible)
    assert champion_version(home) == "1"
    rejected = client_of(home).get_model_version(home.model_name, "2")
    assert "test_accuracy_retained" in rejected.tags["rejected"]
    record = RequestLedger(home.ledger_path).get("remove-faulty")
    assert record.state == RequestState.REJECTED and record.is_open
    assert "test_accuracy_retained" in record.message
    assert not (home.audit_dir / "remove-faulty.json").exists()
    outcome_md = Artifact.get("request-remove-faulty").data
    assert "**rejected**" in outcome_md and "**FAIL**" in outcome_md


@pytest.mark.parametrize(("request_fields", "reason"), [
    ({"where": {"original_label": "3"}}, "no class removed"),
    ({"sample_ids": ["digits-train-00001", "digits-train-99999"]}, "digits-train-99999"),
    ({"where": {"colour": "red"}}, "colour"),
])
def test_a_refused_request_versions_nothing_and_registers_nothing(home, request_fields, reason):
    from flows.unlearn import RequestRefused, unlearn_flow

    data_before = DataRepo(home.data_repo).current()
    request = DeletionRequest(request_id="refuse-me", **request_fields)
    with pytest.raises(RequestRefused, match=reason):
        unlearn_flow(request.model_dump(mode="json"), {"home": str(home.home)})
    assert DataRepo(home.data_repo).current() == data_before
    assert versions(home) == ["1"]
    record = RequestLedger(home.ledger_path).get("refuse-me")
    assert record.state == RequestState.REJECTED and reason in record.message


def test_cli_request_exits_non_zero_with_the_reason_and_lists_the_request(home, monkeypatch):
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("UIB_HOME", str(home.home))
    runner = CliRunner()
    refused = runner.invoke(app, ["request", "delete", "--ids", "digits-train-99999",
                                  "--request-id", "cli-1", "--reason", "user asked"])
    assert refused.exit_code == 1
    assert "cli-1 not approved" in refused.output and "digits-train-99999" in refused.output
    bad = runner.invoke(app, ["request", "delete", "--where", "source"])
    assert bad.exit_code == 2 and "ATTR=VALUE" in bad.output
    listed = runner.invoke(app, ["requests", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.output)
    assert [(r["request_id"], r["state"]) for r in rows] == [("cli-1", "rejected")]
    assert rows[0]["flow_run_id"]


def test_benchmark_flow_logs_every_run_to_mlflow(tmp_path, monkeypatch):
    from flows.benchmark import benchmark_flow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings(home=tmp_path / "uib")
    config = {"dataset": "digits", "scenario": "patch-bias", "methods": ["uib"], "seeds": [0], "epochs": 5}
    result = benchmark_flow(config, str(tmp_path / "out"), {"home": str(settings.home)})
    assert result["rows"] == 3
    client = client_of(settings)
    children = client.search_runs([client.get_experiment_by_name(settings.experiment).experiment_id],
                                  f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert sorted(r.data.tags["method"] for r in children) == ["original", "retrain", "uib"]
    uib_run = next(r for r in children if r.data.tags["method"] == "uib")
    assert {"time_ratio", "avg_gap", "bias_asr"} <= set(uib_run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"results.csv", "results.md"} <= artifacts
    assert [a.path for a in client.list_artifacts(result["run_id"], "plots")] == ["plots/avg_gap_vs_time_ratio.png"]
