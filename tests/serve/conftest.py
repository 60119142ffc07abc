"""The explorer's fixtures: the session's digits run, loaded once per module, and an explorer over it with small
limits (40 samples, 20 steps) so that the tests' requests stay fast."""

import pytest

from cfgdiff.serve import Explorer, Limits
from cfgdiff.training import load_model


@pytest.fixture(scope="module")
def model(digits_run):
    return load_model(digits_run)


@pytest.fixture(scope="module")
def explorer(model):
    return Explorer(model, data_shape=model.data_shape, name="digits", class_names=model.class_names,
                    x_bound=model.x_bound, limits=Limits(max_samples=40, max_steps=20))
