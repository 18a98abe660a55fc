"""A small classifier trained on the data: its penultimate features for Fréchet distances, its
predictions for the class accuracy of guided samples."""

from __future__ import annotations

import torch
from torch import nn

FEATURES = 64


class Classifier(nn.Module):
    def __init__(self, dim: int, classes: int, hidden: int = 256):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                  nn.SiLU(), nn.Linear(hidden, FEATURES), nn.SiLU())
        self.head = nn.Linear(FEATURES, classes)

    def features(self, x):
        return self.body(x.float())

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(images, labels, classes: int, steps: int = 3000, seed: int = 0,
                     noise: float = 0.05) -> Classifier:
    """Adam on cross-entropy, with a little input noise so features are smooth around the data."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Classifier(images[0].numel(), classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (256,), generator=gen)
        x = images[idx] + noise * torch.randn(images[idx].shape, generator=gen)
        loss = nn.functional.cross_entropy(net(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def features(net: Classifier, images: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    return torch.cat([net.features(images[i:i + batch]) for i in range(0, len(images), batch)]).double()


@torch.no_grad()
def accuracy(net: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    pred = torch.cat([net(images[i:i + 4096]).argmax(1) for i in range(0, len(images), 4096)])
    return float((pred == labels).double().mean())


def gaussian_stats(feats: torch.Tensor):
    f = feats.double()
    return f.mean(0), torch.cov(f.T)


def frechet_distance(stats_a, stats_b) -> float:
    """‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr (Σ_a^½ Σ_b Σ_a^½)^½, in float64 by symmetric eigen routes."""
    (mu_a, cov_a), (mu_b, cov_b) = stats_a, stats_b
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp(min=0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)
