"""scripts/distillation_diagnosis.py on tiny runs: every (w, sampler) has a teacher row, each student row its
paired Δ (FID difference, recomputed from the two rows), a progressive student only its own sampler, and the fit
of a stage-1 student at every w of its range, from the same draws for every student."""

import json

from cfgdiff.cli import main
from tests.helpers import load_script

TINY = ["--steps", "2", "--batch-size", "16", "--log-every", "1", "--no-progress"]


def test_verdict_is_two_paired_spreads():
    verdict = load_script("distillation_diagnosis").verdict
    assert verdict(0.19, 0.1) == "inside" and verdict(-0.2, 0.1) == "inside"
    assert verdict(0.21, 0.1) == "worse" and verdict(-0.21, 0.1) == "better"


def test_diagnosis_writes_paired_rows_and_the_fit(digits_run, tmp_path, cache_dir):
    stage1, stage2 = tmp_path / "s1", tmp_path / "s2"
    assert main(["distill", str(digits_run), "--w-range", "0,2", "--run-dir", str(stage1), *TINY]) == 0
    assert main(["distill", str(stage1), "--progressive", "--steps-from", "4", "--run-dir", str(stage2), *TINY]) == 0
    out = tmp_path / "diag.md"
    script = load_script("distillation_diagnosis")
    assert script.main(["--teacher", str(digits_run), "--student", f"s1={stage1}", "--student", f"s2={stage2}",
                        "--fit-student", f"again={stage1}",
                        "--w", "0,3", "--fit-w", "0,1,2,3", "--samplers", "ddim:4,dpmpp_2m:3,ddim:2", "--n", "20",
                        "--fit-n", "12", "--bootstrap", "4", "--zero-x-at-noise-end", "--batch-size", "10",
                        "--threads", "1",
                        "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    fit = {(f["student"], f["w"]): f["mse"] for f in record["fit"]}  # s1's range only; s2 is progressive: no fit
    assert set(fit) == {(label, w) for label in ("again", "s1") for w in (0.0, 1.0, 2.0)}
    assert all(fit[("again", w)] == fit[("s1", w)] for w in (0.0, 1.0, 2.0))  # the same draws for every student
    rows = {(r["w"], r["sampler"], r["steps"], r["model"]): r for r in record["rows"]}
    samplers = [("ddim", 4), ("dpmpp_2m", 3), ("ddim", 2)]
    expected = {(w, name, steps, "teacher") for w in (0.0, 3.0) for name, steps in samplers}
    expected |= {(0.0, name, steps, "s1") for name, steps in samplers}  # w = 3 lies outside the students' [0, 2]
    expected |= {(0.0, "ddim", 2, "s2")}  # a progressive student: only the 2 DDIM steps it was distilled for
    expected |= {(w, name, steps, "teacher, x̂ = 0 at λ < -10") for w in (0.0, 3.0) for name, steps in samplers}
    assert set(rows) == expected
    for (w, sampler, steps, model), r in rows.items():
        if model != "teacher":
            assert r["delta"] == r["fid"] - rows[(w, sampler, steps, "teacher")]["fid"]
            assert r["delta_std"] >= 0 and r["verdict"] in ("inside", "better", "worse")
    assert "Fit by w" in out.read_text() and "Paired FIDs" in out.read_text()


def test_zero_x_at_noise_end_sets_x_hat_to_zero_there_and_nothing_else(digits_run):
    import torch

    from cfgdiff.core.diffusion import alpha_sigma_rows, x_from_eps
    from cfgdiff.training import load_model

    model = load_model(digits_run)
    wrapped = load_script("distillation_diagnosis").ZeroXAtNoiseEnd(model)
    z = torch.randn(4, *model.data_shape, generator=torch.Generator().manual_seed(0))
    logsnr, labels = torch.tensor([-20.0, -10.5, -9.5, 3.0]), torch.tensor([0, 1, 2, 10])
    eps = wrapped(z, logsnr, labels)
    alpha, sigma = alpha_sigma_rows(logsnr, z)
    x = x_from_eps(z=z, eps=eps, alpha=alpha, sigma=sigma)
    assert x[:2].abs().max() < 1e-2  # x̂ = 0 up to float32 rounding of (z - σ ε̂)/α at α ≈ e^-10
    assert torch.allclose(eps[2:], model(z[2:], logsnr[2:], labels[2:]), atol=1e-6)  # λ >= -10: the model's ε̂
