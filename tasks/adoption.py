"""Does a team's model fit a team's data? The checks `uib adopt` makes before it stores anything.

A model comes as an MLflow model URI (`models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/…`)
or the folder `mlflow.pytorch.save_model` wrote. It is adopted only if it is a PyTorch model,
takes the data's inputs, gives one finite score per class of the data, scores a sample the same
whatever else is in its batch (checked in eval mode, which `uib.models.set_training` sets even on
a model exported in training mode), and beats the majority class on the data's test split. Each refusal is an
`AdoptionError` that names the field (`model`, `dataset`, `recipe`) and the mismatch.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from tasks.gate_stats import cp_lower
from uib.data import Dataset
from uib.models import ADOPTED, ModelSpec, attach_spec, set_training
from uib.samples import DataError
from uib.train import predict_logits

PROBE_ROWS = 8


class AdoptionError(DataError):
    """The model, the data or the recipe cannot be adopted; the message names which and why."""


class FitReport(BaseModel):
    """What the checks measured: shown by `uib adopt` and logged with version 1."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str
    model_class: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    n_test: int
    test_accuracy: float
    test_accuracy_lower: float
    majority_share: float


def load_team_model(model_uri: str) -> nn.Module:
    """The model at `model_uri` on the CPU, refused unless it has MLflow's `pytorch` flavour."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    try:
        flavors = get_model_info(model_uri).flavors
    except (MlflowException, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AdoptionError(f"model: cannot read {model_uri} ({first})") from None
    if "pytorch" not in flavors:
        raise AdoptionError(
            f"model: {model_uri} is not a PyTorch model; its flavours are "
            f"{', '.join(sorted(flavors))} (log it with mlflow.pytorch.log_model)"
        )
    model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    if not isinstance(model, nn.Module):
        raise AdoptionError(f"model: {model_uri} loads as {type(model).__name__}, not a module")
    return model


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _scores(model: nn.Module, x: np.ndarray, what: str) -> torch.Tensor:
    try:
        return predict_logits(model, x, device=torch.device("cpu"), batch_size=512)
    except Exception as error:  # noqa: BLE001 - whatever the team's forward raises is the answer
        raise AdoptionError(
            f"model: does not take the dataset's {what} inputs of shape {tuple(x.shape[1:])} "
            f"({_first_line(error)})"
        ) from None


def check_answers(model: nn.Module, dataset: Dataset) -> torch.Tensor:
    """The model takes the dataset's inputs and scores exactly its classes, finitely, on a
    probe of test rows; its scores. Run on every champion before a request changes anything."""
    probe = dataset.test.x[:PROBE_ROWS]
    logits = _scores(model, probe, "test")
    if logits.dim() != 2:
        raise AdoptionError(
            f"model: returns scores of shape {tuple(logits.shape)} for {len(probe)} inputs; "
            "expected one row of class scores per input"
        )
    if logits.shape[1] != dataset.num_classes:
        raise AdoptionError(
            f"model: scores {logits.shape[1]} classes, the dataset has {dataset.num_classes} "
            f"({', '.join(dataset.class_names)})"
        )
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        raise AdoptionError(
            f"model: non-finite scores for {int((~finite).sum())} of {len(probe)} test samples, "
            f"e.g. {dataset.test.ids[: len(probe)][~finite.numpy()][:5].tolist()}"
        )
    return logits


def check_fit(model: nn.Module, dataset: Dataset, model_uri: str) -> FitReport:
    """Every check of the module docstring, in that order; attaches the model's spec."""
    shape = tuple(int(d) for d in dataset.train.x.shape[1:])
    attach_spec(
        model,
        ModelSpec(arch=ADOPTED, image_shape=shape, num_classes=max(dataset.num_classes, 2)),
    )
    set_training(model, False)
    test = dataset.test
    probe = test.x[:PROBE_ROWS]
    logits = check_answers(model, dataset)
    alone = _scores(model, probe[:1], "test")
    if not torch.allclose(alone[0], logits[0], rtol=1e-4, atol=1e-4):
        raise AdoptionError(
            "model: a sample's scores change with the rest of its batch, so no prediction it "
            "makes can be checked (a layer that normalises by the batch's own statistics?)"
        )
    _scores(model, dataset.train.x[:PROBE_ROWS], "train")
    logits = _scores(model, test.x, "test")
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        bad = test.ids[~finite.numpy()][:5].tolist()
        raise AdoptionError(
            f"model: non-finite scores for {int((~finite).sum())} of {len(test)} test samples, "
            f"e.g. {bad}"
        )
    correct = logits.argmax(1).numpy() == test.y
    n = len(test)
    accuracy = float(correct.mean())
    lower = cp_lower(int(correct.sum()), n, 0.05)
    majority = float(np.bincount(test.y, minlength=dataset.num_classes).max() / n)
    if lower <= majority:
        raise AdoptionError(
            f"model: test accuracy {accuracy:.3f} (95 % lower bound {lower:.3f}, n={n}) is no "
            f"better than always answering the most common class ({majority:.3f}): the model "
            "and the dataset do not belong together (class order? input scaling to [0, 1]?)"
        )
    return FitReport(
        model_uri=model_uri,
        model_class=type(model).__name__,
        input_shape=shape,
        num_classes=dataset.num_classes,
        class_names=tuple(dataset.class_names),
        n_test=n,
        test_accuracy=accuracy,
        test_accuracy_lower=lower,
        majority_share=majority,
    )
