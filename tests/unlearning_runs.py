"""Retrain and UIB from one original, as the model tests compare them."""

from __future__ import annotations

import uib


def retrain_and_uib(original, forget, retain, recipe, validation, seed: int) -> dict:
    """{method: (model, report)} for `retrain` and `uib`, each from `original` on CPU."""
    return {
        method: uib.unlearn(
            original,
            forget,
            retain,
            method,
            train_config=recipe,
            validation=validation,
            seed=seed,
            progress=False,
        )
        for method in ("retrain", "uib")
    }
