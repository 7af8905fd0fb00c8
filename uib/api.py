"""`uib.unlearn`: the library's one public call."""

from __future__ import annotations

import copy
import time

import torch
from pydantic import BaseModel
from torch import nn

from uib import methods
from uib.device import (
    Precision,
    flushed_denormals,
    peak_memory_mb,
    reset_peak_memory,
    select_device,
)
from uib.models import set_training, spec_of
from uib.samples import DataError, Samples
from uib.train import TrainConfig, to_tensors


class UnlearnReport(BaseModel):
    method: str
    config: dict
    losses: dict[str, float]
    loss_curve: list[dict[str, float]]
    param_shift: dict[str, float]
    phase_seconds: dict[str, float]
    time_s: float
    n_forget: int
    n_retain: int
    device: str
    precision: str = "fp32"
    peak_memory_mb: float | None = None
    notes: dict = {}

    def decision(self) -> str:
        """How the method treated the forget set, in one line a reviewer reads (the regime, the
        neighbours' reading, the step, the reset, the hold, the passes); '' where the method
        records none of it."""
        notes, parts = self.notes, []
        if regime := notes.get("regime"):
            parts.append(f"{regime['kind']} forget set")
        if agreement := notes.get("label_agreement"):
            parts.append(
                f"{agreement['forget']:.0%} of its rows look like their label to their nearest "
                f"retained rows ({agreement['held_out']:.0%} of held-out rows)"
            )
        if "eta" in notes:
            parts.append(f"IF step η = {notes['eta']:.3g}" if notes["eta"] else "no IF step")
        if "reset_share" in notes:
            parts.append(f"{notes['reset_share']:.1%} of entries, the slice's own, reset")
        if notes.get("forget_hold"):
            parts.append("the forget set held where the step left it")
        if "passes_run" in notes:
            n = notes["passes_run"]
            parts.append(f"{n} pass{'' if n == 1 else 'es'}")
        return "; ".join(parts)


def check_request(
    model: nn.Module,
    forget: Samples,
    retain: Samples,
    validation: Samples | None,
    reads_forget: bool = True,
) -> int:
    """Refuse what no method can honour, naming the problem; returns the number of classes.

    An empty forget set is refused unless the method reads none of it (`retrain`, run for a
    request whose forget samples are already erased)."""
    spec = spec_of(model)
    num_classes = spec.num_classes
    if len(forget) == 0 and reads_forget:
        raise DataError("forget set is empty: nothing to unlearn")
    if len(retain) == 0:
        raise DataError("retain set is empty: the forget set is the whole training set")
    for name, part in (("forget", forget), ("retain", retain), ("validation", validation)):
        if part is not None:
            part.check(num_classes, name)
            if tuple(part.x.shape[1:]) != tuple(spec.image_shape):
                raise DataError(
                    f"{name}: images of shape {part.x.shape[1:]}, the model takes "
                    f"{spec.image_shape}"
                )
    overlap = set(forget.ids.tolist()) & set(retain.ids.tolist())
    if overlap:
        raise DataError(
            f"{len(overlap)} sample ids are in both forget and retain, e.g. {sorted(overlap)[:5]}"
        )
    return num_classes


def param_shift(before: nn.Module, after: nn.Module) -> dict[str, float]:
    """‖m − θ0‖ per parameter block (zero-shift blocks included; `retrain` shifts everything)."""
    old = dict(before.named_parameters())
    return {
        k: float((p.detach().float() - old[k].detach().float()).norm())
        for k, p in after.named_parameters()
    }


def unlearn(
    model: nn.Module,
    forget: Samples,
    retain: Samples,
    method: str = "uib",
    config: dict | methods.MethodConfig | None = None,
    *,
    train_config: TrainConfig | None = None,
    validation: Samples | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    precision: Precision = "fp32",
) -> tuple[nn.Module, UnlearnReport]:
    """Return a new model without what `forget` taught `model`, and a report of the run.

    `model` is left untouched. `train_config` is the original's recipe (used by `retrain`).
    `validation` is held-out data the model never trained on; UIB picks its IF step length on it.
    `precision`: the methods' own steps (`retrain` follows `train_config.precision`); see
    `uib.device` for why fp32 is the default.
    """
    entry = methods.get(method)
    cfg = (
        config
        if isinstance(config, entry.config_cls)
        else entry.config_cls.model_validate(config or {})
    )
    num_classes = check_request(model, forget, retain, validation, entry.reads_forget)
    device = select_device(device or "auto")
    original = copy.deepcopy(model).to(device)
    set_training(original, False)
    work = copy.deepcopy(original)
    fx, fy = to_tensors(forget, device)
    rx, ry = to_tensors(retain, device)
    vx, vy = to_tensors(validation, device) if validation is not None else (None, None)
    ctx = methods.UnlearnContext(
        original=original,
        forget_x=fx,
        forget_y=fy,
        retain_x=rx,
        retain_y=ry,
        val_x=vx,
        val_y=vy,
        device=device,
        train_config=train_config or TrainConfig(),
        num_classes=num_classes,
        seed=seed,
        progress=progress,
        precision=precision,
    )
    torch.manual_seed(seed)
    reset_peak_memory(device)
    start = time.perf_counter()
    with flushed_denormals(device):
        result = entry.run(work, ctx, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    set_training(result, False)
    report = UnlearnReport(
        method=method,
        config=cfg.model_dump(),
        losses=ctx.losses,
        loss_curve=ctx.loss_curve,
        param_shift=param_shift(original, result),
        phase_seconds=ctx.phase_seconds,
        time_s=elapsed,
        n_forget=len(forget),
        n_retain=len(retain),
        device=str(device),
        precision=precision,
        peak_memory_mb=peak_memory_mb(device),
        notes=ctx.notes,
    )
    return result, report
