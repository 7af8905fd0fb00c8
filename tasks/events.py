"""The `uib.deletion.requested` event: how a deletion request reaches the `unlearn-on-event`
deployment.

The event id is derived from the request (its id and content), so a producer that sends the
same request twice sends the same event twice, and Prefect's server drops the second copy
before any trigger sees it. A request sent again with a new event id still runs at most once:
the flow finds it in the ledger and acknowledges it.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

from tasks.requests import DeletionRequest

DELETION_REQUESTED = "uib.deletion.requested"
EVENT_NAMESPACE = uuid.UUID("5f6b1c1e-8a4e-4d43-9b55-7f1b0c3e2a10")


def request_resource_id(request_id: str) -> str:
    return f"uib.deletion-request.{request_id}"


def event_id(request: DeletionRequest, attempt: str = "") -> uuid.UUID:
    """The same request (id and content, not the time it was sent) gives the same event id;
    `attempt` tells a deliberate rerun of a rejected or failed request from a duplicate."""
    content = request.model_dump_json(exclude={"requested_at"}) + attempt
    return uuid.uuid5(EVENT_NAMESPACE, hashlib.sha256(content.encode()).hexdigest())


def deletion_event(request: DeletionRequest, attempt: str = ""):
    from prefect.events import Event

    return Event(
        id=event_id(request, attempt),
        event=DELETION_REQUESTED,
        resource={
            "prefect.resource.id": request_resource_id(request.request_id),
            "prefect.resource.name": request.request_id,
        },
        payload={"request": request.model_dump(mode="json")},
    )


def event_too_large(request: DeletionRequest) -> str | None:
    """Why the request cannot travel as one event, or None.

    The event carries the whole request (a flow-run parameter too), and Prefect refuses events
    over `PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES` (1.5 MB by default): about 70,000 ids of
    twenty characters. Larger requests run with `--run-here`, or in parts.
    """
    from prefect.settings import get_current_settings

    size = deletion_event(request).size_bytes
    limit = get_current_settings().server.events.maximum_size_bytes
    if size <= limit:
        return None
    return (
        f"sample_ids: {len(request.sample_ids or [])} ids make an event of {size:,} bytes, over "
        f"Prefect's limit of {limit:,} (PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES): run it "
        "with --run-here, or send it in parts"
    )


def emit_deletion_request(request: DeletionRequest, attempt: str = "") -> uuid.UUID:
    """Send the event to the configured Prefect server and wait until it is delivered.

    Unlike `prefect.events.emit_event`, which hands the event to a background worker, this
    raises when the server cannot be reached, so a CLI never reports a request it lost.
    """
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise RuntimeError("PREFECT_API_URL is not set: there is no server to send the event to")
    event = deletion_event(request, attempt)

    async def send() -> None:
        async with get_events_client(checkpoint_every=1) as client:  # a checkpoint per event
            await client.emit(event)

    asyncio.run(send())
    return event.id
