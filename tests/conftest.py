"""Shared fixtures: tiny trained runs, built once per session."""

import pytest
import torch

from cfgdiff.core.toy import GaussianMixture
from cfgdiff.training import default_config, train

torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to oversubscription


@pytest.fixture(scope="session")
def gm():
    """The three-Gaussian 2-D mixture: exact class-conditional and marginal eps, the tests' ground truth."""
    return GaussianMixture.three_gaussians()


@pytest.fixture(scope="session")
def gmm_run(tmp_path_factory):
    """A short gmm2d run (MLP), trained enough for guided samples to land near the class means."""
    run_dir = tmp_path_factory.mktemp("gmm_run")
    config = default_config("gmm2d", steps=1500, batch_size=256, checkpoint_every=500, log_every=100,
                            model={"arch": "mlp", "hidden": 64, "depth": 2, "emb_dim": 64})
    trainer = train(config, run_dir)
    return run_dir, trainer


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A few steps of a very small U-Net on digits: enough to exercise the image paths, not to draw digits."""
    run_dir = tmp_path_factory.mktemp("digits_run")
    config = default_config("digits", steps=3, batch_size=16, checkpoint_every=3, log_every=1,
                            model={"arch": "unet", "base_channels": 8, "channel_mults": [1, 2],
                                   "num_res_blocks": 1, "emb_dim": 32, "groups": 4})
    train(config, run_dir)
    return run_dir


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    """A fresh cfgdiff cache directory (CFGDIFF_CACHE_DIR) for one test."""
    monkeypatch.setenv("CFGDIFF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
