"""The infrastructure files hold together: compose services, the GPU job template, the image."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_compose_services_wire_up():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {
        "postgres",
        "minio",
        "buckets",
        "prefect-server",
        "mlflow",
        "worker",
        "worker-gpu",
    } <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    assert (
        "postgresql+asyncpg://"
        in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    )
    assert "--artifacts-destination s3://" in services["mlflow"]["command"]
    assert "postgresql+psycopg2://" in services["mlflow"]["command"]
    worker = services["worker"]["environment"]
    assert worker["UIB_DVC_REMOTE"].startswith("s3://") and worker["UIB_S3_ENDPOINT_URL"]
    assert worker["UIB_INBOX_URL"].startswith("s3://")
    [gpu] = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for script in (INFRA / "postgres-init.sql", INFRA / "mlflow.Dockerfile"):
        assert script.exists()


@pytest.mark.skipif(
    subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    if shutil.which("docker")
    else True,
    reason="no `docker compose` client here",
)
def test_docker_compose_config_validates():
    command = ["docker", "compose", "-f", str(INFRA / "compose.yaml"), "config", "-q"]
    filled = {name: "x" for name in env_example()}
    unset = subprocess.run(command, capture_output=True, text=True, env=without(filled))
    assert unset.returncode != 0 and "in infra/.env" in unset.stderr  # no default secret
    result = subprocess.run(
        command, capture_output=True, text=True, env={**without(filled), **filled}
    )
    assert result.returncode == 0, result.stderr


def without(names) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)(:?[-?])?([^}]*)\}")  # `$${X}`: the shell's
DEFAULTED = {"UIB_SCHEDULE_CRON", "UIB_WORKER_IMAGE", "UIB_GPU_DEPLOYMENT"}  # no secret


def env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_compose_file_ships_no_secret_and_publishes_on_loopback_only():
    text = (INFRA / "compose.yaml").read_text()
    used = {}
    for name, operator, argument in VARIABLE.findall(text):
        used.setdefault(name, set()).add(operator)
        if name not in DEFAULTED:
            assert operator == ":?" and argument.startswith("set "), (name, operator, argument)
    assert set(used) == set(env_example()), "infra/.env.example lists other variables"
    assert all(value == "" for value in env_example().values()), "a value in .env.example"
    services = yaml.safe_load(text)["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "postgres" not in {n for n, s in services.items() if s.get("ports")}
    prefect, mlflow = services["prefect-server"], services["mlflow"]
    assert "PREFECT_SERVER_API_AUTH_STRING" in prefect["environment"]
    assert "PREFECT_API_AUTH_STRING" in services["worker"]["environment"]
    assert "--app-name basic-auth" in mlflow["command"]
    hosts = re.search(r"--allowed-hosts (\S+)", mlflow["command"]).group(1).split(",")
    tracking = services["worker"]["environment"]["MLFLOW_TRACKING_URI"]
    assert tracking.removeprefix("http://") in hosts  # else every worker request gets 403
    assert "infra/.env" in (INFRA.parent / ".gitignore").read_text().split()


def test_the_images_run_the_versions_tested_here_and_not_as_root():
    from importlib.metadata import version

    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    assert services["prefect-server"]["image"].startswith(
        f"prefecthq/prefect:{version('prefect')}-"
    )
    mlflow = (INFRA / "mlflow.Dockerfile").read_text()
    for package in ("mlflow", "psycopg2-binary", "boto3"):
        assert re.search(rf"{package}(\[\w+\])?==" + re.escape(version(package)), mlflow), package
    assert "COPY mlflow-auth.ini /etc/mlflow/auth.ini" in mlflow and "\nUSER mlflow" in mlflow
    assert services["mlflow"]["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/auth.ini"
    worker = (INFRA / "worker.Dockerfile").read_text()
    python_home = re.search(r"UV_PYTHON_INSTALL_DIR=(\S+)", worker).group(1)
    assert not python_home.startswith("/root") and worker.index(python_home) < worker.index(
        "uv venv"
    )
    assert "\nUSER uib" in worker
    ignored = (INFRA.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".uib", "infra/.env"} <= set(ignored)


def test_the_gpu_job_template_requests_a_gpu_and_the_shared_state():
    template = json.loads((INFRA / "k8s" / "gpu-job-template.json").read_text())
    assert set(template) == {"job_configuration", "variables"}
    job = template["job_configuration"]["job_manifest"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] == 1
    assert container["volumeMounts"][0]["mountPath"] == "/state"
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    env = template["variables"]["properties"]["env"]["default"]
    assert {"MLFLOW_TRACKING_URI", "UIB_DVC_REMOTE", "UIB_S3_ENDPOINT_URL"} <= set(env)
    assert container["envFrom"] == [{"secretRef": {"name": "{{ stores_secret }}"}}]
    assert template["variables"]["required"] == ["image"]  # a pushed image, named
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    state = list(yaml.safe_load_all((INFRA / "k8s" / "state.yaml").read_text()))
    [namespace] = [d for d in state if d["kind"] == "Namespace"]
    [pvc] = [d for d in state if d["kind"] == "PersistentVolumeClaim"]
    assert namespace["metadata"]["name"] == pvc["metadata"]["namespace"] == "uib"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert template["variables"]["properties"]["state_claim"]["default"] == "uib-state"
    assert claim == "{{ state_claim }}" and pvc["metadata"]["name"] == "uib-state"
    placeholders = set(
        re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"]))
    )
    assert placeholders <= set(template["variables"]["properties"]), placeholders


def test_the_worker_image_is_built_on_cuda_with_the_project():
    dockerfile = (INFRA / "worker.Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM nvidia/cuda:" in dockerfile
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu" in dockerfile
    assert '".[pipeline]"' in dockerfile and 'ENTRYPOINT ["uib"]' in dockerfile
