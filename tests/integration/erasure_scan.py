"""Erasure everywhere: after an approved request, no store the pipeline writes holds a forgotten
sample, neither its image's bytes nor its id, and the state folder is private.

The test below is collected in `test_pipeline.py` (imported there), so it runs on that module's
trained original and Prefect server instead of training its own. It sends the request as a
person would with many ids (`uib request delete --ids-file … --run-here`), which puts the ids in
every place a request can reach: the ledger, the flow's parameters, GX's value sets, the staged
forget set, the data versions. Then it reads every byte the pipeline keeps: every file under
the state folder (the DVC cache and remote, MLflow's database and artifacts, the ledger, the
audit records, Prefect's results, the stage), the data repository's git objects decompressed,
the temporary folder the run used, and the Prefect server's database, plus the flow-run
parameters as the Prefect API returns them. Each search is shown to see what it looks for by a
retained sample or the request's own id found where it must be.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.requests import RequestLedger, RequestState
from tasks.settings import Settings

REQUEST_ID = "scan-ids"


def id_patterns(ids) -> dict[bytes, str]:
    """Each id as UTF-8 (text, JSON, CSV, SQLite) and as UTF-32-LE (a numpy `<U` array, as a
    shard's `ids` and the staged forget set store them)."""
    return {
        encoded: str(i) for i in ids for encoded in (str(i).encode(), str(i).encode("utf-32-le"))
    }


def stored_bytes(*roots: Path) -> dict[str, bytes]:
    """{path: bytes} of every file under `roots` (links not followed)."""
    found = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder) / name
                if path.is_file() and not path.is_symlink():
                    found[str(path)] = path.read_bytes()
    return found


def git_objects(repo: Path) -> dict[str, bytes]:
    """Every object of the repository, loose or packed, decompressed (reachable or not)."""
    dump = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True,
        check=True,
    ).stdout
    return {f"git objects of {repo}": dump}


def holding(needles, stored: dict[str, bytes]) -> dict[str, int]:
    """{where: how many of `needles` its bytes contain}, for the places holding any."""
    found = {}
    for where, raw in stored.items():
        hits = sum(needle in raw for needle in needles)
        if hits:
            found[where] = hits
    return found


def flow_run_parameters() -> list[dict]:
    """The parameters of every flow run the Prefect server stores, as its API returns them."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [
            {"name": r.name, "parameters": r.parameters} for r in client.read_flow_runs(limit=200)
        ]


def prefect_database_files() -> dict[str, bytes]:
    """The bytes of the Prefect server's SQLite database (the test harness's), its journal too."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url.get_secret_value()
    database = Path(url.split(":///", 1)[1])
    return {
        str(p): p.read_bytes() for p in database.parent.glob(database.name + "*") if p.is_file()
    }


def cli(settings: Settings, *args: str):
    from typer.testing import CliRunner

    from flows.cli import app

    env = {"UIB_HOME": str(settings.home), "UIB_ERASED_VERSIONS": "delete-artifacts"}
    return CliRunner().invoke(app, list(args), env=env)


def test_after_approval_no_store_holds_a_forgotten_id_or_image(home, tmp_path, monkeypatch):
    from prefect._internal.concurrency.services import QueueService
    from test_erasure import stored_images

    from tasks.registry import load_version
    from tasks.registry_hygiene import ARTIFACTS_DELETED_TAG, ERASED_DATA_TAG
    from uib.data import load_dataset
    from uib.scenarios import build_scenario

    temp = tmp_path / "tmp"  # every temporary file of the run, this process's and its children's
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    scenario = build_scenario(load_dataset("digits"), home.scenario)
    forget_ids = [str(i) for i in scenario.forget_ids]
    retained_ids = [str(i) for i in scenario.dataset.train.drop(forget_ids).ids]
    ids_file = tmp_path / "ids.txt"  # the person's own file, outside the state folder
    ids_file.write_text("\n".join(forget_ids) + "\n")
    request = ["request", "delete", "--ids-file", str(ids_file), "--request-id", REQUEST_ID]

    sent = cli(home, *request, "--reason", "scan", "--run-here")
    assert sent.exit_code == 0, sent.output
    outcome = json.loads(sent.stdout.splitlines()[-1])
    assert outcome["state"] == "approved" and outcome["model_version"] == "2", outcome
    again = cli(home, *request, "--reason", "scan", "--run-here")  # re-sent: compared by hash
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.splitlines()[-1])["duplicate"] is True
    other = cli(home, "request", "delete", "--ids", forget_ids[0], "--request-id", REQUEST_ID)
    assert other.exit_code == 2 and "other content" in other.output
    QueueService.drain_all(timeout=10, at_exit=False)  # the runs' logs, stored before the scan

    # every byte kept: the state folder, the data's git objects, temp files, Prefect's database
    prefect_db = prefect_database_files()
    stored = {**stored_bytes(home.home, temp), **git_objects(home.data_repo), **prefect_db}
    ids = id_patterns(forget_ids)
    found = holding(ids, stored)
    assert found == {}, f"forgotten ids in {sorted(found)}"
    kept = set(stored_images(scenario.dataset.train.drop(forget_ids)))
    forgotten_images = stored_images(scenario.dataset.train.select(forget_ids))
    forgotten_images = [img for img in forgotten_images if img not in kept]
    assert len(forgotten_images) > 50
    found = holding(forgotten_images, stored)
    assert found == {}, f"forgotten images in {sorted(found)}"
    # each search sees what it looks for where it is kept: a retained sample's id in the
    # manifest (UTF-8) and a shard (UTF-32), its image, and the request id in git and Prefect
    retained = id_patterns(retained_ids[:1])
    assert all(holding([pattern], stored) for pattern in retained)
    assert holding([next(iter(kept))], stored)
    assert REQUEST_ID.encode() in stored[f"git objects of {home.data_repo}"]
    assert holding([REQUEST_ID.encode()], prefect_db)

    # Prefect's stored parameters: the request by reference, in every run of it
    runs = [r for r in flow_run_parameters() if r["name"] == f"unlearn-{REQUEST_ID}"]
    assert len(runs) == 2
    for run in runs:
        assert run["parameters"]["request"] == {"request_id": REQUEST_ID, "in_ledger": True}
    assert not [i for i in forget_ids if i in json.dumps(flow_run_parameters())]

    # the ledger and the audit record name the same samples by the same salted hashes
    record = RequestLedger(home.ledger_path).get(REQUEST_ID)
    assert record.state == RequestState.APPROVED and record.ids_hashed
    audit = json.loads((home.audit_dir / f"{REQUEST_ID}.json").read_text())
    assert sorted(record.request.sample_ids) == sorted(audit["forgotten_id_hashes"])
    client = MlflowClient(home.tracking_uri)
    run_id = client.get_model_version(home.model_name, "2").run_id
    gx = json.loads(
        Path(client.download_artifacts(run_id, "gx_validation_result.json")).read_text()
    )
    assert gx["success"] and '"redacted_sample_ids": 123' in json.dumps(gx)

    # the parent, trained on the erased samples: tagged, and (by policy) no longer loadable
    parent = client.get_model_version(home.model_name, "1")
    assert parent.tags[ERASED_DATA_TAG] == REQUEST_ID
    assert parent.tags[ARTIFACTS_DELETED_TAG] == "true"
    with pytest.raises(MlflowException, match="No such artifact"):
        load_version(home, "1")
    champion = load_version(home, "2")
    assert np.isfinite(next(champion.parameters()).detach().numpy()).all()
    assert ERASED_DATA_TAG not in client.get_model_version(home.model_name, "2").tags

    # private: the folder 700, the ledger, the registry, the salt and the audit record 600
    assert home.home.stat().st_mode & 0o777 == 0o700
    for name in ("requests.db", "mlflow.db", "salt", f"audit/{REQUEST_ID}.json"):
        assert (home.home / name).stat().st_mode & 0o777 == 0o600, name
