"""The deployments: what runs unattended, and on what.

- `unlearn/unlearn-on-event`: a `uib.deletion.requested` event starts it; the `request`
  parameter is the event's payload.
- `unlearn-scheduled/unlearn-scheduled`: a cron schedule (nightly by default) collects the
  inbox and runs one batch of the pending requests.
- `train/train`: manual.
- `unlearn-step/local`: the GPU stage on its own, for `UIB_GPU_DEPLOYMENT=unlearn-step/local`;
  on a cluster, `prefect.yaml` deploys it as `unlearn-step/gpu` on a Kubernetes GPU pool.

`uib serve` serves these from one process (the one-machine way); `prefect deploy --all` puts the
definitions of `prefect.yaml` (the same names, trigger and schedule) on work pools.
"""

from __future__ import annotations

from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from tasks.events import DELETION_REQUESTED
from tasks.settings import Settings

ON_EVENT, SCHEDULED, TRAIN, STEP = "unlearn-on-event", "unlearn-scheduled", "train", "local"
TAGS = ["uib"]


def deletion_trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="deletion requested",
        expect={DELETION_REQUESTED},
        match={"prefect.resource.id": "uib.deletion-request.*"},
        parameters={"request": "{{ event.payload.request }}"},
    )


def build_deployments(settings: Settings) -> list:
    """Runner deployments for `prefect.serve`; flow-run settings come from the environment."""
    from flows.scheduled import unlearn_scheduled_flow
    from flows.train import train_flow
    from flows.unlearn import unlearn_flow
    from flows.unlearn_step import unlearn_step_flow

    return [
        unlearn_flow.to_deployment(
            ON_EVENT,
            triggers=[deletion_trigger()],
            tags=TAGS,
            description="One deletion request, started by a `uib.deletion.requested` event.",
        ),
        unlearn_scheduled_flow.to_deployment(
            SCHEDULED,
            schedules=[Cron(settings.schedule_cron, timezone=settings.schedule_timezone)],
            tags=TAGS,
            description="Collect the inbox and unlearn a batch of pending requests.",
        ),
        train_flow.to_deployment(TRAIN, tags=TAGS, description="Train and register the original."),
        unlearn_step_flow.to_deployment(
            STEP, tags=[*TAGS, "gpu"], description="The unlearning step alone (GPU)."
        ),
    ]


def serve(settings: Settings, limit: int | None = None) -> None:
    """Serve every deployment until interrupted; runs execute in subprocesses of this one.
    Waits for the server, and serves again when it comes back after going away
    (`flows/serving.py` says why Prefect's runner alone does not)."""
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL

    from flows.serving import serve_through_restarts

    api_url = PREFECT_API_URL.value()
    if not api_url:
        raise RuntimeError(
            "PREFECT_API_URL is not set: `uib serve` needs a Prefect server "
            "(`prefect server start`) to register deployments with"
        )
    serve_through_restarts(
        lambda: prefect_serve(*build_deployments(settings), limit=limit), api_url
    )
