"""Composed conditions and the speed-up methods in the explorer: a compose request is one row of n samples equal to
``cfgdiff sample --compose``'s, counts (k + 1) rows a step, round-trips, and bad compose text is one line."""

import pytest
import torch

from cfgdiff.guidance import compose
from cfgdiff.sampling.generate import generate_samples
from cfgdiff.serve import RequestError
from cfgdiff.serve.explorer import request_as_query


def test_a_compose_request_is_one_row_of_the_composed_samples(explorer, model):
    request = explorer.parse({"w": "0.5", "compose": "3:+2,8:-1", "n": "5", "sampler": "ddim", "steps": "4",
                              "seed": "7"})
    assert request.method == "compose" and request.compose == ((3, 2.0), (8, -1.0)) and request.classes == ()
    result = explorer.render(request)
    labels = torch.full((5,), model.num_classes)
    x = generate_samples(model, labels, w=0.5, sampler="ddim", steps=4, seed=7, clip_x=model.x_bound,
                         guide=lambda f, w: compose(f, w, terms=((3, 2.0), (8, -1.0))))
    torch.testing.assert_close(torch.from_numpy(result.x), x, rtol=0, atol=1e-6)
    assert result.nfe_per_sample == 3 * 4  # two conditions and ∅, one call a step
    body = result.to_json(explorer.class_names)
    assert body["compose"] == "3:+2,8:-1" and body["samples"] == 5
    assert explorer.parse(request_as_query(request)) == request


@pytest.mark.parametrize(("query", "needle"), [
    ({"w": "1", "compose": "3"}, "CLASS:WEIGHT"),
    ({"w": "1", "compose": "3:abc"}, "signed number"),
    ({"w": "1", "compose": "13:1"}, "outside [0, 10)"),
    ({"w": "1", "compose": "seven:1"}, "no class named 'seven'"),
    ({"w": "1", "compose": "3:1", "method": "apg"}, "compose is its own guidance method"),
    ({"w": "1", "compose": "3:1", "n": "41"}, "must lie in [1, 40]"),
    ({"w": "1", "method": "adaptive", "p.gamma": "1.5"}, "gamma must lie in (0, 1]"),
])
def test_bad_compose_requests_are_one_line(explorer, query, needle):
    with pytest.raises(RequestError) as info:
        explorer.parse(query)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("method", "param", "value"), [("adaptive", "gamma", "1"), ("linear-ag", "full_fraction",
                                                                                      "1")])
def test_the_speed_up_methods_at_neutral_settings_draw_the_cfg_grid(explorer, method, param, value):
    base = {"w": "2", "classes": "1,4", "n": "2", "sampler": "dpmpp_2m", "steps": "5"}
    plain = explorer.render(explorer.parse(base))
    neutral = explorer.render(explorer.parse({**base, "method": method, f"p.{param}": value}))
    assert neutral.png == plain.png and neutral.nfe_per_sample == plain.nfe_per_sample == 10
