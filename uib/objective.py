"""The UIB loss: retain cross-entropy under q(θ) + (β / n_r) Σ_l KL(q^(l) ‖ p^(l)) + Σ_l R^(l)."""

from __future__ import annotations

import torch

from uib.prior import LayerPrior


def gaussian_kl(
    mean_q: torch.Tensor,
    sigma_q: float | torch.Tensor,
    mean_p: torch.Tensor,
    precision_p: torch.Tensor,
) -> torch.Tensor:
    """Σ KL( N(mean_q, σ_q²) ‖ N(mean_p, 1/precision_p) ), elementwise diagonal Gaussians."""
    var_q = torch.as_tensor(sigma_q, dtype=mean_q.dtype, device=mean_q.device) ** 2
    var_q = var_q.expand_as(mean_q)
    return (
        0.5
        * (
            precision_p * var_q
            + precision_p * (mean_q - mean_p) ** 2
            - 1.0
            - torch.log(precision_p * var_q)
        ).sum()
    )


def prior_kl(
    params: dict[str, torch.Tensor], prior: dict[str, LayerPrior], sigma: float
) -> torch.Tensor:
    """Σ over blocks of KL(q ‖ p), q = N(m, σ²) with m the current parameters."""
    return sum(gaussian_kl(params[k], sigma, p.mean, p.precision) for k, p in prior.items())


def prior_pull(params: dict[str, torch.Tensor], prior: dict[str, LayerPrior]) -> torch.Tensor:
    """½ Σ Λ (m − μ)²: the part of Σ KL(q ‖ p) that depends on m (σ fixed), cheap per step."""
    return 0.5 * sum((p.precision * (params[k] - p.mean) ** 2).sum() for k, p in prior.items())
