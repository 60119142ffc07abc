"""The network's form (precision, layout): the capability probe decides what ``auto`` may pick, and the measured
choice is cached per machine and network, never trusted when stale or corrupt."""

import json

import pytest
import torch

from cfgdiff.runtime import precision
from cfgdiff.runtime.precision import FormCache, NetworkForm, candidate_forms, choose_form, network_key


def _measure(seconds: dict[str, float], calls: list[str]):
    """A measurement that returns the given seconds per form name and records which forms it timed."""
    def measure(form: NetworkForm) -> float:
        calls.append(form.name)
        return seconds[form.name]
    return measure


FAST_BF16 = {"fp32": 2.0, "bf16": 1.0, "fp32 + channels-last": 3.0, "bf16 + channels-last": 0.5}
KEY = {"class": "Net", "parameters": 10, "config": None, "input_shape": [8, 1, 8, 8], "purpose": "sampling"}


@pytest.mark.parametrize("images", [False, True])
def test_auto_falls_back_to_fp32_without_fast_bf16(monkeypatch, tmp_path, images):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    assert {f.precision for f in candidate_forms("auto", "auto", device="cpu", images=images)} == {"fp32"}
    calls: list[str] = []
    form = choose_form("auto", "auto", device="cpu", images=images, measure=_measure(FAST_BF16, calls), key=KEY,
                       cache=FormCache(tmp_path))
    assert form.precision == "fp32"  # although the measurement would have favoured bf16
    assert not any(name.startswith("bf16") for name in calls)
    # the same measurement where the probe says yes picks bf16: the fallback above is the probe's doing
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    form = choose_form("auto", "auto", device="cpu", images=images, measure=_measure(FAST_BF16, []), key=KEY,
                       cache=FormCache(tmp_path))
    assert form.precision == "bf16" and form.chosen_by == "measured"
    assert form.memory_format == ("channels-last" if images else "contiguous")


def test_explicit_choices_are_not_measured_and_bf16_needs_the_hardware(monkeypatch):
    form = choose_form("bf16", "channels-last", device="cpu", images=True, measure=lambda f: 1 / 0)
    assert (form.precision, form.memory_format, form.chosen_by) == ("bf16", "channels-last", "asked")
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with pytest.raises(precision.PrecisionUnavailable, match="bf16 is not available"):
        precision.check_precision("bf16", "cpu")
    precision.check_precision("fp32", "cpu")  # fp32 is always there
    with pytest.raises(ValueError, match="unknown precision"):
        candidate_forms("fp16", "auto", device="cpu", images=True)


def test_the_cache_is_keyed_by_machine_and_network(monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    cache = FormCache(tmp_path)
    calls: list[str] = []

    def choose(key):
        return choose_form("auto", "auto", device="cpu", images=True, measure=_measure(FAST_BF16, calls), key=key,
                           cache=cache)

    first = choose(KEY)
    assert first.chosen_by == "measured" and len(calls) == 4
    again = choose(KEY)  # the same machine and network: no measurement
    assert (again.precision, again.memory_format, again.chosen_by) == (first.precision, first.memory_format, "cached")
    assert len(calls) == 4
    choose({**KEY, "input_shape": [16, 1, 8, 8]})  # another batch shape is another network entry
    assert len(calls) == 8
    choose({**KEY, "parameters": 11})
    assert len(calls) == 12
    machine = precision.machine_key("cpu")
    monkeypatch.setattr(precision, "machine_key", lambda device: {**machine, "threads": machine["threads"] + 1})
    choose(KEY)  # another thread count is another machine
    assert len(calls) == 16
    assert len(list(tmp_path.glob("*.json"))) == 4


@pytest.mark.parametrize("damage", ["corrupt", "other key", "old format", "choice not a candidate", "not a dict"])
def test_a_stale_or_corrupt_entry_is_ignored_and_rewritten(monkeypatch, tmp_path, damage):
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)
    cache = FormCache(tmp_path)
    calls: list[str] = []
    choose_form("auto", "auto", device="cpu", images=True, measure=_measure(FAST_BF16, calls), key=KEY, cache=cache)
    (path,) = tmp_path.glob("*.json")
    entry = json.loads(path.read_text())
    if damage == "corrupt":
        path.write_text(path.read_text()[:20])
    elif damage == "not a dict":
        path.write_text("[1, 2]")
    else:
        if damage == "other key":
            entry["key"]["network"]["parameters"] = 99
        elif damage == "old format":
            entry["format"] = 0
        else:  # a choice the candidates do not hold (e.g. written by hand)
            entry["choice"]["precision"] = "fp16"
        path.write_text(json.dumps(entry))
    slow_bf16 = {**FAST_BF16, "fp32": 0.1}  # the new measurement picks fp32: the entry was not trusted
    form = choose_form("auto", "auto", device="cpu", images=True, measure=_measure(slow_bf16, calls), key=KEY,
                       cache=cache)
    assert form.chosen_by == "measured" and (form.precision, form.memory_format) == ("fp32", "contiguous")
    assert len(calls) == 8
    rewritten = json.loads(path.read_text())
    assert rewritten["choice"]["precision"] == "fp32" and rewritten["format"] == precision.CACHE_FORMAT
    assert choose_form("auto", "auto", device="cpu", images=True, measure=_measure(slow_bf16, calls), key=KEY,
                       cache=cache).chosen_by == "cached"


def test_network_key_names_class_parameters_config_and_shape():
    net = torch.nn.Linear(3, 4)
    key = network_key(net, (8, 3), purpose="training")
    assert key["class"] == "torch.nn.modules.linear.Linear" and key["parameters"] == 3 * 4 + 4
    assert key["input_shape"] == [8, 3] and key["purpose"] == "training"


def test_machine_key_names_the_cpu_flags_torch_and_threads():
    key = precision.machine_key("cpu")
    assert key["torch"] == torch.__version__ and key["threads"] == torch.get_num_threads()
    assert set(key["cpu_flags"]) <= set(precision.CPU_BF16_FLAGS)
    assert precision.bf16_supported("cpu") == bool(set(key["cpu_flags"]) & {"avx512_bf16", "amx_bf16"})


def test_compile_cache_goes_under_the_cfgdiff_cache(monkeypatch, cache_dir):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")  # unset (and restored after the test)
    assert precision.enable_compile_cache() == cache_dir / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    assert str(precision.enable_compile_cache()) == "/elsewhere"  # a folder the user set is kept
