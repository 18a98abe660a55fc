"""Streaming estimation: equals numpy's one-pass statistics, merges exactly, Gram route when N < D."""

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from conftest import correlated_latents, dense_covariance

from gaussian_teleport.moments import MomentAccumulator, MomentsError, estimate_moments

F64 = dict(dtype=torch.float64)


def finalize(acc):
    return acc.finalize(**F64)


def numpy_cov(data):
    flat = data.reshape(len(data), -1).numpy()
    return flat.mean(0), np.cov(flat, rowvar=False)


def shift_averaged(cov, shape):
    """Average of S Σ Sᵀ over all cyclic shifts S: the best circulant (stationary) approximation."""
    c, h, w = shape
    idx = np.arange(c * h * w).reshape(shape)
    out = np.zeros_like(cov)
    for dy in range(h):
        for dx in range(w):
            p = np.roll(idx, (dy, dx), axis=(1, 2)).flatten()
            out += cov[np.ix_(p, p)]
    return out / (h * w)


def test_dense_matches_numpy_cov():
    data = correlated_latents(300, (2, 3, 4), seed=1)
    m = estimate_moments(data.split(13), "dense", **F64)
    mean, cov = dense_covariance(m)
    want_mean, want_cov = numpy_cov(data)
    np.testing.assert_allclose(mean, want_mean, atol=1e-12)
    np.testing.assert_allclose(cov, want_cov, atol=1e-11)
    assert m.count == 300 and m.metadata["estimator"].startswith("dense")


def test_lowrank_is_top_k_of_dense_with_mean_residual():
    data = correlated_latents(200, (3, 4, 4), seed=2)
    _, cov = numpy_cov(data)
    ref = np.linalg.eigvalsh(cov)[::-1]
    m = estimate_moments([data], "lowrank", rank=10, **F64)
    np.testing.assert_allclose(m.eigvals.numpy(), ref[:10], rtol=1e-10)
    np.testing.assert_allclose(float(m.residual), ref[10:].mean(), rtol=1e-10)


def test_stationary_is_shift_averaged_sample_covariance():
    shape = (2, 4, 5)
    data = correlated_latents(150, shape, seed=3)
    m = estimate_moments(data.split(40), "stationary", **F64)
    want_mean, cov = numpy_cov(data)
    mean, got = dense_covariance(m)
    np.testing.assert_allclose(mean, want_mean, atol=1e-12)
    np.testing.assert_allclose(got, shift_averaged(cov, shape), atol=1e-10)


@pytest.mark.parametrize("structure", ["dense", "lowrank", "stationary"])
def test_batching_and_merging_do_not_change_the_result(structure):
    data = correlated_latents(120, (2, 4, 4), seed=4)
    one = finalize(MomentAccumulator(structure, rank=6).add(data))
    shards = [MomentAccumulator(structure, rank=6).add(part) for part in data.split([1, 50, 33, 36])]
    merged = shards[0]
    for s in shards[1:]:
        merged.merge(s)
    for a, b in [(one, finalize(merged))]:
        ma, ca = dense_covariance(a)
        mb, cb = dense_covariance(b)
        np.testing.assert_allclose(ma, mb, atol=1e-12)
        np.testing.assert_allclose(ca, cb, atol=1e-10)


def test_gram_route_when_fewer_samples_than_dimensions_is_exact():
    """D = 1,200 > N = 40 with the scatter disabled: the thin-QR route must give numpy's eigenpairs."""
    data = correlated_latents(40, (3, 20, 20), seed=5)
    acc = MomentAccumulator("lowrank", rank=16, dense_max_dim=100)
    for part in data.split(9):
        acc.add(part)
    assert not acc.exact_scatter and acc.columns.shape[1] <= acc.sketch_cols  # nothing truncated: exact
    m = finalize(acc)
    flat = data.reshape(40, -1).numpy()
    centered = flat - flat.mean(0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    np.testing.assert_allclose(m.eigvals.numpy(), (s**2 / 39)[:16], rtol=1e-9)
    overlap = np.abs(np.sum(m.eigvecs.numpy() * vt[:16].T, axis=0))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-8)
    total = (centered**2).sum() / 39
    np.testing.assert_allclose(float(m.residual) * (1200 - 16) + m.eigvals.sum().item(), total, rtol=1e-10)


def test_sketch_truncation_keeps_the_top_directions_and_the_total_variance():
    gen = torch.Generator().manual_seed(6)
    d, n, k = 600, 400, 8
    basis = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))[0]
    strong = torch.randn(n, k, generator=gen, dtype=torch.float64) * torch.linspace(10, 3, k, dtype=torch.float64)
    data = (strong @ basis.T + 0.1 * torch.randn(n, d, generator=gen, dtype=torch.float64)).reshape(n, 6, 10, 10)
    acc = MomentAccumulator("lowrank", rank=k, sketch=32, dense_max_dim=100)
    for part in data.split(25):
        acc.add(part)
    approx = finalize(acc)
    exact = finalize(MomentAccumulator("lowrank", rank=k, dense_max_dim=10**4).add(data))
    np.testing.assert_allclose(approx.eigvals.numpy(), exact.eigvals.numpy(), rtol=2e-2)
    trace = lambda m: m.eigvals.sum().item() + float(m.residual) * (d - k)
    np.testing.assert_allclose(trace(approx), trace(exact), rtol=1e-10)


@pytest.mark.parametrize("structure", ["dense", "stationary"])
def test_adding_to_existing_moments_is_exact(structure):
    data = correlated_latents(90, (2, 3, 3), seed=7)
    first = estimate_moments([data[:50]], structure, **F64)
    acc = MomentAccumulator.from_moments(first).add(data[50:])
    _, got = dense_covariance(finalize(acc))
    _, want = dense_covariance(estimate_moments([data], structure, **F64))
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert acc.count == 90


def test_bad_input_is_refused_with_a_reason():
    acc = MomentAccumulator("lowrank", rank=4)
    acc.add(torch.zeros(2, 2, 3, 3))
    with pytest.raises(MomentsError, match="bring all images to one size"):
        acc.add(torch.zeros(2, 2, 4, 3))
    with pytest.raises(MomentsError, match="NaN"):
        acc.add(torch.full((1, 2, 3, 3), float("nan")))
    with pytest.raises(MomentsError, match="at least 2"):
        MomentAccumulator("dense").add(torch.zeros(1, 1, 2, 2)).finalize()
    with pytest.raises(MomentsError, match="use 'lowrank'"):
        MomentAccumulator("dense").add(torch.zeros(2, 4, 64, 64))
    with pytest.raises(MomentsError, match="unknown structure"):
        MomentAccumulator("full")


def _distributed_worker(rank, world, init_file, data, out_dir, structure):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    acc = MomentAccumulator(structure, rank=5, sketch=64, dense_max_dim=40)
    acc.add(data[rank::world])
    acc.all_reduce()
    m = acc.finalize(dtype=torch.float64)
    save_file({"mean": m.mean, "eigvals": m.eigvals}, os.path.join(out_dir, f"{structure}-{rank}.safetensors"))
    dist.destroy_process_group()


@pytest.mark.parametrize("structure", ["lowrank", "stationary"])
def test_two_process_gloo_all_reduce_equals_single_process(tmp_path, structure):
    import torch.multiprocessing as mp

    data = correlated_latents(24, (2, 5, 5), seed=8)  # D = 50 > dense_max_dim: the sketch is gathered
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), data, str(tmp_path), structure), nprocs=2)
    single = MomentAccumulator(structure, rank=5, sketch=64, dense_max_dim=40).add(data).finalize(dtype=torch.float64)
    for r in range(2):
        got = load_file(tmp_path / f"{structure}-{r}.safetensors")
        torch.testing.assert_close(got["mean"], single.mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(got["eigvals"], single.eigvals, rtol=1e-9, atol=1e-12)


def test_few_images_at_a_large_latent_take_the_gram_route_fast():
    """D = 4,096 with 24 images: a thin QR of 24 columns, not a 4,096² eigendecomposition."""
    import time

    data = torch.randn(24, 4, 32, 32, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    acc = MomentAccumulator("lowrank", rank=16)
    for part in data.split(8):
        acc.add(part)
    start = time.perf_counter()
    m = finalize(acc)
    assert time.perf_counter() - start < 5 and not acc.exact_scatter
    assert m.metadata["estimator"] == "thin-qr-sketch-float64(m=144)" and m.rank == 16


def test_a_rank_above_the_samples_is_kept_at_n_minus_1_with_a_message(caplog):
    import logging

    data = correlated_latents(6, (2, 3, 3), seed=13)
    with caplog.at_level(logging.WARNING, logger="gaussian_teleport"):
        m = estimate_moments([data], "lowrank", rank=8, **F64)
    assert m.rank == 5 and m.metadata["rank_requested"] == "8"
    assert "rank 8 asked, but 6 samples give at most 5 directions" in caplog.text


def test_empty_batches_add_nothing_and_integer_latents_are_refused():
    acc = MomentAccumulator("stationary")
    acc.add(torch.zeros(0, 2, 3, 3))
    assert acc.count == 0
    with pytest.raises(MomentsError, match="floating point"):
        acc.add(torch.zeros(2, 2, 3, 3, dtype=torch.long))
