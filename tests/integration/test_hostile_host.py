"""The host, not the request, fails the pipeline: a DVC remote the runner may not write, and a
full disk under the state folder.

Neither is the request's fault and another try cannot fix either, so each must end the request
at once (the push, a retried step, is tried once), with one line that names what to fix and no
traceback, and must leave it to be sent again: nothing half-applied — the data version, the
registry and the champion as they were, the ledger readable — and after the fix the same
request finishes exactly once: one data commit, one model version, one audit record.

The real CLI runs as a subprocess against the module's Prefect server, on a state folder of its
own whose `train` flow registered a copy of the module's one trained original (conftest's
`original`). The hostile parts are real too (`hostile_host`): the CLI runs as `nobody` where
the tests run as root (root ignores modes), and the small disk is a tmpfs.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import tempfile
import traceback
from pathlib import Path
from uuid import UUID

import pytest
from hostile_host import (
    GIT_READ_ONLY,
    chown_tree,
    fill,
    runner,
    skip_unless_runner_can_run_the_cli,
    small_disk,
    tree_digests,
    uib,
)
from mlflow import MlflowClient

from tasks.data_switch import NEXT_DIR, PREVIOUS_DIR, read_journal
from tasks.data_versioning import DATA_DIR, DataRepo
from tasks.erasure import read_audit
from tasks.private_state import PRIVATE_DIR
from tasks.requests import RequestLedger, RequestState
from tasks.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

FAULTY = ["request", "delete", "--where", "source=faulty", "--run-here"]


@pytest.fixture
def scratch(monkeypatch):
    """A folder others may pass through (711) but not list, holding the test's state folder;
    git in this process may read a data repository another user owns (never writing it)."""
    root = Path(tempfile.mkdtemp(prefix="uib-hostile-"))
    root.chmod(0o711)
    (root / "stash").mkdir()
    for key, value in GIT_READ_ONLY.items():
        monkeypatch.setenv(key, value)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)  # files the runner made read-only


def trained_state(home: Path, original, monkeypatch) -> Settings:
    """The `train` flow's state folder at `home`, registering a copy of the module's original
    as champion v1 (as conftest's `home`, at a path of the test's choosing)."""
    import flows.train
    from flows.train import train_flow
    from uib.train import TrainHistory

    monkeypatch.setattr(
        flows.train,
        "train_original",
        lambda scenario, settings: (copy.deepcopy(original), TrainHistory()),
    )
    settings = Settings(home=home)
    assert train_flow(settings.overrides()) == {"model_version": "1", "trained": True}
    return settings


def cli_env(settings: Settings, scratch: Path) -> dict[str, str]:
    """All the CLI's environment: its state folder, the module's Prefect server, a home folder
    of the runner's own (nothing of the test's environment)."""
    from prefect.settings import PREFECT_API_URL

    home = scratch / "runner-home"
    home.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    chown_tree(home, runner())
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "PREFECT_HOME": str(home / ".prefect"),
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "UIB_HOME": str(settings.home),
    }


def snapshot(settings: Settings) -> dict:
    """What must not change when a request fails: the data version (commit, `data.dvc`,
    every file of `data/`), the model versions and the champion."""
    repo = DataRepo(settings.data_repo)
    client = MlflowClient(settings.tracking_uri)
    found = client.search_model_versions(f"name = '{settings.model_name}'")
    champion = client.get_model_version_by_alias(settings.model_name, settings.champion_alias)
    return {
        "head": repo.rev_parse("HEAD"),
        "history": repo.history(),
        "data.dvc": (repo.root / "data.dvc").read_text(),
        "data": tree_digests(repo.root / DATA_DIR),
        "versions": sorted(str(v.version) for v in found),
        "champion": str(champion.version),
    }


def tries(flow_run_id: str) -> dict[str, int]:
    """{task run: how many times it ran} in a flow run, from the Prefect server."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    return {run.name: run.run_count for run in runs}


def assert_failed_at_once_leaving_all_as_it_was(
    sent: tuple, settings: Settings, request_id: str, before: dict, says: str
) -> None:
    """Exit 1 with one line `request <id> not approved: <says>…`, no traceback; the ledger
    `failed` with that line; the push tried once; nothing versioned, registered or moved, and
    no switch of the data left half-way."""
    code, out, err = sent
    assert code == 1, f"exit {code}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    [line] = [ln for ln in err.splitlines() if ln.startswith(f"request {request_id} not ")]
    assert line.startswith(f"request {request_id} not approved: {says}"), line
    assert out == ""
    record = RequestLedger(settings.ledger_path).get(request_id)
    assert record.state == RequestState.FAILED, (record.state, record.message)
    assert line.endswith(record.message), (line, record.message)
    ran = tries(record.flow_run_id)  # failed in data versioning, and tried once
    versioning = [n for name, n in ran.items() if name.startswith("version-forget-set-")]
    assert versioning == [1] and not any(name.startswith("unlearn-") for name in ran), ran
    root = settings.data_repo
    assert read_journal(root) is None
    assert not (root / NEXT_DIR).exists() and not (root / PREVIOUS_DIR).exists()
    status = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True
    )
    assert status.returncode == 0 and status.stdout == "", status
    assert snapshot(settings) == before


def assert_done_once(sent: tuple, settings: Settings, request_id: str, before: dict) -> None:
    """Approved with one data commit carrying the request, one model version (champion now),
    one audit record."""
    code, out, err = sent
    assert code == 0, f"exit {code}\n{err[-3000:]}"
    reply = json.loads(out.splitlines()[-1])
    assert reply["state"] == "approved" and reply["model_version"] == "2", reply
    assert reply["n_forgotten"] == 123
    after = snapshot(settings)
    [commit] = [rev for rev in after["history"] if rev not in before["history"]]
    assert after["history"] == [commit, *before["history"]]
    assert DataRepo(settings.data_repo).find_request(request_id) == commit
    assert after["versions"] == ["1", "2"] and after["champion"] == "2"
    record = RequestLedger(settings.ledger_path).get(request_id)
    assert record.state == RequestState.APPROVED and record.model_version == "2"
    [audit_file] = settings.audit_dir.iterdir()
    audit = read_audit(settings.audit_dir, request_id)
    assert audit is not None and audit_file.name == f"{request_id}.json"
    assert audit.model_outcome == "approved" and audit.n_forgotten == 123


def test_a_read_only_dvc_remote_fails_at_once_naming_it_then_the_request_finishes_once(
    scratch, original, monkeypatch
):
    """The state folder belongs to the runner (700), its DVC remote to root, not writable by
    the runner. The push used to be retried three times over ~14 s and end as `StorageError:
    dvc push to the remote failed …` with a pointer to `--debug`; now the remote is named as
    not writable at the first try. Once the runner may write it, the request finishes once."""
    settings = trained_state(scratch / "uib", original, monkeypatch)
    remote = Path(settings.remote_url)
    user = runner()
    chown_tree(settings.home, user)
    if user == "nobody":
        chown_tree(remote, "root")  # DVC's objects are 444 already; its folders 755
    else:  # no root: the runner's own remote, made read-only
        subprocess.run(["chmod", "-R", "a-w", str(remote)], check=True)
    assert settings.home.stat().st_mode & 0o777 == PRIVATE_DIR
    env = cli_env(settings, scratch)
    skip_unless_runner_can_run_the_cli(env, scratch / "stash")
    before = snapshot(settings)
    request = [*FAULTY, "--request-id", "read-only-remote"]

    sent = uib(request, env, scratch / "stash")
    says = f"the DVC remote {remote} is not writable by user {user} ("
    assert_failed_at_once_leaving_all_as_it_was(sent, settings, "read-only-remote", before, says)

    if user == "nobody":
        chown_tree(remote, user)
    else:
        subprocess.run(["chmod", "-R", "u+w", str(remote)], check=True)
    assert_done_once(uib(request, env, scratch / "stash"), settings, "read-only-remote", before)
    strays = subprocess.run(
        ["find", str(settings.home), "-not", "-user", user], capture_output=True, text=True
    )
    assert strays.stdout == "", f"files the runner does not own:\n{strays.stdout}"


def test_a_full_disk_fails_the_request_cleanly_then_it_finishes_once_freed(
    scratch, original, monkeypatch
):
    """The state folder on a 64 MiB tmpfs. Full to the last byte, sending a request by event
    is refused in one line with nothing recorded (creating the ledger used to end in SQLite's
    traceback). With 600 KiB left, the request's run passes resolution and validation and runs
    out of space while it versions the data, where it writes the most (the new shards, DVC's
    cache and the remote). Undoing the switch used to fail there too — git could not write its
    index while the half-built tree still took the space — so the run ended as `RuntimeError:
    git reset … Out of diskspace`, the switch left for the next run to repair. Now the new tree
    goes first and the switch is undone on the spot; the ENOSPC that then reaches the retry
    condition is not retried (any other `OSError` is); the line names the disk. With the
    ballast gone, the request finishes once."""
    from typer.testing import CliRunner

    from flows.cli import app

    disk = scratch / "disk"
    with small_disk(disk, 64):
        settings = trained_state(disk / "uib", original, monkeypatch)
        env = cli_env(settings, scratch)
        before = snapshot(settings)
        request = [*FAULTY, "--request-id", "disk-full"]
        says = f"the disk under {settings.home} is full ("

        ballast = fill(disk, 0)  # sent by event: the ledger cannot even be created
        by_event = [arg for arg in request if arg != "--run-here"]
        refused = CliRunner().invoke(app, by_event, env={"UIB_HOME": str(settings.home)})
        assert refused.exit_code == 1, refused.output
        assert f"request disk-full not submitted: {says}" in refused.output, refused.output
        assert isinstance(refused.exception, SystemExit), refused.exception  # not a crash
        ballast.unlink()
        assert not settings.ledger_path.exists() or RequestLedger(settings.ledger_path).list() == []

        ballast = fill(disk, 600)
        sent = uib(request, env, scratch / "stash", as_runner=False)
        assert_failed_at_once_leaving_all_as_it_was(sent, settings, "disk-full", before, says)
        for store in (settings.ledger_path, settings.home / "mlflow.db"):
            with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",), store
        ballast.unlink()

        # sent again in this process (the CLI's own code, without another interpreter's start)
        again = CliRunner().invoke(app, request, env={"UIB_HOME": str(settings.home)})
        crash = "".join(traceback.format_exception(again.exception)) if again.exception else ""
        sent = (again.exit_code, again.stdout, again.stderr + crash)
        assert_done_once(sent, settings, "disk-full", before)
