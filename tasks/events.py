"""The `uib.deletion.requested` event: how a deletion request reaches the `unlearn-on-event`
deployment.

The event id is derived from the request (its id and content), so a producer that sends the
same request twice sends the same event twice, and Prefect's server drops the second copy
before any trigger sees it. A request sent again with a new event id still runs at most once:
the flow finds it in the ledger and acknowledges it.

The CLI records a request in the ledger before it sends the event, so its event carries the
request by reference (`{"request_id": …, "in_ledger": true}`, `RequestRef`): neither the event
nor the flow run's parameter holds a sample id, and a request of any size travels. A producer
that does not write the ledger sends the whole request; the run then records it and replaces its
own stored parameter by the reference, but Prefect keeps that event as it was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

from tasks.deletion_request import RequestRef
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


def deletion_event(request: DeletionRequest, attempt: str = "", by_reference: bool = False):
    """The event for `request`; `by_reference`: its payload names the request the ledger holds
    (the event id is the same either way: it comes from the whole request)."""
    from prefect.events import Event

    sent = RequestRef(request_id=request.request_id) if by_reference else request
    return Event(
        id=event_id(request, attempt),
        event=DELETION_REQUESTED,
        resource={
            "prefect.resource.id": request_resource_id(request.request_id),
            "prefect.resource.name": request.request_id,
        },
        payload={"request": sent.model_dump(mode="json")},
    )


def event_too_large(request: DeletionRequest) -> str | None:
    """Why the whole request cannot travel as one event, or None: for a producer that sends
    the whole request (the CLI sends a reference, which always fits).

    Prefect refuses events over `PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES` (1.5 MB by default):
    about 70,000 ids of twenty characters.
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


def emit_deletion_request(
    request: DeletionRequest, attempt: str = "", by_reference: bool = False
) -> uuid.UUID:
    """Send the event to the configured Prefect server and wait until it is delivered;
    `by_reference` once the ledger holds the request (`deletion_event`).

    Unlike `prefect.events.emit_event`, which hands the event to a background worker, this
    raises when the server cannot be reached, so a CLI never reports a request it lost.
    """
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise RuntimeError("PREFECT_API_URL is not set: there is no server to send the event to")
    event = deletion_event(request, attempt, by_reference)

    async def send() -> None:
        async with get_events_client(checkpoint_every=1) as client:  # a checkpoint per event
            await client.emit(event)

    asyncio.run(send())
    return event.id
