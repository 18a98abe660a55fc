"""ComfyUI nodes for Gaussian Teleport (V3 node API, comfy_api.latest), one feature per file:

- estimate.py: Estimate Moments (Images, Latents, Model); fingerprint.py: the stable identities its cache keys on
- moments_files.py: Save Moments, Load Moments, the models/moments folder
- sampling.py: Gaussian Teleport Sampler, Attach Teleport Moments (+ the KSampler's teleport_* entries), Teleport Sigmas
- gaussian_solver.py: Gaussian Solver Sampler (+ the KSampler's gaussian_solver entry)
- calibrate.py: Calibrate Teleport
- preview.py: Gaussian Preview

Imported only when ComfyUI asks for the nodes; the logic lives in moments/ and scheduler/.
"""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

import logging

V3_REQUIRED = "Gaussian Teleport needs ComfyUI's V3 node API (comfy_api.latest; tested on ComfyUI 0.3.64): " \
              "update ComfyUI to load its nodes"


def has_v3_api() -> bool:
    try:
        from comfy_api.latest import ComfyExtension, io  # noqa: F401
    except ImportError:
        return False
    return hasattr(io, "ComfyNode") and hasattr(io, "Custom")


async def comfy_entrypoint():
    """The V3 entry point: registers the moments folder and the KSampler entries once, returns the nodes."""
    from comfy_api.latest import ComfyExtension

    from . import calibrate, estimate, gaussian_solver, moments_files, preview, sampling

    moments_files.register_moments_folder()
    sampling.register_ksampler_variants()
    gaussian_solver.register_ksampler_entry()
    nodes = [*estimate.NODES, *moments_files.NODES, *sampling.NODES, *gaussian_solver.NODES, *calibrate.NODES,
             *preview.NODES]

    class GaussianTeleportExtension(ComfyExtension):
        async def get_node_list(self):
            return nodes

    return GaussianTeleportExtension()


def old_host_mappings():
    """On a ComfyUI without the V3 API: empty mappings and one clear log line (else None: use comfy_entrypoint)."""
    try:
        import comfy.samplers  # noqa: F401
    except ImportError:
        return None          # not inside ComfyUI
    if has_v3_api():
        return None
    logging.getLogger("gaussian_teleport").error(V3_REQUIRED)
    return {}
