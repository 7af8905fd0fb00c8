"""The repository ships `data.dvc` for the default dataset; a fresh build reproduces its hash."""

from pathlib import Path

import pytest
import yaml

from tasks.data_versioning import DataRepo
from tasks.settings import Settings
from uib.data import load_dataset
from uib.scenarios import build_scenario

SHIPPED = Path(__file__).resolve().parents[2] / "data.dvc"


@pytest.mark.integration
def test_building_the_default_dataset_reproduces_the_shipped_data_dvc(tmp_path):
    shipped = yaml.safe_load(SHIPPED.read_text())["outs"][0]
    settings = Settings(home=tmp_path)
    scenario = build_scenario(load_dataset(settings.dataset), settings.scenario)
    repo = DataRepo.init(tmp_path / "repo", str(tmp_path / "remote"))
    version = repo.write_dataset(scenario.dataset, scenario.config, "default dataset")
    assert version.dvc_md5 == shipped["md5"]
    assert (tmp_path / "repo" / "data.dvc").read_text() == SHIPPED.read_text()
