"""Workflows through ComfyUI's HTTP API on CPU with tiny random-weight models (needs GT_COMFYUI_PATH).

A temporary base directory holds a tiny SD3-type MMDiT (a flow model), a tiny TAESD3 VAE, two
images, this repository as a custom node and one stub node that makes empty conditioning (so no
text encoder is needed). The server listens on 127.0.0.1 only and is stopped after the module.
The example workflows in example_workflows/ are checked against the server's /object_info.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

import comfy_harness as ch

EXAMPLES = os.path.join(ch.REPO, "example_workflows")
STUB = '''
import torch


class GTTestEmptyConditioning:
    """Zero text conditioning for the tiny test model (stands in for a text encoder)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"tokens": ("INT", {"default": 4, "min": 1, "max": 77})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, tokens):
        return ([[torch.zeros(1, tokens, 16), {"pooled_output": torch.zeros(1, 32)}]],)


NODE_CLASS_MAPPINGS = {"GTTestEmptyConditioning": GTTestEmptyConditioning}
'''


def tiny_models(base):
    """A 2-block MMDiT (detected by ComfyUI as SD3) and a TAESD3 pair, random weights."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper
    from comfy.taesd.taesd import TAESD
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    net = OpenAISignatureMMDITWrapper(
        in_channels=16, out_channels=16, patch_size=2, depth=2, adm_in_channels=32,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 16, "out_features": 128}},
        pos_embed_max_size=16, num_patches=256, input_size=None, pos_embed_scaling_factor=None,
        operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32)
    sd = {k: torch.randn(v.shape, generator=gen) * 0.02 for k, v in net.state_dict().items()}
    os.makedirs(os.path.join(base, "models", "diffusion_models"))
    save_file(sd, os.path.join(base, "models", "diffusion_models", "tiny_mmdit.safetensors"))
    taesd = TAESD(latent_channels=16)
    approx = os.path.join(base, "models", "vae_approx")
    os.makedirs(approx)
    for part in ("encoder", "decoder"):
        weights = {k: fan_in_init(v.shape, gen) for k, v in getattr(taesd, f"taesd_{part}").state_dict().items()}
        save_file(weights, os.path.join(approx, f"taesd3_{part}.safetensors"))


def fan_in_init(shape, gen):
    """Weights with std 1/√fan_in (activations stay finite through deep nets), zero biases."""
    if len(shape) < 2:
        return torch.zeros(shape)
    fan_in = int(torch.tensor(shape[1:]).prod())
    return torch.randn(shape, generator=gen) / fan_in**0.5


def write_images(base):
    import numpy as np
    from PIL import Image

    os.makedirs(os.path.join(base, "input"))
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (64, 64)), ("b.png", (96, 80))):
        pixels = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(os.path.join(base, "input", name))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, base, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", base, "--disable-auto-launch", "--preview-method", "none"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=ch.comfy_path(), stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.log_path = log_path

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def wait_ready(self, timeout=180):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("ComfyUI exited:\n" + self.output())
            try:
                return self.get("/object_info")
            except OSError:
                time.sleep(1)
        raise TimeoutError("ComfyUI did not start:\n" + self.output())

    def submit(self, prompt):
        """(prompt_id, None), or (None, the error body) when the server refuses the prompt at submission."""
        req = urllib.request.Request(self.url + "/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())["prompt_id"], None
        except urllib.error.HTTPError as exc:
            return None, exc.read().decode()

    def run(self, prompt, timeout=240, expect_error=None):
        prompt_id, refused = self.submit(prompt)
        if refused is not None:
            raise AssertionError(f"prompt rejected: {refused}")
        end = time.time() + timeout
        while time.time() < end:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                errors = [m[1].get("exception_type", "") + ": " + m[1].get("exception_message", "")
                          for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                if expect_error is not None:
                    assert entry["status"]["status_str"] == "error" and expect_error in " ".join(errors), errors
                    return entry
                assert entry["status"]["status_str"] == "success", errors
                return entry
            time.sleep(0.5)
        raise TimeoutError("workflow did not finish:\n" + self.output())

    def output(self):
        self.log.flush()
        with open(self.log_path) as fh:
            return fh.read()[-20000:]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ch.require_comfy()
    base = str(tmp_path_factory.mktemp("comfy_base"))
    tiny_models(base)
    write_images(base)
    nodes_dir = os.path.join(base, "custom_nodes")
    os.makedirs(os.path.join(nodes_dir, "gt_test_stub"))
    os.symlink(ch.REPO, os.path.join(nodes_dir, "gaussian_teleport"))
    with open(os.path.join(nodes_dir, "gt_test_stub", "__init__.py"), "w") as fh:
        fh.write(STUB)
    srv = Server(base, os.path.join(base, "server.log"))
    try:
        srv.info = srv.wait_ready()
        srv.base = base
        yield srv
    finally:
        srv.stop()


def common(seed=1, batch=2):
    """Model, conditioning, noise, latent and VAE nodes shared by the workflows."""
    return {
        "model": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_mmdit.safetensors",
                                                         "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "taesd3"}},
        "cond": {"class_type": "GTTestEmptyConditioning", "inputs": {"tokens": 4}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "latent": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
    }


def test_nodes_registered_with_tooltips(server):
    ours = {k: v for k, v in server.info.items() if k.startswith("GaussianTeleport")}
    assert len(ours) == 11, sorted(ours)
    for name, info in ours.items():
        assert info["category"] == "Gaussian Teleport"
        for group in ("required", "optional"):
            for inp, spec in info["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), (name, inp)
    samplers = server.info["KSampler"]["input"]["required"]["sampler_name"]
    names = samplers[1]["options"] if isinstance(samplers[0], str) else samplers[0]
    assert {"teleport_euler", "teleport_heun", "teleport_dpmpp_2m", "teleport_ipndm", "gaussian_solver"} <= set(names)
    assert names.count("gaussian_solver") == 1 and names.count("teleport_ipndm") == 1
    assert "moments" in server.get("/models")


def test_estimate_save_then_teleport_through_http(server):
    wf = common() | {
        "img_a": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "img_b": {"class_type": "LoadImage", "inputs": {"image": "b.png"}},
        "estimate": {"class_type": "GaussianTeleportEstimateMomentsImages", "inputs": {
            "images": ["img_a", 0], "vae": ["vae", 0], "structure": "lowrank", "rank": 4, "width": 64,
            "height": 64, "fit": "crop", "batch_size": 1}},
        "estimate2": {"class_type": "GaussianTeleportEstimateMomentsImages", "inputs": {
            "images": ["img_b", 0], "vae": ["vae", 0], "structure": "lowrank", "rank": 4, "width": 64,
            "height": 64, "fit": "crop", "batch_size": 1, "add_to": ["estimate", 0]}},
        "save": {"class_type": "GaussianTeleportSaveMoments", "inputs": {
            "moments": ["estimate2", 0], "filename": "tiny_sd3", "if_exists": "add number", "storage": "float32"}},
    }
    # one image per estimate: the first run needs two, so feed the batch of both through ImageBatch
    wf["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": ["img_a", 0], "image2": ["img_b", 0]}}
    wf["estimate"]["inputs"]["images"] = ["batch", 0]
    entry = server.run(wf)
    assert "saved as tiny_sd3.safetensors" in json.dumps(entry["outputs"]["save"])
    assert os.path.isfile(os.path.join(server.base, "models", "moments", "tiny_sd3.safetensors"))

    sampler = {"class_type": "GaussianTeleportSampler", "inputs": {
        "moments": ["load", 0], "sampler_name": "euler", "handoff_kind": "sigma", "handoff_value": 5.667,
        "mode": "save", "mean": "model"}}
    wf = common() | {
        "load": {"class_type": "GaussianTeleportLoadMoments", "inputs": {"moments_file": "tiny_sd3.safetensors"}},
        "sampler": sampler,
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["model", 0], "positive": ["cond", 0],
                                                          "negative": ["cond", 0], "cfg": 2.0}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "simple",
                                                              "steps": 8, "denoise": 1.0}},
        "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["latent", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "out": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "gt_custom"}},
    }
    entry = server.run(wf)
    assert len(entry["outputs"]["out"]["images"]) == 2
    assert "teleport: jumped t 1 (σ ∞) → t 0.8" in server.output() and "mean from one model call" in server.output()


def test_ksampler_variant_on_an_eps_model_through_http(server):
    wf = common(seed=2, batch=1) | {
        "eps": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["model", 0], "sampling": "eps",
                                                                 "zsnr": False}},
        "load": {"class_type": "GaussianTeleportLoadMoments", "inputs": {"moments_file": "tiny_sd3.safetensors"}},
        "attach": {"class_type": "GaussianTeleportAttachMoments", "inputs": {
            "model": ["eps", 0], "moments": ["load", 0], "handoff_kind": "steps", "handoff_value": 3,
            "mode": "save", "mean": "data"}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["attach", 0], "seed": 3, "steps": 8, "cfg": 1.0, "sampler_name": "teleport_dpmpp_2m",
            "scheduler": "karras", "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "out": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "gt_ksampler"}},
    }
    entry = server.run(wf)
    assert len(entry["outputs"]["out"]["images"]) == 1
    assert "replacing 3 of 8 steps" in server.output()
    # the dropdown sampler without moments on the model stops with a message that says what to add
    wf["ks"]["inputs"]["model"] = ["eps", 0]
    wf["ks"]["inputs"]["sampler_name"] = "teleport_euler"
    server.run(wf, expect_error="Attach Teleport Moments")


def test_the_gaussian_solver_through_http(server):
    """The SAMPLER node in SamplerCustomAdvanced, the KSampler's gaussian_solver and teleport_ipndm entries, the
    missing attachment named, and the solver refused as an inner sampler at submission."""
    wf = common(seed=8, batch=1) | {
        "load": {"class_type": "GaussianTeleportLoadMoments", "inputs": {"moments_file": "tiny_sd3.safetensors"}},
        "solver": {"class_type": "GaussianTeleportSolverSampler", "inputs": {"moments": ["load", 0], "order": 3}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["model", 0], "positive": ["cond", 0],
                                                          "negative": ["cond", 0], "cfg": 2.0}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "simple",
                                                              "steps": 6, "denoise": 1.0}},
        "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["solver", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["latent", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "out": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "gt_solver"}},
    }
    assert len(server.run(wf)["outputs"]["out"]["images"]) == 1
    ks = common(seed=9, batch=1) | {
        "load": {"class_type": "GaussianTeleportLoadMoments", "inputs": {"moments_file": "tiny_sd3.safetensors"}},
        "attach": {"class_type": "GaussianTeleportAttachMoments", "inputs": {
            "model": ["model", 0], "moments": ["load", 0], "handoff_kind": "steps", "handoff_value": 2,
            "mode": "save", "mean": "data"}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["attach", 0], "seed": 3, "steps": 6, "cfg": 1.0, "sampler_name": "gaussian_solver",
            "scheduler": "simple", "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "out": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "gt_solver_ks"}},
    }
    assert len(server.run(ks)["outputs"]["out"]["images"]) == 1
    ks["ks"]["inputs"]["sampler_name"] = "teleport_ipndm"
    assert len(server.run(ks)["outputs"]["out"]["images"]) == 1
    assert "replacing 2 of 6 steps" in server.output()
    ks["ks"]["inputs"].update(model=["model", 0], sampler_name="gaussian_solver")
    server.run(ks, expect_error="'Attach Teleport Moments'")
    wf["solver"] = {"class_type": "GaussianTeleportSampler", "inputs": {
        "moments": ["load", 0], "sampler_name": "gaussian_solver", "handoff_kind": "sigma", "handoff_value": 5.0,
        "mode": "save", "mean": "data"}}
    prompt_id, refused = server.submit(wf)
    assert prompt_id is None and "is the Gaussian solver" in refused, refused


def test_calibrate_preview_and_sigmas_through_http(server):
    wf = common(seed=4, batch=3) | {
        "load": {"class_type": "GaussianTeleportLoadMoments", "inputs": {"moments_file": "tiny_sd3.safetensors"}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["model", 0], "positive": ["cond", 0],
                                                          "negative": ["cond", 0], "cfg": 3.0}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "simple",
                                                              "steps": 6, "denoise": 1.0}},
        "cal": {"class_type": "GaussianTeleportCalibrate", "inputs": {
            "guider": ["guider", 0], "sigmas": ["sigmas", 0], "latent": ["latent", 0], "moments": ["load", 0],
            "noise": ["noise", 0], "sampler_name": "euler", "mean": "model", "tolerance": 0.03}},
        "cut": {"class_type": "GaussianTeleportSigmas", "inputs": {
            "sigmas": ["sigmas", 0], "handoff_kind": "fraction", "handoff_value": 0.5, "mode": "same_budget",
            "model": ["model", 0]}},
        "preview": {"class_type": "GaussianTeleportPreview", "inputs": {
            "model": ["model", 0], "moments": ["load", 0], "noise": ["noise", 0], "latent": ["latent", 0],
            "sigma": 0.5}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["preview", 0], "vae": ["vae", 0]}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
        "plot": {"class_type": "PreviewImage", "inputs": {"images": ["cal", 1]}},
        "ev": {"class_type": "PreviewImage", "inputs": {"images": ["cal", 3]}},
    }
    entry = server.run(wf)
    assert len(entry["outputs"]["cal"]["images"]) == 1
    assert len(entry["outputs"]["out"]["images"]) == 3
    said = entry["outputs"]["cal"]["text"][0]
    assert "of 6 steps replaced" in said and "calls 6 →" in said or said.startswith("do not teleport"), said
    assert "Gaussian Teleport calibration" in server.output() and "steps replaced" in server.output()


def test_moments_from_the_model_then_sample_through_http(server):
    """No images: moments read off the model, saved, loaded and sampled with."""
    wf = common(seed=5, batch=1) | {
        "estimate": {"class_type": "GaussianTeleportEstimateMomentsModel", "inputs": {
            "model": ["model", 0], "width": 64, "height": 64, "structure": "stationary", "rank": 8, "sigma": 10.0,
            "conditioning": ["cond", 0], "prompt": "unconditional", "seed": 0}},
        "save": {"class_type": "GaussianTeleportSaveMoments", "inputs": {
            "moments": ["estimate", 0], "filename": "from_model", "if_exists": "overwrite", "storage": "auto"}},
    }
    entry = server.run(wf)
    assert "model calls of batch" in json.dumps(entry["outputs"]["estimate"]["text"])
    assert os.path.isfile(os.path.join(server.base, "models", "moments", "from_model.safetensors"))
    wf = common(seed=6, batch=1) | {
        "load": {"class_type": "GaussianTeleportLoadMoments", "inputs": {"moments_file": "from_model.safetensors"}},
        "attach": {"class_type": "GaussianTeleportAttachMoments", "inputs": {
            "model": ["model", 0], "moments": ["load", 0], "handoff_kind": "sigma", "handoff_value": 5.0,
            "mode": "save", "mean": "model"}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["attach", 0], "seed": 3, "steps": 8, "cfg": 2.0, "sampler_name": "teleport_euler",
            "scheduler": "simple", "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "out": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "gt_from_model"}},
    }
    assert len(server.run(wf)["outputs"]["out"]["images"]) == 1


def test_bad_input_is_named_at_submission_or_with_a_clean_type(server):
    wf = common() | {"load": {"class_type": "GaussianTeleportLoadMoments",
                              "inputs": {"moments_file": "missing.safetensors"}},
                     "save": {"class_type": "GaussianTeleportSaveMoments", "inputs": {
                         "moments": ["load", 0], "filename": "x", "if_exists": "error", "storage": "auto"}}}
    prompt_id, refused = server.submit(wf)
    assert prompt_id is None and "not in models/moments" in refused
    # a moments file made for 64×64 latents used at 96×96: stopped with our type name, not a file path
    wf = common(seed=7, batch=1) | {
        "load": {"class_type": "GaussianTeleportLoadMoments", "inputs": {"moments_file": "tiny_sd3.safetensors"}},
        "attach": {"class_type": "GaussianTeleportAttachMoments", "inputs": {
            "model": ["model", 0], "moments": ["load", 0], "handoff_kind": "steps", "handoff_value": 2,
            "mode": "save", "mean": "data"}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": ["attach", 0], "seed": 3, "steps": 6, "cfg": 1.0, "sampler_name": "teleport_euler",
            "scheduler": "simple", "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
    }
    wf["latent"]["inputs"].update(width=96, height=96)
    server.run(wf, expect_error="gaussian_teleport.MomentsError: lowrank moments were estimated for latents of")


def test_a_model_sampling_patch_gets_its_own_moments_through_http(server):
    """Issue 23 item 6: the UNETLoader model, then the same model through ModelSamplingDiscrete(v_prediction) with
    the same settings: the second is another model and is read again, not served the first's moments (cached)."""
    def estimate(model):
        return common(seed=5, batch=1) | {
            "vpred": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["model", 0],
                                                                       "sampling": "v_prediction", "zsnr": False}},
            "estimate": {"class_type": "GaussianTeleportEstimateMomentsModel", "inputs": {
                "model": model, "width": 64, "height": 64, "structure": "stationary", "rank": 8, "sigma": 9.0,
                "conditioning": ["cond", 0], "prompt": "unconditional", "seed": 3}},
            "save": {"class_type": "GaussianTeleportSaveMoments", "inputs": {
                "moments": ["estimate", 0], "filename": "item6", "if_exists": "overwrite", "storage": "auto"}}}

    said = []
    for model in (["model", 0], ["vpred", 0], ["model", 0]):
        entry = server.run(estimate(model))
        said.append(json.dumps(entry["outputs"]["estimate"]["text"]))
    assert "model calls of batch" in said[0] and "model calls of batch" in said[1], said
    assert "(cached)" in said[2], said        # the first model again: its own moments, from the cache


def error_details(refused: str, node: str) -> list[str]:
    """The details of each error ComfyUI lists for ``node`` in a /prompt refusal."""
    return [e.get("details", "") for e in json.loads(refused)["node_errors"][node]["errors"]]


def test_each_refusal_is_shown_once_and_inner_samplers_are_plain(server):
    """Issue 23 item 10: a refusal is listed once (not once per widget), and the inner-sampler dropdowns offer
    only samplers that can run after the jump."""
    for node in ("GaussianTeleportSampler", "GaussianTeleportCalibrate"):
        spec = server.info[node]["input"]["required"]["sampler_name"]
        names = spec[1]["options"] if isinstance(spec[0], str) else spec[0]
        assert "euler" in names and not [n for n in names if n.startswith(("teleport_", "gaussian_"))], names
    wf = common(seed=11, batch=1) | {
        "load": {"class_type": "GaussianTeleportLoadMoments", "inputs": {"moments_file": "tiny_sd3.safetensors"}},
        "sampler": {"class_type": "GaussianTeleportSampler", "inputs": {
            "moments": ["load", 0], "sampler_name": "teleport_euler", "handoff_kind": "sigma", "handoff_value": 5.0,
            "mode": "save", "mean": "data"}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["model", 0], "positive": ["cond", 0],
                                                          "negative": ["cond", 0], "cfg": 1.0}},
        "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": "simple",
                                                              "steps": 6, "denoise": 1.0}},
        "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0], "sigmas": ["sigmas", 0],
            "latent_image": ["latent", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }
    prompt_id, refused = server.submit(wf)
    assert prompt_id is None
    details = error_details(refused, "sampler")
    assert len(details) == 1 and "itself a teleport sampler" in details[0], details
    # a value that does not fit its unit: one error, naming the fix
    wf["sampler"]["inputs"].update(sampler_name="euler", handoff_kind="steps", handoff_value=2.5)
    entry = server.run(wf, expect_error="whole number of steps")
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert len(errors) == 1 and "fraction unit" in errors[0][1]["exception_message"]
    # a mode that does not exist (an API prompt; ComfyUI does not check V3 combos at submission): once, named
    wf["sampler"]["inputs"].update(handoff_kind="sigma", handoff_value=5.0, mode="fast")
    entry = server.run(wf, expect_error="mode must be one of")
    assert len([m for m in entry["status"]["messages"] if m[0] == "execution_error"]) == 1


def widget_inputs(info):
    """(name, spec) of a node's widget inputs in the order the UI stores widgets_values."""
    out = []
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            kind = spec[0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                out.append((name, spec))
    return out


def test_example_workflows_match_the_running_host(server):
    files = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".json"))
    assert len(files) >= 4
    served = server.get("/workflow_templates")["gaussian_teleport"]
    assert sorted(served) == sorted(f[:-5] for f in files)
    assert server.get(f"/api/workflow_templates/gaussian_teleport/{files[0]}")["nodes"]
    for name in files:
        with open(os.path.join(EXAMPLES, name)) as fh:
            wf = json.load(fh)
        links = {l[0]: l for l in wf["links"]}
        for node in wf["nodes"]:
            info = server.info.get(node["type"])
            assert info is not None, (name, node["type"])
            linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
            widgets = [w for w in widget_inputs(info) if w[0] not in linked]
            extra = sum(1 for _, s in widgets if len(s) > 1 and (s[1].get("control_after_generate")
                                                                 or s[1].get("image_upload")))
            assert len(node.get("widgets_values", [])) == len(widgets) + extra, (name, node["type"])
            for inp in node.get("inputs", []):
                if inp.get("link") is not None:
                    link = links[inp["link"]]
                    assert link[3] == node["id"], (name, node["type"], inp)
                    src = next(n for n in wf["nodes"] if n["id"] == link[1])
                    out_type = server.info[src["type"]]["output"][link[2]]
                    assert out_type == inp["type"] or inp["type"] == "*", (name, node["type"], inp, out_type)
            if node["type"].startswith("GaussianTeleport"):
                values = iter(node.get("widgets_values", []))
                for wname, spec in widgets:
                    value = next(values)
                    options = spec[0] if isinstance(spec[0], list) else spec[1].get("options")
                    if options and wname != "moments_file":
                        assert value in options, (name, node["type"], wname, value)
