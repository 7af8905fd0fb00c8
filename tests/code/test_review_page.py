"""What a reviewer reads: the version page's Markdown, the audit record's order, the Prefect
outcome's next step and the shift-validation table's order (the browser test renders them)."""

import json
from datetime import UTC, datetime

from flows.outcome import next_step
from tasks.data_versioning import DataVersion
from tasks.erasure import ErasureRecord, build_audit_record
from tasks.gates import apply_gates
from tasks.requests import DeletionRequest, RequestState
from tasks.review_page import (
    PAD,
    VersionLinks,
    gate_table,
    mlflow_version_url,
    over_forgetting,
    selection_text,
    version_description,
    with_audit_link,
    with_headline,
)
from tasks.settings import GateConfig
from tasks.validation import Check, ValidationReport
from uib.metrics import Metrics

BEFORE = Metrics(
    UA=0.03, RA=0.987, TA=0.9474, test_f1=0.95, forget_acc=0.97, mia_efficacy=0.2,
    mia_test_level=0.27, bias_asr=0.94, bias_corr=0.9, per_class_acc=[0.95] * 10,
)  # fmt: skip
FAULTY = DeletionRequest(request_id="req-7", where={"source": "faulty"}, reason="bad scanner")
V1 = DataVersion(git_rev="a" * 40, dvc_md5="b" * 32 + ".dir", n_train=1347, n_test=450, message="")
V2 = DataVersion(git_rev="c" * 40, dvc_md5="d" * 32 + ".dir", n_train=1224, n_test=450, message="")
LINKS = VersionLinks(
    model_name="uib-classifier",
    experiment_id="1",
    run_id="run9",
    data_repo="/state/data-repo",
    data_version_before=V1.git_rev,
    data_version_after=V2.git_rev,
    audit_file="req-7.json",
    flow_run_url="http://prefect:4200/runs/flow-run/42",
)


def cells(row: str) -> list[str]:
    return [c.removeprefix(PAD).removesuffix(PAD) for c in row.strip("| ").split(" | ")]


def test_the_gate_table_is_before_after_threshold_with_padded_cells():
    after = BEFORE.model_copy(update={"TA": 0.92, "forget_acc": 0.0, "bias_asr": 0.0})
    gates = apply_gates(BEFORE, after, GateConfig(), patch_bias_request=True, sane=True)
    rows = gate_table(gates).splitlines()
    assert cells(rows[0]) == ["gate", "before", "after", "threshold", "n", "result", "rule"]
    assert all(c.startswith(PAD) and c.endswith(PAD) for c in rows[2].strip("| ").split(" | "))
    by_gate = {cells(r)[0]: cells(r) for r in rows[2:]}
    assert by_gate["test_accuracy_retained"][:6] == ["test_accuracy_retained", "0.9474", "0.9200",
                                                     "≥ 0.9374", "—", "**FAIL**"]  # fmt: skip
    assert by_gate["bias_asr"][1:4] == ["0.9400", "0.0000", "≤ 0.1000"]
    assert by_gate["sanity"][1:3] == ["—", "1.0000"]  # no metric of the original to show


def test_the_description_opens_with_the_decision_and_ends_with_the_links():
    after = BEFORE.model_copy(update={"TA": 0.92, "forget_acc": 0.0, "bias_asr": 0.0})
    gates = apply_gates(BEFORE, after, GateConfig(), patch_bias_request=True, sane=True)
    text = version_description(FAULTY, gates, "uib", 123, "1", LINKS)
    lines = text.splitlines()
    assert lines[0] == "# REJECTED — request req-7: failed test_accuracy_retained"
    assert lines[2].startswith("**123 samples removed** — selected `where source=faulty`")
    assert "reason: bad scanner" in lines[2] and "**Not promoted:**" in lines[2]
    assert "[version 1](#/models/uib-classifier/versions/1)" in lines[2]
    assert text.index("### Gates") < text.index("### Links")
    assert "[http://prefect:4200/runs/flow-run/42](http://prefect:4200/runs/flow-run/42)" in text
    assert "`aaaaaaaaaa` → `cccccccccc`" in text
    assert "- audit record: `audit/req-7.json`, logged to the source run" in text
    linked = with_audit_link(text, LINKS, "run11")
    assert "[audit/req-7.json](#/experiments/1/runs/run11/artifacts/audit/req-7.json)" in linked
    approved = with_headline(linked, "# APPROVED — request req-7: approved by alice despite …")
    assert approved.splitlines()[0].startswith("# APPROVED") and "Not promoted" not in approved
    assert "**Promoted on review**" in approved and approved.count("### Gates") == 1


def test_over_forgetting_is_said_when_the_forget_set_looks_less_member_like_than_unseen_data():
    sentence = over_forgetting(0.99, 123, 0.27)
    assert sentence.startswith("Over-forgetting: the forget set looks less member-like")
    assert "99%" in sentence and "27%" in sentence
    assert over_forgetting(0.35, 123, 0.27) is None  # within chance of the unseen level
    assert over_forgetting(1.0, 2, 0.27) is None  # two samples cannot show it
    assert over_forgetting(float("nan"), 50, 0.27) is None


def test_a_selection_is_named_without_its_ids():
    assert selection_text(FAULTY) == "where source=faulty"
    two = DeletionRequest(request_id="r", sample_ids=["digits-train-00003", "digits-train-00017"])
    assert selection_text(two) == "2 ids"
    assert (
        mlflow_version_url("sqlite:///x.db", "m", "3")
        == "http://127.0.0.1:5000/#/models/m/versions/3"
    )
    assert (
        mlflow_version_url("http://mlflow:5000/", "m", "3")
        == "http://mlflow:5000/#/models/m/versions/3"
    )


def test_the_audit_record_opens_with_its_summary_and_ends_with_the_hashes():
    erasure = ErasureRecord(
        before=V1, after=V2, purged_objects=["e" * 32] * 3, deleted_from_cache=3,
        deleted_from_remote=3, unrecoverable_revs=[V1.git_rev], forgotten_id_hashes=["f" * 64] * 2,
        staged_file_deleted=True,
    )  # fmt: skip
    gates = apply_gates(BEFORE, BEFORE, GateConfig(), True, True).model_dump(mode="json")
    record = build_audit_record("req-7", erasure, "1", "2", gates, datetime.now(UTC),
                                model_outcome="held", selection="where source=faulty")  # fmt: skip
    keys = list(json.loads(record.to_json()))
    assert keys[:2] == ["request_id", "summary"]
    assert keys.index("forgotten_id_hashes") > keys.index("gate_results")
    assert keys[-1] == "forgotten_id_hashes"
    summary = json.loads(record.to_json())["summary"]
    assert summary["forgotten"] == "2 samples (where source=faulty)"
    assert summary["outcome"] == "held" and summary["model_versions"] == "1 → 2"
    assert summary["gates"].startswith("failed: ")  # the patch shortcut is still there
    assert "1 data version can no longer be checked out" in summary["erased"]


def test_a_held_or_refused_outcome_names_the_next_command():
    held = next_step("req-7", RequestState.HELD, "3")
    assert '`uib request approve req-7 --by YOUR_NAME --reason "WHY"` promotes version 3' in held
    assert "`uib request retry req-7" in held and "`uib request reject req-7" in held
    assert "`uib request withdraw req-7" in next_step("req-7", RequestState.REJECTED)
    assert next_step("req-7", RequestState.APPROVED) is None


def test_the_shift_validation_table_puts_the_deciding_rows_first():
    checks = [Check(name=f"original: col{i} type", success=True) for i in range(5)]
    checks += [
        Check(name="forget fraction", success=True, observed=0.09, threshold=0.3),
        Check(name="no class removed from retain", success=False, observed=0, threshold=1),
    ]
    report = ValidationReport(
        success=False, checks=checks, label_kl=0.01, forget_fraction=0.09,
        class_proportions_before={}, class_proportions_after={},
        attribute_proportions_before={}, attribute_proportions_after={}, gx_result={},
    )  # fmt: skip
    names = [line.split(" | ")[0].strip("| ") for line in report.to_markdown().splitlines()[4:]]
    assert names[:2] == ["no class removed from retain", "forget fraction"]
    assert names[2] == "*schema and types of each manifest (5)*"
    assert names[3:] == [f"original: col{i} type" for i in range(5)]
