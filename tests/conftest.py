import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("UIB_MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist")


@pytest.fixture(scope="session", autouse=True)
def own_prefect_home(tmp_path_factory):
    """Prefect's files for every process a test starts (the CLI's temporary server and its
    SQLite database) in this session's own folder: never the user's `~/.prefect`, and one per
    pytest-xdist worker, so two workers' CLIs never share a server database."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
        yield


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"the shared MNIST subset is missing at {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(scope="session")
def digits():
    from uib.data import load_dataset

    return load_dataset("digits")
