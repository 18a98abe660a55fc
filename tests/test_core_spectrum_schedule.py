"""The schedule from the moments' spectrum (scheduler.schedules.spectrum_sigmas) and its benchmark's smoke run."""

import math

import pytest
import torch

from gaussian_teleport.moments import DenseMoments, LowRankMoments, MomentsError, StationaryMoments
from gaussian_teleport.moments.latent_formats import to_model_space
from gaussian_teleport.scheduler.schedules import denoiser_change, get_sigmas_karras, moments_spectrum, spectrum_sigmas


def dense(lam, space="model", latent_format="none"):
    d = len(lam)
    return DenseMoments(torch.zeros(1, 1, d, dtype=torch.float64), torch.tensor(lam, dtype=torch.float64),
                        torch.eye(d, dtype=torch.float64), count=10, space=space, latent_format=latent_format)


def all_moments():
    gen = torch.Generator().manual_seed(0)
    lam = torch.logspace(0.5, -4, 16, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))[0]
    mean = torch.zeros(1, 4, 4, dtype=torch.float64)
    return {"dense": DenseMoments(mean, lam, q, count=10, space="model"),
            "lowrank": LowRankMoments(mean, lam[:4], q[:, :4].contiguous(), 0.01, count=10, space="model"),
            "stationary": StationaryMoments(torch.zeros(2, 4, 4, dtype=torch.float64),
                                            torch.rand(4, 4, 2, generator=gen, dtype=torch.float64),
                                            torch.eye(2, dtype=torch.complex128).expand(4, 4, 2, 2).clone(),
                                            count=10, space="model")}


OPTIONS = [dict(), dict(order=2), dict(mix=0.5), dict(order=2, mix=0.3), dict(measure="variance", mix=0.5)]


@pytest.mark.parametrize("structure", ["dense", "lowrank", "stationary"])
@pytest.mark.parametrize("options", OPTIONS)
def test_the_schedule_falls_strictly_from_sigma_max_to_sigma_min_then_0(structure, options):
    m = all_moments()[structure]
    for n in (2, 5, 20, 60):
        s = spectrum_sigmas(m, n, 0.03, 14.6, **options)
        assert s.dtype == torch.float64 and len(s) == n + 1
        assert float(s[0]) == 14.6 and float(s[-2]) == 0.03 and float(s[-1]) == 0.0
        assert bool((s[1:] < s[:-1]).all()), s


def test_one_step_and_a_full_mix_are_the_plain_schedules():
    m = all_moments()["dense"]
    assert spectrum_sigmas(m, 1, 0.03, 14.6).tolist() == [14.6, 0.0]
    karras = get_sigmas_karras(10, 0.03, 14.6)
    assert torch.allclose(spectrum_sigmas(m, 10, 0.03, 14.6, mix=1.0), karras, rtol=1e-6)


def test_each_step_carries_an_equal_share_of_the_gaussian_steps_error():
    """The density integrated between consecutive sigmas (by a fine quadrature of its own) is the same for every step."""
    m = all_moments()["lowrank"]
    lam, w = moments_spectrum(m)
    s = spectrum_sigmas(m, 8, 0.01, 80.0, order=2)[:-1]
    shares = []
    for a, b in zip(s[:-1], s[1:]):
        u = torch.linspace(math.log(float(a)), math.log(float(b)), 2001, dtype=torch.float64)
        shares.append(float(torch.trapezoid(denoiser_change(lam, w, u, 2) ** (1 / 3), -u)))
    assert max(shares) / min(shares) < 1.01, shares


def test_the_spectrum_spends_few_steps_far_above_the_data_scale():
    """With every √λ ≤ 1, a schedule from σ 80 takes its first step much further down than Karras's."""
    m = dense([1.0, 0.5, 0.1, 0.01])
    s, k = spectrum_sigmas(m, 10, 0.002, 80.0), get_sigmas_karras(10, 0.002, 80.0)
    assert float(s[1]) < 0.5 * float(k[1])


def test_the_residual_of_low_rank_moments_counts_for_every_direction_outside_the_basis():
    q = torch.eye(9, dtype=torch.float64)[:, :1]
    m = LowRankMoments(torch.zeros(1, 3, 3, dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64), q, 0.1,
                       count=5, space="model")
    lam, w = moments_spectrum(m)
    assert lam.tolist() == [2.0, 0.1] and w.tolist() == [1.0, 8.0]


def test_raw_moments_are_converted_to_the_model_space_first():
    raw = dense([4.0, 1.0, 0.25, 0.01], space="raw", latent_format="SD15")
    raw = DenseMoments(torch.zeros(4, 1, 1, dtype=torch.float64), raw.eigvals, raw.eigvecs, count=10, space="raw",
                       latent_format="SD15")
    with pytest.raises(MomentsError, match="latent format"):
        spectrum_sigmas(raw, 8, 0.03, 14.6)
    converted = spectrum_sigmas(raw, 8, 0.03, 14.6, latent_format="SD15")
    assert torch.equal(converted, spectrum_sigmas(to_model_space(raw, "SD15"), 8, 0.03, 14.6))
    assert not torch.allclose(converted, spectrum_sigmas(dense([4.0, 1.0, 0.25, 0.01]), 8, 0.03, 14.6))


@pytest.mark.parametrize("bad, match", [
    (dict(n=0), "whole number"), (dict(n=2.0), "whole number"), (dict(n=True), "whole number"),
    (dict(sigma_min=0.0), "sigma_min"), (dict(sigma_max=float("nan")), "sigma_max"),
    (dict(sigma_min=20.0), "above sigma_min"), (dict(order=3), "order"), (dict(order=True), "order"),
    (dict(mix=1.5), "mix"), (dict(mix=-0.1), "mix"), (dict(measure="fid"), "measure"), (dict(rho=0), "rho"),
    (dict(grid=10), "grid"),
])
def test_bad_input_is_refused_with_what_is_wrong(bad, match):
    args = {"n": 8, "sigma_min": 0.03, "sigma_max": 14.6, **bad}
    with pytest.raises(ValueError, match=match):
        spectrum_sigmas(dense([1.0, 0.1]), args.pop("n"), args.pop("sigma_min"), args.pop("sigma_max"), **args)


def test_moments_it_cannot_read_are_refused():
    with pytest.raises(ValueError, match="no variance"):
        spectrum_sigmas(dense([0.0, 0.0]), 8, 0.03, 14.6)
    assert float(spectrum_sigmas(dense([0.0, 0.0]), 8, 0.03, 14.6, mix=1.0)[1]) > 0     # Karras, as asked
    with pytest.raises(ValueError, match="finite"):
        spectrum_sigmas(dense([float("nan"), 0.1]), 8, 0.03, 14.6)
    with pytest.raises(ValueError, match="dense, low-rank or stationary"):
        spectrum_sigmas(object(), 8, 0.03, 14.6)


def test_the_spectrum_schedule_benchmark_smoke_run_writes_its_report(tmp_path):
    pytest.importorskip("sklearn")
    from gaussian_teleport.bench import RESULTS
    from gaussian_teleport.bench import spectrum_schedule as bench

    with pytest.raises(SystemExit):
        bench.parse(["--quick", "--out", RESULTS])          # a smoke run never replaces the committed results
    opts = bench.parse(["--quick", "--out", str(tmp_path)])
    opts.samples = 4
    results = bench.run(opts, log=lambda *_: None)
    (config,) = results["configs"]
    assert set(config["rows"]) == set(bench.SAMPLERS)
    assert set(config["rows"]["gaussian"]) == set(bench.SCHEDULES)
    for sampler, by_schedule in config["rows"].items():
        for schedule, rows in by_schedule.items():
            assert [r["calls"] for r in rows] == list(opts.budgets), (sampler, schedule)
            assert all(math.isfinite(r["error"]) for r in rows)
    lines = bench.report(results)
    assert any(line.startswith("| digits | 1.0 | gaussian | spectrum p1 |") for line in lines)
