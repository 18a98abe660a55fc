"""Gaussian Teleport: replace the first, high-noise sampling steps with one closed-form jump.

This file is ComfyUI's entry point for the package. Importing it needs no host: the nodes are
imported only when ComfyUI asks for them through ``comfy_entrypoint`` (V3 node API). On a ComfyUI
too old for that API the mappings are empty and the log says what to update.
"""

__version__ = "0.2.0"


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entry

    return await entry()


def __getattr__(name):
    # ``gaussian_teleport.MomentsError``: the name errors are shown under (see moments/base.py), importable
    # without importing torch at package import.
    if name == "MomentsError":
        from .moments.base import MomentsError
        return MomentsError
    raise AttributeError(name)


def _old_host_mappings():
    if not __package__:
        # Imported as a plain file, not as the package: pytest does this with a checkout whose folder name is
        # not an identifier (``gaussian-teleport``). There is no host then, so no mappings.
        return None
    from .nodes import old_host_mappings

    return old_host_mappings()


NODE_CLASS_MAPPINGS = _old_host_mappings()
NODE_DISPLAY_NAME_MAPPINGS = None if NODE_CLASS_MAPPINGS is None else {}
