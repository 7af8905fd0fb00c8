"""The metrics of EVALUATION.md, computed by the project's own code."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from uib.samples import Samples
from uib.train import predict_logits

METRIC_COLUMNS = [
    "UA",
    "RA",
    "TA",
    "test_f1",
    "mia_efficacy",
    "forget_loss_rank",
    "bias_asr",
    "bias_corr",
    "corrupt_acc",
]
GAP_METRICS = ["UA", "RA", "TA", "mia_efficacy"]


class Metrics(BaseModel):
    UA: float
    RA: float
    TA: float
    test_f1: float
    forget_acc: float
    mia_efficacy: float
    mia_test_level: float
    forget_loss_rank: float | None = None
    bias_asr: float | None = None
    bias_corr: float | None = None
    corrupt_acc: float | None = None
    per_class_acc: list[float] = []


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if len(y) else float("nan")


def mia_features(logits: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """(prediction entropy, confidence in the given label) per sample."""
    logp = torch.log_softmax(logits, 1)
    entropy = -(logp.exp() * logp).sum(1)
    confidence = logp.exp()[torch.arange(len(y)), torch.as_tensor(y)]
    return torch.stack([entropy, confidence], 1).numpy()


class MembershipAttack:
    """Logistic regression on (entropy, confidence): members (retain) against non-members (test).

    Fit on equal numbers of each (at most `max_per_side`); `nonmember_rate(features)` is the
    fraction of rows it calls non-members, i.e. MIA-Efficacy when applied to the forget set.
    """

    def __init__(
        self, member: np.ndarray, nonmember: np.ndarray, seed: int = 0, max_per_side: int = 2000
    ):
        rng = np.random.default_rng(seed)
        n = min(len(member), len(nonmember), max_per_side)
        xs = np.concatenate(
            [
                member[rng.permutation(len(member))[:n]],
                nonmember[rng.permutation(len(nonmember))[:n]],
            ]
        )
        labels = np.concatenate([np.ones(n), np.zeros(n)])
        self.scaler = StandardScaler().fit(xs)
        self.clf = LogisticRegression().fit(self.scaler.transform(xs), labels)

    def member_probability(self, features: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(self.scaler.transform(features))[:, 1]

    def nonmember_rate(self, features: np.ndarray) -> float:
        if not len(features):
            return float("nan")
        return float((self.member_probability(features) < 0.5).mean())


def loss_percentiles(
    losses: np.ndarray,
    labels: np.ndarray,
    reference_losses: np.ndarray,
    reference_labels: np.ndarray,
) -> np.ndarray:
    """Per sample, the share of reference losses of its label below its loss (ties count half);
    NaN where the reference has no sample of that label.

    Against held-out references a sample the model never saw scores 0.5 on average — so does,
    under a retrained model, a forgotten sample exchangeable with them; a remembered one scores
    near 0.
    """
    out = np.full(len(losses), np.nan)
    for label in np.unique(labels):
        pool = np.sort(reference_losses[reference_labels == label])
        if len(pool):
            rows = labels == label
            below = np.searchsorted(pool, losses[rows], side="left")
            at_or_below = np.searchsorted(pool, losses[rows], side="right")
            out[rows] = (below + at_or_below) / (2 * len(pool))
    return out


def per_sample_loss(logits: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """Cross-entropy of each row, in float64 so confident rows keep distinct (nonzero) losses."""
    if len(y) == 0:
        return np.zeros(0)
    return torch.nn.functional.cross_entropy(
        logits.double(), torch.as_tensor(np.asarray(y), dtype=torch.long), reduction="none"
    ).numpy()


def phi(a: np.ndarray, b: np.ndarray) -> float:
    """Phi correlation of two boolean vectors (0 where either is constant)."""
    a, b = a.astype(bool), b.astype(bool)
    n11, n10 = np.sum(a & b), np.sum(a & ~b)
    n01, n00 = np.sum(~a & b), np.sum(~a & ~b)
    denom = np.sqrt(float((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)))
    return float((n11 * n00 - n10 * n01) / denom) if denom else 0.0


def bias_probe(model: nn.Module, test: Samples, target: int, device=None) -> tuple[float, float]:
    """(`bias_asr`, `bias_corr`) of the patch shortcut on test images of every class but `target`."""
    from uib.scenarios import paste_patch

    others = test.y != target
    x = test.x[others]
    asr = float((predict_logits(model, paste_patch(x), device).argmax(1).numpy() == target).mean())
    has_patch = np.arange(len(x)) % 2 == 0
    probe = np.where(has_patch[:, None, None, None], paste_patch(x), x)
    says_target = predict_logits(model, probe, device).argmax(1).numpy() == target
    return asr, phi(has_patch, says_target)


def corrupt_accuracy(model: nn.Module, test: Samples, kind: str, device=None) -> float:
    from uib.corruptions import apply

    x = apply(kind, test.x, np.random.default_rng(0))
    return accuracy(predict_logits(model, x, device).argmax(1).numpy(), test.y)


def evaluate(
    model: nn.Module,
    retain: Samples,
    forget: Samples,
    test: Samples,
    scenario=None,
    device=None,
    seed: int = 0,
) -> Metrics:
    """All metrics of one model; `scenario` (a ScenarioConfig) adds the bias or corruption probe."""
    logits = {
        name: predict_logits(model, part.x, device)
        for name, part in (("retain", retain), ("forget", forget), ("test", test))
    }
    preds = {k: v.argmax(1).numpy() for k, v in logits.items()}
    attack = MembershipAttack(
        mia_features(logits["retain"], retain.y), mia_features(logits["test"], test.y), seed=seed
    )
    forget_acc = accuracy(preds["forget"], forget.y)
    num_classes = model.spec.num_classes
    per_class = [
        accuracy(preds["test"][test.y == c], test.y[test.y == c]) for c in range(num_classes)
    ]
    metrics = Metrics(
        UA=1.0 - forget_acc,
        RA=accuracy(preds["retain"], retain.y),
        TA=accuracy(preds["test"], test.y),
        test_f1=float(f1_score(test.y, preds["test"], average="macro")),
        forget_acc=forget_acc,
        mia_efficacy=attack.nonmember_rate(mia_features(logits["forget"], forget.y)),
        mia_test_level=attack.nonmember_rate(mia_features(logits["test"], test.y)),
        forget_loss_rank=float(
            np.nanmean(
                loss_percentiles(
                    per_sample_loss(logits["forget"], forget.y),
                    forget.y,
                    per_sample_loss(logits["test"], test.y),
                    test.y,
                )
            )
        )
        if len(forget)
        else None,
        per_class_acc=per_class,
    )
    name = getattr(scenario, "name", None)
    if name == "patch-bias":
        metrics.bias_asr, metrics.bias_corr = bias_probe(model, test, scenario.target_class, device)
    elif name == "corruption":
        metrics.corrupt_acc = corrupt_accuracy(model, test, scenario.corruption, device)
    return metrics


def avg_gap(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Mean |m − m_retrain| over UA, RA, TA and MIA-Efficacy, in percentage points."""
    return float(np.mean([abs(metrics[k] - reference[k]) for k in GAP_METRICS]) * 100)
