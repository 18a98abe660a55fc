"""The benchmark: Fréchet distance, verdicts, configurations, calibration scoring, and the --quick smoke run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from gaussian_teleport.bench.calibration import bisect
from gaussian_teleport.bench.features import frechet_distance, gaussian_stats
from gaussian_teleport.bench.quality import (SAVE_FLOOR, Variant, class_moments, configurations, largest_saving,
                                             strict, unchanged, within_noise)
from gaussian_teleport.bench.run import RESULTS
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


def row(mode, calls, fd, k=0, rmse=0.0):
    return {"sampler": "euler", "schedule": "edm", "steps": 20, "mode": mode, "calls": calls, "fd": fd,
            "rmse": [rmse] * len(fd), "handoff_sigma_data": 10.0 / (k + 1), "handoff": f"steps:{k}" if k else "",
            "variant": "plain" if mode == "plain" else "data moments, data mean", "rmse_fine": [0.02] * len(fd)}


def test_verdicts_are_paired_against_the_seed_spread_and_the_discretisation_error():
    base = row("plain", 20, [10.0, 12.0, 14.0, 12.0])       # std ≈ 1.63
    assert within_noise(row("save", 19, [11.0, 13.0, 15.0, 13.0], 1), base)      # +1.0
    assert not within_noise(row("save", 18, [12.0, 14.0, 16.0, 14.0], 2), base)  # +2.0
    assert strict(row("save", 19, [10.1, 12.1, 14.1, 12.1], 1), base)            # +0.1 < 2% of 12
    assert not strict(row("save", 19, [10.5, 12.5, 14.5, 12.5], 1), base)
    assert unchanged(row("save", 19, [10.0, 12.0, 14.0, 12.0], 1, rmse=0.019), base)
    assert not unchanged(row("save", 19, [10.0, 12.0, 14.0, 12.0], 1, rmse=0.021), base)


def test_the_largest_saving_stops_at_the_first_skip_that_fails():
    base = row("plain", 20, [10.0, 12.0, 14.0, 12.0])
    rows = [base, row("save", 19, [10.5, 12.5, 14.5, 12.5], 1), row("save", 18, [13.0, 15.0, 17.0, 15.0], 2),
            row("save", 17, [10.0, 12.0, 14.0, 12.0], 3)]   # a lucky later skip must not count
    assert largest_saving(rows, base, within_noise)["calls"] == 19


def test_configurations_stop_at_the_save_floor_and_skip_unreachable_hand_offs():
    sd = 0.5
    variants = (Variant("data", "data"), Variant("data", "model"))
    runs = configurations("heun", "sd", 18, sd, variants=variants, same_budget=(20.0, 5.0))
    sigmas = make_sigmas("sd", 18, sd)
    save = [r for r in runs if r.mode == "save" and r.variant == variants[0]]
    assert runs[0].mode == "plain"
    assert [int(r.handoff.value) for r in save] == list(range(1, len(save) + 1))
    assert float(sigmas[len(save)]) >= SAVE_FLOOR * sd > float(sigmas[len(save) + 1])
    assert [r.handoff.value for r in runs if r.mode == "same_budget" and r.variant == variants[1]] == [2.5]
    assert len([r for r in runs if r.mode == "save"]) == 2 * len(save)


def test_class_moments_shift_the_mean_and_keep_the_covariance():
    data = torch.randn(50, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    m = estimate_moments([data], "dense", space="model", dtype=torch.float64)
    mu_c = torch.ones(1, 2, 2, dtype=torch.float64)
    g = class_moments(m, mu_c, 3.0)
    torch.testing.assert_close(g.mean, m.mean + 3.0 * (mu_c - m.mean))
    torch.testing.assert_close(g.eigvals, m.eigvals)


def test_the_tolerance_is_scored_by_the_same_bisection_as_calibrate_handoff():
    curve = {1: 0.001, 2: 0.004, 3: 0.01, 4: 0.03, 5: 0.2, 6: 0.9}
    assert [bisect(curve, t) for t in (0.0005, 0.005, 0.03, 1.0)] == [0, 2, 4, 6]


def test_the_tolerance_window_names_the_safe_and_the_near_ends():
    from gaussian_teleport.bench.report import tolerance_window

    rows = [{"scale": "spread", "tolerance": t, "pass": p, "within_one": w, "configs": 21}
            for t, p, w in ((0.005, 21, 9), (0.01, 20, 12), (0.02, 17, 19), (0.03, 14, 21))]
    rows.append({"scale": "steps", "tolerance": 0.5, "pass": 8, "within_one": 10, "configs": 21})
    text = tolerance_window(rows).splitlines()
    assert text[0] == ("- *spread*: every recommendation holds quality up to tolerance 0.005; 90% within one step "
                       "of the best needs at least 0.02.")
    assert text[1] == ("- *steps*: no tolerance scored keeps every recommendation; none scored reaches 90% within one "
                       "step of the best.")


def run_bench(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "gaussian_teleport.bench.run", *args], capture_output=True,
                          text=True, timeout=600, cwd=str(cwd), env=env)


def committed_results():
    return {name: os.path.getmtime(os.path.join(RESULTS, name)) for name in os.listdir(RESULTS)} \
        if os.path.isdir(RESULTS) else {}


def test_quick_benchmark_writes_to_its_out_folder_and_leaves_committed_results_alone(tmp_path):
    """One real quick run, kept with --out (without it the folder is removed at the end: test_defects_cli_bench)."""
    pytest.importorskip("sklearn")
    before = committed_results()
    (tmp_path / "systemp").mkdir()
    done = run_bench("--quick", "--no-plots", "--out", str(tmp_path / "quick"), cwd=tmp_path,
                     env={**os.environ, "TMPDIR": str(tmp_path / "systemp")})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.strip().splitlines()[-1].removeprefix("reports in ").strip()
    assert os.path.realpath(out) == os.path.realpath(tmp_path / "quick")
    assert committed_results() == before and [n for n in os.listdir(tmp_path / "systemp") if n.startswith("teleport-bench-")] == []
    names = os.listdir(out)
    for expect in ("summary.md", "results.json", "digits_quality.md", "digits_explained_variance.md",
                   "digits_guidance.md", "patches_quality.md", "digits_model_moments.md", "calibration.md"):
        assert expect in names
    saved = json.loads(open(os.path.join(out, "results.json"), encoding="utf-8").read())
    rows = saved["results"][0]["rows"]
    plain = next(r for r in rows if r["mode"] == "plain")
    assert plain["rmse"] == [0.0, 0.0] and len(plain["rmse_fine"]) == 2   # the baseline against itself
    assert {r["variant"] for r in rows} == {"plain", "data moments, data mean", "data moments, model mean",
                                            "model-derived moments, model mean"}
    assert all(r["calls"] < plain["calls"] + 1 for r in rows if r["mode"] == "save")
    assert saved["calibration"]["validation"] and saved["calibration"]["tolerances"]
    summary = open(os.path.join(out, "summary.md"), encoding="utf-8").read()
    assert "(c) digits: fewest model calls with quality held" in summary and "(f) Calibration" in summary

    rewritten = run_bench("--report-only", "--no-plots", "--out", out, cwd=tmp_path)
    assert rewritten.returncode == 0 and open(os.path.join(out, "summary.md"), encoding="utf-8").read() == summary


def test_report_only_says_where_it_looks(tmp_path):
    done = run_bench("--report-only", "--out", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert done.returncode != 0 and "results.json, which does not exist" in done.stderr
