"""Gate failures end in the exact fallback or a hold for review; reviewers act through the CLI.

Real Prefect (test server), MLflow (SQLite), DVC and GX, as in test_pipeline.py. A UIB candidate
is made to fail its gates with a method config that wrecks the model (a huge IF step and no
retain pass to win anything back): it fails the retained-accuracy gates.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from test_erasure import files_holding, stored_images
from test_pipeline import FAULTY, champion_version, client_of, run, versions
from typer.testing import CliRunner

from tasks.data_versioning import DataRepo
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings
from uib.data import load_dataset
from uib.scenarios import build_scenario

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.usefixtures("prefect_harness"),
]

WRECK = {"eta": 50.0, "passes": 0}
HOLD = {"on_gate_failure": "hold", "method_config": WRECK}
README = Path(__file__).resolve().parents[2] / "README.md"


def slice_of(request_id: str, label: str) -> DeletionRequest:
    """The faulty source's samples of one true digit (13–14 samples)."""
    return DeletionRequest(
        request_id=request_id,
        where={"source": "faulty", "original_label": label},
        reason="faulty scans",
    )


def hold(settings: Settings, request: DeletionRequest, **overrides) -> str:
    """Run `request` with a wrecked UIB under `hold`; return its held candidate's version."""
    from flows.unlearn import GatesFailed

    with pytest.raises(GatesFailed, match="held for review.*retain_accuracy_retained"):
        run(request, settings, **{**HOLD, **overrides})
    record = RequestLedger(settings.ledger_path).get(request.request_id)
    assert record.state == RequestState.HELD, record.message
    return record.model_version


def audit_of(settings: Settings, request_id: str) -> dict:
    return json.loads((settings.audit_dir / f"{request_id}.json").read_text())


def readme_review_commands() -> dict[str, list[str]]:
    """The README's review commands, by action, split as a shell would."""
    text = README.read_text()
    block = text.split("### Reviewing a request", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line, comments=True) for line in block.strip().splitlines()]
    return {argv[2]: argv for argv in commands}


def run_as_written(settings: Settings, argv: list[str]) -> subprocess.CompletedProcess:
    """A README command run as written, from the checkout, against this test's stores."""
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "UIB_HOME": str(settings.home),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    return subprocess.run(
        argv, cwd=README.parent, env=env, capture_output=True, text=True, timeout=900
    )


def cli(settings: Settings, *args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args), env={"UIB_HOME": str(settings.home)})


def test_a_failed_uib_candidate_falls_back_to_retrain_and_the_request_is_approved(home):
    outcome = run(FAULTY, home, method_config=WRECK)

    assert outcome["state"] == "approved" and outcome["model_version"] == "3"
    assert outcome["method"] == "retrain" and outcome["fallback_for"] == "2"
    assert "uib candidate v2 failed" in outcome["note"]
    assert champion_version(home) == "3" and versions(home) == ["1", "2", "3"]
    client = client_of(home)
    failed, fallback = (client.get_model_version(home.model_name, v) for v in ("2", "3"))
    assert failed.tags["method"] == "uib" and failed.tags["gates"] == "failed"
    assert "retain_accuracy_retained" in failed.tags["rejected"]
    assert failed.description.startswith(
        "# REJECTED — request remove-faulty: failed test_accuracy_retained, "
        "retain_accuracy_retained"
    )
    assert fallback.tags["method"] == "retrain" and fallback.tags["fallback_for"] == "2"
    assert fallback.tags["gates"] == "passed" and "rejected" not in fallback.tags
    assert fallback.description.startswith("# APPROVED — request remove-faulty")
    assert client.get_registered_model(home.model_name).tags["pipeline_champion"] == "3"
    # trained on the erased samples: the parent and the rejected UIB candidate, tagged and (by
    # the default policy) kept loadable; the retrained fallback never saw them
    parent = client.get_model_version(home.model_name, "1")
    for version in (parent, failed):
        assert version.tags["trained_on_erased_data"] == "remove-faulty"
        assert "model_artifacts_deleted" not in version.tags
    assert "trained_on_erased_data" not in fallback.tags

    record = RequestLedger(home.ledger_path).get("remove-faulty")
    assert record.state == RequestState.APPROVED and record.model_version == "3"
    assert "exact fallback `retrain`" in record.message
    audit = audit_of(home, "remove-faulty")
    assert audit["model_outcome"] == "approved" and audit["model_version_after"] == "3"
    assert audit["n_forgotten"] == 123

    scenario = build_scenario(load_dataset("digits"), home.scenario)
    forgotten = stored_images(scenario.dataset.train.select(scenario.forget_ids))
    kept = set(stored_images(scenario.dataset.train.drop(scenario.forget_ids)))
    forgotten = [img for img in forgotten if img not in kept]
    roots = (
        home.data_repo / ".dvc" / "cache",
        Path(home.remote_url),
        home.stage_dir("remove-faulty"),
    )
    assert files_holding(forgotten, *roots) == {}


def test_held_requests_block_nobody_and_are_reviewed_through_the_cli(home):
    from flows.unlearn import RequestNotRunnable

    ledger = RequestLedger(home.ledger_path)
    client = client_of(home)
    held = {
        rid: hold(home, slice_of(rid, label))
        for rid, label in (("req-43", "2"), ("req-44", "3"), ("req-45", "4"))
    }
    assert held == {"req-43": "2", "req-44": "3", "req-45": "4"}
    assert champion_version(home) == "1"
    for rid, version in held.items():
        candidate = client.get_model_version(home.model_name, version)
        assert candidate.tags["parent_model_version"] == "1" and candidate.tags["rejected"]
        assert candidate.description.startswith(f"# REJECTED — request {rid}: failed ")
        audit = audit_of(home, rid)
        assert audit["model_outcome"] == "held" and audit["model_version_after"] == version
        assert not (home.stage_dir(rid) / "forget.npz").exists()  # erased, gates or not
    with pytest.raises(RequestNotRunnable, match="held for review"):
        run(slice_of("req-43", "2"), home)  # sent again: it waits for its review

    # another request proceeds on top of the held ones: parent = champion, retain set without them
    later = run(slice_of("later", "1"), home)
    assert later["state"] == "approved" and later["parent_model_version"] == "1"
    assert champion_version(home) == later["model_version"]
    head = DataRepo(home.data_repo).load_manifest()
    faulty_left = head[(head["split"] == "train") & (head["source"] == "faulty")]
    assert not faulty_left["original_label"].astype(str).isin(["1", "2", "3", "4"]).any()

    # approve is refused once the champion moved; bad input names the field
    moved = cli(home, "request", "approve", "req-43", "--by", "bob", "--reason", "fine")
    assert moved.exit_code == 1 and "the champion moved since" in moved.output
    assert "retry" in moved.output
    missing = cli(home, "request", "reject", "req-43", "--reason", "no")
    assert missing.exit_code == 2 and "--by" in missing.output
    blank = cli(home, "request", "reject", "req-43", "--by", " ", "--reason", "no")
    assert blank.exit_code == 2 and "by:" in blank.output
    unknown = cli(home, "request", "reject", "req-99", "--by", "bob", "--reason", "no")
    assert unknown.exit_code == 2 and "request_id" in unknown.output and "req-99" in unknown.output
    method = cli(
        home, "request", "retry", "req-43", "--by", "bob", "--reason", "x", "--method", "nope"
    )
    assert method.exit_code == 2 and "nope" in method.output
    erased = cli(
        home, "request", "retry", "req-43", "--by", "bob", "--reason", "x", "--method", "uib"
    )
    assert erased.exit_code == 1 and "forget set is erased" in erased.output
    assert ledger.get("req-43").state == RequestState.HELD and not ledger.get("req-43").reviews

    commands = readme_review_commands()
    assert sorted(commands) == ["approve", "reject", "retry", "withdraw"]

    # reject: closed, the champion stays; recorded in the ledger, on the version, in the audit
    champion_before = champion_version(home)
    rejected = run_as_written(home, commands["reject"])
    assert rejected.returncode == 0, rejected.stderr
    assert json.loads(rejected.stdout)["state"] == "rejected"
    record = ledger.get("req-43")
    assert record.state == RequestState.REJECTED and record.reviews[-1].by == "alice"
    assert record.reviews[-1].reason == "the candidate is unusable"
    version = client.get_model_version(home.model_name, "2")
    assert version.tags["rejected_by"] == "alice" and version.tags["rejected"]
    assert version.tags["review_reason"] == "the candidate is unusable"
    assert version.description.startswith("# REJECTED — request req-43: failed ")
    assert "rejected by alice" in version.description.splitlines()[0]
    audit = audit_of(home, "req-43")
    assert audit["model_outcome"] == "rejected" and audit["reviews"][-1]["action"] == "reject"
    assert champion_version(home) == champion_before
    again = cli(home, "request", "reject", "req-43", "--by", "bob", "--reason", "twice")
    assert again.exit_code == 1 and "req-43 is rejected" in again.output

    # retry: the forget set is erased, so `retrain` runs on the current data, same gates
    retried = run_as_written(home, commands["retry"])
    assert retried.returncode == 0, retried.stderr
    answer = json.loads(retried.stdout)
    assert answer["state"] == "approved" and answer["champion"] == answer["model_version"]
    record = ledger.get("req-44")
    assert record.state == RequestState.APPROVED and record.model_version == answer["model_version"]
    assert [r.action for r in record.reviews] == ["retry"]
    new = client.get_model_version(home.model_name, answer["model_version"])
    assert new.tags["method"] == "retrain" and new.tags["retry_of"] == "3"
    assert new.tags["parent_model_version"] == champion_before
    assert new.tags["data_version_after"] == DataRepo(home.data_repo).current().git_rev
    assert client.get_model_version(home.model_name, "3").tags["retried_by"] == "alice"
    gates = {g["name"]: g for g in record.outcome["gates"]["gates"]}
    assert gates["test_accuracy_retained"]["passed"]
    assert "not measured" in gates["forget_like_unseen"]["rule"]
    audit = audit_of(home, "req-44")
    assert audit["model_outcome"] == "approved"
    assert audit["model_version_after"] == answer["model_version"]
    assert [r["action"] for r in audit["reviews"]] == ["retry"]

    # withdraw: closed; nothing versioned is touched, erased data stays erased
    before = (versions(home), champion_version(home), DataRepo(home.data_repo).current())
    withdrawn = run_as_written(home, commands["withdraw"])
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert ledger.get("req-45").state == RequestState.WITHDRAWN
    assert "erased data stays erased" in ledger.get("req-45").message
    assert (versions(home), champion_version(home), DataRepo(home.data_repo).current()) == before
    assert client.get_model_version(home.model_name, "4").tags["withdrawn_by"] == "alice"
    assert audit_of(home, "req-45")["model_outcome"] == "withdrawn"
    with pytest.raises(RequestNotRunnable, match="withdrawn"):
        run(slice_of("req-45", "4"), home)

    # approve: a held request whose parent is still the champion is promoted
    candidate = hold(home, slice_of("req-42", "5"))
    approved = run_as_written(home, commands["approve"])
    assert approved.returncode == 0, approved.stderr
    assert champion_version(home) == candidate
    version = client.get_model_version(home.model_name, candidate)
    assert version.tags["approved_by"] == "alice" and "rejected" not in version.tags
    assert version.tags["review_reason"] == "TA drop accepted by the data owner"
    assert version.tags["gates"] == "failed"
    assert version.description.startswith("# APPROVED — request req-42: approved by alice")
    assert client.get_registered_model(home.model_name).tags["pipeline_champion"] == candidate
    record = ledger.get("req-42")
    assert record.state == RequestState.APPROVED and record.outcome["state"] == "approved"
    assert audit_of(home, "req-42")["model_outcome"] == "approved"
    assert run(slice_of("req-42", "5"), home)["duplicate"] is True

    listed = cli(home, "requests")
    assert listed.exit_code == 0
    line = next(row for row in listed.output.splitlines() if row.startswith("req-43"))
    assert "rejected" in line and "reject by alice" in line
    rows = {r["request_id"]: r for r in json.loads(cli(home, "requests", "--json").output)}
    assert rows["req-44"]["reviews"][0]["by"] == "alice"


def test_a_champion_moved_by_hand_is_noticed_on_the_next_run(home):
    from flows.review import ChampionMovedByHand

    ledger = RequestLedger(home.ledger_path)
    candidate = hold(home, slice_of("held-1", "1"))
    by_hand = MlflowClient(tracking_uri=home.tracking_uri)
    by_hand.set_registered_model_alias(home.model_name, "champion", candidate)

    # the next run completes the held request whose candidate the alias now points at (its
    # parent is that wrecked candidate, so impossible gates make sure it is held in turn)
    hold(home, slice_of("next-1", "2"), gates={"max_ta_drop_pp": -50.0, "max_ra_drop_pp": -50.0})
    record = ledger.get("held-1")
    assert record.state == RequestState.APPROVED
    assert record.reviews[-1].by == "alias moved by hand"
    version = client_of(home).get_model_version(home.model_name, candidate)
    assert version.tags["approved_by"] == "alias moved by hand" and "rejected" not in version.tags
    assert audit_of(home, "held-1")["model_outcome"] == "approved"
    assert (
        client_of(home)
        .get_model_version(home.model_name, ledger.get("next-1").model_version)
        .tags["parent_model_version"]
        == candidate
    )

    # moved anywhere else: every run is refused, naming the version and what to do
    by_hand.set_registered_model_alias(home.model_name, "champion", "1")
    registered = versions(home)
    with pytest.raises(ChampionMovedByHand, match=f"points at version 1.*made version {candidate}"):
        run(slice_of("next-2", "3"), home)
    assert ledger.get("next-2").state == RequestState.PENDING and versions(home) == registered
