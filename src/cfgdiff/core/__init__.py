"""The ground layer: the math and the contract, importing nothing else of the package.

* ``schedule``: α, σ from λ (tensor and host float64), the training λ distributions and the sampling grids;
* ``diffusion``: z = α x + σ ε, x̂ ↔ ε̂, q(z_λ | z_λ'), the posterior, the v-interpolated reverse variance,
  σ_ve ↔ λ: the only home of these formulas, as tensor functions and host-side float64 coefficients;
* ``contract``: the eps_fn contract ``eps = eps_fn(z, logsnr, labels)`` and its typed optional extensions;
* ``toy``: an exact Gaussian mixture, whose ε and Bayes classifier are known in closed form.
"""
