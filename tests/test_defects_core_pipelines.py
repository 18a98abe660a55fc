"""Issue 19, item 7: moments read off an SD3 pipeline given prompt embeddings under CFG (tiny pipelines, no weights)."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from test_diffusers_pipelines import FLOW_SHAPE, Gaussian, flow_call, flow_pipeline  # noqa: E402

from gaussian_teleport.diffusers import PipelineDenoiser, estimate_pipeline_moments_from_model  # noqa: E402


def prompt_dependent_sd3():
    """A tiny SD3 pipeline whose Gaussian mean follows the prompt embeddings (so the batches must line up)."""
    pipe = flow_pipeline("sd3")
    pipe.transformer.setup(Gaussian(FLOW_SHAPE, 1), cond_scale=0.5)
    return pipe


def embedding_call(batch=1):
    call = flow_call("sd3", 8, batch=batch)
    del call["num_inference_steps"]
    return call


def test_sd3_moments_from_the_model_with_prompt_embeds_under_cfg():
    """Each model call is a batch of many latents for one prompt: the embeddings are repeated to it."""
    pipe = prompt_dependent_sd3()
    moments = estimate_pipeline_moments_from_model(pipe, rank=4, generator=torch.Generator().manual_seed(0),
                                                   **embedding_call())
    assert moments.latent_format == "SD3" and moments.latent_shape == FLOW_SHAPE
    assert moments.metadata["batch_sizes"] == "9,17"     # one prompt's embeddings, batches of 9 and 17 latents
    assert torch.allclose(moments.eigvals.double(), pipe.transformer.gaussian.lam[:4], rtol=0.1)


def test_given_embeddings_are_repeated_prompt_major_to_the_batch():
    """Two prompts, three latents each: rows 0–2 see prompt 0, rows 3–5 prompt 1, and each row is its own call's x0."""
    pipe = prompt_dependent_sd3()
    call = embedding_call(batch=2)
    model = PipelineDenoiser(pipe, **call)
    args = model.batch_call(6)
    assert args["num_images_per_prompt"] == 1
    for key in ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"):
        assert torch.equal(args[key], call[key].repeat_interleave(3, dim=0)), key
    x = torch.randn(6, *FLOW_SHAPE, generator=torch.Generator().manual_seed(2))
    together = model(x, torch.full([6], 0.9))
    one = PipelineDenoiser(pipe, **{k: (v[1:] if k in args and isinstance(v, torch.Tensor) else v)
                                    for k, v in call.items()})
    alone = one(x[3:], torch.full([3], 0.9))
    assert torch.allclose(together[3:], alone, atol=1e-5)
