"""scripts/adaptive_report.py's paired measures: the guidance kept is 0 at the conditional sample, 1 at full CFG's,
linear in between, and the RMS distance to CFG's sample is the pixels' root mean square difference."""

import numpy as np

from tests.helpers import load_script


def test_guidance_kept_and_distance_are_exact_on_points_of_the_guidance_line():
    paired = load_script("adaptive_report").paired
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(2, 50, 1, 8, 8))
    for t in (0.0, 0.25, 1.0, 1.5):
        result = paired(x0 + t * (x1 - x0), x0, x1)
        assert abs(result["kept"][0] - t) < 1e-12 and result["kept"][1] < 1e-12  # every sample exactly t
        rms = np.sqrt((((1 - t) * (x1 - x0)) ** 2).reshape(50, -1).mean(axis=1))
        assert abs(result["rms_to_cfg"][0] - rms.mean()) < 1e-12
    off_line = x0 + rng.normal(size=x0.shape) * 1e-3  # a sample off the line projects near its foot, g ≈ 0
    assert abs(paired(off_line, x0, x1)["kept"][0]) < 0.01
