"""End to end: the train and unlearn flows against real Prefect, MLflow, DVC and GX.

The module's state folder (`trained`, in conftest.py) is made by the real `train` flow, which
trains the original unless an earlier module on this pytest-xdist worker already did. Every test
that changes state gets a folder of its own (`home`), whose `train` flow registers a copy of
that model instead of training again. Requests refused or failed before anything changes are in
test_pipeline_refusals.py.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

# the erasure scan, SIGKILL at the task boundaries and senders at once: collected here to run
# on this module's one trained original
from concurrent_senders import (  # noqa: F401
    test_overlapping_and_repeated_requests_sent_at_once_apply_once_each_in_turn,
)
from erasure_scan import test_after_approval_no_store_holds_a_forgotten_id_or_image  # noqa: F401
from fault_scenarios import (  # noqa: F401
    test_a_failing_dvc_remote_is_retried_then_fails_leaving_the_version_as_it_was,
    test_a_held_request_killed_inside_its_erasure_is_held_again_not_refused,
    test_a_request_killed_at_every_boundary_finishes_exactly_once,
)
from mlflow import MlflowClient
from prefect.artifacts import Artifact
from test_erasure import files_holding, stored_images

from tasks.data_versioning import DataRepo
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings
from uib.data import load_dataset
from uib.scenarios import build_scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

FAULTY = DeletionRequest(
    request_id="remove-faulty", where={"source": "faulty"}, reason="faulty source"
)


def client_of(settings: Settings) -> MlflowClient:
    from tasks.registry import client_for

    return client_for(settings)


def champion_version(settings: Settings) -> str:
    client = client_of(settings)
    return str(client.get_model_version_by_alias(settings.model_name, "champion").version)


def versions(settings: Settings) -> list[str]:
    found = client_of(settings).search_model_versions(f"name = '{settings.model_name}'")
    return sorted(str(v.version) for v in found)


def run(request: DeletionRequest, settings: Settings, **overrides) -> dict:
    from flows.unlearn import unlearn_flow

    return unlearn_flow(request.model_dump(mode="json"), {**settings.overrides(), **overrides})


def stored_state(settings: Settings) -> dict:
    """What a refused request must leave alone: the data version, the registry, the ledger."""
    return {
        "data": DataRepo(settings.data_repo).current(),
        "versions": versions(settings),
        "champion": champion_version(settings),
        "ledger": [r.model_dump(mode="json") for r in RequestLedger(settings.ledger_path).list()],
    }


def test_approved_request_moves_the_champion_records_everything_and_runs_once(home):
    from flows.train import train_flow

    data_before = DataRepo(home.data_repo).current()
    outcome = run(FAULTY, home)
    assert outcome["state"] == "approved" and outcome["model_version"] == "2"
    assert champion_version(home) == "2"

    client = client_of(home)
    version = client.get_model_version(home.model_name, "2")
    data_after = DataRepo(home.data_repo).current()
    assert data_after.git_rev != data_before.git_rev
    assert data_after.n_train == data_before.n_train - 123
    assert version.tags["request_id"] == "remove-faulty"
    assert version.tags["data_version_before"] == data_before.git_rev
    assert version.tags["data_version_after"] == data_after.git_rev
    assert version.tags["method"] == "uib" and len(version.tags["config_hash"]) == 16
    assert version.tags["gates"] == "passed" and "rejected" not in version.tags
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {
        "gx_validation_result.json",
        "gate_report.json",
        "shift_validation.md",
        "unlearn_report.json",
        "audit",
    } <= artifacts
    audit = json.loads(
        Path(client.download_artifacts(version.run_id, "audit/remove-faulty.json")).read_text()
    )
    assert audit["model_version_after"] == "2" and audit["n_forgotten"] == 123
    gx = json.loads(
        Path(client.download_artifacts(version.run_id, "gx_validation_result.json")).read_text()
    )
    assert gx["success"] is True
    plots = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert {
        "plots/per_class_accuracy.png",
        "plots/mia_histograms.png",
        "plots/bias_probe.png",
        "plots/loss_curves.png",
    } <= plots
    bias = client.get_metric_history(version.run_id, "bias_asr")  # step 0 before, 1 after
    assert [m.step for m in bias] == [0, 1] and bias[1].value <= 0.1 < bias[0].value
    assert "plots/before_after.png" in plots

    # what trained and what was removed, as MLflow datasets: versions and counts, never an id
    inputs = {
        d.dataset.name: d.dataset for d in client.get_run(version.run_id).inputs.dataset_inputs
    }
    assert set(inputs) == {"retain", "forget"}
    assert json.loads(inputs["forget"].profile)["num_rows"] == 123
    assert json.loads(inputs["forget"].source)["git_rev"] == data_before.git_rev
    assert json.loads(inputs["retain"].source)["git_rev"] == data_after.git_rev
    assert json.loads(inputs["retain"].profile)["num_rows"] == data_after.n_train
    logged = " ".join(f"{d.name} {d.digest} {d.source} {d.profile}" for d in inputs.values())
    assert "digits-train" not in logged
    assert list(audit)[:2] == ["request_id", "summary"] and list(audit)[-1] == (
        "forgotten_id_hashes"
    )

    record = RequestLedger(home.ledger_path).get("remove-faulty")
    assert record.state == RequestState.APPROVED and record.model_version == "2"
    assert record.outcome["model_version"] == "2"
    outcome_md = Artifact.get("request-remove-faulty").data
    assert "**approved**" in outcome_md and "| bias_asr |" in outcome_md
    assert "MLflow: [model version 2](http://127.0.0.1:5000/#/models/" in outcome_md
    assert "removed: 123 samples" in outcome_md and "Next step" not in outcome_md
    # what UIB decided about the slice: a faulty source, relabelled, so its own entries reset
    decision = client.get_run(version.run_id).data.tags["decision"]
    assert decision.startswith("systematic forget set; 0% of its rows look like their label")
    assert "of entries, the slice's own, reset" in decision and "held where" not in decision
    assert f"uib: {decision}" in outcome_md
    assert "Data shift validation passed" in Artifact.get("shift-remove-faulty").data
    assert not (home.results_dir / "remove-faulty").exists()

    # erased: no byte sequence of a forgotten image in the DVC cache, the remote or the stage
    scenario = build_scenario(load_dataset("digits"), home.scenario)
    forgotten = stored_images(scenario.dataset.train.select(scenario.forget_ids))
    kept = set(stored_images(scenario.dataset.train.drop(scenario.forget_ids)))
    forgotten = [img for img in forgotten if img not in kept]
    assert len(forgotten) > 50
    assert (
        files_holding(
            forgotten,
            home.data_repo / ".dvc" / "cache",
            Path(home.remote_url),
            home.stage_dir("remove-faulty"),
        )
        == {}
    )
    retained, _ = DataRepo(home.data_repo).load()
    assert np.array_equal(retained.train.x, scenario.dataset.train.drop(scenario.forget_ids).x)

    # the same request again: acknowledged, nothing registered or versioned twice
    again = run(FAULTY, home)
    assert again["duplicate"] is True and again["model_version"] == "2"
    assert versions(home) == ["1", "2"]
    assert DataRepo(home.data_repo).current().git_rev == data_after.git_rev
    assert train_flow(home.overrides())["trained"] is False


def test_a_failed_gate_holds_the_request_erases_its_data_and_blocks_nobody(home):
    from prefect.client.orchestration import get_client

    from flows.unlearn import GatesFailed, RequestNotRunnable

    # gates no model can pass: UIB fails, the exact fallback (`retrain`) fails too
    with pytest.raises(GatesFailed, match="held for review.*test_accuracy_retained"):
        run(FAULTY, home, gates={"max_ta_drop_pp": -50.0})
    assert champion_version(home) == "1" and versions(home) == ["1", "2", "3"]
    client = client_of(home)
    uib_candidate, fallback = (client.get_model_version(home.model_name, v) for v in ("2", "3"))
    assert uib_candidate.tags["method"] == "uib" and fallback.tags["method"] == "retrain"
    assert fallback.tags["fallback_for"] == "2"
    for rejected in (uib_candidate, fallback):
        assert "test_accuracy_retained" in rejected.tags["rejected"]
        assert rejected.tags["gates"] == "failed"
        assert rejected.description.startswith(
            "# REJECTED — request remove-faulty: failed test_accuracy_retained"
        )
    record = RequestLedger(home.ledger_path).get("remove-faulty")
    assert record.state == RequestState.HELD and record.is_open
    assert "test_accuracy_retained" in record.message and record.model_version == "3"
    audit = json.loads((home.audit_dir / "remove-faulty.json").read_text())
    assert audit["model_outcome"] == "held" and audit["n_forgotten"] == 123
    assert not (home.stage_dir("remove-faulty") / "forget.npz").exists()
    outcome_md = Artifact.get("request-remove-faulty").data
    assert "**held**" in outcome_md and "**FAIL**" in outcome_md
    assert (
        '`uib request approve remove-faulty --by YOUR_NAME --reason "WHY"` promotes version 3'
        in (outcome_md)
    )

    # the held request blocks nobody: another one proceeds on top of its data version
    other = DeletionRequest(request_id="other", sample_ids=["digits-train-00003"])
    outcome = run(other, home)
    assert outcome["state"] == "approved" and outcome["parent_model_version"] == "1"
    assert champion_version(home) == outcome["model_version"]
    # given whole, its run keeps it by reference once the ledger holds it, by hash once erased
    with get_client(sync_client=True) as prefect:
        [stored] = [r for r in prefect.read_flow_runs() if r.name == "unlearn-other"]
    assert stored.parameters["request"] == {"request_id": "other", "in_ledger": True}
    assert RequestLedger(home.ledger_path).get("other").ids_hashed

    # sent again, the held request waits for its review (`uib request …`, test_review.py)
    with pytest.raises(RequestNotRunnable, match="held for review"):
        run(FAULTY, home)
    assert RequestLedger(home.ledger_path).get("remove-faulty").state == RequestState.HELD


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UIB_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("UIB_GATES__BIAS_ASR_CEILING", "0.05")
    monkeypatch.setenv("UIB_DVC_REMOTE", "s3://bucket/uib")
    settings = Settings()
    assert settings.home == tmp_path / "state" and settings.gates.bias_asr_ceiling == 0.05
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    assert settings.remote_url == "s3://bucket/uib"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert Settings().tracking_uri == "http://mlflow:5000"


def test_opening_the_registry_exports_no_store_or_experiment_to_later_processes(
    monkeypatch, tmp_path
):
    """`mlflow.set_tracking_uri` and `mlflow.set_experiment` export what they are told; a team
    script started later logged to experiment 1 of its own store, which had none."""
    from tasks.registry import client_for

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    client_for(Settings(home=tmp_path / "uib"))
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "7")  # the user's own stays
    client_for(Settings(home=tmp_path / "uib"))
    assert os.environ["MLFLOW_EXPERIMENT_ID"] == "7"


def test_benchmark_flow_logs_every_run_to_mlflow(tmp_path):
    from flows.benchmark import benchmark_flow

    settings = Settings(home=tmp_path / "uib")
    config = {
        "dataset": "digits",
        "scenario": "patch-bias",
        "methods": ["uib"],
        "seeds": [0],
        "epochs": 5,
    }
    result = benchmark_flow(config, str(tmp_path / "out"), settings.overrides())
    assert result["rows"] == 3
    client = client_of(settings)
    experiment = client.get_experiment_by_name(settings.experiment).experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{result['run_id']}'")
    assert sorted(r.data.tags["method"] for r in children) == ["original", "retrain", "uib"]
    uib_run = next(r for r in children if r.data.tags["method"] == "uib")
    assert {"time_ratio", "avg_gap", "bias_asr"} <= set(uib_run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"results.csv", "results.md"} <= artifacts
    plots = [a.path for a in client.list_artifacts(result["run_id"], "plots")]
    assert plots == ["plots/avg_gap_vs_time_ratio.png"]


def test_the_same_ids_sent_again_under_a_new_request_id_are_acknowledged(home, monkeypatch):
    """A person asks by the web form, then by e-mail: the second request names ids the first
    erased. It is done, not bad input: approved naming the first, with no data or model
    version, its own audit record and its ids hashed. One that also names a new id forgets
    that one alone; an id that was never there is still refused."""
    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.redaction import hash_ids

    ids = ["digits-train-00005", "digits-train-00006"]
    assert run(DeletionRequest(request_id="by-form", sample_ids=ids), home)["state"] == "approved"
    overlap = DeletionRequest(request_id="overlap", sample_ids=[ids[1], "digits-train-00007"])
    partly = run(overlap, home)
    assert partly["state"] == "approved" and partly["already_erased_by"] == ["by-form"]
    audit = json.loads((home.audit_dir / "overlap.json").read_text())
    assert audit["n_forgotten"] == 1 and audit["already_erased_by"] == ["by-form"]
    message = RequestLedger(home.ledger_path).get("overlap").message
    assert message.endswith("; 1 of its ids was erased already, by by-form"), message
    before = stored_state(home)

    monkeypatch.setenv("UIB_HOME", str(home.home))
    mail = ["request", "delete", *(f"--ids={i}" for i in [*ids, "digits-train-00007"])]
    sent = CliRunner().invoke(app, [*mail, "--request-id", "by-mail", "--run-here"])
    assert sent.exit_code == 0, sent.output
    reply = json.loads(sent.stdout.splitlines()[-1])
    assert reply["state"] == "approved" and reply["model_version"] is None
    assert reply["already_erased_by"] == ["by-form", "overlap"] and not reply["duplicate"]
    record = RequestLedger(home.ledger_path).get("by-mail")
    assert record.state == RequestState.APPROVED and record.model_version is None
    assert "erased already, by by-form, overlap" in record.message and record.ids_hashed
    audit = json.loads((home.audit_dir / "by-mail.json").read_text())
    assert audit["n_forgotten"] == 0 and audit["forgotten_id_hashes"] == []
    assert audit["already_erased_by"] == ["by-form", "overlap"]
    hashed = sorted(hash_ids([*ids, "digits-train-00007"], home.salt()))
    assert audit["already_erased_id_hashes"] == hashed and audit["data_version_after"] is None
    after = stored_state(home)
    assert {k: after[k] for k in ("data", "versions", "champion")} == {
        k: before[k] for k in ("data", "versions", "champion")
    }
    again = CliRunner().invoke(app, [*mail, "--request-id", "by-mail", "--run-here"])
    assert again.exit_code == 0 and json.loads(again.stdout.splitlines()[-1])["duplicate"]
    # by event (the harness sets PREFECT_API_URL): acknowledged at once, no event, no run
    phoned = CliRunner().invoke(app, [*mail[:3], "--request-id", "by-phone"])
    assert phoned.exit_code == 0, phoned.output
    assert json.loads(phoned.stdout.splitlines()[-1]) == {
        "request_id": "by-phone",
        "state": "approved",
        "event_id": None,
        "duplicate": False,
        "already_erased_by": ["by-form"],
    }
    typo = CliRunner().invoke(app, [*mail[:3], "--ids=digits-train-99999", "--run-here"])
    assert typo.exit_code == 2 and "1 ids not in the train split" in typo.output
    assert "digits-train-99999" in typo.output and "digits-train-00005" not in typo.output
