"""Our standalone samplers and the teleport wrapper against the real k-diffusion samplers.

The registry's k-diffusion imports torchvision in its package __init__, which does not import with a
CPU-only torch. Its sampling module needs only scipy, torchdiffeq, torchsde, tqdm and utils, whose
torchvision import the samplers never use; so this test loads those two files from the wheel named by
GT_KDIFFUSION_WHEEL under a private package name, with torchvision stubbed for that load only.
"""

import importlib.util
import os
import sys
import types
import zipfile

import pytest
import torch
from conftest import correlated_latents

from gaussian_teleport.moments import estimate_moments, gaussian_x0
from gaussian_teleport.scheduler import SAMPLERS, get_sigmas_karras, make_teleport_sampler

WHEEL = os.environ.get("GT_KDIFFUSION_WHEEL")
pytestmark = pytest.mark.skipif(not WHEEL or not os.path.isfile(WHEEL),
                                reason="set GT_KDIFFUSION_WHEEL to a k-diffusion wheel to compare samplers")
SHAPE = (2, 4, 4)


@pytest.fixture(scope="module")
def kdiff(tmp_path_factory):
    for dep in ("scipy", "torchdiffeq", "torchsde", "tqdm"):
        pytest.importorskip(dep)
    root = tmp_path_factory.mktemp("kdiff")
    with zipfile.ZipFile(WHEEL) as wheel:
        for name in ("k_diffusion/sampling.py", "k_diffusion/utils.py"):
            wheel.extract(name, root)
    pkg_name = "_kdiffusion_reference"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = [str(root / "k_diffusion")]
    stubs = {"torchvision": types.ModuleType("torchvision"),
             "torchvision.transforms": types.ModuleType("torchvision.transforms"),
             "torchvision.transforms.functional": types.ModuleType("torchvision.transforms.functional")}
    stubs["torchvision"].transforms = stubs["torchvision.transforms"]
    stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]
    if importlib.util.find_spec("PIL") is None:
        stubs["PIL"] = types.ModuleType("PIL")
        stubs["PIL"].Image = types.ModuleType("PIL.Image")
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    sys.modules[pkg_name] = pkg
    try:
        for sub in ("utils", "sampling"):
            spec = importlib.util.spec_from_file_location(f"{pkg_name}.{sub}", root / "k_diffusion" / f"{sub}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return sys.modules[f"{pkg_name}.sampling"]


@pytest.fixture(scope="module")
def setup():
    m = estimate_moments([correlated_latents(150, SHAPE, seed=3)], "lowrank", rank=8, dtype=torch.float64)
    op = m.operator(SHAPE)
    # A non-Gaussian denoiser, so the comparison is not special to the closed form.
    model = lambda x, s, **_: torch.tanh(gaussian_x0(op, x, float(s[0])))
    x = torch.randn(2, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 14.6
    return m, model, x, get_sigmas_karras(12, 0.03, 14.6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_standalone_samplers_equal_k_diffusion(kdiff, setup, name):
    _, model, x, sigmas = setup
    ours = SAMPLERS[name](model, x, sigmas, disable=True)
    theirs = getattr(kdiff, f"sample_{name}")(model, x, sigmas, disable=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "lms", "dpmpp_2m_sde"])
def test_teleport_wraps_real_k_diffusion_samplers(kdiff, setup, name):
    """Teleport around k-diffusion's own function equals jump + that function on the rest; off = identity."""
    m, model, x, sigmas = setup
    inner = getattr(kdiff, f"sample_{name}")
    kw = {"noise_sampler": lambda s, sn: torch.zeros_like(x)} if name.endswith("sde") else {}
    fn = make_teleport_sampler(inner, m, "steps:3", mean="data", **kw)
    got = fn(model, x, sigmas, disable=True)
    from gaussian_teleport.scheduler import teleport_jump

    jumped, _ = teleport_jump(m, x, float(sigmas[0]), float(sigmas[3]))
    want = inner(model, jumped, sigmas[3:], disable=True, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    off = make_teleport_sampler(inner, m, "sigma:100", **kw)(model, x, sigmas, disable=True)
    torch.testing.assert_close(off, inner(model, x, sigmas, disable=True, **kw), rtol=0, atol=0)
