"""Guidance distillation (stage 1, Meng et al. 2023): the w embedding, the student as an eps_fn at each w, the
range policy, the loss, and a short distillation of the exact Gaussian mixture through the Trainer."""

import pytest
import torch

from cfgdiff.core.diffusion import diffuse
from cfgdiff.core.schedule import sample_logsnr
from cfgdiff.core.toy import GaussianMixture
from cfgdiff.data import load_dataset
from cfgdiff.distillation import (
    GuidanceDistillationLoss,
    Student,
    WRange,
    WRangeError,
    guided_teacher,
    init_student,
    student_config,
)
from cfgdiff.guidance import cfg
from cfgdiff.guidance.counting import CountingEpsFn
from cfgdiff.models import MLPDenoiser, UNet, build_model
from cfgdiff.sampling.solvers import SAMPLERS, nfe_per_sample, sample_ddim
from cfgdiff.training import Batch, LoopConfig, Trainer
from tests.helpers import sampling_tolerance

SMALL_UNET = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_heads=2, groups=4, emb_dim=32)
TEACHERS = {
    "unet": lambda: UNet((1, 8, 8), 3, **SMALL_UNET),
    "mlp": lambda: MLPDenoiser(2, 3, hidden=32, depth=2, emb_dim=16),
}


def _teacher(kind: str) -> torch.nn.Module:
    """A teacher with a non-zero output layer (the zero-initialised one would make every check trivial)."""
    torch.manual_seed(0)
    model = TEACHERS[kind]()
    last = model.conv_out if kind == "unet" else model.fc_out
    with torch.no_grad():
        torch.nn.init.normal_(last.weight, std=0.1)
        torch.nn.init.normal_(last.bias, std=0.1)
    return model.eval()


def _inputs(model, batch=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, *model.data_shape, generator=g)
    logsnr = torch.rand(batch, generator=g) * 40 - 20
    labels = torch.arange(batch) % (model.num_classes + 1)  # the null label K included
    return z, logsnr, labels


# -- the w embedding in the models ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_w_embedding_is_off_by_default_and_only_adds_its_own_weights(kind):
    teacher = _teacher(kind)
    config = teacher.config()
    assert "w_embedding" not in config  # configs of ordinary networks are unchanged
    assert not any("w_emb" in k for k in teacher.state_dict())
    rebuilt = build_model(config)  # an existing config builds the same modules: its weights load strictly
    rebuilt.load_state_dict(teacher.state_dict(), strict=True)
    student = build_model(student_config(config))
    assert student.config() == {**config, "w_embedding": True}
    extra = set(student.state_dict()) - set(teacher.state_dict())
    assert extra and all(k.startswith("cond.w_emb.") for k in extra)
    assert set(teacher.state_dict()) <= set(student.state_dict())


def test_existing_run_loads_unchanged(digits_run):
    from cfgdiff.training import load_model

    model = load_model(digits_run)
    assert not getattr(model, "w_embedding", False)
    z, logsnr, labels = _inputs(model)
    assert model(z, logsnr, labels).shape == z.shape


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_plain_network_refuses_w_and_student_needs_it(kind):
    teacher = _teacher(kind)
    student = init_student(teacher)
    z, logsnr, labels = _inputs(teacher)
    with pytest.raises(ValueError, match="no guidance weight"):
        teacher(z, logsnr, labels, 1.0)
    with pytest.raises(ValueError, match="needs w"):
        student(z, logsnr, labels)
    with pytest.raises(ValueError, match="already a guidance-distilled student"):
        init_student(student)


# -- the student at initialisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_student_at_initialisation_equals_the_teachers_conditional_prediction_exactly(kind):
    """The w embedding's output layer is zero, so e = e_teacher + 0 and every later operation is the teacher's:
    the student equals ε_θ(z, c) bit for bit at every w (the guided teacher at w = 0)."""
    teacher = _teacher(kind)
    student = Student(init_student(teacher).eval(), WRange(0.0, 4.0))
    z, logsnr, labels = _inputs(teacher)
    with torch.no_grad():
        expected = teacher(z, logsnr, labels)
        for w in (0.0, 0.5, 4.0):
            assert torch.equal(student.at(w)(z, logsnr, labels), expected)
        per_row = torch.linspace(0, 4, z.shape[0])
        assert torch.equal(student.network(z, logsnr, labels, per_row), expected)


def test_student_at_w_is_an_eps_fn_of_one_row_per_call():
    teacher = _teacher("unet")
    student = Student(init_student(teacher).eval(), WRange(0.0, 4.0))
    eps_fn = student.at(2.0)
    assert (eps_fn.num_classes, eps_fn.data_shape, eps_fn.w) == (3, (1, 8, 8), 2.0)
    counting = CountingEpsFn(eps_fn)
    labels = torch.tensor([0, 1, 2, 0])
    sample_ddim(counting, (4, 1, 8, 8), labels, steps=5, generator=torch.Generator().manual_seed(0))
    assert counting.calls == 5 and counting.batch_sizes == [4] * 5  # one row per sample and step, at w = 2


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_takes_the_student_at_w_unchanged(sampler):
    """The student at w is a plain eps_fn: each sampler makes its usual number of calls, each of B rows."""
    student = Student(init_student(_teacher("mlp")).eval(), WRange(0.0, 4.0))
    counting = CountingEpsFn(student.at(3.0))
    labels = torch.tensor([0, 1, 2])
    x = SAMPLERS[sampler](counting, (3, 2), labels, steps=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 2) and bool(torch.isfinite(x).all())
    assert counting.calls == nfe_per_sample(sampler, 4) and set(counting.batch_sizes) == {3}


# -- the w range ---------------------------------------------------------------------------------------------


def test_w_range_parsing_and_refusal_outside():
    assert WRange.parse("0,4") == WRange(0.0, 4.0)
    for text, needle in (("4,0", "reversed"), ("1,1", "empty"), ("0", "two numbers"), ("a,b", "two numbers"),
                         ("0,inf", "finite")):
        with pytest.raises(WRangeError, match=needle):
            WRange.parse(text)
    student = Student(init_student(_teacher("mlp")), WRange(0.5, 2.0))
    assert student.at(0.5).w == 0.5 and student.at(2.0).w == 2.0  # the range is closed
    for w in (0.0, 2.01, 5.0):
        with pytest.raises(WRangeError, match="outside this student's training range"):
            student.at(w)
    draws = WRange(0.5, 2.0).sample(10000, generator=torch.Generator().manual_seed(0))
    assert float(draws.min()) >= 0.5 and float(draws.max()) <= 2.0
    assert abs(float(draws.mean()) - 1.25) < 5 * 1.5 / (12 * 10000) ** 0.5  # U(a, b): mean (a+b)/2, sd (b-a)/√12


# -- the teacher's target and the loss ------------------------------------------------------------------------


def test_guided_teacher_is_one_batched_call_and_equals_cfg_row_by_row():
    gm = GaussianMixture.three_gaussians()
    counting = CountingEpsFn(gm)
    target = guided_teacher(counting)
    z, logsnr = torch.randn(6, 2, dtype=torch.float64), torch.linspace(-5, 5, 6, dtype=torch.float64)
    labels, w = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0, 4.0])
    out = target(z, logsnr, labels, w)
    assert counting.batch_sizes == [12]  # (1 + w) ε(z, c) - w ε(z): one call of 2B rows
    for i in range(6):
        expected = cfg(gm, float(w[i]))(z[i:i + 1], logsnr[i:i + 1], labels[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], expected)


def test_loss_is_the_squared_distance_to_the_guided_teacher_and_a_minimal_loop_lowers_it():
    """At initialisation the student is ε(z, c), so the loss is mean ||ε(z, c) - ε̃_w||² = mean w² ||ε_c - ε_u||²
    over the same draws (replayed from the same generator state)."""
    teacher = _teacher("mlp")
    loss_fn = GuidanceDistillationLoss(teacher, WRange(0.0, 4.0))
    student = init_student(teacher)
    x = torch.randn(64, 2)
    labels = torch.arange(64) % 3
    loss = loss_fn(student, Batch(x=x, labels=labels), torch.Generator().manual_seed(3))
    z, logsnr, w = loss_fn.draw(x, torch.Generator().manual_seed(3))
    with torch.no_grad():
        eps_c, eps_u = teacher(z, logsnr, labels), teacher(z, logsnr, torch.full_like(labels, 3))
    expected = (w[:, None] ** 2 * (eps_c - eps_u) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    # a plain minimal loop (here only: the Trainer is tested below) lowers it on fixed data
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    first = None
    for step in range(60):
        value = loss_fn(student, Batch(x=x, labels=labels), torch.Generator().manual_seed(step % 4))
        first = float(value.detach()) if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    with torch.no_grad():
        final = sum(float(loss_fn(student, Batch(x=x, labels=labels), torch.Generator().manual_seed(s)))
                    for s in range(4))
    assert final / 4 < 0.5 * first


# -- a short distillation of the exact mixture, through the Trainer --------------------------------------------


@pytest.fixture(scope="module")
def mixture_distillation():
    """An MLP student distilled from the exact mixture's guided scores through the project's Trainer; the EMA
    error after 100 steps and after 1000."""
    gm = GaussianMixture.three_gaussians()
    w_range = WRange(0.0, 4.0)
    loop = LoopConfig(steps=1000, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99, seed=0)
    trainer = Trainer(lambda: MLPDenoiser(2, 3, hidden=64, depth=2, emb_dim=64, w_embedding=True),
                      GuidanceDistillationLoss(gm, w_range), load_dataset("gmm2d"), loop)
    g = torch.Generator().manual_seed(1)
    n = 1500
    labels = torch.arange(n) % 3
    logsnr = sample_logsnr(n, generator=g)  # the training λ distribution
    z = diffuse(x=gm.sample(labels, g).float(), eps=torch.randn(n, 2, generator=g), logsnr=logsnr)
    target = guided_teacher(gm)

    def errors():
        with torch.no_grad():
            return {w: float(((trainer.ema(z, logsnr, labels, w) - target(z, logsnr, labels, torch.full((n,), w)))
                              ** 2).mean().sqrt()) for w in (0.0, 1.0, 2.0, 3.0, 4.0)}

    early = None
    while trainer.step < loop.steps:
        trainer.train_step()
        if trainer.step == 100:
            early = errors()
    with torch.no_grad():
        guidance_rms = float(((gm(z, logsnr, labels) - gm(z, logsnr, torch.full_like(labels, 3))) ** 2).mean().sqrt())
    return gm, Student(trainer.ema.eval(), w_range), early, errors(), guidance_rms


def test_distilled_eps_approaches_the_guided_teachers_and_the_error_falls(mixture_distillation):
    """ε̃_w = ε_c + w (ε_c - ε_u) is linear in w, so the best predictor that ignores w (ε̃ at the mean w = 2) is
    off by |w - 2| · rms(ε_c - ε_u), i.e. 2 · rms(ε_c - ε_u) at the ends of the range. The student must do four
    times better than that at every w: it has learned the dependence on w, not only an average."""
    _, _, early, final, guidance_rms = mixture_distillation
    tolerance = 0.25 * 2.0 * guidance_rms
    for w, err in final.items():
        assert err < tolerance, (w, err, tolerance)
        assert err < early[w], (w, early[w], err)
    assert sum(final.values()) < 0.5 * sum(early.values())


def test_distilled_samples_per_class_means_approach_the_guided_teachers(mixture_distillation):
    """Same seeds, DDIM: the student at w (one row per step) against CFG of the exact scores (two rows per step).
    The per-class means must agree within 5 standard errors of a mean; and w must matter: the teacher's means
    at w = 4 lie further than that from those at w = 0."""
    gm, student, *_ = mixture_distillation
    n_per_class = 300
    labels = torch.arange(3).repeat_interleave(n_per_class)
    tolerance = sampling_tolerance(gm, n_per_class)
    means = {}
    for w in (0.0, 2.0, 4.0):
        kwargs = dict(steps=32, clip_x=2.0)
        x_student = sample_ddim(student.at(w), (labels.shape[0], 2), labels,
                                generator=torch.Generator().manual_seed(0), **kwargs)
        x_teacher = sample_ddim(cfg(gm, w), (labels.shape[0], 2), labels, generator=torch.Generator().manual_seed(0),
                                **kwargs)
        m_student = torch.stack([x_student[labels == c].mean(0) for c in range(3)])
        means[w] = torch.stack([x_teacher[labels == c].mean(0) for c in range(3)])
        assert float((m_student - means[w]).abs().max()) < tolerance, w
    assert float((means[4.0] - means[0.0]).abs().max()) > 2 * tolerance


# -- fit_by_w: a student's held-out error against its guided teacher, per w ------------------------------------


class _ExactStudentNetwork(torch.nn.Module):
    """A 'student' network that IS the guided teacher: f(z, λ, c, w) = (1 + w) ε(z, c) - w ε(z, ∅)."""

    w_embedding = True

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher
        self.guided = guided_teacher(teacher)
        self.num_classes, self.data_shape = teacher.num_classes, teacher.data_shape

    def forward(self, z, logsnr, labels, w):
        return self.guided(z, logsnr, labels, torch.as_tensor(w, dtype=z.dtype).expand(z.shape[0]))


@pytest.mark.parametrize("kind", list(TEACHERS))
def test_fit_by_w_of_a_fresh_student_is_exactly_what_guidance_adds(kind):
    """At initialisation the student is the teacher's conditional model at every w, so its error at w is exactly
    the guidance term ||ε̃_w - ε(z, c)||²: mse(0) = 0 and relative(w) = 1 for w > 0."""
    from cfgdiff.distillation.evaluate import fit_by_w

    teacher = _teacher(kind)
    student = Student(init_student(teacher).eval(), WRange(0.0, 4.0))
    z, _, _ = _inputs(teacher, batch=20)
    labels = torch.arange(20) % teacher.num_classes
    fits = fit_by_w(student, teacher, z, labels, [0.0, 1.0, 4.0], generator=torch.Generator().manual_seed(3),
                    batch_size=8)
    assert [f.w for f in fits] == [0.0, 1.0, 4.0]
    assert fits[0].mse == pytest.approx(0.0, abs=1e-10) and fits[0].relative is None
    for f in fits[1:]:
        assert f.guidance > 0 and f.mse == pytest.approx(f.guidance, rel=1e-5)
        assert f.relative == pytest.approx(1.0, rel=1e-5)
    # the guidance term grows as w²: ||w (ε_c - ε_u)||²
    assert fits[2].guidance == pytest.approx(16 * fits[1].guidance, rel=1e-5)


def test_fit_by_w_of_the_exact_guided_teacher_is_zero_and_refuses_w_outside_the_range():
    from cfgdiff.distillation.evaluate import fit_by_w

    teacher = _teacher("mlp")
    student = Student(_ExactStudentNetwork(teacher), WRange(0.0, 2.0))
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 3
    fits = fit_by_w(student, teacher, x, labels, [0.5, 2.0], generator=torch.Generator().manual_seed(1))
    assert all(f.mse < 1e-10 and f.relative < 1e-8 for f in fits)
    with pytest.raises(WRangeError):
        fit_by_w(student, teacher, x, labels, [3.0], generator=torch.Generator().manual_seed(1))
