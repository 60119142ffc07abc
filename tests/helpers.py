"""Helpers shared by the sampler, solver and guidance tests."""

import torch


def moment_error(gm, x, labels):
    """Largest per-class error in mean and covariance against the mixture's exact moments."""
    err = 0.0
    for c in range(gm.num_classes):
        xc = x[labels == c]
        cov = torch.cov(xc.T)
        err = max(err, (xc.mean(0) - gm.means[c]).abs().max().item(),
                  (cov - torch.diag(gm.stds[c] ** 2)).abs().max().item())
    return err


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
