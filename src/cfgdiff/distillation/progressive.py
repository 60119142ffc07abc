"""Stage 2, progressive distillation of the deterministic sampler (Salimans & Ho 2022, arXiv 2202.00512, Alg. 2).

A w-conditioned teacher run with DDIM (η = 0) for N steps on the cosine log-SNR grid of
``cfgdiff.core.schedule.logsnr_grid`` is distilled into a student that takes N/2 steps: one student DDIM step must
land where two teacher DDIM steps land. The cosine grid of N/2 steps is every other point of the N-step grid
(u_j = 1 - j/(N/2) = 1 - 2j/N), so student step j goes λ_a = λ_{2j} → λ_c = λ_{2j+2} across the teacher's
midpoint λ_b = λ_{2j+1}.

Target, in our log-SNR notation (α² = sigmoid(λ), σ² = sigmoid(-λ); one DDIM step λ → λ' is
z' = α' x̂ + σ' ε̂ with x̂ = (z - σ ε̂)/α, x̂ clipped to the data range as the sampler does and ε̂ recomputed
from it). From z_a = α_a x + σ_a ε (x, c from the data, ε ~ N(0, I), w ~ U(w_min, w_max)):

    teacher:  z_b = α_b x̂_a + σ_b ε̂_a,     z_c = α_c x̂_b + σ_c ε̂_b          (x̂_a, ε̂_a at (z_a, λ_a), ...)
    student:  z_c = α_c x̃ + σ_c ε̃,   ε̃ = (z_a - α_a x̃)/σ_a     (one DDIM step from z_a with x̂ = x̃)
    ⇒ z_c = α_c x̃ + (σ_c/σ_a)(z_a - α_a x̃)
    ⇒ x̃ = (z_c - (σ_c/σ_a) z_a) / (α_c - (σ_c/σ_a) α_a),   α_c - (σ_c/σ_a) α_a = σ_c (e^{λ_c/2} - e^{λ_a/2}) > 0,

Salimans & Ho's x̃ = (z'' - (σ''/σ) z)/(α'' - (σ''/σ) α) in their notation. On the last student step (λ_c the
end of the grid) the DDIM sampler returns x̂ instead of stepping, so the target is the teacher's last x̂:
x̃ = x̂_b. The student predicts ε, so the target it regresses on is ε̃ = (z_a - α_a x̃)/σ_a.

Parameterisation and loss weighting. The student's output o is ε̂ except at the noise end λ < λ_v = -10
(``NOISE_END_LOGSNR``), where it is read as o = z - x̂ (``cfgdiff.distillation.student.output_to_eps``): an ε
network's x̂ = (z - σ ε̂)/α carries its error times σ/α = e^{-λ/2} (22026 at λ_min = -20), so the first step
of a few-step sampler cannot be learned in ε (Salimans & Ho 2022, Sec. 4). Every cosine grid of up to 128 steps
has λ_min as its only point below -10, so the parameterisation changes that one step and nothing else.

The loss is Salimans & Ho's "truncated SNR" weighting (``weighting="truncated_snr"``, the default):

    L = max(e^{λ_a}, 1) ||x̂_η - x̃||²,

computed as max(1, e^{-λ_a}) ||ε̂_η - ε̃||² on ε rows (the same number: x̂ = (z - σ ε)/α gives
||Δx̂||² = e^{-λ} ||Δε||²) and as ||(z_a - o) - x̃||² on noise-end rows (SNR < 1 there). ``weighting="snr"`` is
the plain ε-loss ||ε̂_η - ε̃||² on ε rows (e^{λ} ||Δx̂||², the "SNR" weighting) with the same x-loss on
noise-end rows; offered for comparison.

The teacher is any w-conditioned denoiser f(z, λ, c, w): a stage-1 student's network, the previous stage's, or
``guided_teacher(eps_fn)`` (CFG of a plain model or of the exact mixture: one 2B-row call per teacher step).
"""

from __future__ import annotations

import torch
from torch import nn

from cfgdiff.core.diffusion import alpha_sigma_rows, diffuse, eps_from_x, x_from_eps, z_from_x_eps
from cfgdiff.core.schedule import LOGSNR_MAX, LOGSNR_MIN, logsnr_grid
from cfgdiff.distillation.guidance import WEpsFn
from cfgdiff.distillation.student import WRange

WEIGHTINGS = ("truncated_snr", "snr")
NOISE_END_LOGSNR = -10.0  # below this λ a progressive student's output is read as z - x̂ (output_to_eps)

__all__ = [
    "NOISE_END_LOGSNR",
    "WEIGHTINGS",
    "ProgressiveDistillationLoss",
    "check_halving",
    "ddim_step",
    "teacher_two_steps",
    "target_x",
]


def check_halving(steps_from: int) -> int:
    """N/2 for an even N >= 2 (the student's steps); ``ValueError`` otherwise."""
    if not (isinstance(steps_from, int) and steps_from >= 2 and steps_from % 2 == 0):
        raise ValueError(f"progressive distillation halves an even number of steps >= 2, got {steps_from}")
    return steps_from // 2


def denoise(
    teacher: WEpsFn, z: torch.Tensor, logsnr: torch.Tensor, labels: torch.Tensor, w: torch.Tensor,
    x_bound: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε̂, x̂) of a w-conditioned denoiser at per-row λ, x̂ = (z - σ ε̂)/α clipped to [-b, b] with ε̂ recomputed
    from it when ``x_bound`` is b (as ``cfgdiff.sampling.solvers`` does)."""
    alpha, sigma = alpha_sigma_rows(logsnr, z)  # from λ in float64, as the samplers do
    eps = teacher(z, logsnr.to(z.dtype), labels, w)  # the network sees λ in z's dtype, as in the samplers
    x = x_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)
    if x_bound is not None:
        x = x.clamp(-x_bound, x_bound)
        eps = eps_from_x(z=z, x=x, alpha=alpha, sigma=sigma)
    return eps, x


def ddim_step(
    eps_fn: WEpsFn, z: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, *, logsnr: torch.Tensor,
    logsnr_next: torch.Tensor, last: torch.Tensor | bool = False, x_bound: float | None = None,
) -> torch.Tensor:
    """One DDIM (η = 0) step λ → λ' per row: z' = α' x̂ + σ' ε̂; rows with ``last`` return x̂ (the sampler's end)."""
    eps, x = denoise(eps_fn, z, logsnr, labels, w, x_bound)
    alpha_next, sigma_next = alpha_sigma_rows(logsnr_next, z)
    z_next = z_from_x_eps(x=x, eps=eps, alpha=alpha_next, sigma=sigma_next)
    last = torch.as_tensor(last, device=z.device).reshape(-1, *([1] * (z.ndim - 1)))
    return torch.where(last, x, z_next)


def teacher_two_steps(
    teacher: WEpsFn, z_a: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, *, logsnr_a: torch.Tensor,
    logsnr_b: torch.Tensor, logsnr_c: torch.Tensor, last: torch.Tensor | bool = False,
    x_bound: float | None = None,
) -> torch.Tensor:
    """Two teacher DDIM steps λ_a → λ_b → λ_c: z_c (or the last x̂_b on rows with ``last``)."""
    z_b = ddim_step(teacher, z_a, labels, w, logsnr=logsnr_a, logsnr_next=logsnr_b, x_bound=x_bound)
    return ddim_step(teacher, z_b, labels, w, logsnr=logsnr_b, logsnr_next=logsnr_c, last=last, x_bound=x_bound)


def target_x(
    z_a: torch.Tensor, z_c: torch.Tensor, *, logsnr_a: torch.Tensor, logsnr_c: torch.Tensor,
    last: torch.Tensor | bool = False,
) -> torch.Tensor:
    """x̃ = (z_c - (σ_c/σ_a) z_a) / (α_c - (σ_c/σ_a) α_a): the x̂ whose single DDIM step λ_a → λ_c from z_a
    lands on z_c; on rows with ``last``, ``z_c`` already is the target x̂."""
    alpha_a, sigma_a = alpha_sigma_rows(logsnr_a, z_a)
    alpha_c, sigma_c = alpha_sigma_rows(logsnr_c, z_a)
    half_a = torch.exp(0.5 * logsnr_a.to(torch.float64))
    half_c = torch.exp(0.5 * logsnr_c.to(torch.float64))
    shape = (-1, *([1] * (z_a.ndim - 1)))
    denominator = (sigma_c.to(torch.float64) * (half_c - half_a).reshape(shape)).to(z_a.dtype)  # > 0
    x = (z_c - (sigma_c / sigma_a) * z_a) / denominator
    last = torch.as_tensor(last, device=z_a.device).reshape(shape)
    return torch.where(last, z_c, x)


class ProgressiveDistillationLoss:
    """Stage 2's loss on a batch (x, c): a student DDIM step of ``student_steps`` matches two teacher steps.

    ``teacher(z, λ, c, w)``: the w-conditioned teacher (its ε̂), sampled with 2·student_steps DDIM steps on the
    cosine grid over [logsnr_min, logsnr_max] (the samplers' defaults); ``x_bound``: the clip of x̂ (the data
    range; None for no clipping); ``weighting``: "truncated_snr" or "snr"; ``noise_end_logsnr``: λ below which
    the student's output is read as z - x̂ (module docstring). The student is called as the raw network
    ``student(z, λ, c, w) -> o``. Draw order from ``generator``: step index, ε, w.
    """

    def __init__(
        self,
        teacher: WEpsFn,
        w_range: WRange,
        *,
        student_steps: int,
        x_bound: float | None = 1.0,
        weighting: str = "truncated_snr",
        noise_end_logsnr: float | None = NOISE_END_LOGSNR,
        logsnr_min: float = LOGSNR_MIN,
        logsnr_max: float = LOGSNR_MAX,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")
        if not (isinstance(student_steps, int) and student_steps >= 1):
            raise ValueError(f"student_steps must be an integer >= 1, got {student_steps}")
        self.teacher = teacher
        self.w_range = w_range
        self.student_steps = student_steps
        self.x_bound = x_bound
        self.weighting = weighting
        self.noise_end_logsnr = noise_end_logsnr
        self.grid = logsnr_grid(2 * student_steps, "cosine", logsnr_min=logsnr_min, logsnr_max=logsnr_max)

    def draw(self, x: torch.Tensor, generator: torch.Generator):
        """(z_a, λ_a, λ_b, λ_c, last, w): student step j ~ U{0..S-1}, z_a = α_a x + σ_a ε, w ~ U(w_min, w_max)."""
        j = torch.randint(0, self.student_steps, (x.shape[0],), generator=generator, device=x.device)
        grid = self.grid.to(x.device)
        logsnr_a, logsnr_b, logsnr_c = grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]  # float64 [B]
        last = j == self.student_steps - 1
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        z_a = diffuse(x=x, eps=eps, logsnr=logsnr_a)
        w = self.w_range.sample(x.shape[0], generator=generator, device=x.device)
        return z_a, logsnr_a, logsnr_b, logsnr_c, last, w

    @torch.no_grad()
    def target(self, z_a, labels, w, logsnr_a, logsnr_b, logsnr_c, last) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̃, ε̃ = (z_a - α_a x̃)/σ_a) from two teacher DDIM steps (module docstring), in full precision (x̃
        divides by α_c - (σ_c/σ_a) α_a; the Trainer's autocast, if on, applies to the student only)."""
        with torch.autocast(z_a.device.type, enabled=False):
            return self._target(z_a.float(), labels, w, logsnr_a, logsnr_b, logsnr_c, last)

    def _target(self, z_a, labels, w, logsnr_a, logsnr_b, logsnr_c, last) -> tuple[torch.Tensor, torch.Tensor]:
        z_c = teacher_two_steps(self.teacher, z_a, labels, w, logsnr_a=logsnr_a, logsnr_b=logsnr_b,
                                logsnr_c=logsnr_c, last=last, x_bound=self.x_bound)
        x_tilde = target_x(z_a, z_c, logsnr_a=logsnr_a, logsnr_c=logsnr_c, last=last)
        alpha_a, sigma_a = alpha_sigma_rows(logsnr_a, z_a)
        return x_tilde, eps_from_x(z=z_a, x=x_tilde, alpha=alpha_a, sigma=sigma_a)

    def __call__(self, student: nn.Module, batch, generator: torch.Generator) -> torch.Tensor:
        """The Trainer's loss contract (``cfgdiff.training.losses.LossFn``): ``batch.x``, ``batch.labels``."""
        x, labels = batch.x, batch.labels
        z_a, logsnr_a, logsnr_b, logsnr_c, last, w = self.draw(x, generator)
        x_tilde, eps_tilde = self.target(z_a, labels, w, logsnr_a, logsnr_b, logsnr_c, last)
        output = student(z_a, logsnr_a.to(torch.float32), labels, w).float()
        noise_end = (logsnr_a < self.noise_end_logsnr if self.noise_end_logsnr is not None
                     else torch.zeros_like(last))  # rows whose output is z - x̂ [B]
        per_eps = ((output - eps_tilde.float()) ** 2).reshape(x.shape[0], -1).mean(1)  # ||Δε||² [B]
        if self.weighting == "truncated_snr":  # max(1, e^{-λ}) ||Δε||² = max(SNR, 1) ||Δx̂||²
            weight = torch.clamp(torch.exp(-logsnr_a.masked_fill(noise_end, 0.0)), min=1.0)
            per_eps = per_eps * weight.to(per_eps.dtype)
        if not bool(noise_end.any()):
            return per_eps.mean()
        per_x = ((z_a.float() - output - x_tilde.float()) ** 2).reshape(x.shape[0], -1).mean(1)  # ||Δx̂||² [B]
        return torch.where(noise_end, per_x, per_eps).mean()
