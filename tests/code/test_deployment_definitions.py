"""The deployment definitions: `uib serve`'s and `prefect.yaml`'s agree, and the event round-trips."""

from pathlib import Path

import yaml

from flows.deploy import build_deployments
from tasks.events import DELETION_REQUESTED, deletion_event, event_id
from tasks.requests import DeletionRequest
from tasks.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_served_deployments_match_prefect_yaml(tmp_path):
    settings = Settings(home=tmp_path / "uib", schedule_cron="30 1 * * *")
    served = {f"{d.flow_name}/{d.name}": d for d in build_deployments(settings)}
    assert set(served) == {
        "unlearn/unlearn-on-event",
        "unlearn-scheduled/unlearn-scheduled",
        "train/train",
        "unlearn-step/local",
    }
    declared = {
        d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    }
    assert set(declared) == {"unlearn-on-event", "unlearn-scheduled", "train", "gpu"}

    trigger = served["unlearn/unlearn-on-event"].triggers[0]
    assert trigger.expect == {DELETION_REQUESTED}
    yaml_trigger = declared["unlearn-on-event"]["triggers"][0]
    assert set(yaml_trigger["expect"]) == trigger.expect
    assert yaml_trigger["match"] == trigger.match.model_dump()
    assert (
        yaml_trigger["parameters"]
        == trigger.parameters
        == {"request": "{{ event.payload.request }}"}
    )

    schedule = served["unlearn-scheduled/unlearn-scheduled"].schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("30 1 * * *", "UTC")
    assert (
        declared["unlearn-scheduled"]["schedules"][0]["cron"]
        == Settings.model_fields["schedule_cron"].default
    )
    assert not served["train/train"].schedules and not served["train/train"].triggers
    assert declared["gpu"]["work_pool"]["name"] == "uib-gpu"
    for name in ("unlearn-on-event", "unlearn-scheduled", "train"):
        assert declared[name]["work_pool"]["name"] == "uib-process"
    for name, deployment in declared.items():
        module, function = deployment["entrypoint"].split(":")
        assert (REPO / module).exists() and f"def {function}(" in (REPO / module).read_text(), name


def test_the_event_carries_the_request_and_a_stable_id():
    request = DeletionRequest(request_id="req-7", sample_ids=["a", "b"], reason="erasure")
    resent = request.model_copy(update={"requested_at": request.requested_at.replace(year=2030)})
    other = request.model_copy(update={"sample_ids": ["a"]})
    assert event_id(request) == event_id(resent) != event_id(other)
    assert event_id(request) != event_id(request, attempt="rerun at 2026-11-24T10:00")

    event = deletion_event(request)
    assert event.event == DELETION_REQUESTED
    assert event.resource.id == "uib.deletion-request.req-7"
    assert DeletionRequest.model_validate(event.payload["request"]) == request
