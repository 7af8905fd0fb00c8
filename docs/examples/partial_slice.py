"""Issue 11: UIB on part of a systematic source (digits / patch-bias, library level, no servers).

For each digit L, the request `--where source=faulty --where original_label=L` (one digit's part
of the faulty source), and a few pairs of digits: UIB as the unlearn flow runs it (the method's
default config, the held-out half of the test split as validation) and `retrain` on the retain
set, both held to the pipeline's gates (`tasks.evaluation.evaluate_candidate`, the flow's
arguments) and to the benchmark's metrics (avg_gap and slice_gap against retrain, slice_acc,
redirect_asr, MIA).

    .venv/bin/python docs/examples/partial_slice.py --seeds 0 --labels 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import uib
from tasks.evaluation import evaluate_candidate
from tasks.settings import GateConfig
from uib.data import load_dataset
from uib.metrics import avg_gap, evaluate, slice_gap
from uib.models import build_model, default_arch
from uib.samples import split_validation
from uib.scenarios import ScenarioConfig, build_scenario, select_forget
from uib.train import TrainConfig, predict_logits, train_model


def original_for(seed: int):
    dataset = load_dataset("digits")
    scenario = build_scenario(dataset, ScenarioConfig(seed=seed))
    recipe = TrainConfig.for_dataset("digits", seed=seed)
    torch.manual_seed(recipe.seed)
    data = scenario.dataset
    model = build_model(default_arch(data.image_shape), data.image_shape, data.num_classes)
    train_model(model, data.train, recipe, progress=False)
    return scenario, recipe, model.cpu().eval()


def run_request(
    scenario, recipe, original, labels: list[int], seed: int, config: dict | None = None
) -> dict:
    data = scenario.dataset
    ids = np.concatenate(
        [
            select_forget(data.manifest, where={"source": "faulty", "original_label": label})
            for label in labels
        ]
    )
    forget = data.train.take(np.isin(data.train.ids, ids))
    retain = data.train.drop(forget.ids)
    validation, test = split_validation(data.test)
    # the flow's patch_bias flag: every patched training sample forgotten
    patched = data.manifest.loc[
        (data.manifest["split"] == "train") & data.manifest["patched"].astype(bool), "sample_id"
    ]
    patch_bias = set(patched.astype(str)) <= set(forget.ids)
    row = {"labels": labels, "n": len(forget)}
    metrics, models = {}, {}
    for method in ("retrain", "uib"):
        start = time.perf_counter()
        models[method], report = uib.unlearn(
            original,
            forget,
            retain,
            method,
            config if method == "uib" else {},
            train_config=recipe,
            validation=validation,
            seed=seed,
            progress=False,
        )
        row[f"{method}_s"] = time.perf_counter() - start
        gates = evaluate_candidate.fn(
            original,
            models[method],
            retain,
            forget,
            test,
            scenario.config,
            GateConfig(),
            patch_bias,
        )
        row[f"{method}_failed"] = [g.name for g in gates.gates if not g.passed]
        row[f"{method}_gates"] = {g.name: round(float(g.value), 3) for g in gates.gates}
        metrics[method] = evaluate(models[method], retain, forget, test, scenario.config)
        if method == "uib":
            notes = report.notes
            row["regime"] = notes.get("regime", {}).get("kind")
            row["siblings"] = notes.get("regime", {}).get("siblings")
            row["eta"] = notes.get("eta")
            row["eta_rule"] = notes.get("eta_rule")
            row["passes"] = notes.get("passes_run")
    gates = evaluate_candidate.fn(
        original, original, retain, forget, test, scenario.config, GateConfig(), patch_bias
    )
    row["original_failed"] = [g.name for g in gates.gates if not g.passed]
    ref = metrics["retrain"].model_dump()
    row["original"] = evaluate(original, retain, forget, test, scenario.config)
    for method, m in metrics.items():
        row[method] = m
    row["avg_gap"] = avg_gap(metrics["uib"].model_dump(), ref)
    row["slice_gap"] = slice_gap(metrics["uib"].model_dump(), ref)
    preds = {m: predict_logits(models[m], forget.x).argmax(1).numpy() for m in models}
    preds["original"] = predict_logits(original, forget.x).argmax(1).numpy()
    row["forget_pred"] = {m: np.bincount(p, minlength=10).tolist() for m, p in preds.items()}
    row["agreement"] = float(np.mean(preds["uib"] == preds["retrain"]))
    return row


def show(row: dict) -> None:
    o, r, u = row["original"], row["retrain"], row["uib"]
    print(
        f"L={row['labels']} n={row['n']} regime={row['regime']} eta={row['eta']} "
        f"siblings={row['siblings'] if row['siblings'] is None else round(row['siblings'])} "
        f"passes={row['passes']} | {row['eta_rule']}"
    )
    for name, m in (("original", o), ("retrain", r), ("uib", u)):
        print(
            f"  {name:8s} UA={m.UA:.3f} RA={m.RA:.4f} TA={m.TA:.4f} MIA={m.mia_efficacy:.3f} "
            f"(test {m.mia_test_level:.3f}) rank={m.forget_loss_rank:.3f} "
            f"slice={m.slice_acc:.3f} redir={m.redirect_asr:.3f} asr={m.bias_asr:.3f} "
            f"pred={row['forget_pred'][name]}"
        )
    print(f"  original (as a candidate) failed: {row['original_failed']}")
    for method in ("retrain", "uib"):
        print(f"  {method} failed: {row[f'{method}_failed']}  {row[f'{method}_gates']}")
    print(
        f"  avg_gap={row['avg_gap']:.2f} pp slice_gap={row['slice_gap']:.2f} pp "
        f"agree={row['agreement']:.2f} time uib {row['uib_s']:.1f}s retrain {row['retrain_s']:.1f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--labels", type=int, nargs="+", default=list(range(1, 10)))
    parser.add_argument("--config", default="{}", help="UIB's method config, as JSON")
    parser.add_argument("--whole", action="store_true", help="also the whole faulty source")
    parser.add_argument("--pairs", action="store_true", help="also {1,2}, {3,4}, {5,6}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in args.seeds:
        scenario, recipe, original = original_for(seed)
        requests = [[label] for label in args.labels]
        if args.pairs:
            requests += [[1, 2], [3, 4], [5, 6]]
        if args.whole:
            requests.append(list(range(1, 10)))
        for labels in requests:
            show(run_request(scenario, recipe, original, labels, seed, json.loads(args.config)))


if __name__ == "__main__":
    main()
