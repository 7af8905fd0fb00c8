"""The dynamic prior and the UIB loss, as UIB-METHOD.md writes them."""

import numpy as np
import torch
from torch.distributions import Normal, kl_divergence

import uib
from uib.curvature import GradientStats
from uib.models import build_model
from uib.objective import gaussian_kl
from uib.prior import LayerPrior, build_prior, reset_slice_entries
from uib.samples import Samples


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m, mu = torch.randn(50, generator=g), torch.randn(50, generator=g)
    precision = torch.rand(50, generator=g) * 10 + 0.1
    for sigma in (1e-3, 0.5, torch.rand(50, generator=g) + 0.1):
        expected = kl_divergence(
            Normal(m, torch.as_tensor(sigma).expand(50)), Normal(mu, precision.rsqrt())
        ).sum()
        torch.testing.assert_close(
            gaussian_kl(m, sigma, mu, precision), expected, rtol=1e-5, atol=1e-5
        )


def test_prior_is_the_damped_if_step_with_shift_aware_precision():
    theta0 = {"w": torch.tensor([1.0, -1.0, 0.5, 2.0])}
    f_r = torch.tensor([1.0, 2.0, 0.5, 4.0])
    f_f = torch.tensor([4.0, 0.0, 1.0, 4.0])
    g_f = torch.tensor([2.0, -1.0, 0.0, 8.0])
    retain = GradientStats({"w": f_r}, {"w": torch.zeros(4)}, 100)
    forget = GradientStats({"w": f_f}, {"w": g_f}, 10)
    prior = build_prior(theta0, retain, forget, n_retain=100, eta=0.5, alpha=2.0, lam_scale=0.1)[
        "w"
    ]
    lam = 0.1 * f_r.mean()
    torch.testing.assert_close(prior.mean, theta0["w"] + 0.5 * g_f / (100 * (f_r + lam)))
    s = (f_f / (f_r + lam)) / (f_f / (f_r + lam)).mean()
    torch.testing.assert_close(prior.signal, s)
    assert abs(float(prior.signal.mean()) - 1.0) < 1e-6
    torch.testing.assert_close(prior.precision, 100 * (f_r + lam) * (1 + 2.0 * s))
    released = build_prior(theta0, retain, forget, 100, 0.5, 2.0, 0.1, shift_rule="release")["w"]
    torch.testing.assert_close(released.precision, 100 * (f_r + lam) / (1 + 2.0 * s))
    # `release` frees the entry the forget slice leans on hardest; `hold` pins it hardest
    leaned_on = int((f_f / (f_r + lam)).argmax())
    assert int(released.precision.argmin()) == leaned_on
    assert int((prior.precision / (f_r + lam)).argmax()) == leaned_on


def test_entries_only_the_slice_uses_are_reset_to_zero_in_the_model_and_the_prior():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        model.bias.copy_(torch.tensor([5.0, 6.0]))
    prior = {
        name: LayerPrior(
            mean=p.detach().clone() + 0.5, precision=torch.ones_like(p), signal=torch.ones_like(p)
        )
        for name, p in model.named_parameters()
    }
    prior["weight"].signal = torch.tensor([[0.1, 40.0], [0.9, 31.0]])
    assert reset_slice_entries(model, prior, None) == 0.0
    assert float(model.weight.detach()[0, 1]) == 2.0
    assert reset_slice_entries(model, prior, 30.0) == 2 / 6
    torch.testing.assert_close(model.weight.data, torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(prior["weight"].mean, torch.tensor([[1.5, 0.0], [3.5, 0.0]]))
    torch.testing.assert_close(model.bias.data, torch.tensor([5.0, 6.0]))
    torch.testing.assert_close(prior["bias"].mean, torch.tensor([5.5, 6.5]))


def toy_request(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((240, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 240)
    ids = np.array([f"s-{i}" for i in range(240)])
    data = Samples(x, y, ids)
    return data.split_off(ids[:24])


def test_uib_with_alpha_zero_and_huge_beta_stays_at_the_if_step():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    retain, forget = toy_request()
    common = {"eta": 0.05, "alpha": 0.0, "sigma": 0.0, "lr": 1e-3, "passes": 3, "batch_size": 32}
    if_model, _ = uib.unlearn(model, forget, retain, "influence", {"eta": 0.05}, progress=False)
    held, _ = uib.unlearn(model, forget, retain, "uib", {**common, "beta": 1e12}, progress=False)
    free, _ = uib.unlearn(model, forget, retain, "uib", {**common, "beta": 0.0}, progress=False)

    def distance(a, b):
        return max(
            float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True)
        )

    # Adam moves every entry by about lr per step whatever the gradient's size, so "equal" is
    # within a couple of steps' worth; without the pull the passes walk much further.
    assert distance(held, if_model) < 3e-3
    assert distance(free, if_model) > 5 * distance(held, if_model)
    assert distance(if_model, model) > 1e-2
