"""Train a reference model: ``python -m gaussian_teleport.reference.train --data digits --conditional``.

EDM training (Karras et al. 2022, §5): σ drawn from a log-normal, loss weighted by
λ(σ) = (σ² + σ_d²)/(σ·σ_d)², an exponential moving average of the weights is what gets saved.
A quarter of the σ draws are log-uniform up to 1.5× the EDM schedule's σ_max instead: the log-normal
alone rarely visits σ ≫ 20σ_d, so a briefly trained model is wrong there and its own baseline stops
being ground truth for the teleport comparison.

Writes <out>.safetensors (EMA weights, config in the metadata), <out>.moments.safetensors (dense
moments of the training data: the teleport's Gaussian) and <out>.json (the command, data, seed,
steps, wall time and final loss).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import sys
import time

import torch

from ..moments import estimate_moments, save_moments
from .data import DATASETS, load_dataset
from .model import EDMDenoiser, ModelConfig, save_model

P_MEAN, P_STD = -1.2, 1.2         # EDM's log-normal σ distribution (for σ_d = 0.5)
UNIFORM_SHARE = 0.25              # share of log-uniform σ draws over [σ_min, 1.5σ_max]
LABEL_DROPOUT = 0.1               # share of labels replaced by the null class (for CFG)


def sample_sigmas(n: int, sigma_data: float, generator: torch.Generator) -> torch.Tensor:
    """EDM's log-normal σ mixed with log-uniform σ over the whole sampling range."""
    k = sigma_data / 0.5
    lognormal = (torch.randn(n, generator=generator) * P_STD + P_MEAN).exp() * k
    lo, hi = math.log(0.002 * k), math.log(120.0 * k)
    loguniform = (torch.rand(n, generator=generator) * (hi - lo) + lo).exp()
    pick = torch.rand(n, generator=generator) < UNIFORM_SHARE
    return torch.where(pick, loguniform, lognormal)


def edm_loss(model: EDMDenoiser, x0, labels, generator):
    sd = model.cfg.sigma_data
    # random numbers come from one CPU generator, so a run is the same on any device
    sigma = sample_sigmas(x0.shape[0], sd, generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    denoised = model(x0 + sigma.view(-1, 1, 1, 1) * noise, sigma, labels)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return (weight.view(-1, 1, 1, 1) * (denoised - x0) ** 2).mean()


def random_flips(x: torch.Tensor, generator) -> torch.Tensor:
    flip_w = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    flip_h = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    x = torch.where(flip_w.view(-1, 1, 1, 1), x.flip(3), x)
    return torch.where(flip_h.view(-1, 1, 1, 1), x.flip(2), x)


def train(args) -> dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data = load_dataset(args.data, seed=args.seed)
    images, labels = data.images, data.labels
    sigma_data = float(images.std())
    c, h, w = data.shape
    cfg = ModelConfig(channels=c, size=h, sigma_data=round(sigma_data, 4),
                      num_classes=data.num_classes if args.conditional else 0,
                      width=args.width, depth=args.depth)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = EDMDenoiser(cfg).train().to(device)
    images_dev = images.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = max(args.steps // 50, 1)
    limit = args.minutes * 60 if args.minutes else math.inf
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    start, losses = time.time(), []
    log_every = max(args.steps // 20, 1)
    step = 0
    while True:
        # Progress is the larger of the step and time fractions, so a time-limited run still ends
        # its cosine decay (on a busy CPU fewer steps fit than planned; the record says how many).
        progress = max(step / args.steps, (time.time() - start) / limit)
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        idx = torch.randint(0, len(images), (args.batch,), generator=gen)
        x0 = images_dev[idx.to(device)]
        if args.data == "patches":
            x0 = random_flips(x0, gen)
        y = None
        if cfg.num_classes:
            y = labels[idx].clone()
            y[torch.rand(args.batch, generator=gen) < LABEL_DROPOUT] = cfg.num_classes
            y = y.to(device)
        loss = edm_loss(model, x0, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f"step {step}  loss {recent:.4f}  {time.time() - start:.0f}s  progress {progress:.0%}", flush=True)
    seconds = time.time() - start

    out = args.out
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    record = {
        "command": "python -m gaussian_teleport.reference.train " + " ".join(shlex.quote(a) for a in args.argv),
        "data": data.description, "data_count": len(images), "seed": args.seed, "steps": step,
        "planned_steps": args.steps, "minutes_limit": args.minutes,
        "batch": args.batch, "lr": args.lr, "ema": args.ema, "config": cfg.__dict__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sigma_distribution": f"log-normal(P_mean {P_MEAN}, P_std {P_STD}) scaled by σ_d/0.5, "
                              f"{UNIFORM_SHARE:.0%} log-uniform over [0.002, 120]·σ_d/0.5",
        "label_dropout": LABEL_DROPOUT if cfg.num_classes else 0.0,
        "final_loss": sum(losses[-log_every:]) / max(len(losses[-log_every:]), 1), "train_seconds": round(seconds, 1),
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(),
    }
    ema = ema.cpu()
    save_model(ema, out + ".safetensors", {"train_seconds": round(seconds, 1), "steps": step})
    # The sampler works in data space (no autoencoder), so the moments are stored as model space.
    moments = estimate_moments([images], "dense", space="model", latent_format="none",
                               metadata={"source": f"reference data set {args.data}"})
    save_moments(moments, out + ".moments.safetensors", overwrite=True)
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description="Train a small EDM reference model on a bundled data set.")
    p.add_argument("--data", choices=DATASETS, required=True, help="data set")
    p.add_argument("--conditional", action="store_true", help="class-conditional, with a null class for CFG")
    p.add_argument("--out", required=True, help="output path without extension, e.g. reference/weights/digits")
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps (the most; see --minutes)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time limit; the learning-rate decay follows whichever of steps and time runs out first")
    p.add_argument("--batch", type=int, default=512, help="batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    p.add_argument("--width", type=int, default=320, help="hidden width")
    p.add_argument("--depth", type=int, default=3, help="residual blocks")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return train(args)


if __name__ == "__main__":
    main()
