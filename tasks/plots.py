"""The figures a reviewer sees in MLflow for each request (matplotlib, Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from textwrap import fill  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from uib.metrics import MembershipAttack, Metrics, mia_features  # noqa: E402
from uib.samples import Samples  # noqa: E402
from uib.train import predict_logits  # noqa: E402


def per_class_accuracy(
    before: Metrics, after: Metrics, class_names: tuple[str, ...] = ()
) -> Figure:
    """Grouped bars per class, labelled by the data's class names (their index when none)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    classes = np.arange(len(before.per_class_acc))
    ax.bar(classes - 0.2, before.per_class_acc, 0.4, label="before (original)")
    ax.bar(classes + 0.2, after.per_class_acc, 0.4, label="after (candidate)")
    ax.set(
        xlabel="class",
        ylabel="test accuracy",
        ylim=(0, 1.05),
        xticks=classes,
        title="Per-class test accuracy before / after unlearning",
    )
    if len(class_names) == len(classes):
        long = max(map(len, class_names), default=0) > 3
        ax.set_xticklabels([n[:12] for n in class_names], rotation=45 if long else 0)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def mia_histograms(scores: dict[str, dict[str, np.ndarray]], note: str | None = None) -> Figure:
    """`scores[model][set]`: the attack's member probability per sample (retain, test, forget).

    Each panel gives the retrain-free reference levels: the share of retained samples (members)
    and of unseen test samples the attack calls non-members (P < 0.5, the dotted line) — a
    retrained model leaves the forgotten samples at the unseen level. The axis spans the scores
    (they crowd near 0.5 for a well-fit model). `note`, a plain sentence (over-forgetting),
    goes under the panels.
    """
    fig, axes = plt.subplots(1, len(scores), figsize=(10, 4.2 if note else 3.5), sharey=True)
    colours = {"retain": "tab:blue", "test": "tab:orange", "forget": "tab:green"}
    names = {"retain": "members (retain)", "test": "unseen (test): retrain's level"}
    every = np.concatenate([v for by_set in scores.values() for v in by_set.values()] or [[0.5]])
    low, high = float(np.min(every)), float(np.max(every))
    pad = max(0.02, 0.05 * (high - low))
    span = (max(0.0, low - pad), min(1.0, high + pad))
    for ax, (model_name, by_set) in zip(np.atleast_1d(axes), scores.items(), strict=True):
        rates = []
        for set_name, values in by_set.items():
            ax.hist(
                values,
                bins=30,
                range=span,
                alpha=0.5,
                density=True,
                label=set_name,
                color=colours.get(set_name),
            )
            if len(values):
                rate = float(np.mean(values < 0.5))
                rates.append(f"{names.get(set_name, set_name)}: {rate:.0%}")
        ax.axvline(0.5, color="black", linestyle=":", linewidth=1)
        ax.text(
            0.98,
            0.97,
            "called non-members (P < 0.5)\n" + "\n".join(rates),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8},
        )
        ax.set(title=f"MIA member probability: {model_name}", xlabel="P(member)", xlim=span)
        ax.legend(fontsize=8, loc="upper left")
    if note:
        fig.text(0.01, 0.01, fill(note, 150), fontsize=8, va="bottom", color="firebrick")
        fig.tight_layout(rect=(0, 0.14, 1, 1))
    else:
        fig.tight_layout()
    return fig


def before_after(before: Metrics, after: Metrics) -> Figure:
    """Every scalar metric of the original and the candidate as grouped bars, values printed."""
    names = [
        name
        for name, value in after.model_dump().items()
        if isinstance(value, float) and isinstance(getattr(before, name), float)
    ]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(names) + 1.4))
    for offset, label, metrics in ((-0.2, "before (original)", before), (0.2, "after", after)):
        values = [getattr(metrics, n) for n in names]
        bars = ax.barh(y + offset, values, 0.4, label=label)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2, fontsize=7)
    ax.set(yticks=y, yticklabels=names, xlim=(min(0, ax.get_xlim()[0]), 1.15))
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_title("Before / after unlearning: every metric of the gate report")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, fontsize=8)
    fig.tight_layout()
    return fig


def bias_probe(before: Metrics, after: Metrics) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = ["bias_asr", "bias_corr"]
    values_before = [getattr(before, n) or 0.0 for n in names]
    values_after = [getattr(after, n) or 0.0 for n in names]
    x = np.arange(len(names))
    ax.bar(x - 0.2, values_before, 0.4, label="before")
    ax.bar(x + 0.2, values_after, 0.4, label="after")
    ax.set(xticks=x, xticklabels=names, ylim=(0, 1.05), title="Patch shortcut probe")
    ax.legend()
    fig.tight_layout()
    return fig


def loss_curves(curve: list[dict[str, float]]) -> Figure:
    """One panel per loss term: their scales differ by orders of magnitude."""
    keys = sorted({k for row in curve for k in row if k != "epoch"}) or ["loss"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    steps = [row.get("epoch", i) for i, row in enumerate(curve)]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(steps, [row.get(key, np.nan) for row in curve], marker="o")
        ax.set(xlabel="pass", title=key)
    fig.suptitle("Unlearning loss terms per pass")
    fig.tight_layout()
    return fig


def mia_member_probabilities(
    models: dict, retain: Samples, test: Samples, forget: Samples
) -> dict[str, dict[str, np.ndarray]]:
    """Per model, the attack's member probability on retain, test and forget samples.

    Each model gets its own attack, fit as `uib.metrics.evaluate` fits it (retain vs test).
    """
    out = {}
    for name, model in models.items():
        feats = {
            part: mia_features(predict_logits(model, s.x), s.y)
            for part, s in (("retain", retain), ("test", test), ("forget", forget))
        }
        attack = MembershipAttack(feats["retain"], feats["test"])
        out[name] = {part: attack.member_probability(f) for part, f in feats.items()}
    return out


def request_figures(
    original,
    candidate,
    gates,
    report,
    retain: Samples,
    test: Samples,
    forget: Samples,
    class_names: tuple[str, ...] = (),
) -> dict[str, Figure]:
    """Every figure logged with a request's candidate, by artifact name."""
    from tasks.review_page import over_forgetting_of

    models = {"before": original, "after": candidate}
    scores = mia_member_probabilities(models, retain, test, forget)
    figures = {
        "before_after": before_after(gates.before, gates.after),
        "per_class_accuracy": per_class_accuracy(gates.before, gates.after, class_names),
        "mia_histograms": mia_histograms(scores, over_forgetting_of(gates, len(forget))),
        "loss_curves": loss_curves(report.loss_curve),
    }
    if gates.after.bias_asr is not None:
        figures["bias_probe"] = bias_probe(gates.before, gates.after)
    return figures


def gap_against_time(results, title: str) -> Figure:
    """Mean avg_gap (pp) against mean time_ratio per method, with std error bars."""
    rows = results[results["method"] != "original"].groupby("method", sort=False)
    stats = rows[["avg_gap", "time_ratio"]].agg(["mean", "std"]).fillna(0.0)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, row in stats.iterrows():
        ax.errorbar(
            row[("time_ratio", "mean")],
            row[("avg_gap", "mean")],
            xerr=row[("time_ratio", "std")],
            yerr=row[("avg_gap", "std")],
            fmt="o",
            capsize=3,
            color="crimson" if method.startswith("uib") else "steelblue",
        )
        ax.annotate(
            method,
            (row[("time_ratio", "mean")], row[("avg_gap", "mean")]),
            fontsize=8,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set(
        xscale="log",
        xlabel="time_ratio (method / retrain, log scale)",
        ylabel="avg_gap to retrain (pp)",
        title=f"Closeness to retrain against cost: {title}",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
