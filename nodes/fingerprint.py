"""Stable identities for caches: what a MODEL computes and what a conditioning holds, not where they sit in memory.

``id()`` is reused once an object is garbage-collected, and ModelPatcher.clone() deep-copies model_options, so
neither object identity nor ids make a cache key. Values are fingerprinted by content (tensors by a hash of
their bytes, dicts, lists and plain objects by their fields); functions and what is too big to hash (a
network's weights) get a token that lives exactly as long as the object does.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import types
import weakref

import numpy as np
import torch

MAX_DEPTH = 12                # nested objects followed this deep; below, identity tokens
MAX_HASHED = 1 << 22          # tensors up to this many values are hashed whole, bigger ones by a fixed sample;
                              # modules with more parameters than this (networks) get an identity token
# ModelPatcher fields that change what a model call computes (weights are covered by the model's token and
# patches_uuid, which ComfyUI renews whenever weight patches change)
PATCHER_FIELDS = ("object_patches", "model_options", "wrappers", "weight_wrapper_patches", "hook_patches",
                  "forced_hooks", "injections")
MODULE_INTERNALS = {"_parameters", "_buffers", "_modules", "training", "_non_persistent_buffers_set"}

_tokens: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
_counter = itertools.count(1)


def identity(obj) -> tuple:
    """A token for this object while it lives; never handed to another object (unlike id())."""
    try:
        token = _tokens.get(obj)
        if token is None:
            token = _tokens[obj] = next(_counter)
    except TypeError:            # neither weak-referenceable nor hashable: the best left is id()
        token = f"id{id(obj)}"
    return ("same", _names(type(obj))[0], token)


def _names(cls) -> tuple:
    return tuple(f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__)


def _tensor(t: torch.Tensor) -> tuple:
    if t.device.type == "meta" or t.is_sparse:
        return ("tensor", str(t.dtype), tuple(t.shape), "unhashable", str(t.device))
    flat = t.detach().reshape(-1)
    if flat.numel() > MAX_HASHED:
        flat = flat[:: flat.numel() // MAX_HASHED + 1]
    data = flat.to("cpu").contiguous()
    raw = data.to(torch.uint8) if data.dtype == torch.bool else data.view(torch.uint8)
    return ("tensor", str(t.dtype), tuple(t.shape), hashlib.sha1(raw.numpy().tobytes()).hexdigest())


def _module(m: torch.nn.Module, depth: int, seen: set) -> tuple:
    if sum(p.numel() for p in m.parameters()) > MAX_HASHED:
        return ("module", _names(type(m)), identity(m))       # a network: its weights are what they are
    state = tuple((k, _tensor(v)) for k, v in itertools.chain(m.named_parameters(), m.named_buffers()))
    fields = {k: v for k, v in vars(m).items() if k not in MODULE_INTERNALS and not k.startswith("_")}
    return ("module", _names(type(m)), state, _walk(fields, depth + 1, seen))


def _function(f: types.FunctionType) -> tuple:
    # by identity: ModelPatcher.clone() keeps functions (deepcopy does not copy them), and a closure's cells may
    # hold state that changes on every call (counters, caches) without changing what the function computes
    code = f.__code__
    return ("function", f.__module__, f.__qualname__, code.co_filename, code.co_firstlineno, identity(f))


def _walk(obj, depth: int, seen: set):
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        return obj
    if isinstance(obj, (float, complex)):
        return ("float", repr(obj))
    if isinstance(obj, enum.Enum):
        return ("enum", _names(type(obj))[0], obj.name)
    if isinstance(obj, (torch.dtype, torch.device)):
        return ("torch", str(obj))
    if isinstance(obj, torch.Tensor):
        return _tensor(obj)
    if isinstance(obj, np.ndarray):
        return _tensor(torch.from_numpy(np.ascontiguousarray(obj))) if obj.dtype != object else identity(obj)
    if depth > MAX_DEPTH or id(obj) in seen:
        return identity(obj)
    seen = seen | {id(obj)}
    if isinstance(obj, dict):
        items = [(_walk(k, depth + 1, seen), _walk(v, depth + 1, seen)) for k, v in obj.items()]
        return ("dict", tuple(sorted(items, key=repr)))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_walk(v, depth + 1, seen) for v in obj))
    if isinstance(obj, (set, frozenset)):
        return ("set", tuple(sorted((repr(_walk(v, depth + 1, seen)) for v in obj))))
    if isinstance(obj, type):
        return ("type", _names(obj))
    if isinstance(obj, types.FunctionType):
        return _function(obj)
    if isinstance(obj, types.MethodType):
        return ("method", _walk(obj.__func__, depth + 1, seen), _walk(obj.__self__, depth + 1, seen))
    if isinstance(obj, functools.partial):
        return ("partial", _walk(obj.func, depth + 1, seen), _walk(obj.args, depth + 1, seen),
                _walk(obj.keywords, depth + 1, seen))
    if isinstance(obj, (types.BuiltinFunctionType, types.ModuleType)):
        return ("builtin", getattr(obj, "__module__", None), getattr(obj, "__qualname__", obj.__name__))
    if isinstance(obj, torch.nn.Module):
        return _module(obj, depth, seen)
    if hasattr(obj, "patches_uuid") and hasattr(obj, "model"):      # another ModelPatcher (in a closure, a cond)
        return ("patcher",) + _patcher(obj, depth, seen)
    if hasattr(obj, "__dict__"):
        return ("object", _names(type(obj)), _walk(vars(obj), depth + 1, seen))
    return identity(obj)


def fingerprint(obj) -> str:
    """A digest of ``obj``'s content: equal for equal content (a clone, a re-created tensor), different as soon
    as anything in it differs."""
    return hashlib.sha1(repr(_walk(obj, 0, set())).encode()).hexdigest()


def _patcher(patcher, depth: int, seen: set) -> tuple:
    fields = {name: getattr(patcher, name, None) for name in PATCHER_FIELDS}
    return (identity(patcher.model), str(getattr(patcher, "patches_uuid", None)), _walk(fields, depth + 1, seen))


def model_fingerprint(patcher) -> str:
    """What decides a ModelPatcher's model calls: its network (a token), its weight patches (patches_uuid), and
    the content of its object patches (model_sampling …), model_options (wrappers, patches …) and hooks."""
    return hashlib.sha1(repr(_patcher(patcher, 0, {id(patcher)})).encode()).hexdigest()
