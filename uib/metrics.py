"""The metrics of EVALUATION.md, computed by the project's own code."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from uib.models import spec_of
from uib.samples import Samples
from uib.train import predict_logits

METRIC_COLUMNS = [
    "UA",
    "RA",
    "TA",
    "test_f1",
    "mia_efficacy",
    "mia_label_free",
    "forget_loss_rank",
    "bias_asr",
    "bias_corr",
    "redirect_asr",
    "corrupt_acc",
    "slice_acc",
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
    mia_label_free: float | None = None
    forget_loss_rank: float | None = None
    bias_asr: float | None = None
    bias_corr: float | None = None
    redirect_asr: float | None = None
    corrupt_acc: float | None = None
    slice_acc: float | None = None
    per_class_acc: list[float] = []


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if len(y) else float("nan")


def mia_features(logits: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """(prediction entropy, confidence in the given label) per sample."""
    logp = torch.log_softmax(logits, 1)
    entropy = -(logp.exp() * logp).sum(1)
    confidence = logp.exp()[torch.arange(len(y)), torch.as_tensor(y)]
    return torch.stack([entropy, confidence], 1).numpy()


def label_free_features(logits: torch.Tensor) -> np.ndarray:
    """Prediction entropy alone. On patch-bias the forget set's labels are the faulty ones, so an
    attack that reads the confidence in the label only repeats UA; this one cannot."""
    logp = torch.log_softmax(logits, 1)
    return (-(logp.exp() * logp).sum(1, keepdim=True)).numpy()


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


def largest_wrong_share(pred: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """The largest fraction of rows predicted as one class other than their own label."""
    if not len(y):
        return float("nan")
    wrong = pred[pred != y]
    return float(np.bincount(wrong, minlength=num_classes).max() / len(y)) if len(wrong) else 0.0


class BiasProbe(BaseModel):
    """The patch shortcut on test images of every class but the target, patch pasted in:
    `bias_asr` (read as the target), `bias_corr` (phi of "has patch" and "says target" on a
    half-patched probe), `slice_acc` (read as their true digit) and `redirect_asr` (the largest
    share sent to any one wrong class: a shortcut moved, not removed, shows here)."""

    bias_asr: float
    bias_corr: float
    slice_acc: float
    redirect_asr: float


def bias_probe(model: nn.Module, test: Samples, target: int, device=None) -> BiasProbe:
    from uib.scenarios import paste_patch

    others = test.y != target
    x, y = test.x[others], test.y[others]
    logits = predict_logits(model, paste_patch(x), device)
    pred = logits.argmax(1).numpy()
    has_patch = np.arange(len(x)) % 2 == 0
    probe = np.where(has_patch[:, None, None, None], paste_patch(x), x)
    says_target = predict_logits(model, probe, device).argmax(1).numpy() == target
    return BiasProbe(
        bias_asr=float((pred == target).mean()),
        bias_corr=phi(has_patch, says_target),
        slice_acc=accuracy(pred, y),
        redirect_asr=largest_wrong_share(pred, y, logits.shape[1]),
    )


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
    num_classes = spec_of(model).num_classes
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
        mia_label_free=MembershipAttack(
            label_free_features(logits["retain"]), label_free_features(logits["test"]), seed=seed
        ).nonmember_rate(label_free_features(logits["forget"])),
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
        probe = bias_probe(model, test, scenario.target_class, device)
        metrics = metrics.model_copy(update=probe.model_dump())
    elif name == "corruption":
        metrics.corrupt_acc = corrupt_accuracy(model, test, scenario.corruption, device)
        metrics.slice_acc = metrics.corrupt_acc
    return metrics


def avg_gap(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Mean |m − m_retrain| over UA, RA, TA and MIA-Efficacy, in percentage points."""
    return float(np.mean([abs(metrics[k] - reference[k]) for k in GAP_METRICS]) * 100)


def slice_gap(metrics: dict, reference: dict) -> float | None:
    """|slice_acc − slice_acc_retrain| in percentage points: how differently the slice's kind of
    input is read, which avg_gap (over the forget set's own, possibly faulty, labels) cannot see."""
    if metrics.get("slice_acc") is None or reference.get("slice_acc") is None:
        return None
    return abs(metrics["slice_acc"] - reference["slice_acc"]) * 100
