"""`infra/compose.yaml` brought up as local processes: each service's own command, flags and
environment, so a test sends requests through what a user's `docker compose up` runs.

What compose gives a container, and what stands in for it here (no Docker engine runs):

- **a network address and a DNS name.** Each service gets a loopback address of its own
  (127.77.0.N) and listens on the port its image does; the processes started here resolve the
  service names to those addresses (`sitecustomize.py` below, on their PYTHONPATH; for libpq,
  which resolves in C, `PGHOSTADDR`), so every
  URL, port and Host header is the compose file's own. `localhost` inside a healthcheck is the
  service's own address. The one rewrite of a command: a server bound to the wildcard
  `0.0.0.0` binds its loopback address instead.
- **images.** PostgreSQL 15 of this machine, set up as the `postgres` image sets up an empty
  volume (its `POSTGRES_*` variables, password authentication, the init scripts); moto's S3
  server for MinIO (it checks no credentials); the `buckets` job's `mc mb` as boto3 calls; this
  virtual environment's `prefect`, `mlflow` and `uib` for the images (`test_infra` holds the
  images' versions to the ones installed here).
- **files an image copies in** (`COPY` in its Dockerfile): read where they are copied from; an
  environment value naming one is that file here.
- **volumes.** Folders under the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prefect_server import BIN, quiet_prefect_env, running, wait_for_http, wait_until
from s3_server import S3Server
from stores import PG_USER, _as_postgres

INFRA = Path(__file__).resolve().parents[2] / "infra"
ADDRESSES = {
    "postgres": "127.77.0.2",
    "minio": "127.77.0.3",
    "prefect-server": "127.77.0.4",
    "mlflow": "127.77.0.5",
}
IMAGE_PORTS = {"postgres": 5432, "minio": 9000}  # what the image's process listens on
HOSTS_VARIABLE = "UIB_TEST_COMPOSE_HOSTS"
SITECUSTOMIZE = f'''\
"""Compose's DNS for a test: service names resolve to their loopback addresses."""
import json, os, socket

_hosts = json.loads(os.environ.get("{HOSTS_VARIABLE}", "{{}}"))
_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    return _getaddrinfo(_hosts.get(name, host), *args, **kwargs)


if _hosts:
    socket.getaddrinfo = _resolve
'''
VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def env_file(**values: str) -> dict[str, str]:
    """What a user puts in `infra/.env`: every variable `.env.example` lists, a fresh random
    secret for each (empty for the optional ones), then `values`."""
    import secrets

    optional = {"UIB_WORKER_IMAGE", "UIB_GPU_DEPLOYMENT", "UIB_SCHEDULE_CRON"}
    lines = (INFRA / ".env.example").read_text().splitlines()
    names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    filled = {n: "" if n in optional else f"{n.lower()[:6]}-{secrets.token_hex(8)}" for n in names}
    filled["PREFECT_AUTH_STRING"] = f"uib:{secrets.token_hex(8)}"
    return {**filled, **values}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: `${X}`, `${X:-default}`, `${X-default}`, `${X:?error}`,
    `${X?error}`, `$X`, and `$$` for a literal `$`."""

    def value(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        present = name in env and (env[name] != "" or not (operator or "").startswith(":"))
        if present:
            return env[name]
        if operator and operator.endswith("?"):
            raise ValueError(f"compose: required variable {name} is missing: {argument}")
        return argument if operator else ""

    return VARIABLE.sub(value, text)


def load_compose(env: dict[str, str]) -> dict:
    """The compose file with its variables interpolated from `env` (compose reads `.env` and
    the shell's environment; the test passes the values it sets)."""
    raw = yaml.safe_load((INFRA / "compose.yaml").read_text())

    def walk(node):
        if isinstance(node, str):
            return interpolate(node, env)
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return walk(raw)


def command_of(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def environment_of(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


@dataclass
class Stack:
    """The running services; `worker_env` is what a worker container's process sees."""

    compose: dict
    root: Path
    hosts: dict[str, str]
    logs: dict[str, Path] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    s3: S3Server | None = None
    health: dict[str, str] = field(default_factory=dict)  # each healthcheck's last stderr

    def url(self, service: str, port: int) -> str:
        """A URL the test process itself can use (it resolves no service names)."""
        return f"http://{self.hosts[service]}:{port}"

    def process_env(self, extra: dict[str, str] | None = None, localhost: str | None = None):
        hosts = dict(self.hosts)
        if localhost:
            hosts["localhost"] = self.hosts[localhost]
        pythonpath = [str(self.root / "dns"), os.environ.get("PYTHONPATH", "")]
        return {
            HOSTS_VARIABLE: json.dumps(hosts),
            "PGHOSTADDR": self.hosts["postgres"],  # libpq resolves in C, past sitecustomize
            "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p),
            **(extra or {}),
        }

    def failure(self, what: str, result) -> str:
        """An assertion message: what failed, its output, and the worker's log's tail."""
        output = getattr(result, "stderr", None) or ""
        output += getattr(result, "stdout", None) or ("" if output else repr(result))
        worker = self.logs.get("worker")
        tail = worker.read_text()[-3000:] if worker and worker.exists() else ""
        return f"{what}:\n{output[-3000:]}\n--- worker log ---\n{tail}"

    def uib(self, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
        """`docker compose run --rm worker ARGS`: the image's entrypoint, `uib`, with ARGS."""
        return subprocess.run(
            [str(BIN / "uib"), *args],
            env={**os.environ, **self.process_env({**self.worker_env, **(env or {})})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@contextmanager
def resolving(hosts: dict[str, str]) -> Iterator[None]:
    """This process resolves the service names as the stack's processes do."""
    import socket

    original = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        return original(hosts.get(host, host), *args, **kwargs)

    socket.getaddrinfo = resolve
    try:
        yield
    finally:
        socket.getaddrinfo = original


def image_files(service: dict) -> dict[str, str]:
    """{path in the image: path here} for each file the service's Dockerfile copies in."""
    build = service.get("build")
    if not build:
        return {}
    context = (INFRA / build["context"]).resolve()
    dockerfile = (context / build.get("dockerfile", "Dockerfile")).read_text()
    copies = re.findall(r"^COPY\s+(?!--)(\S+)\s+(\S+)\s*$", dockerfile, re.MULTILINE)
    return {target: str(context / source) for source, target in copies}


def bind_own_address(command: list[str], address: str) -> list[str]:
    return [address if part == "0.0.0.0" else part for part in command]


def healthcheck(stack: Stack, name: str, env: dict[str, str]) -> bool:
    service = stack.compose["services"][name]
    env = {**environment_of(service), **env}  # a healthcheck runs in its container
    test = service["healthcheck"]["test"]
    kind, *rest = test
    if kind == "CMD-SHELL":
        command = ["sh", "-c", rest[0]]
    else:
        command = [str(BIN / "python") if rest[0] == "python" else rest[0], *rest[1:]]
    result = subprocess.run(
        command,
        env={**os.environ, **stack.process_env(env, localhost=name)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    stack.health[name] = result.stderr[-2000:]
    return result.returncode == 0


@contextmanager
def postgres_service(stack: Stack) -> Iterator[None]:
    """The `postgres` image on an empty volume: the cluster owned by POSTGRES_USER with its
    password (scram-sha-256 over TCP), then every init script, then the server."""
    service = stack.compose["services"]["postgres"]
    env = environment_of(service)
    user, password = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]
    root = Path(tempfile.mkdtemp(prefix="uib-pg-"))  # PostgreSQL's user must reach it
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    (root / "pwfile").write_text(password + "\n")
    if os.geteuid() == 0:
        for path in (root, sockets, root / "pwfile"):
            shutil.chown(path, PG_USER)
    address, port = stack.hosts["postgres"], IMAGE_PORTS["postgres"]

    def pg(*command: str) -> None:
        done = subprocess.run(_as_postgres(list(command)), capture_output=True, text=True)
        assert done.returncode == 0, f"{command[0]} failed: {done.stderr}"

    pg(
        "initdb", "-D", str(data), "-U", user, f"--pwfile={root / 'pwfile'}",
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all all scram-sha-256\n")
    log = root / "postgres.log"
    pg(
        "pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
        f"-h {address} -p {port} -k {sockets} -c fsync=off", "start",
    )  # fmt: skip
    stack.logs["postgres"] = log
    try:
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            if target.startswith("/docker-entrypoint-initdb.d/") and source.endswith(".sql"):
                sql = (INFRA / source).resolve()
                pg("psql", "-v", "ON_ERROR_STOP=1", "-h", str(sockets), "-p", str(port),
                   "-U", user, "-d", env.get("POSTGRES_DB", user), "-f", str(sql))  # fmt: skip
        wait_until(
            lambda: healthcheck(stack, "postgres", {"PGHOST": str(sockets), "PGPORT": str(port)}),
            60,
            "postgres's healthcheck",
            log,
        )
        yield
    finally:
        subprocess.run(
            _as_postgres(["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        shutil.copy(log, stack.root / "postgres.log")
        stack.logs["postgres"] = stack.root / "postgres.log"
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def minio_service(stack: Stack) -> Iterator[S3Server]:
    """moto's S3 server where MinIO would be, and the `buckets` job's buckets."""
    address, port = stack.hosts["minio"], IMAGE_PORTS["minio"]
    log = stack.root / "minio.log"
    stack.logs["minio"] = log
    command = [sys.executable, "-m", "moto.server", "-H", address, "-p", str(port)]
    env = environment_of(stack.compose["services"]["minio"])
    server = S3Server(stack.url("minio", port))
    with running(command, env, log) as process:
        wait_for_http(process, f"{server.endpoint_url}/moto-api/", "minio (moto)", log, 60)
        buckets = re.findall(
            r"\bstore/([\w.-]+)", " ".join(command_of(stack.compose["services"]["buckets"]))
        )
        assert buckets, "the `buckets` job names no bucket"
        for bucket in buckets:
            server.create_bucket(bucket)
        yield server


@contextmanager
def server_service(
    stack: Stack, name: str, extra_env: dict[str, str]
) -> Iterator[Callable[[], None]]:
    """A service whose command is a server from this environment's `bin/`, started; yields the
    wait for its healthcheck, so that services depending on the same ones start together."""
    service = stack.compose["services"][name]
    program, *args = bind_own_address(command_of(service), stack.hosts[name])
    log = stack.root / f"{name}.log"
    stack.logs[name] = log
    files = image_files(service)
    environment = {key: files.get(value, value) for key, value in environment_of(service).items()}
    env = stack.process_env({**environment, **extra_env})
    workdir = None
    if "working_dir" in service:  # a volume in the compose file
        workdir = stack.root / f"{name}-workdir"
        workdir.mkdir()
    with running([str(BIN / program), *args], env, log, cwd=workdir) as process:

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited:\n{log.read_text()[-3000:]}")
            return healthcheck(stack, name, extra_env)

        def wait_healthy() -> None:
            try:
                wait_until(healthy, 180, f"{name}'s healthcheck", log, interval=1)
            except AssertionError as error:
                raise AssertionError(
                    f"{error}\n--- healthcheck ---\n{stack.health[name]}"
                ) from None

        yield wait_healthy


@contextmanager
def compose_stack(root: Path, variables: dict[str, str], profile: str = "cpu") -> Iterator[Stack]:
    """Every service of `profile` up, healthy, in the compose file's order of dependencies; the
    worker (`uib serve`) serving its deployments. Stopped in reverse order on exit."""
    compose = load_compose(variables)
    stack = Stack(compose, root, dict(ADDRESSES))
    (root / "dns").mkdir(parents=True)
    (root / "dns" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    worker = compose["services"]["worker"]
    assert profile in worker.get("profiles", []), f"no worker in profile {profile}"
    state = root / "state"
    state.mkdir()
    worker_env = environment_of(worker)
    for volume in worker.get("volumes", []):
        name, target = volume.split(":")[:2]
        assert worker_env.get("UIB_HOME") == target, (volume, worker_env.get("UIB_HOME"))
        worker_env["UIB_HOME"] = str(state)
    stack.worker_env = {
        **quiet_prefect_env(root / "worker-prefect-home"),
        **worker_env,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    with ExitStack() as services:
        services.enter_context(postgres_service(stack))
        stack.s3 = services.enter_context(minio_service(stack))
        # both depend on postgres and minio alone: started together, as compose starts them
        waits = [
            services.enter_context(
                server_service(stack, "prefect-server", quiet_prefect_env(root / "prefect-home"))
            ),
            services.enter_context(server_service(stack, "mlflow", {})),
        ]
        for wait_healthy in waits:
            wait_healthy()
        log = root / "worker.log"
        stack.logs["worker"] = log
        program, *args = ["uib", *command_of(worker)]
        services.enter_context(
            running([str(BIN / program), *args], stack.process_env(stack.worker_env), log)
        )
        yield stack
