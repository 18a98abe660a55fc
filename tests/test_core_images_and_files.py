"""Logic the hosts share, without any host: reading a host's latent map, images to one size, moments
from images, the moments folder (safe names, listing), accumulating over runs, explained variance."""

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_teleport.moments import (LatentFormat, MomentsError, contained_path, estimate_moments,
                                       estimate_moments_from_images, fit_images, list_moments_files,
                                       moments_save_path, start_accumulator, target_size, to_model_space)
from gaussian_teleport.scheduler import (ExplainedVariance, bind_moments, denoiser_explained_variance,
                                         get_sigmas_karras, sample_euler, score_explained_variance)
from gaussian_teleport.scheduler.explained import RecordingModel


def test_the_package_imports_without_any_host():
    for name in ("gaussian_teleport", "gaussian_teleport.nodes", "gaussian_teleport.webui",
                 "gaussian_teleport.scheduler.calibrate", "gaussian_teleport.diffusers"):
        importlib.import_module(name)
    root = importlib.import_module("gaussian_teleport")
    if "comfy" not in sys.modules:
        assert root.NODE_CLASS_MAPPINGS is None   # ComfyUI's loader then uses comfy_entrypoint
    assert callable(root.comfy_entrypoint) and root.MomentsError is MomentsError


def test_a_hosts_latent_map_is_read_off_and_checked():
    fmt = LatentFormat.from_map("SD3", lambda z: (z - 0.0609) * 1.5305, 16)
    a, b = fmt.affine()
    assert torch.allclose(a, torch.full((16,), 1.5305, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(b, torch.full((16,), -0.0609 * 1.5305, dtype=torch.float64), atol=1e-6)
    mean, std = torch.arange(4.0).view(1, 4, 1, 1), torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1)
    per_channel = LatentFormat.from_map("X", lambda z: (z - mean) * 0.5 / std, 4)
    assert torch.allclose(per_channel.affine()[0], 0.5 / std.flatten().double())
    with pytest.raises(MomentsError, match="not a per-channel affine"):
        LatentFormat.from_map("Sq", lambda z: z ** 2, 4)
    with pytest.raises(MomentsError, match="maps 4 channels to 8"):
        LatentFormat.from_map("Up", lambda z: torch.cat([z, z], 1), 4)


def test_model_space_through_a_read_off_map_equals_the_explicit_affine_map(latents):
    m = estimate_moments([latents(50, (2, 3, 3), seed=1)], "dense", dtype=torch.float64)
    a, b = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([0.1, -0.3], dtype=torch.float64)
    fmt = LatentFormat.from_map("Test", lambda z: z * a.view(1, 2, 1, 1).float() + b.view(1, 2, 1, 1).float(), 2)
    out = to_model_space(m, fmt)
    assert out.space == "model" and out.latent_format == "Test"
    avec = a.repeat_interleave(9).numpy()
    mean = m.mean.double().flatten().numpy() * avec + b.repeat_interleave(9).numpy()
    cov = (m.eigvecs.numpy() * m.eigvals.numpy()) @ m.eigvecs.numpy().T
    got_cov = (out.eigvecs.numpy() * out.eigvals.numpy()) @ out.eigvecs.numpy().T
    assert np.allclose(out.mean.flatten().numpy(), mean, atol=1e-6)
    assert np.allclose(got_cov, avec[:, None] * cov * avec[None, :], atol=1e-6)
    assert to_model_space(out, fmt) is out
    with pytest.raises(MomentsError, match="made for Test latents but the model uses SD15"):
        to_model_space(out, "SD15")


def test_binding_is_done_once_per_moments_and_size(latents):
    m = estimate_moments([latents(40, (2, 3, 3), seed=2)], "stationary")
    first = bind_moments(m, (2, 5, 4))
    assert bind_moments(m, (2, 5, 4)).op is first.op               # cached: no second resample and eigh
    assert bind_moments(m, (2, 6, 4)).op is not first.op
    with pytest.raises(MomentsError, match="raw SD15 VAE-space moments"):
        bind_moments(estimate_moments([latents(40, (4, 2, 2), seed=3)], "dense", latent_format="SD15"), (4, 2, 2))


def test_fit_images_crop_keeps_the_centre_and_stretch_resizes():
    img = torch.rand(2, 3, 8, 12)
    out = fit_images(img, 8, 8, "crop")
    assert out.shape == (2, 3, 8, 8) and torch.allclose(out, img[..., 2:10])   # same height: a centre cut
    assert fit_images(img, 6, 4, "stretch").shape == (2, 3, 4, 6)
    grey = fit_images(torch.rand(1, 1, 8, 8), 8, 8)
    assert grey.shape == (1, 3, 8, 8) and torch.equal(grey[:, 0], grey[:, 2])
    with pytest.raises(ValueError, match="crop"):
        fit_images(img, 4, 4, "zoom")


def test_target_size_defaults_to_the_first_image_and_checks_multiples():
    assert target_size((64, 80), 0, 0, 8) == (80, 64)
    assert target_size((64, 80), 96, 0, 8) == (96, 64)
    with pytest.raises(ValueError, match=r"multiple of 8 \(the VAE's downscale factor\); set width to 96 or 104"):
        target_size((64, 80), 100, 64, 8)


def test_moments_from_images_are_the_moments_of_the_encoded_fitted_images():
    gen = torch.Generator().manual_seed(5)
    groups = [torch.rand(5, 3, 16, 24, generator=gen), torch.rand(4, 3, 20, 20, generator=gen)]
    encode = lambda x: torch.nn.functional.avg_pool2d(x * 2 - 1, 8)   # noqa: E731  (a "VAE": 3×2×2 latents)
    seen = []
    m = estimate_moments_from_images(groups, encode, structure="dense", width=16, height=16, batch_size=3,
                                     progress=seen.append, latent_format="SD15")
    direct = estimate_moments([encode(fit_images(g, 16, 16)) for g in groups], "dense")
    assert torch.allclose(m.mean, direct.mean, atol=1e-6) and torch.allclose(m.eigvals, direct.eigvals, atol=1e-5)
    assert sum(seen) == 9 and m.metadata["image_size"] == "16x16" and m.latent_format == "SD15"
    with pytest.raises(MomentsError, match="no images"):
        estimate_moments_from_images([], encode)


def test_save_paths_stay_inside_and_never_silently_overwrite(tmp_path):
    folder = str(tmp_path)
    first = moments_save_path(folder, "sd15")
    assert first == os.path.join(os.path.realpath(folder), "sd15.safetensors")
    open(first, "w").close()
    assert moments_save_path(folder, "sd15.safetensors").endswith("sd15_00001.safetensors")
    assert moments_save_path(folder, "sd15", "overwrite") == first
    with pytest.raises(FileExistsError, match="already exists"):
        moments_save_path(folder, "sd15", "error")
    assert moments_save_path(folder, "sub/dir/x").endswith(os.path.join("sub", "dir", "x.safetensors"))
    for bad in ("../x", "/etc/passwd", "a/../../x", "", "a\\..\\x", "x:y"):
        with pytest.raises(ValueError):
            moments_save_path(folder, bad)
    os.symlink("/", tmp_path / "escape")
    with pytest.raises(ValueError, match="outside"):
        moments_save_path(folder, "escape/x")


def test_reading_a_listed_file_allows_any_name_but_not_leaving_the_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "faces (v2), final.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert list_moments_files(str(tmp_path)) == ["sub/faces (v2), final.safetensors"]
    assert contained_path(str(tmp_path), "sub/faces (v2), final.safetensors").endswith("final.safetensors")
    with pytest.raises(ValueError, match="outside"):
        contained_path(str(tmp_path), "../elsewhere.safetensors")


def test_accumulating_in_two_runs_equals_one_run(latents):
    data = latents(60, (2, 3, 3), seed=3)
    once = estimate_moments([data], "dense")
    first = start_accumulator("dense", 8).add(data[:25]).finalize()
    second = start_accumulator("dense", 8, first).add(data[25:]).finalize()
    assert second.count == 60
    assert torch.allclose(second.mean, once.mean, atol=1e-5)
    assert torch.allclose(second.eigvals, once.eigvals, atol=1e-4)
    with pytest.raises(MomentsError, match="set the structure to dense"):
        start_accumulator("lowrank", 8, first)
    model = first.affine(2.0, 0.0, space="model", latent_format="X")
    with pytest.raises(MomentsError, match="raw"):
        start_accumulator("dense", 8, model)


def test_score_ev_against_an_independent_formula():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    d_nn = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    d_g = d_nn + 0.1 * torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    alpha = 0.4
    xs, dn, dg = (t.numpy().reshape(5, -1) for t in (x, d_nn, d_g))
    direction = alpha * dn - xs
    expected = 1 - np.sum((alpha * (dn - dg)) ** 2) / np.sum((direction - direction.mean(0)) ** 2)
    assert score_explained_variance(d_nn, d_g, x, alpha) == pytest.approx(expected, rel=1e-12)
    expected_d = 1 - np.sum((dn - dg) ** 2) / np.sum((dn - dn.mean(0)) ** 2)
    assert denoiser_explained_variance(d_nn, d_g) == pytest.approx(expected_d, rel=1e-12)
    assert score_explained_variance(d_nn, d_nn, x) == 1.0


def test_the_recording_model_measures_a_known_model_along_a_run(latents):
    """An exact Gaussian model explains all of its own variance; a wrong mean does not."""
    m = estimate_moments([latents(200, (2, 3, 3), seed=6)], "dense", dtype=torch.float64, space="model")
    gauss = bind_moments(m, (2, 3, 3))
    sigmas = get_sigmas_karras(6, 0.1, 20.0)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 20
    for shift, check in ((0.0, lambda ev: ev > 1 - 1e-9), (1.5, lambda ev: ev < 0.99)):
        record = ExplainedVariance()
        model = lambda xb, s, **_: gauss.denoise(xb, float(s[0]), gauss.op.mean + shift)  # noqa: E731
        sample_euler(RecordingModel(model, gauss, record), x, sigmas)
        assert record.sigmas == pytest.approx([float(s) for s in sigmas[:-1]])
        assert all(check(ev) for ev in record.score_ev[-3:]), record.score_ev
    assert "score EV" in record.table()


def test_the_entry_file_imports_as_a_plain_module():
    # pytest imports the checkout's __init__.py as a plain module "__init__" when the folder name is not an
    # identifier (a clone named gaussian-teleport): it must not try its relative node import then.
    path = Path(__file__).resolve().parents[1] / "__init__.py"
    spec = importlib.util.spec_from_file_location("__init__", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is None and module.NODE_DISPLAY_NAME_MAPPINGS is None
