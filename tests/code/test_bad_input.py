"""Bad input, a catalogue: malformed and hostile requests through the CLI (run here and sent as
an event), an event's payload and an S3 inbox object's body.

Each is refused with one clean message naming the field: exit 2 from the CLI in both modes,
a ValidationError before the `unlearn` flow touches anything, a ValueError the inbox files
beside the object. And nothing stored changes: the data repository's HEAD and work tree, the
ledger's rows and every file of the state folder (a registry would be `mlflow.db` there) are
compared before and after. No Prefect server starts and nothing is trained: every case is
refused before either would be needed. The cases that need the pipeline (refused by the shift
policy, exit 1) are in tests/integration/test_pipeline_refusals.py, the inbox's filing of
objects in tests/integration/test_inbox_filing.py; docs/RELIABILITY.md lists them all.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import pydantic
import pytest
from typer.testing import CliRunner

from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings

TAKEN = DeletionRequest(request_id="taken", sample_ids=["digits-train-00003"], reason="erasure")
DEAD_API = "http://127.0.0.1:9/api"  # event mode with no server: a refusal never reaches it
HUNDRED_K = "\n".join(f"mnist-train-{i:06d}" for i in range(100_000)) + "\n"


@pytest.fixture(scope="module")
def state(tmp_path_factory, digits) -> Settings:
    """A state folder holding the patch-bias digits as the current data version, and a ledger
    holding one request (`taken`)."""
    from tasks.data_versioning import DataRepo
    from uib.scenarios import ScenarioConfig, build_scenario

    settings = Settings(home=tmp_path_factory.mktemp("bad-input") / "uib")
    scenario = build_scenario(digits, ScenarioConfig(name="patch-bias", seed=0))
    DataRepo.init(settings.data_repo, settings.remote_url).write_dataset(
        scenario.dataset, scenario.config, "patch-bias digits"
    )
    RequestLedger(settings.ledger_path).submit(TAKEN)
    return settings


def stored(settings: Settings) -> dict:
    """Everything a request could change: the data version, the ledger, the state folder."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=settings.data_repo, capture_output=True, text=True, check=True
        ).stdout

    home = settings.home
    files = sorted(
        str(p.relative_to(home))
        for p in home.rglob("*")
        if p.is_file() and settings.data_repo not in p.parents
    )
    rows = [r.model_dump(mode="json") for r in RequestLedger(settings.ledger_path).list()]
    return {
        "data HEAD": git("rev-parse", "HEAD"),
        "data work tree": git("status", "--porcelain"),
        "ledger": rows,
        "files": files,
    }


def id_files(tmp_path) -> dict[str, str]:
    """`--ids-file` contents by name, written under `tmp_path`."""
    contents = {
        "empty.txt": "\n\n  \n",
        "repeated.txt": "digits-train-00001\n\ndigits-train-00002\ndigits-train-00001\n",
        "control.txt": "digits-train-00001\r\ndigits-train-00002\x07\n",
        "hundred-k.txt": HUNDRED_K,
    }
    for name, text in contents.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "latin-1.txt").write_bytes("digits-train-0000\xe9\n".encode("latin-1"))
    return {name: str(tmp_path / name) for name in [*contents, "latin-1.txt", "missing.txt"]}


# (case, `uib request delete` arguments, what the message must name); every one exits 2
CLI_CASES = [
    ("empty", [], "exactly one of sample_ids or where"),
    ("ids and where", ["--ids", "digits-train-00001", "--where", "source=faulty"], "exactly one"),
    (
        "duplicate ids",
        ["--ids", "digits-train-00001", "--ids", "digits-train-00001"],
        "more than once",
    ),
    ("path-like id", ["--ids", "../x"], "sample_ids: forget set: 1 ids not in the train split"),
    ("shell-like id", ["--ids", "$(rm -rf /)"], "sample_ids: forget set: 1 ids not in the train"),
    ("control character in an id", ["--ids", "digits-train-00001\x1b[2J"], "sample_ids"),
    ("path-like request id", ["--ids", "digits-train-00001", "--request-id", "../x"], "request_id"),
    ("shell-like request id", ["--ids", "x", "--request-id", "$(rm -rf /)"], "request_id"),
    ("request id ending in a newline", ["--ids", "x", "--request-id", "req-1\n"], "request_id"),
    ("unknown attribute", ["--where", "colour=red"], "where: forget set: unknown manifest column"),
    ("value of the wrong type", ["--where", "original_label=three"], "where: forget set: original"),
    ("predicate matching nothing", ["--where", "source=nowhere"], "where: forget set is empty"),
    (
        "repeated --where, ANDed",
        ["--where", "source=nowhere", "--where", "source=faulty"],
        "where: forget set is empty: no train sample matches source=faulty AND source=nowhere",
    ),
    ("--where without =", ["--where", "source"], "--where: expected ATTR=VALUE"),
    ("--where in (, unclosed", ["--where", "source in (faulty, clean"], "--where: expected ATTR="),
    ("--where in (), an empty value", ["--where", "source in (faulty,,clean)"], "--where: 'source"),
    (
        "--where in (), a value of the wrong type",
        ["--where", "original_label in (3, x)"],
        "where: forget set: original_label in (3, x): 'x' does not fit the column's type int64",
    ),
    (
        "--where <, on a text column",
        ["--where", "source<faulty"],
        "where: forget set: source<'faulty' does not fit the column's type str",
    ),
    (
        "--where, not true or false for a bool",
        ["--where", "patched=yes"],
        "where: forget set: patched='yes' does not fit the column's type bool",
    ),
    ("--where, control character", ["--where", "source=faulty\x1b[2J"], "--where: 'source="),
    ("huge reason", ["--ids", "digits-train-00001", "--reason", "x" * 5000], "reason"),
    ("control characters in the reason", ["--ids", "x", "--reason", "ok\x1b[2J\x07"], "reason"),
    (
        "reused request id, other content",
        ["--ids", "digits-train-00004", "--request-id", "taken"],
        "request_id: 'taken' is already in the ledger with other content",
    ),
    ("empty --ids-file", ["--ids-file", "@empty.txt"], "empty.txt names no sample id"),
    ("--ids-file repeats an id", ["--ids-file", "@repeated.txt"], "line 4: 'digits-train-00001'"),
    ("--ids-file, control character", ["--ids-file", "@control.txt"], "control.txt, line 2"),
    ("--ids-file not UTF-8", ["--ids-file", "@latin-1.txt"], "--ids-file: cannot read"),
    ("--ids-file missing", ["--ids-file", "@missing.txt"], "missing.txt"),
    (
        "100k ids by --ids-file",
        ["--ids-file", "@hundred-k.txt"],
        "sample_ids: forget set: 100000 ids not in the train split",
    ),
    ("impossible gate settings", ["--ids", "digits-train-00001"], "gates.confidence"),
]


@pytest.mark.parametrize("mode", ["run here", "by event"])
@pytest.mark.parametrize(("case", "arguments", "named"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_the_cli_refuses_bad_input_with_exit_2_and_changes_nothing(
    state, tmp_path, monkeypatch, mode, case, arguments, named
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.cli import app

    files = id_files(tmp_path)
    arguments = [files[a[1:]] if a.startswith("@") else a for a in arguments]
    monkeypatch.setenv("UIB_HOME", str(state.home))
    if case == "impossible gate settings":
        monkeypatch.setenv("UIB_GATES__CONFIDENCE", "2")
    before = stored(state)
    with temporary_settings({PREFECT_API_URL: DEAD_API if mode == "by event" else None}):
        result = CliRunner().invoke(app, ["request", "delete", *arguments])
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    message = [line for line in result.output.splitlines() if not line.startswith("uib: ")]
    assert message[0].startswith("error: invalid") and len(message) <= 3  # progress aside
    assert stored(state) == before


def test_repeated_where_clauses_all_hold(state):
    """Each `--where` narrows the selection (the same attribute twice as well): ANDed."""
    from flows.cli_input import parse_where
    from tasks.data_versioning import DataRepo
    from tasks.predicates import select_samples

    manifest = DataRepo(state.data_repo).load_manifest()
    train = manifest[manifest["split"] == "train"]

    def chosen(*clauses: str) -> set[str]:
        where = DeletionRequest(request_id="r", where=parse_where(list(clauses))).where
        return set(select_samples(manifest, where=where))

    faulty = set(train.loc[train["source"] == "faulty", "sample_id"])
    threes = set(train.loc[train["original_label"] == 3, "sample_id"])
    assert chosen("source=faulty") == faulty and 0 < len(faulty & threes) < len(faulty)
    assert chosen("source=faulty", "original_label=3") == faulty & threes
    assert chosen("source=faulty", "source=faulty") == faulty  # a repeat changes nothing
    assert chosen("original_label=3", "source=faulty") == chosen(
        "source=faulty", "original_label=3"
    )
    # the form stored before (a mapping) is the same request
    stored_form = DeletionRequest(request_id="r", where={"source": "faulty", "original_label": "3"})
    written = DeletionRequest(request_id="r", where=["source=faulty", "original_label=3"])
    assert stored_form.where == written.where
    assert str(written.where) == "original_label=3 AND source=faulty"


def test_where_takes_every_operator_typed_by_the_manifest(state):
    """`--where` forms beyond `=`: parsed by the CLI, then typed by the manifest's columns."""
    from flows.cli_input import parse_where
    from tasks.data_versioning import DataRepo
    from tasks.predicates import Clause, select_samples

    assert parse_where(["site in (b, a)", "collected_at<2024-01-01"]) == [
        Clause(attribute="site", op="in", value=("a", "b")),
        Clause(attribute="collected_at", op="<", value="2024-01-01"),
    ]
    manifest = DataRepo(state.data_repo).load_manifest()
    train = manifest[manifest["split"] == "train"]

    def chosen(*clauses: str) -> set[str]:
        where = DeletionRequest(request_id="r", where=parse_where(list(clauses))).where
        return set(select_samples(manifest, where=where))

    def ids(rows) -> set[str]:
        return set(train.loc[rows, "sample_id"])

    assert chosen("original_label in (3, 4)") == ids(train["original_label"].isin([3, 4]))
    assert chosen("original_label<2", "source!=faulty") == ids(
        (train["original_label"] < 2) & (train["source"] != "faulty")
    )
    assert chosen("patched=true") == ids(train["patched"]) == chosen("source=faulty")


def test_an_ids_file_of_100k_ids_travels_to_the_ledger(tmp_path):
    """100k ids pass as a file (no argument limit), validate, and round-trip the ledger; the
    CLI's event names the request by reference, whatever its size; an event carrying the whole
    request would be too large for Prefect and is refused by name."""
    from flows.cli_input import read_ids_file
    from tasks.events import deletion_event, event_too_large

    path = tmp_path / "ids.txt"
    path.write_text(HUNDRED_K)
    request = DeletionRequest(request_id="big", sample_ids=read_ids_file(path))
    ledger = RequestLedger(tmp_path / "requests.db")
    ledger.submit(request)
    assert ledger.get("big").request.sample_ids == request.sample_ids
    assert "sample_ids: 100000 ids make an event of" in event_too_large(request)
    assert deletion_event(request, by_reference=True).size_bytes < 2000
    assert deletion_event(request, by_reference=True).id == deletion_event(request).id
    small = DeletionRequest(request_id="small", sample_ids=request.sample_ids[:1000])
    assert event_too_large(small) is None


# (case, the event's `request` payload, what the error must name)
PAYLOAD_CASES = [
    ("truthy string for a boolean", {"allow_class_removal": "yes"}, "allow_class_removal"),
    ("number for a boolean", {"allow_class_removal": 1}, "allow_class_removal"),
    ("no request id", {"request_id": None}, "request_id"),
    ("extra field", {"priority": "high"}, "priority"),
    ("ids as a string", {"sample_ids": "digits-train-00001"}, "sample_ids"),
    ("empty ids", {"sample_ids": []}, "sample_ids is empty"),
    ("number as an attribute value", {"sample_ids": None, "where": {"original_label": 3}}, "where"),
    ("requested_at in the future", {"requested_at": "2999-01-01T00:00:00Z"}, "in the future"),
    ("requested_at without a zone", {"requested_at": "2024-01-01T00:00:00"}, "requested_at"),
    ("request id ending in a newline", {"request_id": "req-1\n"}, "request_id"),
]


@pytest.mark.parametrize(
    ("case", "fields", "named"), PAYLOAD_CASES, ids=[c[0] for c in PAYLOAD_CASES]
)
def test_an_event_payload_is_refused_before_the_flow_touches_anything(state, case, fields, named):
    """The `unlearn` flow's own first step (its body, without Prefect's run machinery)."""
    from flows.unlearn import unlearn_flow

    payload = {"request_id": "evt-1", "sample_ids": ["digits-train-00001"], **fields}
    payload = {k: v for k, v in payload.items() if v is not None}
    before = stored(state)
    with pytest.raises(pydantic.ValidationError, match=named):
        unlearn_flow.fn(payload, state.overrides())
    assert stored(state) == before


# (case, an inbox object's body, what the reason must name)
INBOX_CASES = [
    ("malformed JSON", b'{"request_id": "in-1", "sample_ids": [', "not JSON"),
    ("not UTF-8", b'{"request_id": "in-\xe9"}', "not UTF-8"),
    (
        "duplicate keys",
        b'{"request_id": "in-1", "allow_class_removal": false, "sample_ids": ["a"], '
        b'"allow_class_removal": true}',
        "allow_class_removal: the key is given more than once",
    ),
    (
        "duplicate keys in the predicate",
        b'{"request_id": "in-1", "where": {"source": "nowhere", "source": "faulty"}}',
        "source: the key is given more than once",
    ),
    (
        "truthy string for a boolean",
        b'{"request_id": "in-1", "sample_ids": ["a"], "allow_class_removal": "yes"}',
        "allow_class_removal",
    ),
    ("no request id", b'{"sample_ids": ["a"]}', "request_id: Field required"),
    ("extra field", b'{"request_id": "in-1", "sample_ids": ["a"], "who": "x"}', "who"),
    ("not an object", b'["a", "b"]', "request"),
    ("too large", b" " * (2 << 20), "bytes"),
]


@pytest.mark.parametrize(("case", "body", "named"), INBOX_CASES, ids=[c[0] for c in INBOX_CASES])
def test_an_inbox_body_is_refused_naming_the_field(case, body, named):
    from tasks.inbox import read_request

    with pytest.raises(ValueError, match=named):
        read_request(body)


def test_the_queue_follows_receipt_not_the_senders_clock(tmp_path):
    """A sender's `requested_at` of 1970 is kept as information; the ledger's receipt time
    orders the queue, so it does not jump ahead of a request received before it."""
    from tasks.batching import plan_batch
    from tasks.inbox import read_request

    ledger = RequestLedger(tmp_path / "requests.db")
    ledger.submit(DeletionRequest(request_id="first", sample_ids=["s1"]))
    old = read_request(
        json.dumps(
            {"request_id": "old", "sample_ids": ["s2"], "requested_at": "1970-01-01T00:00:00Z"}
        ).encode()
    )
    ledger.submit(old)
    record = ledger.get("old")
    assert record.request.requested_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert record.received_at > ledger.get("first").received_at
    import pandas as pd

    manifest = pd.DataFrame({"sample_id": ["s1", "s2"], "split": ["train", "train"]})
    plan = plan_batch(ledger.list(RequestState.PENDING), manifest, max_forget_fraction=0.5)
    assert plan.members == ["first"] and "old" in plan.queued
