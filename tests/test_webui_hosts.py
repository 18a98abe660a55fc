"""Stand-ins with the A1111 (1.10) and Forge module surfaces the extension touches, and the registration
checks run against them. Other test_webui_* files import the stand-ins from here.

The stand-ins copy the hosts' behaviour that matters to us, not their code: the sampler table
(label, function name, aliases, options), SamplerData, A1111's all_samplers/all_samplers_map/
set_samplers, Forge's add_sampler (which rebinds all_samplers_map), a memoised name lookup (those three in
webui_sd_samplers_standin.py, a module file loaded afresh per host), and a KDiffusionSampler that calls the
sampler function with the hosts' argument shape.
"""

import importlib.util
import inspect
import os
import sys
import types
from collections import namedtuple

import numpy as np
import pytest
import torch

from gaussian_teleport.scheduler import samplers as core_samplers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gaussian_teleport.py")

# (label, function name, aliases, options) as in the hosts' samplers_k_diffusion (A1111 1.10 / Forge).
TABLE = [
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("Euler a", "sample_euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
]
EXTRA_PARAMS = {"sample_euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
                "sample_heun": ["s_churn", "s_tmin", "s_tmax", "s_noise"]}


# ----------------------------------------------------------------------------
# k-diffusion sampler functions with k-diffusion's signatures (the project's own samplers inside).


def _no_churn(s_churn, s_noise):
    assert s_churn == 0.0 and s_noise == 1.0, "these stand-ins implement the deterministic samplers only"


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                 s_tmax=float("inf"), s_noise=1.):
    _no_churn(s_churn, s_noise)
    return core_samplers.sample_euler(model, x, sigmas, extra_args, callback, disable)


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0.,
                s_tmax=float("inf"), s_noise=1.):
    _no_churn(s_churn, s_noise)
    return core_samplers.sample_heun(model, x, sigmas, extra_args, callback, disable)


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    return core_samplers.sample_dpmpp_2m(model, x, sigmas, extra_args, callback, disable)


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None):
    raise AssertionError("not used")


STANDIN_SAMPLING = types.SimpleNamespace(sample_euler=sample_euler, sample_heun=sample_heun,
                                         sample_dpmpp_2m=sample_dpmpp_2m,
                                         sample_euler_ancestral=sample_euler_ancestral)


# ----------------------------------------------------------------------------
# An exact Gaussian denoiser in the hosts' CFG-wrapper shape.


class GaussianCFGDenoiser:
    """model_wrap_cfg stand-in: returns the exact posterior mean of a Gaussian (float64 numpy).

    VE: x = x0 + σ·ε. Flow: x = (1 − t)·x0 + t·ε with sigma = t. Counts calls in ``step`` like the
    hosts' CFGDenoiser and records (step, sigma) for each call.
    """

    def __init__(self, mean, cov, flow=False):
        self.mean, self.cov, self.flow = mean, cov, flow
        self.step, self.p, self.mask, self.calls = 0, None, None, []
        if flow:  # Forge exposes the model's prediction object on the wrapped model
            self.model_wrap = types.SimpleNamespace(predictor=types.SimpleNamespace(prediction_type="const"))

    def __call__(self, x, sigma, **extra_args):
        assert set(extra_args) == {"cond", "uncond", "cond_scale", "image_cond", "s_min_uncond"}
        s = float(sigma[0])
        self.calls.append((self.step, s))
        self.step += 1
        a = 1.0 - s if self.flow else 1.0
        flat = x.reshape(x.shape[0], -1).double().numpy()
        d = self.mean.size
        m = a * a * self.cov + s * s * np.eye(d)
        x0 = self.mean + (a * self.cov @ np.linalg.solve(m, (flat - a * self.mean).T)).T
        return torch.from_numpy(x0).reshape(x.shape).to(x.dtype)


# ----------------------------------------------------------------------------
# The host modules.

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        return steps * 2 if self.options.get("second_order", False) else steps


# The stand-in modules/sd_samplers.py is a real file beside this one, loaded afresh for each host.
SD_SAMPLERS_STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webui_sd_samplers_standin.py")


def make_kdiffusion_module(sampling, table=TABLE, extra_params=EXTRA_PARAMS):
    kd = types.ModuleType("modules.sd_samplers_kdiffusion")
    kd.k_diffusion = types.SimpleNamespace(sampling=sampling)
    kd.samplers_k_diffusion = list(table)
    kd.sampler_extra_params = dict(extra_params)

    class KDiffusionSampler:
        """Calls the function the way A1111/Forge's KDiffusionSampler.sample does."""

        def __init__(self, funcname, sd_model, options=None):
            self.funcname = funcname
            self.func = funcname if callable(funcname) else getattr(sampling, funcname)
            self.extra_params = kd.sampler_extra_params.get(funcname, [])
            self.model_wrap_cfg = sd_model.make_denoiser()
            self.config = None
            self.last_states = []

        def callback_state(self, d):
            self.last_states.append(d["i"])

        def sample(self, p, noise, sigmas):
            self.model_wrap_cfg.p = p
            self.model_wrap_cfg.step = 0
            self.model_wrap_cfg.mask = getattr(p, "mask", None)
            parameters = inspect.signature(self.func).parameters
            kwargs = {name: getattr(p, name) for name in self.extra_params
                      if hasattr(p, name) and name in parameters}
            if "sigmas" in parameters:
                kwargs["sigmas"] = sigmas
            extra_args = {"cond": "c", "image_cond": None, "uncond": "u", "cond_scale": 7.0, "s_min_uncond": 0.0}
            return self.func(self.model_wrap_cfg, noise * sigmas[0], extra_args=extra_args, disable=False,
                             callback=self.callback_state, **kwargs)

    kd.KDiffusionSampler = KDiffusionSampler
    kd.samplers_data_k_diffusion = [
        SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options)
        for label, funcname, aliases, options in table
        if callable(funcname) or (funcname is not None and hasattr(sampling, funcname))]
    return kd


def make_sd_samplers(kd, flavor):
    spec = importlib.util.spec_from_file_location("modules.sd_samplers", SD_SAMPLERS_STANDIN)
    mod = importlib.util.module_from_spec(spec)
    mod.sd_samplers_kdiffusion, mod.FLAVOR = kd, flavor
    spec.loader.exec_module(mod)
    return mod


class Opts(types.SimpleNamespace):
    def add_option(self, key, info):
        self.data_labels[key] = info
        if not hasattr(self, key):
            setattr(self, key, info.default)


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, **kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section, self.refresh = section, refresh


def make_host(monkeypatch, tmp_path, flavor="a1111", sampling=STANDIN_SAMPLING, table=TABLE,
              extra_params=EXTRA_PARAMS, sd_samplers=None):
    """Install stand-in ``modules.*`` in sys.modules; returns them as a namespace."""
    assert flavor in ("a1111", "forge")
    pkg = types.ModuleType("modules")
    pkg.__path__ = []
    host = types.SimpleNamespace(flavor=flavor)
    host.paths = types.SimpleNamespace(models_path=str(tmp_path / "models"))
    host.shared = types.SimpleNamespace(opts=Opts(data_labels={}), OptionInfo=OptionInfo)
    host.callbacks = {"ui_settings": [], "before_ui": []}
    host.script_callbacks = types.SimpleNamespace(
        on_ui_settings=lambda fn, **kw: host.callbacks["ui_settings"].append(fn),
        on_before_ui=lambda fn, **kw: host.callbacks["before_ui"].append(fn))

    class Script:
        infotext_fields = None
        paste_field_names = None

        def elem_id(self, item_id):
            return "script_" + item_id

    host.scripts = types.SimpleNamespace(Script=Script, AlwaysVisible=object(), scripts_data=[])
    host.sd_samplers_common = types.SimpleNamespace(SamplerData=SamplerData)
    host.sd_samplers_kdiffusion = make_kdiffusion_module(sampling, table, extra_params)
    host.ui_common = types.SimpleNamespace()
    host.ui_components = types.SimpleNamespace()
    monkeypatch.setitem(sys.modules, "modules", pkg)

    def install(name):
        monkeypatch.setitem(sys.modules, f"modules.{name}", getattr(host, name))
        monkeypatch.setattr(pkg, name, getattr(host, name), raising=False)

    for name in ("paths", "shared", "script_callbacks", "scripts", "sd_samplers_common", "sd_samplers_kdiffusion",
                 "ui_common", "ui_components"):
        install(name)
    host.sd_samplers = sd_samplers(host.sd_samplers_kdiffusion) if sd_samplers else \
        make_sd_samplers(host.sd_samplers_kdiffusion, flavor)
    install("sd_samplers")
    return host


def load_script(path=SCRIPT, load_module=None):
    """Load a scripts/*.py file the way A1111's script_loading.load_module does (by path, not by name)."""
    if load_module is not None:
        return load_module(path)
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SDModel(types.SimpleNamespace):
    """Checkpoint stand-in whose sampler denoiser is an exact Gaussian (model space).

    Like the hosts' checkpoints it carries is_sd1 (A1111, Forge and Forge Neo set it on SD1.x models): on by
    default unless it is marked SDXL, SD3 or flow."""

    def __init__(self, **values):
        values.setdefault("is_sd1", not (values.get("is_sdxl") or values.get("is_sd3") or values.get("flow")))
        super().__init__(**values)

    def make_denoiser(self):
        return GaussianCFGDenoiser(self.mean, self.cov, flow=self.flow)


# ----------------------------------------------------------------------------
# Registration.


@pytest.mark.parametrize("flavor", ["a1111", "forge"])
def test_samplers_are_registered_once_in_the_dropdown_lists(monkeypatch, tmp_path, flavor):
    host = make_host(monkeypatch, tmp_path, flavor)
    sd = host.sd_samplers
    before = sd.get_sampler_and_scheduler("Euler Teleport")   # memoised fallback before registration
    assert before == "DPM++ 2M"
    load_script()
    load_script()                                             # Reload UI runs the script again
    names = [s.name for s in sd.all_samplers]
    expected = ["Euler Teleport", "Heun Teleport", "DPM++ 2M Teleport", "iPNDM Teleport", "Gaussian Solver", "iPNDM"]
    for name in expected:
        assert names.count(name) == 1
        assert name in sd.visible_sampler_names()             # txt2img dropdown
        assert name in [s.name for s in sd.samplers_for_img2img]   # hires-fix / img2img dropdown
        assert sd.samplers_map[name.lower()] == name          # X/Y/Z's confirm_samplers and the API
        assert sd.get_sampler_and_scheduler(name) == name     # the memoised lookup was refreshed
    assert sd.samplers_map["k_euler_teleport"] == "Euler Teleport"
    if flavor == "forge":
        assert sorted(set(sd.add_sampler_calls)) == sorted(expected)
    assert os.path.isdir(os.path.join(host.paths.models_path, "moments"))


def test_registration_keeps_host_options_and_signature(monkeypatch, tmp_path):
    host = make_host(monkeypatch, tmp_path, "a1111")
    load_script()
    sd = host.sd_samplers
    heun = sd.all_samplers_map["Heun Teleport"]
    assert heun.options["second_order"] and heun.total_steps(10) == 20   # refiner/progress totals as Heun
    assert sd.all_samplers_map["DPM++ 2M Teleport"].options["scheduler"] == "karras"
    model = SDModel(mean=np.zeros(4), cov=np.eye(4), flow=False, is_sdxl=False)
    sampler = sd.create_sampler("Euler Teleport", model)
    assert list(inspect.signature(sampler.func).parameters) == list(inspect.signature(sample_euler).parameters)
    assert sampler.extra_params == EXTRA_PARAMS["sample_euler"]


def test_samplers_missing_from_the_host_are_skipped(monkeypatch, tmp_path):
    sampling = types.SimpleNamespace(sample_euler=sample_euler)   # an older k-diffusion without the others
    host = make_host(monkeypatch, tmp_path, "a1111", sampling=sampling)
    load_script()
    names = [s.name for s in host.sd_samplers.all_samplers]
    assert "Euler Teleport" in names and "Heun Teleport" not in names


def test_callbacks_and_script_class(monkeypatch, tmp_path):
    host = make_host(monkeypatch, tmp_path, "forge")
    module = load_script()
    assert len(host.callbacks["ui_settings"]) == 1 and len(host.callbacks["before_ui"]) == 1
    script = module.GaussianTeleportScript()
    assert script.title() == "Gaussian Teleport"
    assert script.show(False) is host.scripts.AlwaysVisible
    p = types.SimpleNamespace()
    script.process(p, True, "a.safetensors", "steps", 3, "same_budget", "data", False)
    request = p.gaussian_teleport
    assert (request.moments, str(request.settings.handoff), request.settings.mode, request.settings.mean) == (
        "a.safetensors", "steps:3", "same_budget", "data")
    script.process(p, True, "a.safetensors", "sigma", 5, "save")    # an API client that sends the first five
    assert p.gaussian_teleport.settings.mean == "model" and p.gaussian_teleport.calibrate is False
    with pytest.raises(ValueError, match="hand-off unit"):
        script.process(p, True, "a.safetensors", "seconds", 3, "save")


def test_xyz_axes_exist_before_any_ui_callback(monkeypatch, tmp_path):
    """API-only mode builds the X/Y/Z script's axis list before on_before_ui: the axes must be there at load."""
    host = make_host(monkeypatch, tmp_path, "a1111")

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None):
            self.label = label

    xyz = types.ModuleType("xyz_grid.py")
    xyz.AxisOption, xyz.axis_options = AxisOption, [AxisOption("Seed", int, None)]
    script_class = type("Script", (), {"__module__": "xyz_grid.py"})
    host.scripts.scripts_data.append(types.SimpleNamespace(script_class=script_class, module=xyz))
    load_script()
    labels = [a.label for a in xyz.axis_options]
    assert labels == ["Seed", "[Teleport] Hand-off", "[Teleport] Moments file", "[Teleport] Mean",
                      "[Gaussian Solver] Order"]
    for callback in host.callbacks["before_ui"]:
        callback()                                    # the UI's own callback adds nothing twice
    assert [a.label for a in xyz.axis_options] == labels


def test_script_does_not_depend_on_sys_path(monkeypatch, tmp_path):
    """The package is found from the script's own location, whatever sys.path holds."""
    make_host(monkeypatch, tmp_path, "a1111")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.realpath(p or ".") != ROOT])
    module = load_script()
    assert module.webui.__name__.endswith(".webui")
    assert os.path.dirname(os.path.dirname(module.webui.__file__)) == ROOT


def test_package_loads_under_a_private_name_when_not_installed(tmp_path):
    """Without an installed gaussian_teleport, the folder is loaded once under a name no one else uses."""
    import subprocess
    code = ("import sys, runpy; sys.modules['gaussian_teleport'] = None\n"
            f"iso = runpy.run_path({os.path.join(ROOT, '_isolation.py')!r})\n"
            f"a = iso['load_package']({ROOT!r}); b = iso['load_package']({ROOT!r})\n"
            "import importlib; w = importlib.import_module(a.__name__ + '.webui')\n"
            "print(a is b, a.__name__.startswith('_gaussian_teleport_'), w.TITLE)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "Gaussian", "Teleport"]
