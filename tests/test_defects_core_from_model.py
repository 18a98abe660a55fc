"""Issue 19, item 5: estimate_moments_from_model names what is wrong with the model instead of hiding it."""

import pytest
import torch

from gaussian_teleport.moments import MomentsError, estimate_moments_from_model

SHAPE = (2, 3, 3)
STRUCTURES = ["lowrank", "dense", "stationary"]


def gaussian(x, sigma, **extra):
    """The x0 prediction of N(0, I): x / (1 + σ²)."""
    return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("model, message", [
    (lambda x, s: (gaussian(x, s),), r"returned a tuple, not a tensor.*model\(x, sigma, \*\*kw\)\[0\]"),
    (lambda x, s: gaussian(x, s).numpy(), "returned a ndarray, not a tensor"),
    (lambda x, s: gaussian(x, s)[:, :1], r"returned shape \(\d+, 1, 3, 3\) for latents \(\d+, 2, 3, 3\)"),
    (lambda x, s: gaussian(x, s) * float("nan"), "returned NaN or Inf at noise level 10: run it in float32"),
    (lambda x, s: gaussian(x, s) + float("inf"), "returned NaN or Inf"),
])
def test_a_broken_model_output_is_named(structure, model, message):
    with pytest.raises(MomentsError, match=message):
        estimate_moments_from_model(model, SHAPE, structure=structure, rank=4)


def test_one_nan_sample_in_a_later_call_is_found():
    calls = []

    def model(x, s):
        calls.append(1)
        out = gaussian(x, s)
        if len(calls) == 3:
            out[1, 0, 0, 0] = float("nan")
        return out

    with pytest.raises(MomentsError, match="NaN or Inf"):
        estimate_moments_from_model(model, SHAPE, rank=4)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_a_step_lost_to_float32_rounding_is_refused(structure):
    with pytest.raises(MomentsError, match=r"step .* is lost to rounding in torch.float32 model inputs.*raise step"):
        estimate_moments_from_model(gaussian, SHAPE, structure=structure, rank=4, step=1e-12)


def test_the_same_step_in_float64_inputs_works():
    m = estimate_moments_from_model(gaussian, SHAPE, rank=4, step=1e-9, input_dtype=torch.float64)
    assert torch.allclose(m.eigvals.double(), torch.ones(4, dtype=torch.float64), rtol=1e-3)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("model", [lambda x, s: -gaussian(x, s), lambda x, s: torch.zeros_like(x) + 0.3],
                         ids=["negative-jacobian", "ignores-x"])
def test_an_all_zero_covariance_is_refused(structure, model):
    with pytest.raises(MomentsError, match="no positive eigenvalue, so the moments would be all zero.*x0 prediction"):
        estimate_moments_from_model(model, SHAPE, structure=structure, rank=4)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_a_working_model_still_gives_its_moments(structure):
    m = estimate_moments_from_model(gaussian, SHAPE, structure=structure, rank=4)
    assert torch.allclose(m.eigvals.double(), torch.ones_like(m.eigvals, dtype=torch.float64), rtol=1e-2)
