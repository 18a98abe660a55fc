"""Checks against a real AUTOMATIC1111 or Forge checkout named by GT_WEBUI_PATH (skipped when unset).

A webui cannot start on a CPU test machine without its models and packages, so this layer runs the
parts of the host's own code that import with torch alone, and stand-ins (test_webui_hosts) for the rest:

- modules/sd_samplers.py (all_samplers, set_samplers, Forge's add_sampler, the memoised name lookup) is
  executed from the checkout, its imports replaced by stand-ins;
- the sampler table and extra-option lists are read from the checkout's modules/sd_samplers_kdiffusion.py;
- the k-diffusion sampler functions come from the checkout (Forge's k_diffusion/, A1111's
  repositories/k-diffusion/ when present), loaded without their package __init__;
- the script is loaded with the checkout's modules/script_loading.py;
- X/Y/Z axes are built with the checkout's AxisOption class (scripts/xyz_grid.py);
- infotext goes through the checkout's quote/unquote and parameter regex (modules/infotext_utils.py);
- install.py runs under the checkout's launch.py.
"""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import types
import warnings

import pytest
import torch

import test_webui_hosts as hosts
from test_webui_wrapper import (SHAPE, SD_SIGMAS, gaussian_flow_ref, model_space_gaussian, noise_like, processing,
                                write_moments)

WEBUI = os.environ.get("GT_WEBUI_PATH")
pytestmark = pytest.mark.skipif(not WEBUI, reason="set GT_WEBUI_PATH to an AUTOMATIC1111 or Forge checkout")
ROOT = hosts.ROOT


def host_file(*parts):
    return os.path.join(WEBUI, *parts)


def flavor():
    return "forge" if os.path.isdir(host_file("modules_forge")) else "a1111"


def parse(path):
    with warnings.catch_warnings():   # the hosts' files carry a few invalid escape sequences
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(open(path, encoding="utf-8").read())


def module_assignments(path, names):
    """Top-level assignments in a host file, evaluated where literal (callables become None)."""
    tree = parse(path)
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in names:
            found[node.targets[0].id] = _literal(node.value)
    return found


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [_literal(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        return None


def host_definitions(path, names, namespace):
    """Execute the named top-level functions/classes/assignments of a host file in ``namespace``."""
    tree = parse(path)
    body = [n for n in tree.body if getattr(n, "name", None) in names
            or (isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) in names)]
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec"), namespace)
    return namespace


def real_table():
    found = module_assignments(host_file("modules", "sd_samplers_kdiffusion.py"),
                               {"samplers_k_diffusion", "sampler_extra_params"})
    # Rows whose function is not a name (Forge's Restart) are left out: they get no teleport variant.
    rows = [tuple(row) for row in found["samplers_k_diffusion"] if isinstance(row[1], str)]
    return rows, found["sampler_extra_params"]


def real_sampling_module():
    """The checkout's k_diffusion/sampling.py, imported without k_diffusion/__init__ (no torchvision)."""
    candidates = [host_file("k_diffusion"), host_file("repositories", "k-diffusion", "k_diffusion")]
    folder = next((c for c in candidates if os.path.isfile(os.path.join(c, "sampling.py"))), None)
    if folder is None:
        pytest.skip("the checkout has no k-diffusion sources (A1111 clones them into repositories/ at first launch)")
    stubs = {"k_diffusion": types.ModuleType("k_diffusion"),
             "torchvision": types.ModuleType("torchvision"),
             "torchvision.transforms": types.ModuleType("torchvision.transforms"),
             "torchvision.transforms.functional": types.ModuleType("torchvision.transforms.functional"),
             "backend": types.ModuleType("backend"), "backend.modules": types.ModuleType("backend.modules"),
             "backend.modules.k_prediction": types.ModuleType("backend.modules.k_prediction")}
    stubs["k_diffusion"].__path__ = [folder]
    stubs["backend.modules.k_prediction"].PredictionFlux = type("PredictionFlux", (), {})
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        spec = importlib.util.spec_from_file_location("k_diffusion.sampling", os.path.join(folder, "sampling.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["k_diffusion.sampling"] = module
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
        sys.modules.pop("k_diffusion.sampling", None)
        sys.modules.pop("k_diffusion.utils", None)
        sys.modules.pop("k_diffusion.deis", None)
    return module


def real_sd_samplers(monkeypatch):
    """Build a factory that executes the checkout's modules/sd_samplers.py over the stand-in table."""
    def factory(kd):
        scheduler = types.SimpleNamespace(name="automatic", label="Automatic", aliases=None, function=None)
        stand_ins = {
            "modules.sd_samplers_kdiffusion": kd,
            "modules.sd_samplers_timesteps": types.SimpleNamespace(samplers_data_timesteps=[]),
            "modules.sd_samplers_lcm": types.SimpleNamespace(samplers_data_lcm=[]),
            "modules.sd_schedulers": types.SimpleNamespace(schedulers=[scheduler],
                                                           schedulers_map={"automatic": scheduler,
                                                                           "Automatic": scheduler}),
            "modules.sd_samplers_common": types.SimpleNamespace(SamplerData=hosts.SamplerData,
                                                                samples_to_image_grid=None, sample_to_image=None),
            "modules_forge": types.ModuleType("modules_forge"),
            "modules_forge.alter_samplers": types.SimpleNamespace(samplers_data_alter=[]),
        }
        shared = sys.modules["modules.shared"]
        shared.opts.hide_samplers = []
        for name, module in stand_ins.items():
            monkeypatch.setitem(sys.modules, name, module)
            if name.startswith("modules."):
                monkeypatch.setattr(sys.modules["modules"], name.split(".")[1], module, raising=False)
        spec = importlib.util.spec_from_file_location("modules.sd_samplers", host_file("modules", "sd_samplers.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return factory


@pytest.fixture
def real_host(monkeypatch, tmp_path):
    table, extra_params = real_table()
    sampling = real_sampling_module()
    host = hosts.make_host(monkeypatch, tmp_path, flavor(), sampling=sampling, table=table,
                           extra_params=extra_params, sd_samplers=real_sd_samplers(monkeypatch))
    sys.modules["modules"].__path__ = [host_file("modules")]   # modules.errors etc. come from the checkout
    return host


def load_with_real_script_loading():
    spec = importlib.util.spec_from_file_location("modules.script_loading", host_file("modules", "script_loading.py"))
    loading = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loading)
    return hosts.load_script(load_module=loading.load_module)


def test_host_table_has_the_base_samplers():
    table, extra_params = real_table()
    by_label = {row[0]: row for row in table}
    assert by_label["Euler"][1] == "sample_euler"
    assert by_label["Heun"][1] == "sample_heun" and by_label["Heun"][3].get("second_order")
    assert by_label["DPM++ 2M"][1] == "sample_dpmpp_2m"
    assert extra_params["sample_euler"] == ["s_churn", "s_tmin", "s_tmax", "s_noise"]


def test_registration_with_the_hosts_sd_samplers(real_host):
    load_with_real_script_loading()
    load_with_real_script_loading()                     # Reload UI
    sd = real_host.sd_samplers
    names = [s.name for s in sd.all_samplers]
    for name in ("Euler Teleport", "Heun Teleport", "DPM++ 2M Teleport"):
        assert names.count(name) == 1
        assert name in sd.visible_sampler_names()
        assert sd.samplers_map[name.lower()] == name
        assert sd.get_sampler_and_scheduler(name, "Automatic")[0] == name
        assert sd.find_sampler_config(name).name == name
    if real_host.flavor == "forge":
        assert hasattr(sd, "add_sampler")


@pytest.mark.parametrize("base", ["Euler", "Heun", "DPM++ 2M"])
def test_wrapper_around_the_hosts_sampler_functions(real_host, tmp_path, base):
    path = write_moments(tmp_path / "models" / "moments", "sd15.safetensors", SHAPE)
    mean, cov, _ = model_space_gaussian(path, "SD15")
    model = hosts.SDModel(mean=mean, cov=cov, flow=False, is_sdxl=False, is_sd3=False)
    load_with_real_script_loading()
    sd = real_host.sd_samplers
    sampler = sd.create_sampler(base + " Teleport", model)
    plain = sd.create_sampler(base, model)
    assert sampler.func.__wrapped__ is plain.func       # the host's own function, signature kept
    noise = noise_like(SHAPE)
    p = processing()
    out = sampler.sample(p, noise, SD_SIGMAS)
    k = int((SD_SIGMAS[:-1] > 5.0).sum())
    x_k = gaussian_flow_ref(mean, cov, noise * SD_SIGMAS[0], float(SD_SIGMAS[0]), float(SD_SIGMAS[k]), flow=False)
    reference = plain.func(model.make_denoiser(), x_k, SD_SIGMAS[k:], extra_args={
        "cond": 0, "uncond": 0, "cond_scale": 7.0, "image_cond": None, "s_min_uncond": 0.0}, disable=True)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)
    full = sd.create_sampler(base, model)
    full.sample(processing(), noise, SD_SIGMAS)
    assert sampler.model_wrap_cfg.step == full.model_wrap_cfg.step
    assert sampler.last_states == full.last_states           # one progress tick per step, the jump's included
    assert f"{k}/10 steps replaced" in p.extra_generation_params["Teleport result"]


def test_the_gaussian_solver_and_ipndm_entries_with_the_hosts_sd_samplers(real_host, tmp_path):
    """Registered once through the host's own sd_samplers.py; the solver is the Gaussian flow on a Gaussian model."""
    from gaussian_teleport.scheduler.multistep import sample_ipndm
    path = write_moments(tmp_path / "models" / "moments", "sd15.safetensors", SHAPE)
    mean, cov, _ = model_space_gaussian(path, "SD15")
    model = hosts.SDModel(mean=mean, cov=cov, flow=False, is_sdxl=False, is_sd3=False)
    load_with_real_script_loading()
    load_with_real_script_loading()                     # Reload UI
    sd = real_host.sd_samplers
    names = [s.name for s in sd.all_samplers]
    host_ipndm = "iPNDM" in [row[0] for row in real_table()[0]]
    for name in ("Gaussian Solver", "iPNDM Teleport", "iPNDM"):
        assert names.count(name) == 1
        assert sd.get_sampler_and_scheduler(name, "Automatic")[0] == name
        assert sd.find_sampler_config(name).name == name
    assert sd.create_sampler("iPNDM Teleport", model).func.__wrapped__ is sample_ipndm
    assert (sd.create_sampler("iPNDM", model).func is sample_ipndm) != host_ipndm
    noise = noise_like(SHAPE)
    p = processing()
    out = sd.create_sampler("Gaussian Solver", model).sample(p, noise, SD_SIGMAS)
    x_last = gaussian_flow_ref(mean, cov, noise * SD_SIGMAS[0], float(SD_SIGMAS[0]), float(SD_SIGMAS[-2]), flow=False)
    reference = model.make_denoiser()(x_last, SD_SIGMAS[-2:-1].expand(noise.shape[0]), cond=0, uncond=0,
                                      cond_scale=7.0, image_cond=None, s_min_uncond=0.0)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)
    assert p.extra_generation_params["Gaussian solver order"] == 3


def test_xyz_axes_with_the_hosts_axis_option(tmp_path):
    from gaussian_teleport.webui import add_xyz_axes
    ns = host_definitions(host_file("scripts", "xyz_grid.py"), {"format_value_add_label", "AxisOption"}, {})
    xyz = types.SimpleNamespace(AxisOption=ns["AxisOption"], axis_options=[])
    labels = add_xyz_axes(xyz, str(tmp_path))
    assert [a.label for a in xyz.axis_options] == labels
    assert all(a.format_value is ns["format_value_add_label"] for a in xyz.axis_options)


def test_infotext_through_the_hosts_quoting():
    from gaussian_teleport.webui import TeleportRequest, infotext_readers
    ns = host_definitions(host_file("modules", "infotext_utils.py"), {"quote", "unquote", "re_param_code"},
                          {"json": __import__("json"), "re": re})
    request = TeleportRequest.from_controls(True, "sdxl/a b,c.safetensors", "fraction", 0.3, "same_budget", "data")
    params = {"Steps": 20, **request.infotext(), "Teleport result": "σ 14.61→4.86, 3/20 steps replaced, save"}
    line = ", ".join(f"{k}: {ns['quote'](v)}" for k, v in params.items())   # as processing.create_infotext
    parsed = {k: ns["unquote"](v) for k, v in re.findall(ns["re_param_code"], line)}
    assert parsed["Teleport result"] == params["Teleport result"]
    restored = {name: read(parsed) for name, read in infotext_readers().items()}
    assert TeleportRequest.from_controls(**restored) == request


def test_install_under_the_hosts_launch(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": WEBUI}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "install.py")], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Installing" not in out.stdout
    code = (f"import runpy, sys; sys.argv = ['install.py', '--skip-install']; import launch\n"
            "launch.is_installed = lambda name: name != 'safetensors'\n"
            f"install = runpy.run_path({os.path.join(ROOT, 'install.py')!r})\n"
            "install['main'](launch); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr   # the host's run_pip accepted our call (and skipped, as asked)
    assert out.stdout.strip().endswith("ok")
