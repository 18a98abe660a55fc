"""Gaussian moments: structures, estimation, files, latent-format conversion and Gaussian math."""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

from .estimate import DENSE_MAX_DIM, MomentAccumulator, estimate_moments
from .gaussian import gaussian_flow, gaussian_flow_and_x0, gaussian_x0
from .io import load_moments, moments_from_tensors, read_header, save_moments
from .latent_formats import LATENT_FORMATS, LatentFormat, to_model_space, to_model_space_named
from .structures import (STRUCTURES, DenseMoments, GaussianMoments, GaussianOperator, LowRankMoments,
                         MomentsError, StationaryMoments)

__all__ = [
    "DENSE_MAX_DIM", "MomentAccumulator", "estimate_moments", "gaussian_flow",
    "gaussian_flow_and_x0", "gaussian_x0", "load_moments", "moments_from_tensors", "read_header", "save_moments", "LATENT_FORMATS",
    "LatentFormat", "to_model_space", "to_model_space_named", "STRUCTURES", "DenseMoments", "GaussianMoments",
    "GaussianOperator", "LowRankMoments", "MomentsError", "StationaryMoments",
]
