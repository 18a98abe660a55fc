"""A running AUTOMATIC1111 or Forge with this extension, driven through its HTTP API (skipped unless set up).

Set GT_WEBUI_URL to the server (e.g. http://127.0.0.1:7871, started with --api, API-only or with the UI)
and GT_WEBUI_MOMENTS to a moments file in its models/moments made for its checkpoint at 64×64 (raw SD15
space, lowrank). GT_WEBUI_LOG, when set, is the server's console log: the "Total progress" bar is read
from it. Any checkpoint works; images are compared with each other, not with references.
"""

import base64
import io
import json
import os
import re
import time
import urllib.request

import pytest

URL = os.environ.get("GT_WEBUI_URL")
MOMENTS = os.environ.get("GT_WEBUI_MOMENTS", "tiny-sd15-64.safetensors")
LOG = os.environ.get("GT_WEBUI_LOG")
pytestmark = pytest.mark.skipif(not URL, reason="set GT_WEBUI_URL to a running A1111/Forge with the extension")


def call(path, payload=None, timeout=600):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(URL + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{path}: HTTP {exc.code}: {exc.read().decode()[:2000]}") from None


def forge() -> bool:
    """Forge's options include its own memory settings (forge_*); A1111's do not."""
    return any(key.startswith("forge_") for key in call("/sdapi/v1/options"))


def txt2img(sampler="Euler Teleport", args=None, seed=1, steps=10, batch=1, **extra):
    payload = {"prompt": "a cat", "negative_prompt": "blurry", "steps": steps, "width": 64, "height": 64,
               "sampler_name": sampler, "seed": seed, "batch_size": batch, "cfg_scale": 5.0, **extra}
    if args is not None:
        payload["alwayson_scripts"] = {"Gaussian Teleport": {"args": args}}
    out = call("/sdapi/v1/txt2img", payload)
    return out["images"], json.loads(out["info"])


def teleport(enabled=True, moments=MOMENTS, kind="sigma", value=5.0, mode="save", mean="model", calibrate=False):
    return [enabled, moments, kind, value, mode, mean, calibrate]


def pixels(b64):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1]))).convert("RGB").tobytes()


def test_the_teleport_samplers_are_listed():
    names = {s["name"] for s in call("/sdapi/v1/samplers")}
    assert {"Euler Teleport", "Heun Teleport", "DPM++ 2M Teleport"} <= names


def test_a_teleport_generation_records_what_it_did():
    _, info = txt2img(args=teleport())
    text = info["infotexts"][0]
    assert 'Teleport: "sigma:5"' in text and f"Teleport moments: {MOMENTS}" in text and "Teleport mean: model" in text
    assert re.search(r"Teleport result: \"σ 14\.61→[\d.]+, \d+/10 steps replaced, save, model mean\"", text), text


def test_switched_off_it_is_the_plain_sampler_bit_for_bit():
    off, info = txt2img(args=teleport(enabled=False))
    plain, _ = txt2img(sampler="Euler")
    assert pixels(off[0]) == pixels(plain[0])
    text = info["infotexts"][0]
    assert "Teleport: off" in text and "Teleport result" not in text


def test_the_x_y_z_axes_exist_in_api_mode():
    info = call("/sdapi/v1/script-info")
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    choices = next(a["choices"] for a in xyz["args"] if a["label"] == "X type")
    assert {"[Teleport] Hand-off", "[Teleport] Moments file", "[Teleport] Mean"} <= set(choices)
    index = choices.index("[Teleport] Hand-off")
    args = [index, "sigma:8, steps:3", "", 0, "", "", 0, "", "", True, False, False, False, False, False, False, 0,
            False]
    images, info = txt2img(args=teleport(), script_name="x/y/z plot", script_args=args)
    assert len(info["infotexts"]) >= 2
    assert any('Teleport: "steps:3"' in t for t in info["infotexts"]) and any('Teleport: "sigma:8"' in t
                                                                              for t in info["infotexts"])


def test_a_hires_pass_the_moments_do_not_fit_runs_without_a_jump():
    extra = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.9, hr_second_pass_steps=6)
    if forge():
        extra["hr_additional_modules"] = ["Use same choices"]
    images, info = txt2img(args=teleport(), **extra)
    text = info["infotexts"][0]
    assert "Hires teleport result: \"no jump (the moments do not fit this pass" in text, text


def test_moments_from_the_model_need_no_file():
    _, info = txt2img(args=teleport(moments="From the model"))
    text = info["infotexts"][0]
    assert "Teleport moments: From the model" in text and "moments from_model/" in text, text
    start = time.time()
    txt2img(args=teleport(moments="From the model"), seed=2)       # the second run reads the cached file
    assert time.time() - start < 120


def test_a_calibration_run_returns_the_plain_images():
    images, info = txt2img(args=teleport(calibrate=True), batch=3, steps=12)
    plain, _ = txt2img(sampler="Euler", batch=3, steps=12)
    assert [pixels(i) for i in images[-3:]] == [pixels(i) for i in plain[-3:]]
    text = info["infotexts"][0]
    # Any checkpoint: the calibration either recommends a hand-off or says not to teleport, and says why.
    assert "Teleport calibration:" in text, text
    assert re.search(r"Teleport calibration: \"?(hand-off σ [0-9.]+: \d+ of 12 steps replaced|do not teleport)", text), text


@pytest.mark.skipif(not LOG, reason="set GT_WEBUI_LOG to the server's console log to read its progress bar")
def test_the_console_progress_bar_ends_at_its_total():
    size = os.path.getsize(LOG)
    txt2img(args=teleport(), batch=1, n_iter=3)
    time.sleep(1)
    with open(LOG, encoding="utf-8", errors="replace") as fh:
        fh.seek(size)
        tail = fh.read()
    totals = re.findall(r"Total progress: +\d+%\|[^|]*\| *(\d+)/(\d+)", tail)
    assert totals, tail[-2000:]
    done, total = totals[-1]
    assert done == total == "30", totals[-3:]


def test_the_gaussian_solver_and_ipndm_entries():
    names = {s["name"] for s in call("/sdapi/v1/samplers")}
    assert {"Gaussian Solver", "iPNDM Teleport", "iPNDM"} <= names
    images, info = txt2img(sampler="Gaussian Solver", args=teleport() + [2], steps=8)
    text = info["infotexts"][0]
    assert "Sampler: Gaussian Solver" in text and f"Teleport moments: {MOMENTS}" in text, text
    assert "Gaussian solver order: 2" in text and 'Teleport: "' not in text, text
    again, _ = txt2img(sampler="Gaussian Solver", args=teleport(enabled=False) + [2], steps=8)
    assert pixels(again[0]) == pixels(images[0])             # the switch is for the teleport samplers only
    _, info = txt2img(sampler="iPNDM Teleport", args=teleport(), steps=8)
    assert re.search(r"Teleport result: \"σ 14\.61→[\d.]+, \d+/8 steps replaced", info["infotexts"][0]), info
    off, _ = txt2img(sampler="iPNDM Teleport", args=teleport(enabled=False), steps=8)
    plain, _ = txt2img(sampler="iPNDM", steps=8)
    assert pixels(off[0]) == pixels(plain[0])


def test_the_solver_order_axis_in_api_mode():
    info = call("/sdapi/v1/script-info")
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    choices = next(a["choices"] for a in xyz["args"] if a["label"] == "X type")
    index = choices.index("[Gaussian Solver] Order")
    args = [index, "", ["1", "3"], 0, "", "", 0, "", "", True, False, False, False, False, False, False, 0, False]
    _, info = txt2img(sampler="Gaussian Solver", args=teleport(), steps=6, script_name="x/y/z plot", script_args=args)
    assert any("Gaussian solver order: 1" in t for t in info["infotexts"]), info["infotexts"]
    assert any("Gaussian solver order: 3" in t for t in info["infotexts"]), info["infotexts"]
