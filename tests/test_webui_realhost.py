"""Checks against a real AUTOMATIC1111 or Forge checkout named by GT_WEBUI_PATH (skipped when unset).

A webui cannot start on a CPU test machine without its models and packages, so this layer runs the
parts of the host's own code that import with torch alone, and stand-ins (test_webui_hosts) for the rest:

- modules/sd_samplers.py (all_samplers, set_samplers, Forge's add_sampler, the memoised name lookup) is
  executed from the checkout, its imports replaced by stand-ins;
- the sampler table and extra-option lists are read from the checkout's modules/sd_samplers_kdiffusion.py;
- the k-diffusion sampler functions come from the checkout (Forge's k_diffusion/, Forge Neo's
  modules_forge/packages/k_diffusion/, A1111's repositories/k-diffusion/), loaded without their package __init__;
- the latent format of every model family the host knows: Forge's and Neo's huggingface_guess model list,
  A1111's set_model_type;
- the script is loaded with the checkout's modules/script_loading.py;
- X/Y/Z axes are built with the checkout's AxisOption class (scripts/xyz_grid.py);
- infotext goes through the checkout's quote/unquote and parameter regex (modules/infotext_utils.py);
- install.py runs under the checkout's launch.py.
"""

import ast
import importlib.machinery
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
from test_webui_wrapper import (ON_STEP, SHAPE, SD_SIGMAS, gaussian_flow_ref, model_space_gaussian, noise_like,
                                processing, write_moments)

WEBUI = os.environ.get("GT_WEBUI_PATH")
pytestmark = pytest.mark.skipif(not WEBUI, reason="set GT_WEBUI_PATH to an AUTOMATIC1111, Forge or Forge Neo "
                                                  "checkout")
ROOT = hosts.ROOT


def host_file(*parts):
    return os.path.join(WEBUI, *parts)


def flavor():
    return "forge" if os.path.isdir(host_file("modules_forge")) else "a1111"


def is_neo():
    """Forge Neo (Haoming02's neo branch) vendors its packages under modules_forge/packages/."""
    return os.path.isdir(host_file("modules_forge", "packages"))


KDIFFUSION_FOLDERS = (("k_diffusion",), ("modules_forge", "packages", "k_diffusion"),
                      ("repositories", "k-diffusion", "k_diffusion"))


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


class _DefinitionsLoader(importlib.machinery.SourceFileLoader):
    """Imports a host file as importlib does, keeping only its named top-level definitions.

    The rest of the file (its imports of gradio, modules.shared and the like) cannot run on a test machine; the
    kept functions, classes and assignments are compiled from the file's own source, with its path for tracebacks.
    """

    def __init__(self, fullname, path, names):
        super().__init__(fullname, path)
        self.names = frozenset(names)

    def source_to_code(self, data, path, *, _optimize=-1):
        tree = parse(path)
        body = [n for n in tree.body if getattr(n, "name", None) in self.names
                or (isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) in self.names)]
        found = {getattr(n, "name", None) or n.targets[0].id for n in body}
        assert found == self.names, f"{path} no longer defines {sorted(self.names - found)} at its top level"
        return compile(ast.Module(body=body, type_ignores=[]), path, "exec", dont_inherit=True, optimize=_optimize)

    def get_code(self, fullname):   # never the host's own bytecode cache: it holds the whole file
        return self.source_to_code(None, self.path)


def host_definitions(path, names, namespace):
    """The named top-level functions/classes/assignments of a host file, imported with ``namespace`` as the
    globals the rest of the file would have provided; returns the module's namespace."""
    name = "gt_host_definitions." + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path, loader=_DefinitionsLoader(name, path, names))
    module = importlib.util.module_from_spec(spec)
    vars(module).update(namespace)
    spec.loader.exec_module(module)
    return vars(module)


def real_table():
    found = module_assignments(host_file("modules", "sd_samplers_kdiffusion.py"),
                               {"samplers_k_diffusion", "sampler_extra_params"})
    # Rows whose function is not a name (Forge's Restart) are left out: they get no teleport variant; so are rows
    # whose label is computed (Neo's "Flux Realistic" if opts.forbidden_knowledge else "DPM++ 2s a RF").
    rows = [tuple(row) for row in found["samplers_k_diffusion"] if isinstance(row[0], str) and isinstance(row[1], str)]
    return rows, found["sampler_extra_params"]


def real_sampling_module():
    """The checkout's k_diffusion/sampling.py, imported without k_diffusion/__init__ (no torchvision)."""
    candidates = [host_file(*parts) for parts in KDIFFUSION_FOLDERS]
    folder = next((c for c in candidates if os.path.isfile(os.path.join(c, "sampling.py"))), None)
    if folder is None:
        pytest.skip(f"the checkout at {WEBUI} has no k-diffusion sources in any of "
                    f"{', '.join(os.path.join(*parts) for parts in KDIFFUSION_FOLDERS)}: A1111 clones "
                    "repositories/k-diffusion at its first launch (launch it once, or clone crowsonkb/k-diffusion "
                    "there at the commit modules/launch_utils.py pins)")
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
            "modules_forge.alter_samplers": types.SimpleNamespace(samplers_data_alter=[]),          # Forge
            "modules_forge.forge_alter_samplers": types.SimpleNamespace(samplers_data_alter=[]),    # Forge Neo
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
    p = processing(value=ON_STEP)
    out = sampler.sample(p, noise, SD_SIGMAS)
    k = int((SD_SIGMAS[:-1] > ON_STEP).sum())
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
    # Forge lists its own "IPNDM"; A1111 and Forge Neo have none, so the core's "iPNDM" is shipped there.
    host_label = next((row[0] for row in real_table()[0] if row[0].lower() == "ipndm"), None)
    plain = host_label or "iPNDM"
    for name in ("Gaussian Solver", "iPNDM Teleport", plain):
        assert names.count(name) == 1
        assert sd.get_sampler_and_scheduler(name, "Automatic")[0] == name
        assert sd.find_sampler_config(name).name == name
    assert sum(n.lower() == "ipndm" for n in names) == 1                    # never both "IPNDM" and "iPNDM"
    # "iPNDM Teleport" wraps the plain entry's function (the host's where it has one): off, it is that entry.
    assert sd.create_sampler("iPNDM Teleport", model).func.__wrapped__ is sd.create_sampler(plain, model).func
    assert (sd.create_sampler(plain, model).func is sample_ipndm) == (host_label is None)
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


def test_a_plain_xyz_cell_after_a_teleport_cell_has_no_teleport_infotext(real_host, tmp_path):
    """The checkout's X/Y/Z script runs each cell on copy(p): the cells share one extra_generation_params dict."""
    from copy import copy
    assert "copy(p)" in open(host_file("scripts", "xyz_grid.py"), encoding="utf-8").read()
    path = write_moments(tmp_path / "models" / "moments", "sd15.safetensors", SHAPE)
    mean, cov, _ = model_space_gaussian(path, "SD15")
    model = hosts.SDModel(mean=mean, cov=cov, flow=False, is_sdxl=False, is_sd3=False)
    script = load_with_real_script_loading().GaussianTeleportScript()
    sd = real_host.sd_samplers
    p = types.SimpleNamespace(extra_generation_params={"Steps": 10}, is_hr_pass=False, s_churn=0.0, s_tmin=0.0,
                              s_tmax=float("inf"), s_noise=1.0)
    args = (True, "sd15.safetensors", "sigma", 5.0, "save", "model", False)
    cells = []
    for sampler in ("Euler Teleport", "Euler", "Gaussian Solver", "DPM++ 2M"):
        cell = copy(p)
        script.process(cell, *args)                        # what the host runs when each cell starts
        sd.create_sampler(sampler, model).sample(cell, noise_like(SHAPE), SD_SIGMAS)
        cells.append(dict(cell.extra_generation_params))
    assert cell.extra_generation_params is p.extra_generation_params
    assert "Teleport result" in cells[0] and "Gaussian solver order" in cells[2]
    for plain in (cells[1], cells[3]):
        assert plain == {"Steps": 10}, plain
    assert "Teleport result" not in cells[2] and "Teleport" not in cells[2]


def host_model_families():
    """(family, the checkpoint object the host would build) for every model family the checkout knows.

    Forge and Forge Neo: each class of huggingface_guess's model list (the checkout's own), as the engine's
    ``model_config``; A1111: its set_model_type flags on an SD1, SD2, SDXL and SD3 checkpoint.
    """
    folder = next((f for f in (host_file("modules_forge", "packages"), host_file("repositories", "huggingface_guess"))
                   if os.path.isfile(os.path.join(f, "huggingface_guess", "model_list.py"))), None)
    if flavor() == "forge":
        assert folder is not None, "Forge keeps huggingface_guess in repositories/, Neo in modules_forge/packages/"
        saved = {k: v for k, v in sys.modules.items() if k == "huggingface_guess" or k.startswith("huggingface_guess.")}
        sys.path.insert(0, folder)
        try:
            model_list = importlib.import_module("huggingface_guess.model_list")
        finally:
            sys.path.remove(folder)
            for name in [k for k in sys.modules if k == "huggingface_guess" or k.startswith("huggingface_guess.")]:
                sys.modules.pop(name)
            sys.modules.update(saved)
        families = []
        for cls in model_list.models:
            config = cls.__new__(cls)
            config.latent_format = cls.latent_format()
            engine = type(cls.__name__ + "Engine", (), {})()
            engine.model_config, engine.is_sd1 = config, cls.__name__ in ("SD15", "SD20")
            families.append((cls.__name__, type(config.latent_format).__name__, engine))
        return families
    ns = host_definitions(host_file("modules", "sd_models.py"), {"set_model_type"},
                          {"ModelType": types.SimpleNamespace(SD1=1, SD2=2, SDXL=3, SSD=4, SD3=5)})
    families = []
    for name, attrs, keys, fmt in (("SD1", {"cond_stage_model": types.SimpleNamespace()}, [], "SD15"),
                                   ("SD2", {"cond_stage_model": types.SimpleNamespace(model=1)}, [], "SD15"),
                                   ("SDXL", {"conditioner": 1}, [], "SDXL"),
                                   ("SD3", {}, ["model.diffusion_model.x_embedder.proj.weight"], "SD3")):
        model = types.SimpleNamespace(**attrs)
        ns["set_model_type"](model, dict.fromkeys(keys))
        families.append((name, fmt, model))
    return families


def test_every_model_family_of_the_host_gets_its_own_latent_format_or_a_refusal():
    """Never taken for SD1.5: each family the host knows is one of the known formats, or refused by name."""
    from gaussian_teleport.moments import LATENT_FORMATS, MomentsError
    from gaussian_teleport.webui import latent_format_of
    found = {}
    for family, host_format, model in host_model_families():
        if host_format in LATENT_FORMATS:
            found[family] = latent_format_of(model)
            assert found[family] == host_format, family
        else:
            with pytest.raises(MomentsError, match=f"does not support .*{host_format}.*without 'Teleport'"):
                latent_format_of(model)
            found[family] = None
    assert found.get("SD15", found.get("SD1")) == "SD15"
    if is_neo():   # Lumina 2, Z-Image and Chroma use Flux's VAE; Qwen-Image and Wan use Wan's, refused
        assert {found[f] for f in ("Flux", "Chroma", "Lumina2", "ZImage")} == {"Flux"}, found
        assert {found[f] for f in ("QwenImage", "WAN21_T2V", "WAN21_I2V")} == {None}, found


# ----------------------------------------------------------------------------
# Issue 23, items 1–4: the host's own code around a request it cannot honour, its console and its progress.


def host_function(path, name, namespace, cls=None):
    """One function (or a method of class ``cls``) of a host file, with ``namespace`` as its globals."""
    tree = parse(path)
    body = tree.body if cls is None else next(n for n in tree.body
                                              if isinstance(n, ast.ClassDef) and n.name == cls).body
    node = next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)
    code = compile(ast.Module(body=[node], type_ignores=[]), path, "exec")
    return types.FunctionType(next(c for c in code.co_consts if getattr(c, "co_name", None) == name), namespace)


def host_module(monkeypatch, name, *parts):
    """A host module imported from the checkout by path; its ``modules.*`` imports find the stand-ins."""
    spec = importlib.util.spec_from_file_location(name, host_file(*parts))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def hosts_process_and_sampling(monkeypatch):
    """The host's ScriptRunner.process (it reports what a script's process() raises and goes on) and its
    Sampler.launch_sampling (it lets a sampler's exception through, but for interrupts)."""
    errors = host_module(monkeypatch, "modules.errors", "modules", "errors.py")
    process = host_function(host_file("modules", "scripts.py"), "process", {"errors": errors}, cls="ScriptRunner")
    launch = host_function(host_file("modules", "sd_samplers_common.py"), "launch_sampling",
                           {"state": types.SimpleNamespace(), "InterruptedException": type("Interrupted",
                                                                                           (Exception,), {})},
                           cls="Sampler")
    return process, launch


def teleport_script(module, args):
    script = module.GaussianTeleportScript()
    script.args_from, script.args_to, script.filename = 0, len(args), "scripts/gaussian_teleport.py"
    runner = types.SimpleNamespace(ordered_scripts=lambda name: [script], alwayson_scripts=[script])
    return runner


def host_p(args):
    return types.SimpleNamespace(extra_generation_params={}, is_hr_pass=False, s_churn=0.0, s_tmin=0.0,
                                 s_tmax=float("inf"), s_noise=1.0, script_args=list(args))


GOOD_ARGS = [True, "sd15.safetensors", "sigma", 5.0, "save", "model", False, 3]


@pytest.mark.parametrize("index, value, kind", [(5, "prompt", "sigma"), (3, float("nan"), "sigma"),
                                                (3, -1, "sigma"), (3, "abc", "sigma"), (3, None, "sigma"),
                                                (3, 2.5, "steps"), (3, 1.5, "fraction"), (2, "seconds", "sigma"),
                                                (4, "fast", "sigma"), (0, "yes", "sigma")])
def test_a_request_it_cannot_honour_fails_the_hosts_sampling_with_its_reason(real_host, tmp_path, monkeypatch,
                                                                             capsys, index, value, kind):
    from gaussian_teleport.webui import RequestRefused
    path = write_moments(tmp_path / "models" / "moments", "sd15.safetensors", SHAPE)
    mean, cov, _ = model_space_gaussian(path, "SD15")
    model = hosts.SDModel(mean=mean, cov=cov, flow=False, is_sdxl=False, is_sd3=False)
    module = load_with_real_script_loading()
    real_host.shared.opts.gaussian_teleport_moments = "sd15.safetensors"     # a Settings default exists
    args = list(GOOD_ARGS)
    args[2], args[index] = kind, value
    process, launch = hosts_process_and_sampling(monkeypatch)
    p = host_p(args)
    process(teleport_script(module, args), p)                               # the host reports and goes on
    assert "Error running process" in capsys.readouterr().err
    for name in ("Euler Teleport", "Gaussian Solver"):
        sampler = real_host.sd_samplers.create_sampler(name, model)
        with pytest.raises(RequestRefused, match=rf"args\[{index}\].*Send .*other settings"):
            launch(sampler, 10, lambda: sampler.sample(p, noise_like(SHAPE), SD_SIGMAS))
    assert "Teleport result" not in p.extra_generation_params


def test_the_text_false_as_the_switch_runs_the_hosts_plain_sampler(real_host, tmp_path, monkeypatch):
    path = write_moments(tmp_path / "models" / "moments", "sd15.safetensors", SHAPE)
    mean, cov, _ = model_space_gaussian(path, "SD15")
    model = hosts.SDModel(mean=mean, cov=cov, flow=False, is_sdxl=False, is_sd3=False)
    module = load_with_real_script_loading()
    args = ["false", *GOOD_ARGS[1:]]
    process, launch = hosts_process_and_sampling(monkeypatch)
    p = host_p(args)
    process(teleport_script(module, args), p)
    sampler = real_host.sd_samplers.create_sampler("Euler Teleport", model)
    out = launch(sampler, 10, lambda: sampler.sample(p, noise_like(SHAPE), SD_SIGMAS))
    plain = real_host.sd_samplers.create_sampler("Euler", model).sample(host_p([]), noise_like(SHAPE), SD_SIGMAS)
    assert torch.equal(out, plain) and p.extra_generation_params == {"Teleport": "off"}


def test_an_xyz_moments_value_naming_a_missing_file_is_refused_by_the_hosts_axis_confirm(tmp_path):
    from gaussian_teleport.moments import MomentsError
    from gaussian_teleport.webui import XYZ_MOMENTS, add_xyz_axes
    (tmp_path / "sd15.safetensors").write_bytes(b"")
    ns = host_definitions(host_file("scripts", "xyz_grid.py"), {"format_value_add_label", "AxisOption"}, {})
    xyz = types.SimpleNamespace(AxisOption=ns["AxisOption"], axis_options=[])
    add_xyz_axes(xyz, str(tmp_path))
    axis = next(a for a in xyz.axis_options if a.label == XYZ_MOMENTS)
    axis.confirm(None, ["sd15.safetensors", "From the model"])
    with pytest.raises(MomentsError, match=r"\[Teleport\] Moments file.*'bad/missing.safetensors' was not found"):
        axis.confirm(None, ["sd15.safetensors", "bad/missing.safetensors"])


def teleport_run(real_host, tmp_path, moments="sd15.safetensors", record=None):
    path = write_moments(tmp_path / "models" / "moments", "sd15.safetensors", SHAPE, overwrite=True)
    mean, cov, _ = model_space_gaussian(path, "SD15")
    model = hosts.SDModel(mean=mean, cov=cov, flow=False, is_sdxl=False, is_sd3=False,
                          sd_checkpoint_info=types.SimpleNamespace(model_name="tiny", shorthash="abc123"))
    if record is not None:
        make = model.make_denoiser

        def make_denoiser():
            denoiser = make()
            inner = denoiser.__call__

            class Recording(type(denoiser)):
                def __call__(self, x, sigma, **extra):
                    record()
                    return inner(x, sigma, **extra)
            denoiser.__class__ = Recording
            return denoiser
        model.make_denoiser = make_denoiser
    return model


@pytest.fixture
def default_logging(monkeypatch):
    """Logging as a host process has it before any --loglevel: this extension's logger untouched."""
    import logging
    logger = logging.getLogger("gaussian_teleport")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    monkeypatch.delenv("SD_WEBUI_LOG_LEVEL", raising=False)
    return logger


@pytest.mark.parametrize("loglevel", [None, "INFO"])
def test_the_console_shows_the_jump_at_the_hosts_log_level(real_host, tmp_path, monkeypatch, capsys,
                                                            default_logging, loglevel):
    """At the default level (no --loglevel) the host configures no logging; with --loglevel INFO it adds its own
    handler: either way the jump summary is printed once."""
    import logging
    monkeypatch.setattr(logging.root, "handlers", [])     # here: pytest adds its own for the test's call phase
    config = host_module(monkeypatch, "modules.logging_config", "modules", "logging_config.py")
    config.setup_logging(loglevel)
    real_host.shared.cmd_opts = types.SimpleNamespace(loglevel=loglevel)
    model = teleport_run(real_host, tmp_path)
    module = load_with_real_script_loading()
    args = list(GOOD_ARGS)
    process, launch = hosts_process_and_sampling(monkeypatch)
    p = host_p(args)
    process(teleport_script(module, args), p)
    sampler = real_host.sd_samplers.create_sampler("Euler Teleport", model)
    launch(sampler, 10, lambda: sampler.sample(p, noise_like(SHAPE), SD_SIGMAS))
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("teleport: jumped σ 14.61") == 1, captured


def test_reading_moments_from_the_model_is_its_own_job_in_the_hosts_progress(real_host, tmp_path, monkeypatch):
    import io
    import time

    from gaussian_teleport.webui import ESTIMATE_TEXT
    monkeypatch.setitem(sys.modules, "modules.devices", types.SimpleNamespace(torch_gc=lambda: None))
    monkeypatch.setattr(sys.modules["modules"], "devices", sys.modules["modules.devices"], raising=False)
    backend = types.ModuleType("backend")                            # Forge's State reads backend.args
    backend.__path__ = []
    monkeypatch.setitem(sys.modules, "backend", backend)
    monkeypatch.setitem(sys.modules, "backend.args", types.SimpleNamespace(args=types.SimpleNamespace(
        cuda_stream=False)))
    shared = real_host.shared
    shared.opts.multiple_tqdm, shared.parallel_processing_allowed = True, False
    shared.cmd_opts = types.SimpleNamespace(disable_console_progressbars=False, loglevel="WARNING")
    shared.progress_print_out = io.StringIO()
    state_module = host_module(monkeypatch, "modules.shared_state", "modules", "shared_state.py")
    total_module = host_module(monkeypatch, "modules.shared_total_tqdm", "modules", "shared_total_tqdm.py")
    shared.state, shared.total_tqdm = state_module.State(), total_module.TotalTQDM()
    progressapi = host_function(host_file("modules", "api", "api.py"), "progressapi",
                                {"shared": shared, "time": time, "current_task": None, "encode_pil_to_base64": None,
                                 "models": types.SimpleNamespace(ProgressResponse=lambda **kw: kw)}, cls="Api")
    seen = []

    def record():
        report = progressapi(None, types.SimpleNamespace(skip_current_image=True))
        seen.append((report["progress"], report["textinfo"], dict(report["state"])))

    model = teleport_run(real_host, tmp_path, record=record)
    module = load_with_real_script_loading()
    args = ["true", "From the model", *GOOD_ARGS[2:]]
    process, _ = hosts_process_and_sampling(monkeypatch)
    launch = host_function(host_file("modules", "sd_samplers_common.py"), "launch_sampling",
                           {"state": shared.state, "InterruptedException": KeyboardInterrupt}, cls="Sampler")
    shared.state.begin("txt2img")
    shared.state.job_count = 1                                       # processing: n_iter
    p = host_p(args)
    process(teleport_script(module, args), p)
    sampler = real_host.sd_samplers.create_sampler("Euler Teleport", model)
    launch(sampler, 10, lambda: sampler.sample(p, noise_like(SHAPE), SD_SIGMAS))
    estimate = [s for s in seen if s[2]["job"] == ESTIMATE_TEXT]
    assert estimate and all(s[1] == ESTIMATE_TEXT and s[2]["sampling_steps"] == 7 for s in estimate), seen
    steps = [s[2]["sampling_step"] for s in estimate]
    assert steps == sorted(steps) and set(steps) == set(range(7))
    after = seen[len(estimate):]
    assert after and all(s[2]["job"] == "txt2img" and s[2]["sampling_steps"] == 10 for s in after)
    progress = [s[0] for s in seen]
    assert progress == sorted(progress), progress                      # the ETA never runs away
    assert shared.total_tqdm._tqdm.total == 10                         # the console total: sampling steps only
    shared.total_tqdm.clear()
