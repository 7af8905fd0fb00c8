import copy
from pathlib import Path

import pytest
from s3_server import CREDENTIALS, start_s3_server

from tasks.settings import Settings


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


@pytest.fixture(scope="session")
def trained_on_this_worker() -> dict:
    """The original the first real training on this pytest-xdist worker produced (the
    `trained` fixture of the first module that needs one): later modules register a copy of
    it instead of training the same model on the same data again."""
    return {}


def registering(patch: pytest.MonkeyPatch, model) -> None:
    """The `train` flow registers a copy of `model` instead of training (`home`, `trained`)."""
    import flows.train
    from uib.train import TrainHistory

    patch.setattr(
        flows.train,
        "train_original",
        lambda scenario, settings: (copy.deepcopy(model), TrainHistory()),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trained_on_this_worker) -> Settings:
    """A state folder where the real `train` flow versioned the data and registered v1.

    The first module on a worker trains the original for real (and checks it); the others'
    `train` flow registers a copy of that model, as `home` does."""
    from flows.train import train_flow
    from tasks.data_versioning import DataRepo
    from tasks.registry import load_version

    settings = Settings(home=tmp_path_factory.mktemp("trained") / "uib")
    with pytest.MonkeyPatch.context() as patch:
        if "original" in trained_on_this_worker:
            registering(patch, trained_on_this_worker["original"])
        result = train_flow(settings.overrides())
    assert result == {"model_version": "1", "trained": True}
    assert DataRepo(settings.data_repo).current().dvc_md5 == shipped_md5()
    trained_on_this_worker.setdefault("original", load_version(settings, "1"))
    return settings


@pytest.fixture(scope="module")
def original(trained):
    from tasks.registry import load_version

    return load_version(trained, "1")


def shipped_md5() -> str:
    text = (Path(__file__).resolve().parents[2] / "data.dvc").read_text()
    return next(line.split()[-1] for line in text.splitlines() if "md5:" in line)


@pytest.fixture
def home(tmp_path, monkeypatch, original) -> Settings:
    """A fresh state folder: data versioned, the original registered as champion v1."""
    from flows.train import train_flow

    registering(monkeypatch, original)
    settings = Settings(home=tmp_path / "uib")
    assert train_flow(settings.overrides()) == {"model_version": "1", "trained": True}
    return settings
