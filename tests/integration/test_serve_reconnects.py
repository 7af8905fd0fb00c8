"""`uib serve` outlives its Prefect server: started before it, and across a restart of it.

The serving process runs with `PREFECT_CLIENT_MAX_RETRIES=0`: Prefect's runner then gives up on a
missing server after three polls (about 3 s) instead of after some 3 minutes of retried
requests, so the restart below ends the runner, as a long outage does, and only `uib serve`'s
own reconnecting (flows/serving.py) can bring the deployments back.
"""

from __future__ import annotations

import time

import pytest
from prefect_server import BIN, free_port, prefect_server_at, quiet_prefect_env, running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEPLOYMENTS = {
    "unlearn/unlearn-on-event",
    "unlearn-scheduled/unlearn-scheduled",
    "train/train",
    "unlearn-step/local",
}
WAITING = {"SCHEDULED", "PENDING"}
WAITING_LINE = "waiting for the Prefect server"


def alive(serve, log) -> str:
    """`uib serve`'s output so far; fails, with it, if the process has exited."""
    if serve.poll() is not None:
        raise AssertionError(f"uib serve exited ({serve.returncode}):\n{log.read_text()[-3000:]}")
    return log.read_text()


def deployments(serve, log) -> set[str]:
    from prefect.client.orchestration import get_client

    alive(serve, log)
    with get_client(sync_client=True) as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}" for d in client.read_deployments()}


def state_after(flow_run_id, timeout: float):
    """The run's state once it leaves SCHEDULED/PENDING, or at the timeout."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state.type.value not in WAITING or time.monotonic() > deadline:
                return state
            time.sleep(0.5)


def test_uib_serve_waits_for_the_server_and_serves_again_after_a_restart(tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **quiet_prefect_env(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "UIB_HOME": str(tmp_path / "uib"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_CLIENT_MAX_RETRIES": "0",
    }
    log = tmp_path / "serve.log"
    with (
        running([str(BIN / "uib"), "serve"], env, log) as serve,
        temporary_settings({PREFECT_API_URL: api_url}),
    ):
        # No server yet: it waits, and says so, instead of failing to register.
        wait_until(lambda: WAITING_LINE in alive(serve, log), 30, "the waiting line", log)

        with prefect_server_at(tmp_path, port):
            wait_until(lambda: deployments(serve, log) == DEPLOYMENTS, 60, "deployments", log)

        # The server is gone: the runner gives up, `uib serve` waits for the server again.
        wait_until(lambda: "lost the Prefect server" in alive(serve, log), 30, "the loss", log)
        wait_until(lambda: alive(serve, log).count(WAITING_LINE) == 2, 10, "a second wait", log)

        with prefect_server_at(tmp_path, port, log=tmp_path / "prefect-server-again.log"):
            flow_run = run_deployment("unlearn-scheduled/unlearn-scheduled", timeout=0)
            state = state_after(flow_run.id, timeout=30)
            assert state.type.value not in WAITING, (
                f"the run is still {state.name} 30 s after the server came back: nothing serves "
                f"it\n{log.read_text()[-3000:]}"
            )
            print(f"the run after the restart: {state.name} ({state.message})")

            # SIGTERM still stops it (Prefect's runner stops gracefully; ours: 130), in time.
            serve.terminate()
            assert serve.wait(timeout=20) in (0, 130), log.read_text()[-3000:]
