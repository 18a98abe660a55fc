"""ComfyUI nodes for Gaussian Teleport.

The node descriptions (definitions.py) and their logic (logic.py, plot.py) import without ComfyUI;
host.py, v3.py and classic.py are imported only when ComfyUI loads the pack.
"""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())


async def comfy_entrypoint():
    """V3 entry point (comfy_api.latest)."""
    from .v3 import comfy_entrypoint as entry

    return await entry()


def classic_mappings():
    """Classic NODE_CLASS_MAPPINGS for hosts without the V3 API; None outside ComfyUI or on V3 hosts."""
    try:
        import comfy_api.latest  # noqa: F401  (V3 host: comfy_entrypoint is used)
        return None
    except ImportError:
        pass
    try:
        import comfy.samplers  # noqa: F401
    except ImportError:
        return None  # not inside ComfyUI
    from .classic import mappings

    return mappings()
