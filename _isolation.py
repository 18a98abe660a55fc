"""Import isolation for hosts that put extension roots on sys.path (gaussian-teleport import isolation).

Forge keeps every extension folder on sys.path, and A1111 adds it while loading scripts, so this
folder's subpackages (moments, scheduler, nodes, webui) would answer a top-level ``import moments``
meant for someone else's module. Each subpackage's ``__init__`` runs ``defer`` when it finds itself
imported without a parent package. ``defer`` hands the import to the next module of that name on
sys.path (skipping every copy of this project), or raises ModuleNotFoundError when there is none.

The file is loaded by path, never imported by name, so it works before any package exists.
``load_package`` gives the host adapters this folder as a package under a name no one else uses.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys

MARKER = "gaussian-teleport import isolation"
PACKAGE = "gaussian_teleport"


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path or os.getcwd()))


def is_project_root(path: str) -> bool:
    """True for a folder holding a copy of this project (any version that carries this guard)."""
    candidate = os.path.join(path or os.getcwd(), "_isolation.py")
    try:
        with open(candidate, encoding="utf-8") as fh:
            return MARKER in fh.read(2048)
    except OSError:
        return False


def find_foreign_spec(name: str):
    """The spec a top-level ``import name`` would find if no copy of this project were on sys.path.

    sys.path is searched without the project's folders; finders later on sys.meta_path (editable
    installs add some) are asked too, and their answer is dropped if it points into a project folder.
    """
    path = [entry for entry in sys.path if isinstance(entry, str) and not is_project_root(entry)]
    for finder in sys.meta_path:
        if finder is importlib.machinery.PathFinder:
            spec = finder.find_spec(name, path)
        else:
            try:
                spec = finder.find_spec(name, None) if hasattr(finder, "find_spec") else None
            except (ImportError, ValueError):
                spec = None
            origin = getattr(spec, "origin", None)
            if origin and is_project_root(os.path.dirname(os.path.dirname(origin))):
                spec = None
        if spec is not None:
            return spec
    return None


def package_name(root: str) -> str:
    """A package name for ``root`` that no other module uses: one per folder, stable across reloads."""
    digest = hashlib.sha1(_real(root).encode("utf-8")).hexdigest()[:10]
    return f"_gaussian_teleport_{digest}"


def load_package(root: str):
    """This project's root folder as a package, loaded once and registered in sys.modules.

    An installed ``gaussian_teleport`` is reused only if it is this very folder; otherwise the folder
    is loaded under ``package_name(root)``, so neither sys.path nor another copy can interfere.
    """
    root = os.path.abspath(root)
    installed = sys.modules.get(PACKAGE)
    if installed is None:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is not None and spec.origin and _real(os.path.dirname(spec.origin)) == _real(root):
            return importlib.import_module(PACKAGE)
    elif getattr(installed, "__file__", None) and _real(os.path.dirname(installed.__file__)) == _real(root):
        return installed
    name = package_name(root)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    return _exec_registered(spec, name)


def _exec_registered(spec, name: str):
    """Create the module of ``spec``, register it as ``name`` and run it; unregister it if it fails."""
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def defer(module_globals: dict) -> None:
    """Replace a subpackage imported as a top-level module by the module that name really means.

    Called from the subpackage's ``__init__`` while it executes under its bare name. Installs the
    other module in sys.modules (the import statement then returns it), or raises
    ModuleNotFoundError. Because the rest of the ``__init__`` still runs, its relative imports are
    pointed at this project's own package, which is loaded under its private name.
    """
    name = module_globals["__name__"]
    spec = find_foreign_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {name!r} (the {name}/ folder of the Gaussian Teleport "
                                  "extension is not a top-level module)", name=name)
    other = _exec_registered(spec, name)
    root = os.path.dirname(os.path.dirname(os.path.abspath(module_globals["__file__"])))
    ours = importlib.import_module(f"{load_package(root).__name__}.{name}")
    module_globals["__package__"] = ours.__name__
    module_globals["__spec__"] = ours.__spec__
    sys.modules[name] = other
