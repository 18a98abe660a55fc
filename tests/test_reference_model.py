"""Reference models: EDM preconditioning, labels and guidance, safetensors round trip, training, shipped files."""

import json
import math
import os

import pytest
import torch

from gaussian_teleport.reference import (REFERENCE_MODELS, EDMDenoiser, GuidedDenoiser, ModelConfig, load_model,
                                         load_reference, reference_paths, save_model)

CFG = ModelConfig(channels=1, size=4, sigma_data=0.6, num_classes=3, width=32, depth=2, emb_dim=16)


def random_model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    model = EDMDenoiser(cfg).eval()
    with torch.no_grad():  # the output layers start at zero; give them weights so F is not trivially 0
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_untrained_network_is_the_edm_skip_connection():
    """With F ≡ 0 (zero-initialised output layer) D(x, σ) = c_skip·x = σ_d²/(σ² + σ_d²)·x (EDM Table 1)."""
    model = EDMDenoiser(CFG).eval()
    x = torch.randn(5, 1, 4, 4)
    sigma = torch.tensor([0.01, 0.3, 1.0, 7.0, 80.0])
    out = model(x, sigma)
    expect = torch.stack([CFG.sigma_data**2 / (s**2 + CFG.sigma_data**2) * x[i] for i, s in enumerate(sigma.tolist())])
    torch.testing.assert_close(out, expect)


def test_preconditioning_matches_the_formula_for_the_raw_network():
    model = random_model()
    x, sigma, labels = torch.randn(3, 1, 4, 4), torch.tensor([0.2, 2.0, 20.0]), torch.tensor([0, 2, 3])
    sd = CFG.sigma_data
    s = sigma.view(-1, 1, 1, 1)
    raw = model.net(x / (s**2 + sd**2).sqrt(), sigma.log() / 4, labels)
    expect = sd**2 / (s**2 + sd**2) * x + s * sd / (s**2 + sd**2).sqrt() * raw
    torch.testing.assert_close(model(x, sigma, labels), expect)


def test_labels_default_to_the_null_class_and_bad_labels_are_refused():
    model = random_model()
    x, sigma = torch.randn(2, 1, 4, 4), torch.ones(2)
    torch.testing.assert_close(model(x, sigma), model(x, sigma, torch.tensor([3, 3])))
    assert not torch.allclose(model(x, sigma, torch.tensor([0, 1])), model(x, sigma))
    with pytest.raises(ValueError, match="class_labels"):
        model(x, sigma, torch.tensor([0, 4]))
    uncond = EDMDenoiser(ModelConfig(channels=1, size=4, sigma_data=0.5, width=16, depth=1, emb_dim=8))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, sigma, torch.tensor([0, 1]))


def test_guidance_is_uncond_plus_scale_times_difference():
    model = random_model()
    x, sigma, labels = torch.randn(4, 1, 4, 4), torch.full((4,), 1.5), torch.tensor([0, 1, 2, 1])
    cond, uncond = model(x, sigma, labels), model(x, sigma)
    for w in (1.0, 2.5):
        torch.testing.assert_close(GuidedDenoiser(model, w)(x, sigma, class_labels=labels),
                                   uncond + w * (cond - uncond), rtol=1e-5, atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    model = random_model()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.cfg == model.cfg
    x, sigma = torch.randn(3, 1, 4, 4), torch.tensor([0.1, 1.0, 10.0])
    torch.testing.assert_close(loaded(x, sigma, torch.tensor([0, 1, 2])), model(x, sigma, torch.tensor([0, 1, 2])))
    with pytest.raises(FileNotFoundError, match="reference.train"):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown reference model"):
        reference_paths("nonsense")


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_shipped_models_load_with_matching_moments_and_record(name):
    ref = load_reference(name)
    assert ref.moments.latent_shape == ref.shape
    assert ref.moments.structure == "dense" and ref.moments.space == "model"
    for key in ("command", "train_seconds", "data", "seed", "steps"):
        assert key in ref.record, key
    assert ref.record["command"].startswith("python -m gaussian_teleport.reference.train")
    weights = reference_paths(name)[0]
    assert os.path.getsize(weights) < 10 * 2**20   # "a few MB"


@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_shipped_model_is_gaussian_at_high_noise_and_its_moments_match_the_data(name):
    """Independent check: moments vs the data's own mean/covariance; score EV ≥ 0.999 at σ = 20σ_d."""
    pytest.importorskip("sklearn")
    from gaussian_teleport.moments import gaussian_x0
    from gaussian_teleport.reference.data import load_dataset
    from gaussian_teleport.scheduler.explained import score_explained_variance

    ref = load_reference(name)
    data = load_dataset(name, seed=ref.record.get("seed", 0)).images.double()
    flat = data.flatten(1)
    torch.testing.assert_close(ref.moments.mean.double().flatten(), flat.mean(0), atol=1e-5, rtol=0)
    cov = (ref.moments.eigvecs.double() * ref.moments.eigvals.double()) @ ref.moments.eigvecs.double().T
    torch.testing.assert_close(cov, torch.cov(flat.T), atol=1e-4, rtol=1e-3)
    assert math.isclose(ref.sigma_data, float(data.std()), rel_tol=1e-3)

    gen = torch.Generator().manual_seed(0)
    x0 = data[:256]
    sigma = 20 * ref.sigma_data
    x = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        d_nn = ref.model(x.float(), torch.full((len(x),), sigma)).double()
    d_g = gaussian_x0(ref.moments.operator(ref.shape), x, sigma)
    assert score_explained_variance(d_nn, d_g, x) >= 0.999


def test_training_script_writes_weights_moments_and_record(tmp_path):
    pytest.importorskip("sklearn")
    from gaussian_teleport.reference.train import main

    out = str(tmp_path / "tiny")
    record = main(["--data", "digits", "--conditional", "--steps", "20", "--batch", "64", "--width", "32",
                   "--depth", "1", "--out", out])
    ref = load_reference(out + ".safetensors")
    assert ref.model.cfg.num_classes == 10 and ref.model.cfg.width == 32
    with open(out + ".json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["steps"] == 20 and saved["command"] == record["command"] and "--conditional" in saved["command"]
    assert ref.moments.count == saved["data_count"] == 1797


def test_training_sigmas_cover_the_whole_schedule():
    """A quarter of the draws are log-uniform up to 120·σ_d/0.5, so σ ≫ 20σ_d is seen often."""
    from gaussian_teleport.reference.train import sample_sigmas

    s = sample_sigmas(200000, 0.5, torch.Generator().manual_seed(0))
    assert float((s > 20 * 0.5).double().mean()) > 0.05
    assert float(s.max()) <= 120.0 + 1e-6 and float(s.min()) > 0
