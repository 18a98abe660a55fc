"""Issue 22, items 1 and 2: video moments (estimated, resampled, from VAE statistics, saved) and video latent formats.

Every check is against an independent computation: numpy DFTs, dense covariances built from the stored
per-frequency matrices by explicit formulas, the published numbers of each format.
"""

import numpy as np
import pytest
import torch

from gaussian_teleport.moments import (ALL_LATENT_FORMATS, LATENT_FORMATS, VAE_STATS, VIDEO_LATENT_FORMATS,
                                       LatentFormat, MomentsError, VideoSpatialMoments, VideoStationaryMoments,
                                       estimate_moments, estimate_video_moments, find_latent_format, load_moments,
                                       save_moments, to_model_space, video_accumulator, video_moments_from_vae_stats)
from gaussian_teleport.moments.files import read_header
from gaussian_teleport.moments.video import resampled_eigh

SHAPE = (2, 3, 4, 5)     # C, T, H, W


def video_latents(n, shape=SHAPE, seed=0, offset=0.2):
    """Clips correlated in time, space and across channels (a sum of shifted copies of white noise)."""
    c, t, h, w = shape
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, t + 2, h + 2, w + 2, generator=g, dtype=torch.float64)
    swap = list(range(c))[::-1]
    x = (base[:, :, 1:-1, 1:-1, 1:-1] + 0.5 * base[:, :, :-2, 2:, 1:-1] + 0.3 * base[:, swap, 2:, :-2, 2:])
    return x * torch.linspace(0.5, 1.5, c, dtype=torch.float64).view(1, c, 1, 1, 1) + offset


def dft(n):
    k = np.arange(n)
    return np.exp(-2j * np.pi * np.outer(k, k) / n) / np.sqrt(n)


def dense_from_spectrum(p, c, size):
    """Σ (C·N × C·N, (c, t, h, w) row-major) of per-frequency C×C matrices p (T, H, W, C, C), by explicit DFT matrices."""
    t, h, w = size
    f = np.kron(np.kron(dft(t), dft(h)), dft(w))            # (N, N), frequency × position
    blocks = p.reshape(t * h * w, c, c)
    sigma = np.einsum("kq,kij,kr->iqjr", f.conj(), blocks, f)
    return sigma.reshape(c * t * h * w, c * t * h * w)


def spectrum_np(m):
    v = m.eigvecs.to(torch.complex128).numpy()
    return np.einsum("...ij,...j,...kj->...ik", v, m.eigvals.double().numpy(), v.conj())


def operator_matrix(op, shape):
    d = int(np.prod(shape))
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    return op.apply(eye, lambda lam: lam).reshape(d, d).T.numpy()


# ----------------------------------------------------------------------------
# video_stationary: estimation and the operator.


def test_the_estimate_is_the_per_frequency_sample_covariance_of_numpy_dfts():
    x = video_latents(30)
    m = estimate_video_moments([x[:7], x[7:19], x[19:]], dtype=torch.float64)
    assert isinstance(m, VideoStationaryMoments) and m.latent_shape == SHAPE and m.count == 30
    xs = x.numpy()
    np.testing.assert_allclose(m.mean.numpy(), xs.mean(0), atol=1e-12)
    spec = np.fft.fftn(xs - xs.mean(0), axes=(2, 3, 4), norm="ortho")           # n, C, T, H, W
    want = np.einsum("nithw,njthw->thwij", spec, spec.conj()) / 29
    np.testing.assert_allclose(spectrum_np(m), want, atol=1e-12)


def test_the_operator_is_the_dense_circulant_covariance():
    m = estimate_video_moments([video_latents(30)], dtype=torch.float64)
    sigma = dense_from_spectrum(spectrum_np(m), SHAPE[0], SHAPE[1:])
    assert np.abs(sigma.imag).max() < 1e-12
    got = operator_matrix(m.operator(SHAPE), SHAPE)
    np.testing.assert_allclose(got, sigma.real, atol=1e-12)


@pytest.mark.parametrize("size", [(6, 4, 6), (2, 3, 7), (5, 4, 5), (1, 4, 4)])
def test_another_frame_count_and_size_is_served_by_a_real_symmetric_psd_covariance(size):
    m = estimate_video_moments([video_latents(30)], dtype=torch.float64)
    shape = (SHAPE[0], *size)
    op = m.operator(shape)
    assert op.mean.shape == shape
    s = operator_matrix(op, shape)
    assert np.abs(s - s.T).max() < 1e-12 and np.linalg.eigvalsh(s).min() > 0
    f = lambda lam: torch.sqrt((0.3 ** 2 + 0.7 ** 2 * lam) / (0.9 ** 2 + 0.1 ** 2 * lam))  # noqa: E731
    lam, u = np.linalg.eigh(s)
    v = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = v.reshape(3, -1).numpy() @ (u * f(torch.from_numpy(lam)).numpy()) @ u.T
    np.testing.assert_allclose(op.apply(v, f).reshape(3, -1).numpy(), want, atol=1e-12)


def test_resampling_at_twice_the_size_keeps_every_original_frequency():
    m = estimate_video_moments([video_latents(30)], dtype=torch.float64)
    t, h, w = SHAPE[1:]
    vals, vecs = resampled_eigh(m.spectrum(), (2 * t, 2 * h, 2 * w), w + 1)
    np.testing.assert_allclose(vals[::2, ::2, ::2].numpy(), m.eigvals[:, :, :w // 2 + 1].numpy(), atol=1e-12)
    assert vals.shape == (2 * t, 2 * h, w + 1, SHAPE[0])


def test_the_mean_follows_frame_count_and_size():
    x = video_latents(20) + torch.linspace(0, 1, SHAPE[1], dtype=torch.float64).view(1, 1, -1, 1, 1)
    m = estimate_video_moments([x], dtype=torch.float64)
    op = m.operator((SHAPE[0], 6, 4, 5))
    # time is resized linearly (align_corners=False): the first and last frames stay, the mean's trend is kept
    np.testing.assert_allclose(op.mean[:, 0].numpy(), m.mean[:, 0].numpy(), atol=1e-12)
    np.testing.assert_allclose(op.mean[:, -1].numpy(), m.mean[:, -1].numpy(), atol=1e-12)
    assert torch.all(op.mean.mean((0, 2, 3)).diff() > 0)


def test_accumulation_merges_and_continues_exactly():
    x = video_latents(24)
    whole = estimate_video_moments([x], dtype=torch.float64)
    a, b = video_accumulator(), video_accumulator()
    a.add(x[:10])
    b.add(x[10:])
    merged = a.merge(b).finalize(dtype=torch.float64)
    part = estimate_video_moments([x[:11]], dtype=torch.float64)
    cont = estimate_video_moments([x[11:]], add_to=part, dtype=torch.float64)
    for got in (merged, cont):
        np.testing.assert_allclose(spectrum_np(got), spectrum_np(whole), atol=1e-12)
        np.testing.assert_allclose(got.mean.numpy(), whole.mean.numpy(), atol=1e-12)
        assert got.count == 24


def test_video_estimation_refuses_image_batches_and_mixed_sizes():
    with pytest.raises(MomentsError, match=r"\(B, C, T, H, W\).*estimate_moments"):
        estimate_video_moments([torch.randn(3, 2, 4, 4)])      # an image batch, or one clip without its batch axis
    with pytest.raises(MomentsError, match="one frame count and size"):
        estimate_video_moments([video_latents(4), video_latents(4, (2, 4, 4, 5))])
    with pytest.raises(MomentsError, match=r"Wan22 latents have 48 channels but these latents have 2"):
        estimate_video_moments([video_latents(4)], latent_format="Wan22")
    with pytest.raises(MomentsError, match="unknown video structure"):
        estimate_video_moments([video_latents(4)], "stationary")


# ----------------------------------------------------------------------------
# video_spatial: dense across frames, stationary in space.


def test_video_spatial_is_the_image_stationary_structure_over_frames_times_channels():
    x = video_latents(40)
    m = estimate_video_moments([x[:15], x[15:]], "video_spatial", dtype=torch.float64)
    assert isinstance(m, VideoSpatialMoments) and m.rank == SHAPE[0] * SHAPE[1]
    c, t, h, w = SHAPE
    img = estimate_moments([x.reshape(40, c * t, h, w)], "stationary", dtype=torch.float64)
    np.testing.assert_allclose(m.as_image().spectrum().numpy(), img.spectrum().numpy(), atol=1e-12)
    # the dense covariance: per spatial frequency a (C·T)×(C·T) block, by explicit DFT matrices
    p = spectrum_np(m)                                              # (H, W, CT, CT)
    f = np.kron(dft(h), dft(w))
    sigma = np.einsum("kq,kij,kr->iqjr", f.conj(), p.reshape(h * w, c * t, c * t), f).reshape(x[0].numel(), -1)
    np.testing.assert_allclose(operator_matrix(m.operator(SHAPE), SHAPE), sigma.real, atol=1e-12)
    # another resolution is served (same frame count)
    assert m.operator((c, t, 6, 3)).mean.shape == (c, t, 6, 3)


# ----------------------------------------------------------------------------
# The per-channel diagonal Gaussian from a VAE's published statistics.


def test_vae_statistics_give_a_white_per_channel_gaussian_at_any_size():
    mean, std = VAE_STATS["Wan21"]
    m = video_moments_from_vae_stats(mean, std, latent_format="Wan21")
    assert m.white and m.latent_shape == (16, 1, 1, 1) and m.latent_format == "Wan21"
    shape = (16, 3, 4, 6)
    op = m.operator(shape)
    v = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    var = torch.tensor(std, dtype=torch.float64) ** 2
    np.testing.assert_allclose(op.apply(v, lambda lam: lam).numpy(), (v * var.view(1, -1, 1, 1, 1)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(op.mean.numpy(), torch.tensor(mean).view(-1, 1, 1, 1).expand(shape).numpy(), rtol=1e-6)
    assert "published statistics" in m.describe()


@pytest.mark.parametrize("name", ["Wan21", "Wan22"])
def test_vae_statistics_are_the_standard_normal_in_the_model_space_of_their_format(name):
    model = to_model_space(video_moments_from_vae_stats(*VAE_STATS[name], latent_format=name), name)
    assert model.space == "model"
    np.testing.assert_allclose(model.mean.numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(model.eigvals.numpy(), 1, atol=1e-5)


def test_bad_vae_statistics_are_refused():
    with pytest.raises(MomentsError, match="3 means and 2 standard deviations"):
        video_moments_from_vae_stats([0, 0, 0], [1, 1])
    with pytest.raises(MomentsError, match="finite and positive"):
        video_moments_from_vae_stats([0, 0], [1, 0])
    with pytest.raises(MomentsError, match="HunyuanVideo latents have 16 channels but these latents have 2"):
        video_moments_from_vae_stats([0, 0], [1, 1], latent_format="HunyuanVideo")


# ----------------------------------------------------------------------------
# Files.


@pytest.mark.parametrize("structure", ["video_stationary", "video_spatial", "vae"])
def test_video_moments_files_round_trip_with_their_layout(tmp_path, structure):
    if structure == "vae":
        m = video_moments_from_vae_stats(*VAE_STATS["Wan22"], latent_format="Wan22")
    else:
        m = estimate_video_moments([video_latents(12)], structure, metadata={"note": "x"})
    path = save_moments(m, tmp_path / "v.safetensors")
    meta = read_header(path)["__metadata__"]
    assert meta["layout"] == "C,T,H,W" and meta["format_version"] == "2"
    assert meta["latent_shape"] == ",".join(map(str, m.latent_shape))
    back = load_moments(path)
    assert type(back) is type(m) and back.latent_shape == m.latent_shape and back.latent_format == m.latent_format
    for k, t in m.tensors().items():
        np.testing.assert_allclose(back.tensors()[k].numpy(), t.numpy(), atol=1e-6)
    shape = (m.channels, m.frames, 3, 4)
    v = torch.randn(1, *shape, dtype=torch.float64)
    np.testing.assert_allclose(back.operator(shape).apply(v, torch.sqrt).numpy(),
                               m.operator(shape).apply(v, torch.sqrt).numpy(), atol=1e-5)


def test_image_files_keep_version_1_and_a_damaged_video_file_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    img = estimate_moments([torch.randn(8, 2, 3, 3)], "stationary")
    meta = read_header(save_moments(img, tmp_path / "i.safetensors"))["__metadata__"]
    assert meta["format_version"] == "1" and meta["layout"] == "C,H,W"
    path = save_moments(estimate_video_moments([video_latents(6)]), tmp_path / "v.safetensors")
    meta = read_header(path)["__metadata__"]
    tensors = load_file(path)
    save_file(tensors, tmp_path / "bad.safetensors", metadata={**meta, "latent_shape": "2,3,4"})
    with pytest.raises(MomentsError, match=r"is not C,T,H,W \(video_stationary moments\)"):
        load_moments(tmp_path / "bad.safetensors")
    save_file(tensors, tmp_path / "bad2.safetensors", metadata={**meta, "layout": "C,H,W"})
    with pytest.raises(MomentsError, match="'layout' is 'C,H,W' but video_stationary moments are C,T,H,W"):
        load_moments(tmp_path / "bad2.safetensors")


# ----------------------------------------------------------------------------
# Item 2: the video latent formats.


def test_the_video_formats_have_their_published_channels_scales_and_compression():
    expect = {"Wan21": (16, 8, 4), "Wan22": (48, 16, 4), "HunyuanVideo": (16, 8, 4), "LTXV": (128, 32, 8)}
    for name, (channels, spatial, temporal) in expect.items():
        fmt = find_latent_format(name)
        assert (fmt.channels, fmt.spatial_compression, fmt.temporal_compression) == (channels, spatial, temporal)
        assert fmt.is_video and name not in LATENT_FORMATS and name in ALL_LATENT_FORMATS
        a, b = fmt.affine()
        assert a.numel() == channels and b.numel() == channels
    a, b = find_latent_format("Wan21").affine()
    assert abs(float(a[0]) - 1 / 2.8184) < 1e-12 and abs(float(b[0]) - 0.7571 / 2.8184) < 1e-12   # (z − μ)/σ
    a, b = find_latent_format("HunyuanVideo").affine()
    assert torch.allclose(a, torch.full((16,), 0.476986, dtype=torch.float64)) and not b.any()
    assert set(VIDEO_LATENT_FORMATS) == set(expect)
    assert not any(f.is_video for f in LATENT_FORMATS.values())


@pytest.mark.parametrize("name, pixels, latent", [
    ("Wan21", (81, 480, 832), (16, 21, 60, 104)), ("Wan21", (81, 720, 1280), (16, 21, 90, 160)),
    ("Wan22", (121, 704, 1280), (48, 31, 44, 80)), ("HunyuanVideo", (129, 720, 1280), (16, 33, 90, 160)),
    ("LTXV", (121, 512, 768), (128, 16, 16, 24))])
def test_latent_shapes_of_video_clips(name, pixels, latent):
    fmt = find_latent_format(name)
    assert fmt.latent_shape(*pixels) == latent and fmt.video_frames(latent[1]) == pixels[0]


def test_frame_counts_and_sizes_that_do_not_fit_the_compression_name_the_nearest():
    with pytest.raises(MomentsError, match=r"Wan21 takes 4·n \+ 1 video frames .* got 80: use 77 or 81"):
        find_latent_format("Wan21").latent_shape(80, 480, 832)
    with pytest.raises(MomentsError, match="width 830 is not a multiple of 16 .*Wan22.*use 816 or 832"):
        find_latent_format("Wan22").latent_shape(81, 704, 830)
    with pytest.raises(MomentsError, match="SD15 is an image latent format"):
        find_latent_format("SD15").latent_frames(5)


def test_a_host_map_that_broadcasts_over_frames_is_read_as_per_channel():
    """A ComfyUI-style video process_in views its statistics as (1, C, 1, 1, 1)."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 16, 1, 1, 1) for v in VAE_STATS["Wan21"])
    fmt = LatentFormat.from_map("Wan21", lambda z: (z - mean) / std, 16)
    ours = find_latent_format("Wan21")
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(fmt.affine(), ours.affine()))
    assert (fmt.spatial_compression, fmt.temporal_compression) == (8, 4)


def test_video_moments_made_for_another_family_are_refused_by_both_names():
    m = video_moments_from_vae_stats(*VAE_STATS["Wan22"], latent_format="Wan22")
    with pytest.raises(MomentsError, match="made for Wan22 latents but the model uses Wan21"):
        to_model_space(m, "Wan21")
    untagged = video_moments_from_vae_stats(*VAE_STATS["Wan22"])
    with pytest.raises(MomentsError, match="moments have 48 latent channels but LTXV latents have 128"):
        to_model_space(untagged, "LTXV")


@pytest.mark.parametrize("structure", ["video_stationary", "video_spatial", "vae"])
def test_a_sum_of_spectral_terms_is_the_sum_of_the_terms(structure):
    """apply_sum (one pass for a solver step's terms) equals applying each term, at the native and another size."""
    m = (video_moments_from_vae_stats([0.1, -0.2], [1.5, 0.5]) if structure == "vae"
         else estimate_video_moments([video_latents(20)], structure, dtype=torch.float64))
    fs = [torch.sqrt, lambda lam: lam / (lam + 4.0), lambda lam: 0.5 + 0 * lam]
    for shape in (SHAPE, (2, 3, 6, 4)):
        op = m.operator(shape, dtype=torch.float64)
        vs = [torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
        want = sum(op.apply(v, f) for v, f in zip(vs, fs))
        assert (op.apply_sum(vs, fs) - want).abs().max() < 1e-12


@pytest.mark.parametrize("structure", ["video_stationary", "video_spatial"])
def test_model_space_moments_are_those_of_the_mapped_latents(structure):
    """Raw → model space converts exactly: the same as estimating from a·(z − shift) per channel."""
    x = video_latents(25)
    fmt = LatentFormat("Test", 2, (0.5, 2.0), (0.1, -0.3))
    model = to_model_space(estimate_video_moments([x], structure, dtype=torch.float64), fmt)
    mapped = (x - torch.tensor([0.1, -0.3], dtype=torch.float64).view(1, 2, 1, 1, 1)) * \
        torch.tensor([0.5, 2.0], dtype=torch.float64).view(1, 2, 1, 1, 1)
    direct = estimate_video_moments([mapped], structure, dtype=torch.float64)
    assert model.space == "model" and model.latent_format == "Test"
    np.testing.assert_allclose(model.mean.numpy(), direct.mean.numpy(), atol=1e-12)
    np.testing.assert_allclose(spectrum_np(model), spectrum_np(direct), atol=1e-11)


def test_white_moments_with_correlated_channels_apply_their_channel_covariance():
    q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))[0]
    p = q @ torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) @ q.T
    lam, vecs = torch.linalg.eigh(p)
    m = VideoStationaryMoments(torch.zeros(3, 1, 1, 1, dtype=torch.float64), lam.view(1, 1, 1, 3),
                               vecs.to(torch.complex128).view(1, 1, 1, 3, 3), count=5)
    v = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64)
    got = m.operator((3, 2, 3, 4)).apply(v, torch.sqrt)
    root = (vecs * lam.sqrt()) @ vecs.T
    assert (got - torch.einsum("ij,bj...->bi...", root, v)).abs().max() < 1e-12
