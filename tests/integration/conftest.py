import pytest
from s3_server import CREDENTIALS, start_s3_server


@pytest.fixture(scope="session")
def patch_bias(digits):
    """The `patch-bias` scenario on digits: the faulty source's samples are the forget set."""
    from uib.scenarios import ScenarioConfig, build_scenario

    return build_scenario(digits, ScenarioConfig(name="patch-bias", seed=0))


@pytest.fixture
def data_repo(tmp_path, patch_bias):
    """A fresh data repository with a local remote, holding the patch-bias data as one version."""
    from tasks.data_versioning import DataRepo

    repo = DataRepo.init(tmp_path / "repo", str(tmp_path / "remote"))
    version = repo.write_dataset(patch_bias.dataset, patch_bias.config, "patch-bias digits")
    return repo, version


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server on loopback for the session, with test credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in CREDENTIALS.items():
            patch.setenv(key, value)
        with start_s3_server(tmp_path_factory.mktemp("s3")) as server:
            yield server


@pytest.fixture(scope="module")
def prefect_harness():
    """A temporary Prefect server (SQLite) for a module; each test picks its MLflow store."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("UIB_HOME", raising=False)
        with prefect_test_harness(server_startup_timeout=120):
            yield
