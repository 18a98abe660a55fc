"""The ComfyUI node pack's logic, without ComfyUI: descriptions, model introspection, moment conversion,
image fitting, the moments folder and file names, accumulation, and the calibration figures."""

import importlib
import math
import os
import sys

import numpy as np
import pytest
import torch

from gaussian_teleport.moments import DenseMoments, MomentsError, estimate_moments
from gaussian_teleport.nodes import logic
from gaussian_teleport.nodes.definitions import SPECS
from gaussian_teleport.nodes.spec import CATEGORY
from gaussian_teleport.scheduler import calibrate as cal
from gaussian_teleport.scheduler.samplers import sample_euler


def test_package_imports_without_comfyui():
    for name in ("gaussian_teleport", "gaussian_teleport.nodes", "gaussian_teleport.nodes.definitions",
                 "gaussian_teleport.nodes.logic", "gaussian_teleport.nodes.plot", "gaussian_teleport.nodes.classic",
                 "gaussian_teleport.scheduler.calibrate"):
        importlib.import_module(name)
    root = importlib.import_module("gaussian_teleport")
    if "comfy" not in sys.modules:
        assert root.NODE_CLASS_MAPPINGS is None   # the loader then uses comfy_entrypoint
    assert callable(root.comfy_entrypoint)


def test_every_input_has_a_tooltip_and_one_category():
    ids = [s.node_id for s in SPECS]
    assert len(set(ids)) == len(ids) == 9
    for spec in SPECS:
        assert spec.category == CATEGORY == "Gaussian Teleport"
        assert spec.description and spec.display_name
        names = [i.name for i in spec.inputs]
        assert len(set(names)) == len(names), spec.node_id
        for inp in spec.inputs:
            assert len(inp.tooltip) > 20, (spec.node_id, inp.name)
            if inp.kind == "COMBO" and not callable(inp.options) and inp.default is not None:
                assert inp.default in inp.options, (spec.node_id, inp.name)
            if inp.kind in ("INT", "FLOAT"):
                assert inp.min <= inp.default <= inp.max, (spec.node_id, inp.name)
        for out in spec.outputs:
            assert out.tooltip, (spec.node_id, out.name)


def test_classic_inputs_carry_tooltips_and_bounds():
    from gaussian_teleport.nodes.classic import classic_input

    spec = next(s for s in SPECS if s.node_id == "GaussianTeleportSigmas")
    kinds = {i.name: classic_input(i) for i in spec.inputs}
    assert kinds["sigmas"] == ("SIGMAS", {"tooltip": spec.inputs[0].tooltip})
    assert kinds["handoff_kind"][0] == ["sigma", "steps", "fraction"]
    assert kinds["handoff_value"][1]["min"] == 0.0 and kinds["handoff_value"][1]["tooltip"]


# ----------------------------------------------------------------------------
# Model kinds, by ComfyUI's class names (stand-ins with the same names and bases).


def _sampling(*bases):
    return type("ModelSampling", tuple(bases), {})()


EPS = type("EPS", (), {})
V_PREDICTION = type("V_PREDICTION", (EPS,), {})
EDM = type("EDM", (V_PREDICTION,), {})
CONST = type("CONST", (), {})
X0 = type("X0", (EPS,), {})
COSMOS_RFLOW = type("COSMOS_RFLOW", (), {})


@pytest.mark.parametrize("bases,expected", [((EPS,), "ve"), ((V_PREDICTION,), "ve"), ((EDM,), "ve"),
                                            ((CONST,), "flow")])
def test_supported_model_kinds(bases, expected):
    assert logic.model_parameterization(_sampling(*bases)) == expected


@pytest.mark.parametrize("bases,name", [((X0,), "X0"), ((COSMOS_RFLOW,), "COSMOS_RFLOW"), ((object,), "unknown")])
def test_other_model_kinds_are_refused_by_name(bases, name):
    with pytest.raises(MomentsError, match=name):
        logic.model_parameterization(_sampling(*bases))


# ----------------------------------------------------------------------------
# Latent formats and moment conversion.


def test_latent_affine_reads_the_hosts_map():
    scale, shift = 1.5305, 0.0609
    a, b = logic.latent_affine(lambda z: (z - shift) * scale, 16)
    assert torch.allclose(a, torch.full((16,), scale, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(b, torch.full((16,), -shift * scale, dtype=torch.float64), atol=1e-6)
    mean, std = torch.arange(4.0).view(1, 4, 1, 1), torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1, 1)
    a, b = logic.latent_affine(lambda z: (z - mean) * 0.5 / std, 4)
    assert torch.allclose(a, 0.5 / std.flatten().double()) and torch.allclose(b, -0.5 * mean.flatten().double()
                                                                             / std.flatten().double())
    with pytest.raises(MomentsError, match="not a per-channel affine"):
        logic.latent_affine(lambda z: z**2, 4)


def test_moments_in_model_space_matches_an_explicit_affine_map(latents):
    m = estimate_moments([latents(50, (2, 3, 3), seed=1)], "dense")
    a, b = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([0.1, -0.3], dtype=torch.float64)
    out = logic.moments_in_model_space(m, a, b, "Test")
    assert out.space == "model" and out.latent_format == "Test"
    avec = a.repeat_interleave(9).numpy()
    mean = m.mean.double().flatten().numpy() * avec + b.repeat_interleave(9).numpy()
    cov = (m.eigvecs.double().numpy() * m.eigvals.double().numpy()) @ m.eigvecs.double().numpy().T
    cov = avec[:, None] * cov * avec[None, :]
    got_cov = (out.eigvecs.double().numpy() * out.eigvals.double().numpy()) @ out.eigvecs.double().numpy().T
    assert np.allclose(out.mean.double().flatten().numpy(), mean, atol=1e-5)
    assert np.allclose(got_cov, cov, atol=1e-5)
    assert logic.moments_in_model_space(out, a, b, "Test") is out
    with pytest.raises(MomentsError, match="model space of Test"):
        logic.moments_in_model_space(out, a, b, "Other")
    with pytest.raises(MomentsError, match="channels"):
        logic.moments_in_model_space(m, torch.ones(4), torch.zeros(4), "Test")


def test_check_latent_names_resolution_and_dimension_problems(latents):
    m = estimate_moments([latents(20, (2, 3, 3), seed=2)], "lowrank", rank=4)
    logic.check_latent(torch.zeros(3, 2, 3, 3), m)
    with pytest.raises(MomentsError, match="stationary"):
        logic.check_latent(torch.zeros(1, 2, 4, 4), m)
    with pytest.raises(MomentsError, match="video"):
        logic.check_latent(torch.zeros(1, 2, 1, 3, 3), m)


def test_find_on_chain_walks_inner_models():
    class Node:
        def __init__(self, inner=None, **attrs):
            self.inner_model = inner
            self.__dict__.update(attrs)

    base = Node(latent_format="fmt")
    chain = Node(Node(base, model_patcher="p"))
    assert logic.find_on_chain(chain, "latent_format") is base
    assert logic.find_on_chain(chain, "model_patcher") is chain.inner_model
    assert logic.find_on_chain(chain, "nothing") is None


def test_make_handoff_requires_whole_steps():
    assert str(logic.make_handoff("steps", 4.0)) == "steps:4"
    with pytest.raises(ValueError, match="whole"):
        logic.make_handoff("steps", 2.5)


# ----------------------------------------------------------------------------
# Images to one size, batching.


def test_fit_images_crop_keeps_the_centre_and_stretch_resizes():
    img = torch.rand(2, 8, 12, 3)
    out = logic.fit_images(img, 8, 8, "crop")
    assert out.shape == (2, 8, 8, 3)
    assert torch.allclose(out, img[:, :, 2:10, :])         # same height: a pure centre cut
    out = logic.fit_images(img, 6, 4, "stretch")
    assert out.shape == (2, 4, 6, 3)
    grey = logic.fit_images(torch.rand(1, 8, 8, 1), 8, 8)
    assert grey.shape == (1, 8, 8, 3) and torch.equal(grey[..., 0], grey[..., 2])
    with pytest.raises(ValueError, match="crop"):
        logic.fit_images(img, 4, 4, "zoom")


def test_target_size_defaults_to_the_first_image_and_checks_multiples():
    imgs = [torch.zeros(1, 64, 80, 3), torch.zeros(2, 30, 30, 3)]
    assert logic.target_size(imgs, 0, 0, 8) == (80, 64)
    assert logic.target_size(imgs, 96, 0, 8) == (96, 64)
    with pytest.raises(ValueError, match="multiple of 8"):
        logic.target_size(imgs, 100, 64, 8)


def test_batches_cover_everything_once():
    assert logic.batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert logic.batches(0, 4) == []
    with pytest.raises(ValueError):
        logic.batches(3, 0)


# ----------------------------------------------------------------------------
# The moments folder and save paths.


def test_merge_model_folder_keeps_user_paths():
    folders = {}
    logic.merge_model_folder(folders, "moments", "/models/moments")
    assert folders["moments"] == (["/models/moments"], {".safetensors"})
    folders = {"moments": (["/user/moments"], set())}             # declared in extra_model_paths.yaml
    entry = logic.merge_model_folder(folders, "moments", "/models/moments")
    assert entry[0] == ["/user/moments", "/models/moments"] and ".safetensors" in entry[1]
    logic.merge_model_folder(folders, "moments", "/models/moments")
    assert folders["moments"][0] == ["/user/moments", "/models/moments"]
    folders = {"moments": (["/u"], [".bin"])}
    assert logic.merge_model_folder(folders, "moments", "/m")[1] == [".bin", ".safetensors"]


def test_save_path_stays_inside_and_never_silently_overwrites(tmp_path):
    folder = str(tmp_path)
    first = logic.moments_save_path(folder, "sd15")
    assert first == os.path.join(os.path.realpath(folder), "sd15.safetensors")
    open(first, "w").close()
    assert logic.moments_save_path(folder, "sd15.safetensors").endswith("sd15_00001.safetensors")
    assert logic.moments_save_path(folder, "sd15", "overwrite") == first
    with pytest.raises(FileExistsError, match="already exists"):
        logic.moments_save_path(folder, "sd15", "error")
    assert logic.moments_save_path(folder, "sub/dir/x").endswith(os.path.join("sub", "dir", "x.safetensors"))
    for bad in ("../x", "/etc/passwd", "a/../../x", "", "a\\..\\x", "x:y"):
        with pytest.raises(ValueError):
            logic.moments_save_path(folder, bad)
    os.symlink("/", tmp_path / "escape")
    with pytest.raises(ValueError, match="outside"):
        logic.moments_save_path(folder, "escape/x")


# ----------------------------------------------------------------------------
# Accumulating over several runs.


def test_accumulating_in_two_runs_equals_one_run(latents):
    data = latents(60, (2, 3, 3), seed=3)
    once = estimate_moments([data], "dense")
    first = logic.start_accumulator("dense", 8).add(data[:25]).finalize()
    second = logic.start_accumulator("dense", 8, first).add(data[25:]).finalize()
    assert second.count == 60
    assert torch.allclose(second.mean, once.mean, atol=1e-5)
    assert torch.allclose(second.eigvals, once.eigvals, atol=1e-4)
    with pytest.raises(MomentsError, match="set structure to dense"):
        logic.start_accumulator("lowrank", 8, first)
    model = first.affine(2.0, 0.0, space="model", latent_format="X")
    with pytest.raises(MomentsError, match="raw"):
        logic.start_accumulator("dense", 8, model)


# ----------------------------------------------------------------------------
# Calibration figures.


def test_score_ev_against_an_independent_formula():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    d_nn = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    d_g = d_nn + 0.1 * torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    alpha = 0.4
    xs, dn, dg = (t.numpy().reshape(5, -1) for t in (x, d_nn, d_g))
    direction = alpha * dn - xs
    expected = 1 - np.sum((alpha * (dn - dg)) ** 2) / np.sum((direction - direction.mean(0)) ** 2)
    assert cal.score_explained_variance(d_nn, d_g, x, alpha) == pytest.approx(expected, rel=1e-12)
    expected_d = 1 - np.sum((dn - dg) ** 2) / np.sum((dn - dn.mean(0)) ** 2)
    assert cal.denoiser_explained_variance(d_nn, d_g) == pytest.approx(expected_d, rel=1e-12)
    assert cal.score_explained_variance(d_nn, d_nn, x) == 1.0


def test_recommend_handoff_reads_from_the_top():
    sig = [14.6, 8.0, 5.0, 3.0, 1.0]
    assert cal.recommend_handoff(sig, [0.999, 0.998, 0.995, 0.97, 0.999], 0.99) == 5.0   # the dip at 3 stops it
    assert cal.recommend_handoff(sig[::-1], [0.999, 0.97, 0.995, 0.998, 0.999], 0.99) == 5.0  # order-free
    assert cal.recommend_handoff(sig, [0.9, 0.999, 0.999, 0.999, 0.999], 0.99) is None
    assert cal.recommend_handoff(sig, [float("nan"), 1, 1, 1, 1], 0.99) is None
    assert cal.recommend_handoff(sig, [1.0] * 5, 0.99) == 1.0
    with pytest.raises(ValueError):
        cal.recommend_handoff(sig, [1.0] * 5, 1.5)


def _gaussian(d_shape, seed):
    gen = torch.Generator().manual_seed(seed)
    d = int(np.prod(d_shape))
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = torch.logspace(0.3, -2, d, dtype=torch.float64)
    mean = 0.5 * torch.randn(d_shape, generator=gen, dtype=torch.float64)
    return DenseMoments(mean, lam, q, count=100, space="model"), mean.flatten(), (q * lam) @ q.T


@pytest.mark.parametrize("parameterization", ["ve", "flow"])
def test_sample_calibrate_measures_a_known_model(parameterization):
    moments, mean, cov = _gaussian((2, 3, 3), seed=5)
    eye = torch.eye(mean.numel(), dtype=torch.float64)
    bias = 0.05 * torch.randn(mean.numel(), generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def model(x, sigma, offset=0.0):
        s = float(sigma[0])
        a = 1 - s if parameterization == "flow" else 1.0
        flat = x.reshape(x.shape[0], -1)
        d = mean + a * torch.linalg.solve(a * a * cov + s * s * eye, (flat - a * mean).T).T @ cov
        return (d + offset * bias).reshape(x.shape)

    sig = torch.tensor([0.95, 0.8, 0.5, 0.2, 0.0]) if parameterization == "flow" else \
        torch.tensor([20.0, 8.0, 3.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * sig[0]
    exact = cal.Calibration()
    out = cal.sample_calibrate(model, x, sig, moments=moments, parameterization=parameterization, record=exact)
    assert min(exact.score_ev) > 1 - 1e-9 and exact.sigmas == pytest.approx(sig[:-1].tolist())
    assert torch.allclose(out, sample_euler(model, x, sig), atol=1e-9)   # it is an Euler run
    biased = cal.Calibration()
    cal.sample_calibrate(lambda x, s: model(x, s, 1.0), x, sig, moments=moments,
                         parameterization=parameterization, record=biased)
    assert max(biased.score_ev) < 1 and biased.velocity_error[1] > 0
    best, report = cal.calibration_summary(biased, 0.99)
    assert "score EV" in report and (best is None or best in biased.sigmas)


def test_plot_is_an_image_tensor():
    from gaussian_teleport.nodes.plot import plot_explained_variance

    img = plot_explained_variance([14.6, 5, 1, 0.1], [0.999, 0.995, 0.9, math.nan], [0.2, 0.5, 0.8, 0.9], 0.99, 5.0)
    assert img.shape == (1, 400, 640, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert float(img.std()) > 0.01
