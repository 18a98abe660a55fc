"""PNG plots of the benchmark (matplotlib, Agg backend)."""

from __future__ import annotations

import statistics


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the benchmark plots need matplotlib: pip install matplotlib (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_explained_variance(result, path):
    """1 − score EV per moments variant (log scale), and the dense denoiser-output EV, against σ/σ_data."""
    plt = _pyplot()
    ev = result["ev"]
    x = [r["sigma/sigma_data"] for r in ev]
    names = [k for k in ev[0] if k not in ("sigma/sigma_data", "sigma", "dense (denoiser EV)")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for n in names:
        a.plot(x, [max(1 - r[n], 1e-6) for r in ev], marker="o", ms=3, label=n)
    a.axhline(1e-3, color="gray", ls=":", lw=1)
    a.axhline(1e-2, color="gray", ls="--", lw=1)
    a.set(xscale="log", yscale="log", xlabel="σ / σ_data", ylabel="1 − score EV (lower = more Gaussian)",
          title=f"{result['model']}: Gaussian score error")
    a.legend(fontsize=8)
    b.plot(x, [r["dense (denoiser EV)"] for r in ev], marker="o", ms=3, color="C0")
    b.set(xscale="log", ylim=(-0.2, 1.02), xlabel="σ / σ_data", ylabel="denoiser-output EV (dense)",
          title="denoiser-output EV (stricter, unstable at high σ)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_std(v):
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def plot_quality(result, path):
    """FD against model calls, one panel per schedule × sampler: plain, and per teleport variant its save curve
    (dots) and same-budget runs (triangles)."""
    plt = _pyplot()
    rows = result["rows"]
    schedules = list(dict.fromkeys(r["schedule"] for r in rows))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(len(schedules), len(samplers), figsize=(4.2 * len(samplers), 3.4 * len(schedules)),
                             squeeze=False)
    floor, floor_sd = _mean_std(result["floor"])
    for i, schedule in enumerate(schedules):
        for j, sampler in enumerate(samplers):
            ax = axes[i][j]
            g = [r for r in rows if r["schedule"] == schedule and r["sampler"] == sampler]
            styles = [("plain", "plain", dict(marker="*", ms=11, ls="none", color="k"))]
            for n, variant in enumerate(v for v in dict.fromkeys(r["variant"] for r in g) if v != "plain"):
                styles += [(variant, "save", dict(marker="o", ms=4, color=f"C{n}")),
                           (variant, "same_budget", dict(marker="^", ms=6, ls="none", color=f"C{n}"))]
            top = max(r["steps"] for r in g)
            for variant, mode, style in styles:
                pts = sorted((r for r in g if r["mode"] == mode and r["variant"] == variant and r["steps"] == top),
                             key=lambda r: r["calls"])
                if not pts:
                    continue
                ms = [_mean_std(r["fd"]) for r in pts]
                ax.errorbar([r["calls"] for r in pts], [m for m, _ in ms], yerr=[s for _, s in ms],
                            label=variant if mode != "same_budget" else None, capsize=2, **style)
            ax.axhspan(floor - floor_sd, floor + floor_sd, color="gray", alpha=0.2)
            ax.axhline(floor, color="gray", lw=1, ls="--", label="real-vs-real floor")
            ax.set(title=f"{result['model']}: {sampler}, {schedule} schedule", xlabel="model calls", ylabel="FD")
            ax.set_yscale("log")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
