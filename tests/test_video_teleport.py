"""Issue 22, items 3 (core) and 5: the closed-form jump on B×C×T×H×W latents, and the refusals before sampling.

The jump is checked against independent float64 computations: a fine-step RK4 solve of the Gaussian
denoiser's probability-flow ODE (dense Σ built from the stored spectrum by explicit DFT matrices), the
project's dense path on the same covariance, and the per-channel closed form.
"""

import numpy as np
import pytest
import torch

from gaussian_teleport.moments import (VAE_STATS, DenseMoments, MomentsError, estimate_moments, estimate_video_moments,
                                       to_model_space, video_moments_from_vae_stats)
from gaussian_teleport.scheduler import bind_moments, check_latent, sample_teleport, teleport_jump
from gaussian_teleport.scheduler.samplers import sample_euler

from test_video_moments import SHAPE, dense_from_spectrum, spectrum_np, video_latents

FLOW_STEPS, SHIFT = 20, 5.0


def shifted_flow_sigmas(n=FLOW_STEPS, shift=SHIFT):
    """Wan / SD3-style schedule t' = shift·t / (1 + (shift − 1)·t), t from 1 to 0."""
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


@pytest.fixture(scope="module")
def moments():
    return estimate_video_moments([video_latents(30)], dtype=torch.float64)


def dense_gaussian(m):
    mu = m.mean.double().flatten().numpy()
    sigma = dense_from_spectrum(spectrum_np(m), SHAPE[0], SHAPE[1:]).real
    return mu, 0.5 * (sigma + sigma.T)


def ode_reference(mu, sigma, x, s_from, s_to, flow, steps=4000):
    """RK4 in float64 on the PF-ODE dx/ds = (x − D(x, s)) / s of the Gaussian denoiser D.

    D(x, s) = μ + αΣ(α²Σ + s²I)⁻¹(x − αμ) is evaluated in the eigenbasis of the dense Σ (numpy eigh), where
    it is elementwise; the integration itself knows nothing of the closed form.
    """
    lam, u = np.linalg.eigh(sigma)
    lam = np.clip(lam, 0, None)
    m, y = u.T @ mu, x @ u

    def velocity(y, s):
        a = 1.0 - s if flow else 1.0
        d = m + a * lam / (a * a * lam + s * s) * (y - a * m)
        return (y - d) / s

    h = (s_to - s_from) / steps
    s = s_from
    for _ in range(steps):
        k1 = velocity(y, s)
        k2 = velocity(y + 0.5 * h * k1, s + 0.5 * h)
        k3 = velocity(y + 0.5 * h * k2, s + 0.5 * h)
        k4 = velocity(y + h * k3, s + h)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        s += h
    return y @ u.T


def noise(batch=2, shape=SHAPE, seed=3):
    return torch.randn(batch, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("flow, s_from, s_to", [(True, 1.0, None), (True, 0.97, 0.6), (False, 20.0, 2.5)])
def test_the_video_jump_is_the_fine_step_ode_solve(moments, flow, s_from, s_to):
    if s_to is None:                                  # the shifted flow schedule's 6th step, from pure noise
        s_to = float(shifted_flow_sigmas()[6])
    a_from = 1 - s_from if flow else 1.0
    x = a_from * video_latents(2, seed=9) + s_from * noise()      # x = α·x0 + σ·ε
    landed, _ = teleport_jump(moments, x, s_from, s_to, parameterization="flow" if flow else "ve")
    mu, sigma = dense_gaussian(moments)
    # start the reference a hair below t = 1, where the ODE is regular; the closed form is exact across it
    start = min(s_from, 1 - 1e-9) if flow else s_from
    want = ode_reference(mu, sigma, x.reshape(2, -1).numpy(), start, s_to, flow)
    err = np.abs(landed.reshape(2, -1).numpy() - want).max()
    assert err < 1e-6 * np.abs(want).max(), err


def test_the_video_jump_equals_the_dense_path_on_the_same_covariance(moments):
    """Dense moments of Σ (built by explicit DFT matrices) on the (C·T, H, W) view: the project's dense operator."""
    mu, sigma = dense_gaussian(moments)
    lam, u = np.linalg.eigh(sigma)
    c, t, h, w = SHAPE
    dense = DenseMoments(torch.from_numpy(mu).reshape(c * t, h, w), torch.from_numpy(lam).clamp_min(0),
                         torch.from_numpy(u), count=moments.count)
    sigmas = shifted_flow_sigmas()
    x = noise()
    for k in (3, 6, 9):
        got, x0 = teleport_jump(moments, x, 1.0, float(sigmas[k]), parameterization="flow")
        want, want_x0 = teleport_jump(dense, x.reshape(2, c * t, h, w), 1.0, float(sigmas[k]), parameterization="flow")
        assert (got.reshape(want.shape) - want).abs().max() < 1e-11
        assert (x0.reshape(want.shape) - want_x0).abs().max() < 1e-11


def test_the_per_channel_diagonal_jump_is_the_elementwise_closed_form():
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in VAE_STATS["Wan21"])
    m = video_moments_from_vae_stats(mean, std, dtype=torch.float64)
    shape = (16, 5, 6, 8)
    x = noise(2, shape)
    s0, s1 = 0.95, 0.7
    a0, a1 = 1 - s0, 1 - s1
    mu, var = mean.view(1, -1, 1, 1, 1), (std ** 2).view(1, -1, 1, 1, 1)
    want = a1 * mu + torch.sqrt((s1 ** 2 + a1 ** 2 * var) / (s0 ** 2 + a0 ** 2 * var)) * (x - a0 * mu)
    got, _ = teleport_jump(m, x, s0, s1, parameterization="flow")
    assert (got - want).abs().max() < 1e-12
    # in Wan 2.1's model space the same statistics are N(0, I): the jump only rescales the noise
    m_raw = video_moments_from_vae_stats(mean, std, latent_format="Wan21", dtype=torch.float64)
    got, _ = teleport_jump(m_raw, x, s0, s1, parameterization="flow", latent_format="Wan21")
    scale = ((s1 ** 2 + a1 ** 2) / (s0 ** 2 + a0 ** 2)) ** 0.5
    assert (got - scale * x).abs().max() < 1e-6


def test_the_teleport_sampler_runs_a_video_latent_on_a_shifted_flow_schedule(moments):
    """sample_teleport on B×C×T×H×W: the jump lands where the ODE does, then the sampler takes the rest."""
    sigmas = shifted_flow_sigmas()
    mu, sigma = dense_gaussian(moments)
    calls = []

    lam, u = np.linalg.eigh(sigma)
    lam = np.clip(lam, 0, None)

    def gaussian_model(x, s, **_):     # the exact denoiser of the Gaussian (dense float64, numpy eigh)
        calls.append(float(s[0]))
        sv = float(s[0])
        a = 1 - sv
        y = (x.reshape(x.shape[0], -1).numpy() - a * mu) @ u
        return torch.from_numpy(mu + (a * lam / (a * a * lam + sv * sv) * y) @ u.T).reshape(x.shape)

    handed = {}

    def record(model, x, sigmas, **kw):
        handed["x"], handed["sigmas"] = x, sigmas
        return sample_euler(model, x, sigmas, **kw)

    x = noise()
    out = sample_teleport(gaussian_model, x, sigmas, moments=moments, sampler=record, handoff="steps:6",
                          mean="data", parameterization="flow")
    assert out.shape == x.shape and len(calls) == FLOW_STEPS - 6
    assert torch.equal(handed["sigmas"], sigmas[6:])
    want = ode_reference(mu, sigma, x.reshape(2, -1).numpy(), 1 - 1e-9, float(sigmas[6]), True)
    assert np.abs(handed["x"].reshape(2, -1).numpy() - want).max() < 1e-6 * np.abs(want).max()
    # with the model's own mean (one call at t = 1) the Gaussian model implies the data mean: same landing
    calls.clear()
    sample_teleport(gaussian_model, x, sigmas, moments=moments, sampler=record, handoff="steps:6",
                    mean="model", parameterization="flow")
    assert np.abs(handed["x"].reshape(2, -1).numpy() - want).max() < 1e-6 * np.abs(want).max()


def test_float32_video_moments_bind_and_jump_in_float32():
    m = estimate_video_moments([video_latents(20)])
    x = noise().float()
    landed, _ = teleport_jump(m, x, 1.0, 0.8, parameterization="flow")
    ref, _ = teleport_jump(estimate_video_moments([video_latents(20)], dtype=torch.float64), x.double(), 1.0, 0.8,
                           parameterization="flow")
    assert landed.dtype == torch.float32 and (landed.double() - ref).abs().max() < 1e-4


# ----------------------------------------------------------------------------
# Item 5: bad input, refused before sampling with the fix named.


def counting_model():
    calls = []
    return calls, (lambda x, s, **_: calls.append(1) or x * 0)


def test_a_video_latent_with_image_moments_is_refused_before_any_model_call():
    image = estimate_moments([torch.randn(10, 2, 4, 5)], "stationary")
    calls, model = counting_model()
    with pytest.raises(MomentsError, match=r"video latent .*image moments .*estimate_video_moments.*"
                                           r"video_moments_from_vae_stats"):
        sample_teleport(model, noise().float(), shifted_flow_sigmas(), moments=image, sampler=sample_euler,
                        handoff="steps:4", parameterization="flow")
    assert calls == []


def test_an_image_latent_with_video_moments_is_refused_naming_the_fix(moments):
    calls, model = counting_model()
    with pytest.raises(MomentsError, match=r"video moments .* latent is image .*load or estimate image moments.*"
                                           r"\(B, C, 1, H, W\)"):
        sample_teleport(model, torch.randn(2, 2, 4, 5), shifted_flow_sigmas(), moments=moments,
                        sampler=sample_euler, handoff="steps:4", parameterization="flow")
    assert calls == []


def test_another_frame_count_with_moments_not_stationary_in_time_is_refused():
    m = estimate_video_moments([video_latents(30)], "video_spatial", latent_format="none")
    calls, model = counting_model()
    x = noise(2, (2, 5, 4, 5)).float()
    with pytest.raises(MomentsError, match=r"stationary in space but not in time .* serve 3 latent frames only, but "
                                           r"the latent has 5 .*sample 3 latent frames .*estimate video_stationary"):
        sample_teleport(model, x, shifted_flow_sigmas(), moments=m, sampler=sample_euler, handoff="steps:4",
                        parameterization="flow")
    assert calls == []
    # the same moments serve their own frame count at another resolution
    landed, _ = teleport_jump(m, noise(2, (2, 3, 6, 6)).float(), 1.0, 0.8, parameterization="flow")
    assert landed.shape == (2, 2, 3, 6, 6)


def test_the_frame_hint_uses_the_formats_temporal_compression():
    x = video_latents(8, (16, 3, 2, 2))
    m = estimate_video_moments([x], "video_spatial", latent_format="Wan21")
    with pytest.raises(MomentsError, match=r"sample 3 latent frames \(9 video frames for Wan21\)"):
        bind_moments(m, (16, 4, 2, 2), latent_format="Wan21", parameterization="flow")


def test_a_video_latent_with_the_wrong_channel_count_is_refused():
    m = to_model_space(video_moments_from_vae_stats(*VAE_STATS["Wan22"], latent_format="Wan22"), "Wan22")
    calls, model = counting_model()
    with pytest.raises(MomentsError, match=r"moments have 48 latent channels but the video latent has 16 .*"
                                           r"\(Wan22\); load or estimate video moments"):
        sample_teleport(model, torch.randn(1, 16, 3, 4, 4), shifted_flow_sigmas(), moments=m,
                        sampler=sample_euler, handoff="steps:4", parameterization="flow")
    with pytest.raises(MomentsError, match="made for Wan22 latents but the model uses Wan21"):
        sample_teleport(model, torch.randn(1, 16, 3, 4, 4), shifted_flow_sigmas(), moments=m,
                        sampler=sample_euler, handoff="steps:4", parameterization="flow", latent_format="Wan21")
    assert calls == []


def test_paths_that_take_image_latents_only_name_the_ones_that_take_video():
    with pytest.raises(ValueError, match=r"image latents \(B, C, H, W\); got the video latent .*sample_teleport.*"
                                         "teleport_jump with video moments"):
        check_latent(torch.zeros(1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="audio latents are not supported"):
        check_latent(torch.zeros(1, 2, 3, 4, 5, 6), video=True)
    check_latent(torch.zeros(1, 2, 3, 4, 5), video=True)
    with pytest.raises(MomentsError, match=r"\(B, C, H, W\) for images or \(B, C, T, H, W\) for video"):
        bind_moments(video_moments_from_vae_stats([0.0], [1.0]), (1, 2, 3, 4, 5))
