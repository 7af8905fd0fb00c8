"""Evaluate a candidate model against the original on the same rows and hold it to the gates
(`tasks.gates`): the metrics of both models and the per-row evidence the gates' tests need."""

from __future__ import annotations

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from tasks.gate_report import GateReport
from tasks.gates import Evidence, apply_gates
from tasks.settings import GateConfig
from uib.metrics import evaluate, per_sample_loss
from uib.neighbours import neighbour_labels
from uib.samples import Samples
from uib.scenarios import ScenarioConfig
from uib.train import predict_logits, predict_proba


def is_sane(model: nn.Module, probe: np.ndarray) -> bool:
    """No NaN or Inf in the parameters, and softmax outputs that sum to one."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return False
    probs = predict_proba(model, probe)
    return bool(np.isfinite(probs).all() and np.allclose(probs.sum(1), 1.0, atol=1e-4))


def gather_evidence(
    original: nn.Module,
    candidate: nn.Module,
    retain: Samples,
    forget: Samples,
    test: Samples,
    scenario: ScenarioConfig | None,
    patch_bias_request: bool,
    removes_class: bool | None = None,
    sanity_n: int | None = None,
) -> Evidence:
    """Per-row correctness before and after, the candidate's losses and forget predictions,
    and the label the retained rows nearest each forgotten one carry.

    `removes_class` (every training sample of some class is forgotten) is read off the data
    when not given: a class of the test set with no row left in the retain set (not from the
    forget set, so a stand-in forget set gives the same list of gates).
    """

    def correct(model: nn.Module, part: Samples) -> np.ndarray:
        return predict_logits(model, part.x).argmax(1).numpy() == part.y

    forget_logits = predict_logits(candidate, forget.x)
    test_logits = predict_logits(candidate, test.x)
    if removes_class is None:
        removes_class = bool(np.setdiff1d(np.unique(test.y), np.unique(retain.y)).size)
    bias_probe_n = None
    if patch_bias_request and scenario is not None:
        bias_probe_n = int(np.sum(test.y != scenario.target_class))
    return Evidence(
        forget_y=np.asarray(forget.y),
        forget_pred=forget_logits.argmax(1).numpy() if len(forget) else np.zeros(0, int),
        forget_loss=per_sample_loss(forget_logits, forget.y),
        test_y=np.asarray(test.y),
        test_loss=per_sample_loss(test_logits, test.y),
        test_correct=(correct(original, test), test_logits.argmax(1).numpy() == test.y),
        retain_correct=(correct(original, retain), correct(candidate, retain)),
        removes_class=removes_class,
        bias_probe_n=bias_probe_n,
        sanity_n=sanity_n,
        forget_neighbour_y=neighbour_labels(retain.x, retain.y, forget.x),
    )


@task(name="evaluate-and-gate", cache_policy=NO_CACHE)
def evaluate_candidate(
    original: nn.Module,
    candidate: nn.Module,
    retain: Samples,
    forget: Samples,
    test: Samples,
    scenario: ScenarioConfig | None,
    config: GateConfig,
    patch_bias_request: bool,
    removes_class: bool | None = None,
) -> GateReport:
    """Metrics of the original and the candidate on the same data, and the gate verdict.

    `removes_class`: the request forgets every training sample of a class (no_redirect does not
    apply); None reads it off `retain` and `test`.
    """
    probe = scenario if patch_bias_request else None
    before = evaluate(original, retain, forget, test, probe)
    after = evaluate(candidate, retain, forget, test, probe)
    sanity_probe = test.x[:256]
    evidence = gather_evidence(
        original,
        candidate,
        retain,
        forget,
        test,
        scenario,
        patch_bias_request,
        removes_class,
        len(sanity_probe),
    )
    return apply_gates(
        before, after, config, patch_bias_request, is_sane(candidate, sanity_probe), evidence
    )
