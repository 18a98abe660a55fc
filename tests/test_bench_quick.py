"""The benchmark: Fréchet distance, verdicts, configurations, and the --quick smoke run CI uses."""

import json
import os

import numpy as np
import pytest
import torch

from gaussian_teleport.bench.features import frechet_distance, gaussian_stats
from gaussian_teleport.bench.quality import SAVE_FLOOR, class_moments, configurations
from gaussian_teleport.bench.run import bottom_line, within_noise
from gaussian_teleport.demo import make_sigmas
from gaussian_teleport.moments import estimate_moments


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(400, 6, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    (ma, ca), (mb, cb) = gaussian_stats(a), gaussian_stats(b)
    root = linalg.sqrtm(ca.numpy() @ cb.numpy()).real
    expect = float(((ma - mb) ** 2).sum()) + np.trace(ca.numpy()) + np.trace(cb.numpy()) - 2 * np.trace(root)
    assert frechet_distance((ma, ca), (mb, cb)) == pytest.approx(expect, rel=1e-8, abs=1e-8)
    assert frechet_distance((ma, ca), (ma, ca)) == pytest.approx(0, abs=1e-8)


def row(mode, calls, fd, k=0):
    return {"sampler": "euler", "schedule": "edm", "steps": 20, "mode": mode, "calls": calls, "fd": fd,
            "rmse": [0.01 * k] * len(fd), "handoff_sigma_data": 10.0 / (k + 1), "handoff": f"steps:{k}"}


def test_within_noise_uses_paired_differences_against_the_seed_spread():
    base = row("plain", 20, [10.0, 12.0, 14.0, 12.0])       # std ≈ 1.63
    assert within_noise(row("save", 19, [11.0, 13.0, 15.0, 13.0]), base)      # +1.0
    assert not within_noise(row("save", 18, [12.0, 14.0, 16.0, 14.0]), base)  # +2.0


def test_bottom_line_stops_at_the_first_skip_that_fails():
    base = row("plain", 20, [10.0, 12.0, 14.0, 12.0])
    rows = [base, row("save", 19, [10.5, 12.5, 14.5, 12.5], 1), row("save", 18, [13.0, 15.0, 17.0, 15.0], 2),
            row("save", 17, [10.0, 12.0, 14.0, 12.0], 3)]   # a lucky later skip must not count
    (line,) = bottom_line({"model": "m", "rows": rows})
    assert line["best"]["calls"] == 19 and line["base"] is base and line["same_budget"] is None


def test_configurations_stop_at_the_save_floor_and_skip_unreachable_hand_offs():
    sd = 0.5
    runs = configurations("heun", "sd", 18, sd, same_budget=(20.0, 5.0))
    sigmas = make_sigmas("sd", 18, sd)
    save = [r for r in runs if r.mode == "save"]
    assert runs[0].mode == "plain"
    assert [int(r.handoff.value) for r in save] == list(range(1, len(save) + 1))
    assert float(sigmas[len(save)]) >= SAVE_FLOOR * sd > float(sigmas[len(save) + 1])
    assert [r.handoff.value for r in runs if r.mode == "same_budget"] == [2.5]   # 20σ_d is above σ_max 14.6σ_d


def test_class_moments_shift_the_mean_and_keep_the_covariance():
    data = torch.randn(50, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = estimate_moments([data], "dense", space="model", dtype=torch.float64)
    mu_c = torch.ones(1, 2, 2, dtype=torch.float64)
    g = class_moments(m, mu_c, 3.0)
    torch.testing.assert_close(g.mean, m.mean + 3.0 * (mu_c - m.mean))
    torch.testing.assert_close(g.eigvals, m.eigvals)


def test_quick_benchmark_runs_and_writes_its_reports(tmp_path):
    pytest.importorskip("sklearn")
    from gaussian_teleport.bench.run import main

    args = ["--quick", "--out", str(tmp_path)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        args.append("--no-plots")
    results = main(args)
    assert [r["model"] for r in results] == ["digits", "patches"]
    names = os.listdir(tmp_path)
    for expect in ("summary.md", "results.json", "digits_quality.md", "digits_explained_variance.md",
                   "digits_guidance.md", "patches_quality.md"):
        assert expect in names
    if "--no-plots" not in args:
        assert "digits_quality.png" in names and "patches_explained_variance.png" in names
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = saved["results"][0]["rows"]
    plain = next(r for r in rows if r["mode"] == "plain")
    assert plain["rmse"] == [0.0, 0.0]                     # the baseline against itself
    assert all(r["calls"] < plain["calls"] for r in rows if r["mode"] == "save")
    assert "(c) The bottom line" in (tmp_path / "summary.md").read_text(encoding="utf-8")
