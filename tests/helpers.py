"""Helpers shared by the tests: moments and orders of samplers and solvers, a row-wise eps_fn, and running the
command line (``run_cli``, ``assert_usage_error``)."""

import torch


def load_script(name):
    """The module of ``scripts/NAME.py`` (scripts are not a package), loaded from its file."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generators(n, seed=0):
    """One seeded ``torch.Generator`` per sample: seeds seed, seed + 1, ..., seed + n - 1."""
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def run_cli(capsys, argv):
    """``cfgdiff ARGV`` in this process (arguments made strings): (exit code, stdout, stderr)."""
    from cfgdiff.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(capsys, argv, needle=None):
    """``cfgdiff ARGV`` fails as a usage error: exit 2 and one line ``cfgdiff: error: ...`` holding ``needle``."""
    code, _, err = run_cli(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("cfgdiff: error:"), err
    assert "Traceback" not in err
    if needle:
        assert needle in lines[0], lines[0]


def moment_error(gm, x, labels):
    """Largest per-class error in mean and covariance against the mixture's exact moments."""
    err = 0.0
    for c in range(gm.num_classes):
        xc = x[labels == c]
        cov = torch.cov(xc.T)
        err = max(err, (xc.mean(0) - gm.means[c]).abs().max().item(),
                  (cov - torch.diag(gm.stds[c] ** 2)).abs().max().item())
    return err


def moment_errors_by_steps(sampler, gm, n_per_class, steps_list, seed=0):
    """{steps: moment_error} for exact-score samples of every class, same seed at each step count."""
    labels = torch.arange(gm.num_classes).repeat_interleave(n_per_class)
    errors = {}
    for steps in steps_list:
        x = sampler(gm, (labels.shape[0], gm.dim), labels, steps=steps,
                    generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        errors[steps] = moment_error(gm, x, labels)
    return errors


def sampling_tolerance(gm, n_per_class):
    """5 standard errors of a mean (s/sqrt(n)) and of a variance (s² sqrt(2/n)), whichever is larger."""
    s = gm.stds.max().item()
    return 5 * max(s / n_per_class**0.5, s**2 * (2 / n_per_class) ** 0.5)


def measured_order(sampler, gm, z0, labels, reference, steps=(8, 16, 32, 64)):
    """Least-squares slope of -log(mean per-sample error) against log(steps), and the errors."""
    errors = []
    for n in steps:
        x = sampler(gm, tuple(z0.shape), labels, steps=n, z=z0, dtype=torch.float64, grid="uniform")
        errors.append((x - reference).norm(dim=1).mean().item())
    log_n = torch.log(torch.tensor(steps, dtype=torch.float64))
    log_e = torch.log(torch.tensor(errors, dtype=torch.float64))
    slope = ((log_n - log_n.mean()) * (log_e - log_e.mean())).sum() / ((log_n - log_n.mean()) ** 2).sum()
    return -slope.item(), errors


class RowNet(torch.nn.Module):
    """A small nonlinear eps_fn whose rows are independent (so batching cannot change results)."""

    def __init__(self, num_classes=3, dim=2):
        super().__init__()
        torch.manual_seed(0)
        self.num_classes = num_classes
        self.emb = torch.nn.Embedding(num_classes + 1, 16)
        self.inp = torch.nn.Linear(dim + 1, 16)
        self.out = torch.nn.Linear(16, dim)

    def forward(self, z, logsnr, labels):
        return self.out(torch.tanh(self.inp(torch.cat([z, logsnr[:, None] / 20], 1)) + self.emb(labels)))


class PerturbableNet:
    """An eps_fn with the per-row perturbation switch (``cfgdiff.core.perturbation``) and a known perturbed network:
    rows switched on (any kind, its one layer ``all``) are ``weak``'s, the others ``base``'s, so PAG / SLG over it
    is ε_c + w (ε_c - ε_u) + s (ε_c - ε_weak) exactly."""

    def __init__(self, base, weak):
        self.base, self.weak = base, weak
        self.num_classes = base.num_classes
        if hasattr(base, "data_shape"):
            self.data_shape = base.data_shape

    def perturbable_layers(self, kind):
        return ("all",)

    def default_perturbed_layers(self, kind):
        return ("all",)

    def __call__(self, z, logsnr, labels):
        from cfgdiff.core.perturbation import active_perturbation, merge_rows, split_rows

        active = active_perturbation(z.shape[0])
        if active is None:
            return self.base(z, logsnr, labels)
        keep, switched = split_rows(active.rows)
        return merge_rows(self.base(z[keep], logsnr[keep], labels[keep]),
                          self.weak(z[switched], logsnr[switched], labels[switched]), active.rows)
