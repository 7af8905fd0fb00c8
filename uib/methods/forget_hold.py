"""The hold on the forget set during UIB's passes (`forget_hold`): the step decides how much
is forgotten, the passes only win back what it cost everything else.

The passes train on retained rows to repair what the IF step damaged. Without a hold they also
repair the forgotten slice wherever it is read through features the retained data shares.
Measured on MNIST / fog (seed 1), the step alone left the fogged forget rows at retrain's
accuracy (UA 0.49 against retrain's 0.53) at a cost of 13 pp of test accuracy; eight passes
restored the test accuracy *and* the fog (UA 0.24, avg_gap 12.2 pp). Held, they restore the
first and not the second (UA 0.50, avg_gap 2.7 pp; seeds 1–3: mean avg_gap 17.0 → 4.1 pp).

It is only as right as the step, so UIB holds only the slices `UIBConfig.hold_rule` admits. On
MNIST / impulse noise the knee's step overshoots (retrain still reads 83–86 % of the noisy
digits; the step reads 9–15 % of them), and held there the result is far worse than the
passes' win-back: avg_gap 8.4 → 34.5 and 3.2 → 35.3 pp on seeds 2 and 3; glass blur (never
tuned on) likewise, 5.6 → 42.2 pp on seed 1. What tells a fog from these without a retrained
model is how often the slice's rows look like their labels to their nearest retained rows
against how often held-out rows do (`uib.methods.uib.slice_agreement`): 0.66–0.73 of held-out
rows' agreement for fog, 0.89–1.03 for impulse noise, glass blur, shot noise and spatter.

The hold is `weight` · (mean p(y | x) over a forget batch − the same rows' mean at the step)²,
the forward pass in eval mode. Against what else was tried:
- **The batch mean, not each row.** Rows may trade confidence: a patched digit can be read as
  its own digit again after the step misread it. Held row by row, the step's misreadings stayed
  (MNIST patch-bias slice_gap 2.8 → 8.8 pp).
- **Both ways.** Held against regain only, the passes pushed the fog further than the step had
  (UA 0.75 against retrain's 0.53).
- **No allowance for the step's collateral damage.** Letting the forget rows regain what
  held-out rows of their labels regained since the step (as a difference, or as a ratio) let
  them regain the fog as well (UA 0.18–0.33).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from uib.methods.base import UnlearnContext
from uib.methods.if_step import EVAL_BATCH
from uib.models import set_training


def label_confidence(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """p(y | x) per row, with its graph, the model in eval mode: BatchNorm on its running
    statistics, so that no forgotten row enters them even when the passes re-estimate them
    (`batchnorm="train"`)."""
    was = set_training(model, False)
    probs = model(x).float().softmax(1)
    set_training(model, was)
    return probs.gather(1, y[:, None]).squeeze(1)


@dataclass(frozen=True)
class ForgetHold:
    weight: float
    at_step: torch.Tensor

    @classmethod
    @torch.no_grad()
    def after_step(cls, model: nn.Module, ctx: UnlearnContext, weight: float) -> ForgetHold | None:
        """Each forget row's confidence in its label with `model` at the step."""
        if weight == 0 or ctx.n_forget == 0:
            return None
        at_step = [
            label_confidence(
                model, ctx.forget_x[i : i + EVAL_BATCH], ctx.forget_y[i : i + EVAL_BATCH]
            )
            for i in range(0, ctx.n_forget, EVAL_BATCH)
        ]
        return cls(weight, torch.cat(at_step))

    def term(
        self, model: nn.Module, xf: torch.Tensor, yf: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """The hold on one forget batch, `rows` of the forget set."""
        return (
            self.weight * (label_confidence(model, xf, yf).mean() - self.at_step[rows].mean()) ** 2
        )
