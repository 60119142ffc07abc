"""Guidance-free training (GFT, Chen et al. 2025): the loss's minimiser is CFG at w, checkpoints and resume."""

import torch
from torch import nn

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.guidance.base import combine_cfg
from cfgdiff.training import GuidanceFreeLoss, GuidanceFreeRangeError, default_config, load_guidance_free, train
from cfgdiff.training.losses import Batch, beta_of_w, gft_conditional, w_of_beta

TINY_MLP = {"arch": "mlp", "hidden": 32, "depth": 1, "emb_dim": 32}


class ExactGuided(nn.Module):
    """The exact GFT optimum on the mixture, (1 + w) ε*(z, c) - w ε*(z), plus δ (ε*(z, c) - ε*(z)).

    ``guided=False`` ignores w (the plain conditional ε*, the optimum of Algorithm 1, not of GFT)."""

    def __init__(self, gm: GaussianMixture, guided: bool = True) -> None:
        super().__init__()
        self.gm, self.guided = gm, guided
        self.delta = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, z, logsnr, labels, w):
        eps_c = self.gm.eps(z.double(), logsnr.double(), labels)
        eps_u = self.gm.eps(z.double(), logsnr.double(), torch.full_like(labels, self.gm.num_classes))
        w = torch.as_tensor(w, dtype=torch.float64).reshape(-1, 1)
        eps = combine_cfg(eps_c, eps_u, w) if self.guided else eps_c
        return eps + self.delta * (eps_c - eps_u)


def test_beta_w_round_trip_and_implicit_conditional_is_exact():
    w = torch.tensor([0.0, 0.5, 1.0, 3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(w_of_beta(beta_of_w(w)), w)
    gm = GaussianMixture.three_gaussians()
    z, logsnr, labels = torch.randn(5, 2, dtype=torch.float64), torch.linspace(-4, 4, 5), torch.tensor([0, 1, 2, 0, 1])
    eps_c, eps_u = gm.eps(z, logsnr, labels), gm.eps(z, logsnr, torch.full_like(labels, 3))
    # the sampling model at CFG's ε̃_w makes GFT's implicit conditional β ε̃_w + (1 - β) ε_u the exact ε_c
    implicit = gft_conditional(eps_sampling=combine_cfg(eps_c, eps_u, w[:, None]), eps_uncond=eps_u, beta=beta_of_w(w))
    torch.testing.assert_close(implicit, eps_c)


def _loss_slopes(model, gm, *, batches=40, n=2000):
    """d loss/dδ at δ = 0 on independent batches: its mean and standard error."""
    loss_fn = GuidanceFreeLoss(num_classes=3, p_uncond=0.1, w_max=4.0)
    slopes = []
    for b in range(batches):
        g = torch.Generator().manual_seed(b)
        labels = gm.sample_labels(n, g)
        x = gm.sample(labels, g).float()
        model.zero_grad()
        loss_fn(model, Batch(x=x, labels=labels), g).backward()
        slopes.append(float(model.delta.grad))
    t = torch.tensor(slopes)
    return float(t.mean()), float(t.std() / len(slopes) ** 0.5)


def test_exact_guided_eps_is_a_stationary_point_of_the_gft_loss():
    # E[ε | z, c] = ε*(z, c): at the exact guided eps the implicit conditional's residual has mean 0 given
    # (z, c, β), so the loss's slope in any direction vanishes in expectation; the conditional eps (w ignored)
    # leaves the bias (1 - β)(ε_u - ε_c), a slope of -2 E[β (1 - β) |ε_c - ε_u|²]/D < 0 along ε_c - ε_u.
    gm = GaussianMixture.three_gaussians()
    mean, se = _loss_slopes(ExactGuided(gm), gm)
    assert abs(mean) < 4 * se, (mean, se)
    mean_wrong, se_wrong = _loss_slopes(ExactGuided(gm, guided=False), gm)
    assert mean_wrong < -8 * se_wrong, (mean_wrong, se_wrong)


def test_gft_checkpoint_round_trip_resume_and_w_range(tmp_path):
    # a flat learning rate and a fixed warm-up do not depend on the total: a larger total on resume continues the run
    config = dict(steps=40, batch_size=64, checkpoint_every=10, log_every=10, model=TINY_MLP, objective="gft",
                  gft_w_max=3.0, lr_schedule="constant", warmup_steps=4)
    straight = train(default_config("gmm2d", **config), tmp_path / "straight")
    train(default_config("gmm2d", **{**config, "steps": 25}), tmp_path / "resumed")
    resumed = train(default_config("gmm2d", **config), tmp_path / "resumed", resume=True)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    model = load_guidance_free(tmp_path / "resumed")
    for name, value in resumed.ema.state_dict().items():
        torch.testing.assert_close(model.network.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert model.w_max == 3.0 and model.record() == {"objective": "gft", "w_range": [0.0, 3.0]}
    z, logsnr, labels = torch.randn(4, 2), torch.linspace(-3, 3, 4), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():  # at(w) is the network at w, one call of B rows
        torch.testing.assert_close(model.at(2.0)(z, logsnr, labels), resumed.ema(z, logsnr, labels, 2.0))
    try:
        model.at(3.5)
    except GuidanceFreeRangeError as err:
        assert "[0, 3]" in str(err)
    else:
        raise AssertionError("w outside the trained range was accepted")
