"""Other libraries' models and samplers behind cfgdiff's one contract ``eps = eps_fn(z, logsnr, labels)``.

* ``discrete``: the λ ↔ t map of discrete-time (DDPM) schedules and the ε / v / x-prediction conversions
  (math only, no optional dependency);
* ``diffusers``: diffusers' DiT and class-conditional UNet2DModel as eps_fns, and saved pipelines loaded from a
  local folder (optional extra ``cfgdiff[diffusers]``);
* ``kdiffusion``: k-diffusion's denoiser convention D(x, σ) both ways (the wrappers need no k-diffusion; its
  samplers do).

Importing this package imports none of the optional libraries.
"""
