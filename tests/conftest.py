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


# Rough seconds each long module takes on one worker (measured; the rest take a few seconds).
# `make test` gives pytest-xdist the modules in this order, longest first
# (`--dist loadfile --no-loadscope-reorder`): a long module started last would keep one worker
# busy long after the other ran out of work.
LONG_MODULES = {
    "integration/test_pipeline.py": 420,
    "integration/test_pipeline_refusals.py": 110,
    "integration/test_adopt.py": 340,
    "integration/test_readme.py": 330,
    "integration/test_production_stack.py": 240,
    "integration/test_review.py": 225,
    "integration/test_store_outages.py": 185,
    "integration/test_hostile_host.py": 155,
    "integration/test_scheduled.py": 105,
    "integration/test_serve_reconnects.py": 75,
    "code/test_benchmark.py": 65,
    "model/test_small_requests.py": 60,
    "integration/test_cluster_block.py": 55,
    "model/test_partial_slice.py": 55,
    "model/test_unlearning.py": 30,
    "integration/test_data_switch.py": 20,
}


def pytest_collection_modifyitems(items):
    """Longest module first; each module's tests keep their order (a stable sort)."""

    def weight(item) -> int:
        path = Path(str(item.path)).resolve()
        if not path.is_relative_to(REPO / "tests"):
            return 0
        return -LONG_MODULES.get(path.relative_to(REPO / "tests").as_posix(), 0)

    items.sort(key=weight)
