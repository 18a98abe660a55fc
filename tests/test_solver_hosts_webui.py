"""The Gaussian Solver, iPNDM Teleport and iPNDM entries against the A1111/Forge stand-ins (test_webui_hosts).

References are independent: the closed-form Gaussian flow from a numpy eigh of the model-space covariance
(test_webui_wrapper.gaussian_flow_ref); the solver must be that flow to the last noise level followed by the
model's x0 there (k-diffusion's last step), at any order and number of steps.
"""

import copy
import types

import numpy as np
import pytest
import torch

from gaussian_teleport.moments import MomentsError
from gaussian_teleport.scheduler import get_sigmas_flow, get_sigmas_karras
from gaussian_teleport.scheduler.multistep import sample_ipndm
from test_webui_hosts import (EXTRA_PARAMS, STANDIN_SAMPLING, TABLE, SDModel, load_script, make_host)
from test_webui_wrapper import (EXTRA, ON_STEP, SD_SIGMAS, SHAPE, Flux, gaussian_flow_ref, model_space_gaussian,
                                noise_like)
from test_webui_wrapper import processing as teleport_processing
from test_webui_wrapper import run, write_moments

NEW = ["iPNDM Teleport", "Gaussian Solver", "iPNDM"]


@pytest.fixture
def sd15(monkeypatch, tmp_path):
    host = make_host(monkeypatch, tmp_path, "a1111")
    path = write_moments(tmp_path / "models" / "moments", "sd15.safetensors", SHAPE)
    mean, cov, _ = model_space_gaussian(path, "SD15")
    model = SDModel(mean=mean, cov=cov, flow=False, is_sdxl=False, is_sd3=False)
    load_script()
    return host, model


def processing(order=None, enabled=True, moments="sd15.safetensors", kind="sigma", value=5.0, mode="save",
               mean="model", calibrate=False, **attrs):
    """The wrapper tests' processing object, with the accordion's eighth value (the solver's order) attached."""
    from gaussian_teleport.webui import attach
    p = teleport_processing(enabled, moments, kind, value, mode, mean, calibrate, **attrs)
    attach(p, enabled, moments, kind, value, mode, mean, calibrate, order)
    return p


def solver_reference(model, noise, sigmas, flow=False):
    """The Gaussian's flow from sigmas[0] to sigmas[-2], then the model's x0 there."""
    x_last = gaussian_flow_ref(model.mean, model.cov, noise * sigmas[0], float(sigmas[0]), float(sigmas[-2]), flow)
    return model.make_denoiser()(x_last, sigmas[-2:-1].expand(noise.shape[0]), **EXTRA)


# ----------------------------------------------------------------------------
# Registration.


@pytest.mark.parametrize("flavor", ["a1111", "forge"])
def test_the_new_entries_are_registered_once(monkeypatch, tmp_path, flavor):
    host = make_host(monkeypatch, tmp_path, flavor)
    sd = host.sd_samplers
    load_script()
    load_script()                                             # Reload UI
    names = [s.name for s in sd.all_samplers]
    for name in NEW:
        assert names.count(name) == 1
        assert name in sd.visible_sampler_names() and name in [s.name for s in sd.samplers_for_img2img]
        assert sd.samplers_map[name.lower()] == name
        assert sd.get_sampler_and_scheduler(name) == name
    assert sd.samplers_map["gaussian_solver"] == "Gaussian Solver"
    assert sd.samplers_map["k_ipndm_teleport"] == "iPNDM Teleport" and sd.samplers_map["k_ipndm"] == "iPNDM"
    if flavor == "forge":
        assert all(sd.add_sampler_calls.count(n) == 1 for n in NEW)
    model = SDModel(mean=np.zeros(4), cov=np.eye(4), flow=False, is_sdxl=False, is_sd3=False)
    assert sd.create_sampler("iPNDM", model).func is sample_ipndm
    assert sd.create_sampler("iPNDM Teleport", model).func.__wrapped__ is sample_ipndm
    assert all(sd.create_sampler(n, model).extra_params == [] for n in NEW)


def test_a_host_with_its_own_ipndm_keeps_it(monkeypatch, tmp_path):
    def host_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None):
        raise AssertionError("not used")

    sampling = types.SimpleNamespace(**vars(STANDIN_SAMPLING), sample_ipndm=host_ipndm)
    table = [*TABLE, ("iPNDM", "sample_ipndm", ["k_ipndm"], {})]
    host = make_host(monkeypatch, tmp_path, "forge", sampling=sampling, table=table, extra_params=EXTRA_PARAMS)
    module = load_script()
    sd = host.sd_samplers
    names = [s.name for s in sd.all_samplers]
    assert names.count("iPNDM") == 1 and "iPNDM" not in sd.add_sampler_calls
    model = SDModel(mean=np.zeros(4), cov=np.eye(4), flow=False, is_sdxl=False, is_sd3=False)
    assert sd.create_sampler("iPNDM", model).func is host_ipndm
    # The teleport entry wraps the host's own (Forge's "IPNDM"): switched off it is that sampler bit for bit.
    assert sd.create_sampler("iPNDM Teleport", model).func.__wrapped__ is host_ipndm
    ours = module.webui.register_samplers(sd, host.sd_samplers_common, host.sd_samplers_kdiffusion,
                                          module.settings_source)
    assert "iPNDM" not in ours and {"iPNDM Teleport", "Gaussian Solver", "Euler Teleport"} <= set(ours)


# ----------------------------------------------------------------------------
# The Gaussian Solver.


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_the_solver_is_the_gaussian_flow_on_a_gaussian_model(sd15, order):
    host, model = sd15
    noise = noise_like(SHAPE)
    p = processing(order=order, mean="data")
    out, sampler = run(host, model, "Gaussian Solver", p, noise, SD_SIGMAS)
    torch.testing.assert_close(out, solver_reference(model, noise, SD_SIGMAS), rtol=1e-9, atol=1e-9)
    # one call and one progress tick per step: prompt editing and the progress bar count as for any sampler
    assert [step for step, _ in sampler.model_wrap_cfg.calls] == list(range(len(SD_SIGMAS) - 1))
    assert sampler.last_states == list(range(len(SD_SIGMAS) - 1))
    assert p.extra_generation_params == {"Teleport moments": "sd15.safetensors", "Gaussian solver order": order}
    plain, _ = run(host, model, "DPM++ 2M", processing(), noise, SD_SIGMAS)
    assert float((plain - out).abs().max()) > 1e-4         # the check can fail: a plain sampler is not exact


def test_the_solver_ignores_the_teleport_switch_and_hand_off(sd15):
    host, model = sd15
    noise = noise_like(SHAPE)
    on, _ = run(host, model, "Gaussian Solver", processing(), noise, SD_SIGMAS)
    off, _ = run(host, model, "Gaussian Solver", processing(enabled=False, kind="steps", value=3,
                                                             mode="same_budget"), noise, SD_SIGMAS)
    assert torch.equal(on, off)


def test_the_solver_on_a_forge_flow_model(monkeypatch, tmp_path):
    host = make_host(monkeypatch, tmp_path, "forge")
    shape = (16, 1, 1)
    path = write_moments(tmp_path / "models" / "moments", "flux.safetensors", shape, seed=5)
    mean, cov, _ = model_space_gaussian(path, "Flux")
    model = Flux(mean=mean, cov=cov, flow=True, is_sdxl=False, is_sd3=False)
    load_script()
    sigmas = get_sigmas_flow(8, 3.0).double()
    noise = noise_like(shape)
    out, _ = run(host, model, "Gaussian Solver", processing(moments="flux.safetensors"), noise, sigmas)
    torch.testing.assert_close(out, solver_reference(model, noise, sigmas, flow=True), rtol=1e-8, atol=1e-8)


def test_the_solver_reads_moments_off_the_model(sd15, tmp_path):
    host, model = sd15
    model.sd_checkpoint_info = types.SimpleNamespace(model_name="tiny", shorthash="abc123")
    noise = noise_like(SHAPE)
    p = processing(moments="From the model")
    out, sampler = run(host, model, "Gaussian Solver", p, noise, SD_SIGMAS)
    assert (tmp_path / "models" / "moments" / "from_model" / "tiny-abc123-4x2x2.safetensors").is_file()
    assert p.extra_generation_params["Teleport moments"] == "From the model"
    assert sampler.model_wrap_cfg.step == len(SD_SIGMAS) - 1          # the estimate's calls left no trace
    torch.testing.assert_close(out, solver_reference(model, noise, SD_SIGMAS), rtol=1e-3, atol=1e-3)


def test_solver_errors_name_the_fix(sd15, monkeypatch, tmp_path):
    host, model = sd15
    noise = noise_like(SHAPE)
    with pytest.raises(MomentsError, match="the Gaussian Solver sampler is selected but no moments file is chosen.*"
                                           "another sampler"):
        run(host, model, "Gaussian Solver", processing(moments="None"), noise, SD_SIGMAS)
    with pytest.raises(MomentsError, match="was not found"):
        run(host, model, "Gaussian Solver", processing(moments="gone.safetensors"), noise, SD_SIGMAS)
    with pytest.raises(ValueError, match="untick 'Calibrate on the next generation'"):
        run(host, model, "Gaussian Solver", processing(calibrate=True), noise_like(SHAPE, batch=4), SD_SIGMAS)
    with pytest.raises(ValueError, match="from 1 to 4"):
        processing(order=5)
    big = (SHAPE[0], SHAPE[1] * 2, SHAPE[2] * 2)
    any_size = SDModel(mean=np.zeros(int(np.prod(big))), cov=np.eye(int(np.prod(big))), flow=False, is_sdxl=False,
                       is_sd3=False)
    with pytest.raises(MomentsError, match="in the hires pass.*another hires sampler"):
        run(host, any_size, "Gaussian Solver", processing(is_hr_pass=True), noise_like(big), SD_SIGMAS)


# ----------------------------------------------------------------------------
# iPNDM Teleport and iPNDM.


@pytest.mark.parametrize("mean", ["data", "model"])
def test_ipndm_teleport_is_the_jump_then_our_ipndm(sd15, mean):
    host, model = sd15
    noise = noise_like(SHAPE)
    p = processing(mean=mean, value=ON_STEP)
    out, sampler = run(host, model, "iPNDM Teleport", p, noise, SD_SIGMAS)
    k = int((SD_SIGMAS[:-1] > ON_STEP).sum())
    x_k = gaussian_flow_ref(model.mean, model.cov, noise * SD_SIGMAS[0], float(SD_SIGMAS[0]), float(SD_SIGMAS[k]),
                            flow=False)
    reference = sample_ipndm(model.make_denoiser(), x_k, SD_SIGMAS[k:], extra_args=EXTRA)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)
    assert f"{k}/10 steps replaced" in p.extra_generation_params["Teleport result"]
    assert sampler.last_states == list(range(len(SD_SIGMAS) - 1))
    assert sampler.model_wrap_cfg.step == len(SD_SIGMAS) - 1


def test_plain_ipndm_and_the_switch_off(sd15):
    host, model = sd15
    noise = noise_like(SHAPE)
    sigmas = get_sigmas_karras(12, 0.0292, 14.6146).double()
    plain, _ = run(host, model, "iPNDM", processing(), noise, sigmas)
    torch.testing.assert_close(plain, sample_ipndm(model.make_denoiser(), noise * sigmas[0], sigmas,
                                                   extra_args=EXTRA), rtol=0, atol=0)
    p = processing(enabled=False, moments="None")
    off, _ = run(host, model, "iPNDM Teleport", p, noise, sigmas)
    assert torch.equal(off, plain) and p.extra_generation_params == {"Teleport": "off"}


# ----------------------------------------------------------------------------
# Controls, infotext, X/Y/Z.


def test_the_order_rides_the_script_args_infotext_and_xyz(monkeypatch, tmp_path):
    from gaussian_teleport.webui import (KEY_ORDER, XYZ_ORDER, TeleportRequest, add_xyz_axes, attach,
                                         infotext_readers, request_from_infotext)
    host = make_host(monkeypatch, tmp_path, "a1111")
    module = load_script()
    script = module.GaussianTeleportScript()
    p = types.SimpleNamespace()
    script.process(p, True, "a.safetensors", "sigma", 5, "save", "model", False, 2)
    assert p.gaussian_teleport.order == 2
    script.process(p, True, "a.safetensors", "sigma", 5, "save", "model", False)     # older clients: 7 args
    assert p.gaussian_teleport.order == 3
    script.process(p, True, "a.safetensors", "sigma", 5, "save", "model", False, 4.0)  # a slider's float
    assert p.gaussian_teleport.order == 4

    request = TeleportRequest.from_controls(True, "x/y.safetensors", "sigma", 5, "save", "model", order=1)
    params = {k: str(v) for k, v in request.solver_infotext().items()}      # infotext values are text
    assert params == {"Teleport moments": "x/y.safetensors", KEY_ORDER: "1"}
    readers = infotext_readers()
    assert readers["order"](params) == 1 and readers["moments"](params) == "x/y.safetensors"
    assert readers["enabled"](params) is None and readers["kind"](params) is None     # no hand-off: left alone
    assert request_from_infotext(params, TeleportRequest()) == TeleportRequest(moments="x/y.safetensors", order=1)
    assert readers["order"]({"Teleport": "sigma:5"}) is None

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None):
            self.label, self.type, self.apply, self.confirm, self.choices = label, type, apply, confirm, choices

    xyz = types.SimpleNamespace(AxisOption=AxisOption, axis_options=[])
    add_xyz_axes(xyz, str(tmp_path))
    axis = next(a for a in xyz.axis_options if a.label == XYZ_ORDER)
    assert axis.type is int and axis.choices() == ["1", "2", "3", "4"]
    axis.confirm(None, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="from 1 to 4"):
        axis.confirm(None, [2, 6])
    cells = []
    for order in (1, 4):                                   # X/Y/Z copies p for every cell
        pc = copy.copy(types.SimpleNamespace())
        axis.apply(pc, order, None)
        cells.append(attach(pc, True, "a.safetensors", "sigma", 5, "save", "model", False, 3))
    assert [c.order for c in cells] == [1, 4]


def test_the_order_setting_is_the_default(monkeypatch):
    from gaussian_teleport.webui import OPTIONS, TeleportRequest
    assert OPTIONS["gaussian_teleport_solver_order"][0] == 3
    opts = types.SimpleNamespace(gaussian_teleport_solver_order=2)
    assert TeleportRequest.from_options(opts).order == 2
    with pytest.raises(ValueError, match="from 1 to 4"):
        TeleportRequest.from_options(types.SimpleNamespace(gaussian_teleport_solver_order=0))
