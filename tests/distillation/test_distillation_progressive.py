"""Progressive distillation (stage 2, Salimans & Ho 2022): the target x̃, the nested grids, the noise-end
parameterisation, and one halving of the exact mixture's guided DDIM sampler through the Trainer."""

import pytest
import torch

from cfgdiff.core.diffusion import diffuse
from cfgdiff.core.schedule import alpha_sigma, logsnr_grid
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.data import load_dataset
from cfgdiff.distillation import (
    ProgressiveDistillationLoss,
    Student,
    WRange,
    check_halving,
    ddim_step,
    guided_teacher,
    target_x,
    teacher_two_steps,
)
from cfgdiff.distillation.progressive import NOISE_END_LOGSNR
from cfgdiff.distillation.student import output_to_eps
from cfgdiff.guidance import cfg
from cfgdiff.models import MLPDenoiser
from cfgdiff.sampling.solvers import sample_ddim
from cfgdiff.training import LoopConfig, Trainer


def test_target_x_makes_one_ddim_step_land_on_the_two_step_result():
    """x̃ = (z_c - (σ_c/σ_a) z_a)/(α_c - (σ_c/σ_a) α_a) is defined so that a DDIM step from z_a with x̂ = x̃
    (and ε̂ = (z_a - α_a x̃)/σ_a) lands on z_c: check the round trip for random z_a, z_c and λ_a < λ_c."""
    g = torch.Generator().manual_seed(0)
    z_a, z_c = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    logsnr_a = torch.linspace(-15.0, 5.0, 8, dtype=torch.float64)
    logsnr_c = logsnr_a + torch.linspace(0.5, 6.0, 8, dtype=torch.float64)
    x_tilde = target_x(z_a, z_c, logsnr_a=logsnr_a, logsnr_c=logsnr_c)
    alpha_a, sigma_a = alpha_sigma(logsnr_a)

    def one_step_eps(z, logsnr, labels, w):  # the ε whose x̂ is x̃
        return (z - alpha_a[:, None] * x_tilde) / sigma_a[:, None]

    labels, w = torch.zeros(8, dtype=torch.long), torch.zeros(8)
    landed = ddim_step(one_step_eps, z_a, labels, w, logsnr=logsnr_a, logsnr_next=logsnr_c)
    torch.testing.assert_close(landed, z_c, rtol=1e-9, atol=1e-9)
    # on the last step the sampler returns x̂, so the target is the teacher's x̂ itself
    last = torch.tensor([True] * 4 + [False] * 4)
    mixed = target_x(z_a, z_c, logsnr_a=logsnr_a, logsnr_c=logsnr_c, last=last)
    assert torch.equal(mixed[:4], z_c[:4]) and torch.equal(mixed[4:], x_tilde[4:])


def test_the_halved_cosine_grid_is_every_other_point_of_the_teachers():
    for steps in (2, 4, 8, 32, 64):
        assert torch.equal(logsnr_grid(2 * steps)[::2], logsnr_grid(steps))
        assert int((logsnr_grid(steps) < NOISE_END_LOGSNR).sum()) == 1  # only λ_min is at the noise end
    assert check_halving(64) == 32
    for bad in (0, 1, 7):
        with pytest.raises(ValueError, match="even number"):
            check_halving(bad)


def test_noise_end_output_is_read_as_z_minus_x():
    """Below λ_v the output o means x̂ = z - o: the sampler's x̂ = (z - σ ε̂)/α must give back z - o; above it,
    ε̂ = o."""
    z = torch.randn(4, 2, dtype=torch.float64)
    o = torch.randn(4, 2, dtype=torch.float64)
    logsnr = torch.tensor([-20.0, -12.0, -8.0, 3.0], dtype=torch.float64)
    eps = output_to_eps(o, z, logsnr, NOISE_END_LOGSNR)
    alpha, sigma = alpha_sigma(logsnr)
    x = (z - sigma[:, None] * eps) / alpha[:, None]
    torch.testing.assert_close(x[:2], z[:2] - o[:2], rtol=1e-6, atol=1e-6)
    assert torch.equal(eps[2:], o[2:])
    assert torch.equal(output_to_eps(o, z, logsnr, None), o)


@pytest.fixture(scope="module")
def halving():
    """One progressive stage on the exact mixture: the guided DDIM sampler of 4 steps (CFG of the exact scores,
    a w-conditioned teacher) distilled into a 2-step w-conditioned MLP student through the Trainer."""
    gm = GaussianMixture.three_gaussians()
    w_range = WRange(0.0, 4.0)
    teacher = guided_teacher(gm)
    loop = LoopConfig(steps=800, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99, seed=0)
    loss = ProgressiveDistillationLoss(teacher, w_range, student_steps=2, x_bound=2.0)
    trainer = Trainer(lambda: MLPDenoiser(2, 3, hidden=64, depth=2, emb_dim=64, w_embedding=True), loss,
                      load_dataset("gmm2d"), loop)
    while trainer.step < loop.steps:
        trainer.train_step()
    student = Student(trainer.ema.eval(), w_range, {"noise_end_logsnr": NOISE_END_LOGSNR})
    return gm, teacher, student


def test_one_student_step_matches_two_teacher_steps_better_than_one_teacher_step(halving):
    """Derivation: DDIM is first order, so one teacher step over [λ_{2j}, λ_{2j+2}] misses the two-step result by
    the discretisation error of the coarse step (large where the guided ODE bends: the last step, and at high w).
    The loss is minimised exactly by the two-step map, so the student is off only by its fit error, which must be
    well below that discretisation error: less than half of it on the last step at every w."""
    gm, teacher, student = halving
    grid = logsnr_grid(4)
    n = 600
    labels = torch.arange(n) % 3
    x = gm.sample(labels, torch.Generator().manual_seed(1)).float()
    la, lb, lc = (torch.full((n,), float(grid[k]), dtype=torch.float64) for k in (2, 3, 4))
    z_a = diffuse(x=x, eps=torch.randn(x.shape, generator=torch.Generator().manual_seed(2)), logsnr=la)
    for w in (0.0, 2.0, 4.0):
        wt = torch.full((n,), w)
        two = teacher_two_steps(teacher, z_a, labels, wt, logsnr_a=la, logsnr_b=lb, logsnr_c=lc, last=True,
                                x_bound=2.0)
        one = ddim_step(teacher, z_a, labels, wt, logsnr=la, logsnr_next=lc, last=True, x_bound=2.0)
        with torch.no_grad():
            distilled = ddim_step(student.w_eps_fn(), z_a, labels, wt, logsnr=la, logsnr_next=lc, last=True,
                                  x_bound=2.0)
        err_teacher = float((one - two).norm(dim=1).mean())
        err_student = float((distilled - two).norm(dim=1).mean())
        assert err_student < 0.5 * err_teacher, (w, err_student, err_teacher)


def test_the_two_step_student_samples_like_the_four_step_teacher(halving):
    """Whole trajectories from the same noise: the student's 2 DDIM steps land closer to the teacher's 4 steps
    than the teacher's own 2 steps do (less than half as far), at every w; one network row per step."""
    gm, _, student = halving
    n = 600
    labels = torch.arange(n) % 3
    for w in (0.0, 2.0, 4.0):
        def draw(eps_fn, steps):
            return sample_ddim(eps_fn, (n, 2), labels, steps=steps, generator=torch.Generator().manual_seed(0),
                               clip_x=2.0)

        reference = draw(cfg(gm, w), 4)
        err_teacher = float((draw(cfg(gm, w), 2) - reference).norm(dim=1).mean())
        err_student = float((draw(student.at(w), 2) - reference).norm(dim=1).mean())
        assert err_student < 0.5 * err_teacher, (w, err_student, err_teacher)
