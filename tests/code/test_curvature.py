"""The maths UIB stands on: per-sample gradients, diagonal Fisher, the IF step, the KL."""

import torch
import torch.nn.functional as F
from torch import nn

from uib.curvature import (
    gradient_stats,
    newton_removal_step,
    per_sample_grads,
    per_sample_grads_loop,
)
from uib.models import build_model


def tiny_batch(shape, n=12, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g)


def test_vmap_per_sample_grads_equal_an_autograd_loop_on_mlp_and_cnn():
    for arch, shape in (("mlp", (1, 8, 8)), ("cnn", (1, 12, 12))):
        torch.manual_seed(0)
        model = build_model(arch, shape, 10)
        x, y = tiny_batch(shape)
        chunks = list(per_sample_grads(model, x, y, chunk_size=5))
        assert len(chunks) == 3
        fast = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
        slow = per_sample_grads_loop(model, x, y)
        for name in slow:
            torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-6)


def test_diagonal_fisher_and_gradient_sum_match_single_sample_autograd():
    torch.manual_seed(1)
    model = build_model("mlp", (1, 8, 8), 10)
    x, y = tiny_batch((1, 8, 8), n=9, seed=1)
    stats = gradient_stats(model, x, y, chunk_size=4)
    for name, p in model.named_parameters():
        squares, total = torch.zeros_like(p), torch.zeros_like(p)
        for i in range(len(y)):
            (g,) = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), [p])
            squares += g**2
            total += g
        torch.testing.assert_close(stats.fisher[name], squares / len(y), rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(stats.grad_sum[name], total, rtol=1e-4, atol=1e-6)
    assert stats.n == 9


class LogReg(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.linear = nn.Linear(d, 2)

    def forward(self, x):
        return self.linear(x)


def fit_logreg(x, y, l2, init=None):
    model = LogReg(x.shape[1])
    if init is not None:
        model.load_state_dict(init.state_dict())
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, reduction="sum")
        loss = loss + 0.5 * l2 * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_if_step_on_l2_logistic_regression_is_the_newton_step_and_lands_near_retrain():
    torch.set_default_dtype(torch.float64)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(400, 5, generator=g)
        y = (
            x @ torch.tensor([1.5, -2.0, 0.5, 0.0, 1.0]) + 0.3 * torch.randn(400, generator=g) > 0
        ).long()
        l2 = 1.0
        forget_rows = torch.arange(0, 400, 20)
        keep = torch.ones(400, dtype=torch.bool)
        keep[forget_rows] = False
        original = fit_logreg(x, y, l2)
        forget = gradient_stats(original, x[forget_rows], y[forget_rows])
        step = newton_removal_step(original, x[keep], y[keep], forget, l2=l2)
        removed = flat(original) + torch.cat([s.flatten() for s in step.values()])

        # the same Newton step written out by hand: H_r = Σ_r ∇²ℓ + l2·I, ∇L_r(θ0) = -g_f
        theta0 = flat(original).requires_grad_(True)

        def retain_objective(theta):
            w, b = theta[:10].view(2, 5), theta[10:]
            return (
                F.cross_entropy(x[keep] @ w.T + b, y[keep], reduction="sum")
                + 0.5 * l2 * theta.pow(2).sum()
            )

        grad_r = torch.autograd.grad(retain_objective(theta0), theta0)[0]
        hessian = torch.autograd.functional.hessian(retain_objective, theta0.detach())
        by_hand = theta0.detach() - torch.linalg.solve(hessian, grad_r)
        torch.testing.assert_close(removed, by_hand, rtol=1e-6, atol=1e-8)

        retrained = flat(fit_logreg(x[keep], y[keep], l2, init=original))
        # one Newton step closes over 90 % of the distance to the retrained optimum
        assert (removed - retrained).norm() < 0.1 * (flat(original) - retrained).norm()
    finally:
        torch.set_default_dtype(torch.float32)


def test_summed_gradient_equals_the_sum_of_per_sample_gradients():
    from uib.curvature import summed_gradient

    torch.manual_seed(2)
    model = build_model("cnn", (1, 12, 12), 10)
    x, y = tiny_batch((1, 12, 12), n=11, seed=2)
    batched = summed_gradient(model, x, y, batch_size=4)
    stats = gradient_stats(model, x, y, chunk_size=3)
    for name in batched:
        torch.testing.assert_close(batched[name], stats.grad_sum[name], rtol=1e-4, atol=1e-5)


def assert_same_statistics(model: nn.Module, factored, by_vmap) -> None:
    for name, _ in model.named_parameters():
        for part in ("fisher", "grad_sum", "weighted_fisher"):
            expected = getattr(by_vmap, part)[name]
            torch.testing.assert_close(
                getattr(factored, part)[name],
                expected,
                rtol=1e-4,
                atol=1e-5 * float(expected.abs().max()),
            )


def test_the_factored_path_gives_the_vmap_statistics_weighted_and_unweighted():
    for arch, shape in (("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("cnn", (1, 16, 16))):
        torch.manual_seed(3)
        model = build_model(arch, shape, 10)
        x, y = tiny_batch(shape, n=23, seed=3)
        weights = torch.rand(23, generator=torch.Generator().manual_seed(4))
        by_vmap = gradient_stats(model, x, y, 5, weights, path="vmap")
        factored = gradient_stats(model, x, y, 7, weights, path="factored")
        assert factored.n == by_vmap.n == 23
        assert_same_statistics(model, factored, by_vmap)


def test_batchnorm_layers_take_the_factored_path_with_the_vmap_statistics():
    """In eval mode a BatchNorm's per-sample gradients are Σ g·x̂ and Σ g over positions (x̂ by
    the running statistics): ResNet-18, all Conv2d, BatchNorm and Linear, is factored whole."""
    from uib.curvature import factored_layers

    assert factored_layers(build_model("resnet18", (3, 32, 32), 10)) is not None
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 36, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )
    model.train()
    for _ in range(3):
        model(torch.randn(16, 1, 6, 6) * 2 + 1)  # running statistics away from 0 and 1
    for norm in (model[1], model[5]):
        torch.nn.init.normal_(norm.weight, 1.0, 0.3)
        torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    x, y = torch.randn(13, 1, 6, 6), torch.randint(0, 3, (13,))
    weights = torch.rand(13, generator=torch.Generator().manual_seed(6))
    by_vmap = gradient_stats(model, x, y, 4, weights, path="vmap")
    factored = gradient_stats(model, x, y, 5, weights, path="factored")
    assert_same_statistics(model, factored, by_vmap)


def test_convolutions_with_few_positions_sum_squares_over_position_pairs_to_the_same_fisher():
    """Convolutions with at most `PAIRED_POSITIONS` output positions (a ResNet's last stages on
    small images) never form their per-sample gradients; those with more do. Both give vmap's."""
    from uib.curvature import PAIRED_POSITIONS, factored_chunks, factored_layers

    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),  # 6×6: 36 positions, formed
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=3),  # 2×2: 4 positions, paired
        nn.ReLU(),
        nn.Conv2d(4, 5, 2),  # 1×1: 1 position, paired
        nn.Flatten(),
        nn.Linear(5, 3),
    )
    x, y = torch.randn(11, 2, 6, 6), torch.randint(0, 3, (11,))
    chunk = next(factored_chunks(model, factored_layers(model), x, y, chunk_size=11))
    assert PAIRED_POSITIONS >= 4
    assert chunk["0.weight"][1] is None
    assert [tuple(chunk[k][0].shape) for k in ("2.weight", "4.weight")] == [(11, 4, 4), (11, 1, 5)]
    weights = torch.rand(11, generator=torch.Generator().manual_seed(8))
    by_vmap = gradient_stats(model, x, y, 4, weights, path="vmap")
    factored = gradient_stats(model, x, y, 5, weights, path="factored")
    assert_same_statistics(model, factored, by_vmap)


def test_models_the_factored_path_cannot_take_go_through_vmap():
    import pytest

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    x, y = torch.rand(10, 1, 4, 4), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="a Linear, a Conv2d"):
        gradient_stats(model, x, y, path="factored")
    auto = gradient_stats(model, x, y, chunk_size=4)
    slow = per_sample_grads_loop(model, x, y)
    for name, grads in slow.items():
        torch.testing.assert_close(auto.fisher[name], grads.pow(2).mean(0), rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="path must be"):
        gradient_stats(model, x, y, path="hessian")


def test_the_label_margin_target_takes_from_the_label_gives_to_no_class_and_weighs_rows_alike():
    """In the logits, label margin's gradient is u − e_y (u uniform over the other classes) for
    every row, however well fitted; cross-entropy's is p − e_y, which favours the runner-ups
    and fades on fitted rows."""
    from uib.methods.if_step import label_margin_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 5) * 4
    logits[0, 0] = 40.0  # a row fitted to p_y ≈ 1
    logits.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    (grad,) = torch.autograd.grad(label_margin_loss(logits, y), logits)
    expected = torch.full((6, 5), 0.25).scatter(1, y[:, None], -1.0)
    assert torch.allclose(grad, expected, atol=1e-6)
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)
    assert float(ce_grad[0].abs().max()) < 1e-6 < float(grad[0].abs().max())
    assert not torch.allclose(
        ce_grad[1:].scatter(1, y[1:, None], 0.0), grad[1:].scatter(1, y[1:, None], 0.0)
    )
