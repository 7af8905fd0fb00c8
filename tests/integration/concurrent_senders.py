"""Several senders of deletion requests at the same moment, on one state folder.

Each sender is the real CLI in local mode (no `PREFECT_API_URL`): it checks the request, records
it in the ledger, starts its own temporary Prefect server and runs the `unlearn` flow, as people
on one machine would (a web form and a retrying mail gateway, two operators). Whatever the
interleaving, nothing may be lost or applied twice: the pipeline lock (`tasks.request_locks`)
makes the runs take turns, each resolves its forget set and reads the champion only once it
holds that lock, and a request id is run by one process at a time.

Collected in `test_pipeline.py` (imported there), to run on that module's trained original.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.data_versioning import DataRepo
from tasks.redaction import hash_id
from tasks.requests import RequestLedger, RequestState
from tasks.settings import Settings

S1, S2, S3, S4, S5 = (f"digits-train-{i:05d}" for i in (3, 17, 25, 40, 52))
SERVER_START_LOCK = "uib-server-start.lock"  # flows.lifecycle, in the Prefect home


def start(settings: Settings, prefect_home: Path, log: Path, *args: str) -> subprocess.Popen:
    """`uib request delete ARGS` in local mode on the state folder: its own Prefect server,
    on the database in `prefect_home` that every sender shares, as on one user's machine.
    Its output goes to `log`.out and .err (a pipe nobody reads while it runs could fill)."""
    env = {
        **os.environ,
        "UIB_HOME": str(settings.home),
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "0",
    }
    for key in ("PREFECT_API_URL", "UIB_FAULT_AT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    command = [str(Path(sys.executable).parent / "uib"), "request", "delete", *args]
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen(command, env=env, stdout=out, stderr=err)


@dataclass
class Snapshot:
    """One look at the senders: which are alive, and who holds and who waits for each OS lock
    (by file name: `pipeline.lock`, `<request id>.lock`, `uib-server-start.lock`)."""

    alive: set[int]
    held: dict[str, set[int]]
    waiting: dict[str, set[int]]


def flocks(paths: list[Path]) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """({lock file: pids holding it}, {lock file: pids waiting for it}) for `paths`, as the
    kernel lists them in /proc/locks (the process that holds or waits, whatever it does)."""
    names = {}
    for path in paths:
        try:
            names[str(path.stat().st_ino)] = path.name
        except FileNotFoundError:
            continue
    held: dict[str, set[int]] = {}
    waiting: dict[str, set[int]] = {}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # 1: [->] FLOCK ADVISORY WRITE <pid> <major:minor:inode> 0 EOF
        blocked = "->" in fields
        if len(fields) < 7 or fields[2 if blocked else 1] != "FLOCK":
            continue
        pid, device = fields[5 if blocked else 4], fields[6 if blocked else 5]
        name = names.get(device.rsplit(":", 1)[-1])
        if name:
            (waiting if blocked else held).setdefault(name, set()).add(int(pid))
    return held, waiting


def run_together(
    settings: Settings,
    prefect_home: Path,
    senders: dict[str, list[str]],
    runs: int,
    timeout_s: float = 400,
):
    """Start every sender at once and look at them every 0.1 s until all have exited:
    ({name: (exit code, stdout, stderr)}, {name: pid}, [Snapshot]).

    The barrier: this process holds the pipeline lock, as a run in progress would (a batch of
    the scheduled flow), until `runs` senders wait for it and every other sender is done;
    then they go at once, and the overlap does not depend on how fast each got there."""
    logs = {name: prefect_home.parent / f"sender-{name}" for name in senders}
    barrier = settings.home / "locks" / "pipeline.lock"
    barrier.parent.mkdir(parents=True, exist_ok=True)
    with open(barrier, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        processes = {
            name: start(settings, prefect_home, logs[name], *args) for name, args in senders.items()
        }
        pids = {name: p.pid for name, p in processes.items()}
        snapshots: list[Snapshot] = []
        holding, deadline = True, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = {p.pid for p in processes.values() if p.poll() is None}
            if not alive:
                break
            locks = [*barrier.parent.glob("*.lock"), prefect_home / SERVER_START_LOCK]
            snapshots.append(Snapshot(alive, *flocks(locks)))
            waiting = snapshots[-1].waiting.get(barrier.name, set())
            if holding and len(waiting) == runs and waiting == alive:
                fcntl.flock(handle, fcntl.LOCK_UN)
                holding = False
            time.sleep(0.1)
    results = {}
    for name, process in processes.items():
        if process.poll() is None:
            process.kill()
        process.wait()
        read = (Path(f"{logs[name]}.{kind}").read_text() for kind in ("out", "err"))
        results[name] = (process.returncode, *read)
    return results, pids, snapshots


def reply(result: tuple) -> dict:
    code, out, err = result
    assert out.strip(), f"exit {code}, no reply on stdout\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


def audit_of(settings: Settings, request_id: str) -> dict:
    return json.loads((settings.audit_dir / f"{request_id}.json").read_text())


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_overlapping_and_repeated_requests_sent_at_once_apply_once_each_in_turn(home, tmp_path):
    """Four `uib request delete` processes started at the same moment on one state folder,
    on a Prefect home never used yet (the first requests sent on a machine):

    * a = s1 s2 s3, and b = s3 s4 or, under the same id b, s3 s5: a and b overlap in s3. Their
      runs wait at the barrier (the pipeline lock, held by the test) and go together; one
      waits for the other (seen in /proc/locks). The later one resolves its forget set and
      reads the champion only then, so s3 is acknowledged as erased by the first, not
      forgotten twice nor refused as unknown, and its candidate's parent is the first one's,
      not the original both saw;
    * a is sent twice with the same content: one sender runs it, the other is told that the
      request is being processed by another run (exit 1), while that run waits at the
      barrier. a runs once. (Sent again once it is approved, it is a duplicate, exit 0:
      `erasure_scan.py`);
    * b's two contents: the one the ledger records first runs, the other sender is refused
      by name as a reused id (exit 2).

    At the end: one data commit per request, in a line; one model version per request, each
    the next one's parent, the last champion; one audit record per request; both rows
    approved. Before `flows.lifecycle` started the temporary servers in turn, their migrations
    of the new Prefect database could collide (alembic: `expected to match one row`): in one
    run four of five senders exited 1, `Timed out while attempting to connect to ephemeral
    Prefect API server`, their requests left pending. Whether they collide depends on timing,
    so the test also checks that the starts were put in turn (one waited on the start lock).
    """
    from mlflow import MlflowClient

    from tasks.registry import PIPELINE_CHAMPION

    repo = DataRepo(home.data_repo)
    original = repo.current()
    manifest = repo.load_manifest()
    train = manifest[manifest["split"] == "train"].set_index("sample_id")
    chosen = [S1, S2, S3, S4, S5]
    assert set(chosen) <= set(train.index) and (train.loc[chosen, "source"] != "faulty").all()

    a = ["--ids", S1, "--ids", S2, "--ids", S3, "--request-id", "a"]
    contents_of_b = {"b": [S3, S4], "b-other": [S3, S5]}
    senders = {"a": a, "a-again": a}
    for name, ids in contents_of_b.items():
        senders[name] = [arg for i in ids for arg in ("--ids", i)] + ["--request-id", "b"]
    prefect_home = tmp_path / "prefect-home"
    results, pids, snapshots = run_together(home, prefect_home, senders, runs=2)
    codes = {name: result[0] for name, result in results.items()}
    errors = "\n\n".join(f"== {n} (exit {r[0]})\n{r[2][-2500:]}" for n, r in results.items())

    # b: the content the ledger holds ran; the other sender is refused by name
    ledger = RequestLedger(home.ledger_path, salt=home.salt)
    salt = home.salt()
    held = ledger.get("b").request.sample_ids  # hashed once erased, as given before
    senders_of_b = [
        name
        for name, ids in contents_of_b.items()
        if held in (ids, [hash_id(i, salt) for i in ids])
    ]
    assert len(senders_of_b) == 1, (ledger.get("b"), errors)
    [b_sender] = senders_of_b
    [refused] = set(contents_of_b) - {b_sender}
    assert codes[refused] == 2, errors
    assert "'b' is already in the ledger with other content" in results[refused][2], errors
    assert codes[b_sender] == 0 and reply(results[b_sender])["state"] == "approved", errors

    # a: one sender ran it, the other was told that it was being processed
    answers = {}
    for name in ("a", "a-again"):
        if codes[name] == 1:
            assert "request 'a' is being processed by another run" in results[name][2], errors
            assert "RequestBusy" not in results[name][2], errors  # one line, not a crash
            answers[name] = "busy"
        elif codes[name] == 0:
            answers[name] = "duplicate" if reply(results[name])["duplicate"] else "ran"
    assert sorted(answers.values()) == ["busy", "ran"], (answers, errors)
    [a_sender] = [name for name, answer in answers.items() if answer == "ran"]

    # they overlapped: a's and b's runs, one waiting on the pipeline lock while the other held
    # it; a's two senders, alive together while one of them held a's lock
    waits = {
        (holder, waiter)
        for s in snapshots
        for holder in s.held.get("pipeline.lock", set()) & s.alive
        for waiter in s.waiting.get("pipeline.lock", ())
    }
    runs = {pids[a_sender], pids[b_sender]}
    assert any({holder, waiter} == runs for holder, waiter in waits), (waits, pids, errors)
    assert any(
        {pids["a"], pids["a-again"]} <= s.alive and pids[a_sender] in s.held.get("a.lock", ())
        for s in snapshots
    ), pids
    # and their temporary servers, on one new Prefect database, started in turn
    assert any(
        s.held.get(SERVER_START_LOCK) and s.waiting.get(SERVER_START_LOCK) for s in snapshots
    ), pids

    # the data: one commit per request, in a line, in the order they held the pipeline lock
    assert {r.request_id: r.state for r in ledger.list()} == {
        "a": RequestState.APPROVED,
        "b": RequestState.APPROVED,
    }
    history = repo.history()
    commits = {rid: repo.find_request(rid) for rid in "ab"}
    assert len(history) == 3 and history[-1] == original.git_rev, history
    assert set(commits.values()) == set(history[:2]), (commits, history)
    merges = subprocess.run(
        ["git", "-C", str(repo.root), "rev-list", "--merges", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert merges.stdout == ""
    first, later = sorted("ab", key=lambda rid: -history.index(commits[rid]))
    asked = {"a": {S1, S2, S3}, "b": set(contents_of_b[b_sender])}
    assert not (asked["a"] | asked["b"]) & set(repo.load_manifest()["sample_id"])
    assert repo.current().n_train == original.n_train - 4

    # s3 erased once, by the first; the later names it erased already, by the first
    assert set(audit_of(home, first)["forgotten_id_hashes"]) == {
        hash_id(i, salt) for i in asked[first]
    }
    later_audit = audit_of(home, later)
    assert set(later_audit["forgotten_id_hashes"]) == {
        hash_id(i, salt) for i in asked[later] - {S3}
    }
    assert later_audit["already_erased_by"] == [first]
    assert later_audit["already_erased_id_hashes"] == [hash_id(S3, salt)]
    assert f"1 of its ids was erased already, by {first}" in ledger.get(later).message
    later_sender = a_sender if later == "a" else b_sender
    assert f"1 of its ids was erased already, by {first}" in results[later_sender][2], errors
    assert sorted(p.stem for p in home.audit_dir.glob("*.json")) == ["a", "b"]

    # the models: one version per request, the later trained on the first's, the last champion
    client = MlflowClient(home.tracking_uri)
    found = client.search_model_versions(f"name = '{home.model_name}'")
    tags = {str(v.version): v.tags for v in found}
    assert sorted(tags) == ["1", "2", "3"], {v: t.get("request_id") for v, t in tags.items()}
    for version, rid, parent_data in (("2", first, original.git_rev), ("3", later, commits[first])):
        assert tags[version]["request_id"] == rid
        assert tags[version]["parent_model_version"] == str(int(version) - 1)
        assert tags[version]["data_version_after"] == commits[rid]
        assert tags[version]["data_version_before"] == parent_data
        assert tags[version]["gates"] == "passed"
        assert ledger.get(rid).model_version == version
    assert reply(results[a_sender])["model_version"] == ledger.get("a").model_version
    assert reply(results[b_sender])["model_version"] == ledger.get("b").model_version
    champion = client.get_model_version_by_alias(home.model_name, home.champion_alias)
    assert str(champion.version) == "3"
    assert client.get_registered_model(home.model_name).tags[PIPELINE_CHAMPION] == "3"
