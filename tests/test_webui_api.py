"""A running AUTOMATIC1111, Forge or Forge Neo with this extension, driven through its HTTP API (skipped unless set up).

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
pytestmark = pytest.mark.skipif(not URL, reason="set GT_WEBUI_URL to a running A1111, Forge or Forge Neo with the "
                                                "extension")


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
    size = os.path.getsize(LOG) if LOG else None
    images, info = txt2img(args=teleport(calibrate=True), batch=3, steps=12)
    plain, _ = txt2img(sampler="Euler", batch=3, steps=12)
    assert [pixels(i) for i in images[-3:]] == [pixels(i) for i in plain[-3:]]
    text = info["infotexts"][0]
    # Any checkpoint: the calibration either recommends a hand-off or says not to teleport, and says why.
    assert "Teleport calibration:" in text, text
    assert re.search(r"Teleport calibration: \"?(hand-off σ [0-9.]+: \d+ of 12 steps replaced|do not teleport)", text), text
    if LOG:   # the whole table, as the README promises, in the console
        tail = log_tail_after(size)
        assert "calibration: tolerance" in tail and "steps replaced   hand-off σ" in tail, tail[-3000:]


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


def test_a_plain_x_y_z_cell_after_a_teleport_cell_carries_no_teleport_entries():
    info = call("/sdapi/v1/script-info")
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    choices = next(a["choices"] for a in xyz["args"] if a["label"] == "X type")
    args = [choices.index("Sampler"), "", ["Euler Teleport", "Euler", "DPM++ 2M Teleport", "DPM++ 2M"], 0, "", "",
            0, "", "", True, False, False, False, False, False, False, 0, False]
    _, info = txt2img(args=teleport(), steps=6, script_name="x/y/z plot", script_args=args)
    texts = info["infotexts"]
    for sampler in ("Euler", "DPM++ 2M"):
        assert any(f"Sampler: {sampler} Teleport," in t and "Teleport result" in t for t in texts), texts
        plain = [t for t in texts if f"Sampler: {sampler}," in t]
        assert plain and all("Teleport" not in t for t in plain), plain


def test_the_gaussian_solver_and_ipndm_entries():
    names = {s["name"] for s in call("/sdapi/v1/samplers")}
    assert {"Gaussian Solver", "iPNDM Teleport"} <= names
    # The core's plain "iPNDM" is listed where the host has none (A1111, Forge Neo); Forge lists its own "IPNDM".
    plain_ipndm = [n for n in names if n.lower() == "ipndm"]
    assert len(plain_ipndm) == 1 and (plain_ipndm[0] == "iPNDM" or forge()), names
    images, info = txt2img(sampler="Gaussian Solver", args=teleport() + [2], steps=8)
    text = info["infotexts"][0]
    assert "Sampler: Gaussian Solver" in text and f"Teleport moments: {MOMENTS}" in text, text
    assert "Gaussian solver order: 2" in text and 'Teleport: "' not in text, text
    again, _ = txt2img(sampler="Gaussian Solver", args=teleport(enabled=False) + [2], steps=8)
    assert pixels(again[0]) == pixels(images[0])             # the switch is for the teleport samplers only
    _, info = txt2img(sampler="iPNDM Teleport", args=teleport(), steps=8)
    assert re.search(r"Teleport result: \"σ 14\.61→[\d.]+, \d+/8 steps replaced", info["infotexts"][0]), info
    off, _ = txt2img(sampler="iPNDM Teleport", args=teleport(enabled=False), steps=8)
    plain, _ = txt2img(sampler=plain_ipndm[0], steps=8)
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


# ----------------------------------------------------------------------------
# Issue 23: requests it cannot honour, the console, the progress of reading moments from the model.


def post(path, payload):
    """(HTTP status, decoded JSON body) of a POST, failures included."""
    req = urllib.request.Request(URL + path, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode() or "{}")


def error_text(body) -> str:
    """The reason of a failed request: A1111 and Forge answer it under "errors", Forge Neo under "message"."""
    return str(body.get("errors") or body.get("message") or "")


def cmd_flags() -> dict:
    """The server's command-line flags; {} where the host cannot answer (Forge Neo's endpoint fails: a host bug)."""
    try:
        return call("/sdapi/v1/cmd-flags")
    except AssertionError:
        return {}


def generation(sampler="Euler Teleport", args=None, **extra):
    payload = {"prompt": "a cat", "steps": 10, "width": 64, "height": 64, "sampler_name": sampler, "seed": 1,
               "cfg_scale": 5.0, **extra}
    if args is not None:
        payload["alwayson_scripts"] = {"Gaussian Teleport": {"args": args}}
    return post("/sdapi/v1/txt2img", payload)


def log_tail_after(size):
    time.sleep(1)
    with open(LOG, encoding="utf-8", errors="replace") as fh:
        fh.seek(size)
        return fh.read()


# (position in args, value, hand-off unit, words the refusal names)
REFUSED = [(5, "prompt", "sigma", "'prompt'"), (3, -1, "sigma", "-1"), (3, "abc", "sigma", "'abc'"),
           (3, None, "sigma", "None"), (3, float("nan"), "sigma", "nan"), (3, 2.5, "steps", "2.5"),
           (3, 1.5, "fraction", "1.5"), (2, "seconds", "sigma", "'seconds'"), (4, "fast", "sigma", "'fast'"),
           (0, "yes", "sigma", "'yes'")]


@pytest.mark.parametrize("index, value, kind, words", REFUSED)
def test_a_value_it_cannot_use_fails_the_request_with_its_reason(index, value, kind, words):
    args = teleport(kind=kind, value=5 if kind == "sigma" else 3)
    args[index] = value
    status, body = generation(args=args)
    assert status == 500, (status, str(body)[:500])
    message = error_text(body)
    assert body.get("error") == "RequestRefused" and f"args[{index}]" in message and words in message, body
    assert "Send " in message and "no moments file is chosen" not in message, body


def test_a_refused_request_never_runs_with_the_settings_defaults():
    keys = ("gaussian_teleport_moments", "gaussian_teleport_handoff_value")
    before = {k: v for k, v in call("/sdapi/v1/options").items() if k in keys}
    assert post("/sdapi/v1/options", {keys[0]: MOMENTS, keys[1]: 3.0})[0] == 200
    try:
        status, body = generation(args=teleport(moments="bad/nan.safetensors", value=float("nan")))
        assert status == 500 and "args[3]" in error_text(body), (status, str(body)[:500])
        status, body = generation(args=teleport(moments="bad/nan.safetensors", value=8))
        assert status == 500 and "'bad/nan.safetensors' was not found" in error_text(body), body
    finally:
        post("/sdapi/v1/options", {k: before.get(k, v) for k, v in zip(keys, ("None", 5.0))})


def test_the_text_false_as_the_switch_is_off():
    status, body = generation(args=teleport(enabled="false"))
    assert status == 200, body
    assert "Teleport: off" in json.loads(body["info"])["infotexts"][0]
    plain_status, plain = generation(sampler="Euler")
    assert pixels(body["images"][0]) == pixels(plain["images"][0])


def test_an_xyz_moments_value_naming_a_missing_file_fails_the_request():
    info = call("/sdapi/v1/script-info")
    xyz = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    choices = next(a["choices"] for a in xyz["args"] if a["label"] == "X type")
    index = choices.index("[Teleport] Moments file")
    args = [index, "", [MOMENTS, "bad/missing.safetensors"], 0, "", "", 0, "", "", True, False, False, False, False,
            False, False, 0, False]                      # an axis with choices takes its values from the dropdown
    status, body = generation(args=teleport(), script_name="x/y/z plot", script_args=args)
    assert status == 500, (status, str(body)[:300])
    assert "[Teleport] Moments file" in error_text(body) and "bad/missing.safetensors" in error_text(body), body


def test_a_hand_off_above_the_schedule_start_is_said_without_guessing():
    status, body = generation(args=teleport(value=20))
    text = json.loads(body["info"])["infotexts"][0]
    assert "no jump (hand-off σ 20 ≥ schedule start σ 14.61 (the schedule starts below the hand-off" in text, text
    assert "img2img" not in text and "short schedule" not in text, text


@pytest.mark.skipif(not LOG, reason="set GT_WEBUI_LOG to the server's console log")
def test_the_console_shows_what_teleport_did():
    size = os.path.getsize(LOG)
    status, body = generation(args=teleport(), seed=11)
    assert status == 200, body
    tail = log_tail_after(size)
    level = cmd_flags().get("loglevel")
    assert tail.count("teleport: jumped σ 14.61") == 1, (level, tail[-3000:])


def from_model_cache(latent):
    """The server's cache folder of moments from the model, when it is on this machine, and the files of one size."""
    flags = cmd_flags()
    models = flags.get("models_dir") or (os.path.join(flags["data_dir"], "models") if flags.get("data_dir") else
                                         # Forge Neo: the folder above the loaded checkpoint's folder
                                         os.path.dirname(os.path.dirname(call("/sdapi/v1/sd-models")[0]["filename"])))
    folder = os.path.join(models, "moments", "from_model")
    if not os.path.isdir(os.path.dirname(folder)):
        pytest.skip(f"the server's moments folder ({os.path.dirname(folder)}) is not on this machine")
    os.makedirs(folder, exist_ok=True)
    return folder, [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(f"-{latent}.safetensors")]


def test_reading_moments_from_the_model_shows_as_its_own_job():
    import threading

    folder, old = from_model_cache("4x8x9")              # 72 × 64: a size no other test uses
    for path in old:
        os.remove(path)
    size = os.path.getsize(LOG) if LOG else 0
    result, seen = {}, []
    worker = threading.Thread(target=lambda: result.update(
        out=generation(args=teleport(moments="From the model"), width=72)))
    worker.start()
    while worker.is_alive():
        progress = call("/sdapi/v1/progress?skip_current_image=true")
        if progress["state"]["job_count"] > 0:
            seen.append((progress["progress"], progress["state"], progress["textinfo"]))
        time.sleep(0.05)
    status, body = result["out"]
    assert status == 200, body
    estimate = [s for s in seen if s[1]["job"] == "Gaussian Teleport: reading moments from the model"]
    assert estimate, seen[:5]
    assert all(s[2] == "Gaussian Teleport: reading moments from the model" and s[1]["sampling_steps"] == 7
               for s in estimate), estimate
    values = [s[0] for s in seen]
    assert values == sorted(values), values              # the progress never goes back, the ETA never runs away
    if LOG:
        tail = log_tail_after(size)
        assert "reading moments for (4, 8, 9) off the model" in tail, tail[-3000:]
        assert "Read the moments at a higher sigma" not in tail, tail[-3000:]


def test_a_damaged_cache_of_moments_from_the_model_is_read_again():
    assert generation(args=teleport(moments="From the model"), width=80)[0] == 200      # 80 × 64: made or read
    folder, files = from_model_cache("4x8x10")
    assert len(files) == 1, files
    whole = open(files[0], "rb").read()
    with open(files[0], "wb") as fh:
        fh.write(whole[: len(whole) // 2])
    status, body = generation(args=teleport(moments="From the model"), width=80)
    assert status == 200, body
    assert "moments from_model/" in json.loads(body["info"])["infotexts"][0]
    assert os.path.getsize(files[0]) == len(whole)
