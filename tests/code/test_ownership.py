"""Who owns a `running` request, whether it is still there, and which faults are retried."""

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2 as codes

from tasks.data_plumbing import StorageError
from tasks.ownership import LEASE, Owner, owner_gone
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.retrying import is_transient
from uib.samples import DataError

HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "w")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def running(tmp_path) -> tuple[RequestLedger, str]:
    ledger = RequestLedger(tmp_path / "requests.db")
    ledger.submit(DeletionRequest(request_id="r1", sample_ids=["a"]))
    ledger.update("r1", RequestState.RUNNING, "")
    return ledger, "r1"


def test_a_running_request_records_its_owner_and_is_alive_while_it_is(tmp_path):
    ledger, rid = running(tmp_path)
    record = ledger.get(rid)
    assert record.owner == Owner.this_process() and record.heartbeat_at is not None
    assert ledger.owner_gone(record) is None  # this very process
    ledger.update(rid, RequestState.FAILED, "x")
    assert ledger.owner_gone(ledger.get(rid)) is None  # not running: nothing to take over


def test_a_dead_owner_is_gone_and_a_reused_pid_does_not_count(tmp_path):
    ledger, rid = running(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    owner = Owner(host=Owner.this_process().host, pid=int(dead.stdout))
    assert "is gone" in owner_gone(owner, datetime.now(UTC), lock_held=False)
    # this process's pid, but another start time: a pid the OS handed out again
    reused = Owner.this_process().model_copy(update={"started_at": 1.0})
    assert "is gone" in owner_gone(reused, datetime.now(UTC), lock_held=False)


def test_a_held_lock_or_a_fresh_heartbeat_from_another_host_keeps_it_alive(tmp_path):
    ledger, rid = running(tmp_path)
    assert not ledger.lock_held(rid)  # makes the lock file; nobody holds it
    lock = tmp_path / "locks" / f"{rid}.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert ledger.lock_held(rid)
        gone = Owner(host=Owner.this_process().host, pid=holder.pid + 10**6)
        assert owner_gone(gone, None, lock_held=True) is None
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 5
    while ledger.lock_held(rid) and time.time() < deadline:
        time.sleep(0.05)
    assert not ledger.lock_held(rid)  # the OS dropped it with the process
    elsewhere = Owner(host="another-host", pid=1)
    now = datetime.now(UTC)
    assert owner_gone(elsewhere, now - timedelta(seconds=30), lock_held=False, now=now) is None
    stale = owner_gone(elsewhere, now - LEASE - timedelta(seconds=1), lock_held=False, now=now)
    assert "no heartbeat from process 1 on another-host" in stale


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (StorageError("dvc push failed"), True),
        (ConnectionError("refused"), True),
        (TimeoutError("timed out"), True),
        (MlflowException("busy", error_code=codes.TEMPORARILY_UNAVAILABLE), True),
        (MlflowException("no such version", error_code=codes.RESOURCE_DOES_NOT_EXIST), False),
        (MlflowException("bad name", error_code=codes.INVALID_PARAMETER_VALUE), False),
        (DataError("ids: unknown"), False),
        (ValueError("bad"), False),
        (PermissionError("read-only remote"), False),
        (FileNotFoundError("gone"), False),
        (RuntimeError("simulated crash"), False),
    ],
)
def test_only_faults_another_try_can_fix_are_retried(error, retried):
    assert is_transient(error) is retried
