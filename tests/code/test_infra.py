"""The infrastructure files hold together: compose services, the GPU job template, the image."""

import json
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
    result = subprocess.run(
        ["docker", "compose", "-f", str(INFRA / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_the_gpu_job_template_requests_a_gpu_and_the_shared_state():
    template = json.loads((INFRA / "k8s" / "gpu-job-template.json").read_text())
    assert set(template) == {"job_configuration", "variables"}
    job = template["job_configuration"]["job_manifest"]
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] == 1
    assert container["volumeMounts"][0]["mountPath"] == "/state"
    placeholders = set(
        re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"]))
    )
    assert placeholders <= set(template["variables"]["properties"]), placeholders


def test_the_worker_image_is_built_on_cuda_with_the_project():
    dockerfile = (INFRA / "worker.Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM nvidia/cuda:" in dockerfile
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu" in dockerfile
    assert '".[pipeline]"' in dockerfile and 'ENTRYPOINT ["uib"]' in dockerfile
