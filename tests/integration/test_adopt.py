"""A team's own model and data, adopted and then unlearned from, as a team would do it.

The README's "Use it on your own data and model" commands run as written: the team's side is
plain PyTorch and MLflow in a process of its own (`docs/examples/train_resnet18.py`, no `uib`
import), a ResNet-18 trained on a Colored-MNIST folder whose `faulty` source tints its digits
and labels them 0, logged with `mlflow.pytorch.log_model` in MLflow's default `pt2` format; then
`uib adopt` and `uib request delete` run for real (Prefect's temporary server, MLflow on SQLite,
DVC, GX). Models that must be refused are saved with `mlflow.pytorch.save_model` to folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from torch import nn
from typer.testing import CliRunner

from tasks.data_versioning import DataRepo
from tasks.settings import Settings
from uib.data import load_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"


def uib(home: Path, *args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args), env={"UIB_HOME": str(home)})


def readme_own_data_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Use it on your own data and model", 1)[1]
    return block.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()


@pytest.fixture(scope="module")
def colour(tmp_path_factory) -> Path:
    sys.path.insert(0, str(EXAMPLES))
    from colored_mnist import build

    out = tmp_path_factory.mktemp("colour") / "colour-mnist"
    return build(ROOT.parent / "shared" / "data" / "mnist", out, n_train=300, n_test=200)


def test_the_readme_adopts_a_team_model_and_unlearns_from_it_as_written(tmp_path):
    """The README's commands, as one shell script in a fresh folder: the team's data and its
    plain-PyTorch ResNet-18 (a process of its own, no `uib` import), `uib adopt`, a deletion
    request through the `unlearn` flow (GX, DVC, UIB, gates, MLflow, erasure), a benchmark."""
    from tasks.registry import load_version
    from uib.models import is_exported

    for name in (".venv", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    commands = readme_own_data_commands()
    assert any("uib adopt --model models:/team-resnet/1" in line for line in commands)
    done = subprocess.run(
        ["bash", "-e", "-c", "\n".join(commands)],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("UIB_", "PREFECT_API"))},
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "test accuracy" in done.stdout and "registered as team-resnet" in done.stdout

    settings = Settings(home=tmp_path / ".uib-team")
    client = MlflowClient(f"sqlite:///{settings.home / 'mlflow.db'}")
    os.environ["MLFLOW_TRACKING_URI"] = client.tracking_uri
    try:
        by_version = {
            str(v.version): v
            for v in client.search_model_versions(f"name = '{settings.model_name}'")
        }
        v1 = by_version["1"]
        assert v1.tags["adopted_from"] == "models:/team-resnet/1" and v1.tags["stage"] == "original"
        assert json.loads(v1.tags["model_spec"])["image_shape"] == [3, 28, 28]
        assert json.loads(settings.recipe_path.read_text())["epochs"] == 3
        assert settings.recipe_path.stat().st_mode & 0o777 == 0o600
        champion = client.get_model_version_by_alias(settings.model_name, "champion")
        assert int(champion.version) >= 2 and champion.tags["gates"] == "passed"
        assert is_exported(load_version(settings, str(champion.version)))  # pt2 in, pt2 out
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)

    repo = DataRepo(settings.data_repo)
    first, now = repo.version(repo.history()[-1]), repo.current()
    original = load_dataset(f"folder:{tmp_path / 'colour-mnist'}").manifest  # the versions before
    original = original[original["split"] == "train"]  # were erased with what they held
    faulty = original["source"] == "faulty"
    assert faulty.sum() == 120  # a tenth of the training rows
    left = set(repo.load_manifest()["sample_id"])
    assert not left & set(original.loc[faulty, "sample_id"])
    assert now.n_train == first.n_train - 120
    assert len(list(settings.audit_dir.glob("*.json"))) == 1
    assert "retrain" in (tmp_path / "runs" / "colour" / "results.md").read_text()

    store = {"UIB_HOME": str(settings.home), "MLFLOW_TRACKING_URI": client.tracking_uri}
    for where, named in (("nosuch=1", "nosuch"), ("collected_at<yesterday", "collected_at")):
        from flows.cli import app

        refused = CliRunner().invoke(app, ["request", "delete", "--where", where], env=store)
        assert refused.exit_code == 2 and named in refused.output, refused.output
    assert repo.current() == now


def stored(home: Path) -> dict:
    """What a refused adoption must leave as it was."""
    from tasks.registry import use_store

    settings = Settings(home=home)
    use_store(settings)
    found = MlflowClient(settings.tracking_uri).search_model_versions(
        f"name = '{settings.model_name}'"
    )
    return {
        "versions": sorted(str(v.version) for v in found),
        "data": (settings.data_repo / ".dvc").exists(),
        "recipe": settings.recipe_path.exists(),
    }


class Constant(nn.Module):
    """Answers one class whatever it is shown."""

    def __init__(self, num_classes: int, answer: int):
        super().__init__()
        self.bias = nn.Parameter(
            torch.nn.functional.one_hot(torch.tensor(answer), num_classes).float()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1] * 0 + self.bias


class BatchCentred(nn.Module):
    """Scores a sample against the mean of its batch: a different answer in every batch."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(3 * 28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x - x.mean(0, keepdim=True)).flatten(1))


class TinyConv(nn.Module):
    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def save_pytorch(path: Path, model: nn.Module, example: np.ndarray) -> str:
    import mlflow.pytorch

    mlflow.pytorch.save_model(model, str(path), input_example=example)
    return str(path)


def save_sklearn(path: Path) -> str:
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(np.eye(4), np.arange(4))
    mlflow.sklearn.save_model(model, str(path))
    return str(path)


def test_adopt_refuses_a_model_that_does_not_fit_and_stores_nothing(tmp_path, colour):
    x3 = np.random.default_rng(0).random((4, 3, 28, 28), dtype=np.float32)
    x1 = x3[:, :1]
    cases = {
        "grey": (save_pytorch(tmp_path / "grey", TinyConv(1, 10).eval(), x1), "shape (3, 28, 28)"),
        "classes": (save_pytorch(tmp_path / "four", TinyConv(3, 4).eval(), x3), "scores 4 classes"),
        "batch": (save_pytorch(tmp_path / "batch", BatchCentred(10), x3), "rest of its batch"),
        "chance": (
            save_pytorch(tmp_path / "const", Constant(10, 3).eval(), x3),
            "most common class",
        ),
        "sklearn": (save_sklearn(tmp_path / "sk"), "not a PyTorch model"),
    }
    home = tmp_path / "uib"
    for name, (uri, named) in cases.items():
        before = stored(home)
        refused = uib(home, "adopt", "--model", uri, "--dataset", f"folder:{colour}")
        assert refused.exit_code == 2, (name, refused.output)
        assert "model" in refused.output and named in refused.output, (name, refused.output)
        assert "Traceback" not in refused.output
        assert stored(home) == before == {"versions": [], "data": False, "recipe": False}

    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(colour), str(broken)], check=True)
    victim = sorted((broken / "train").rglob("*.png"))[0]
    victim.write_bytes(b"not a png")
    refused = uib(home, "adopt", "--model", cases["grey"][0], "--dataset", f"folder:{broken}")
    assert refused.exit_code == 2 and victim.name in refused.output, refused.output
    bad_recipe = tmp_path / "recipe.yaml"
    bad_recipe.write_text("epochs: 3\nmomentun: 0.5\n")
    refused = uib(
        home,
        *("adopt", "--model", cases["grey"][0], "--dataset", f"folder:{colour}"),
        *("--recipe", str(bad_recipe)),
    )
    assert refused.exit_code == 2 and "momentun" in refused.output, refused.output
    assert stored(home) == {"versions": [], "data": False, "recipe": False}
