"""Gaussian moments: structures, estimation (from latents, images or the model itself), files,
latent-format conversion and Gaussian math."""

if "." not in __name__:  # found as a top-level module on a host's sys.path: not ours (see _isolation.py)
    import os as _os, runpy as _runpy
    _runpy.run_path(_os.path.join(_os.path.dirname(__file__), _os.pardir, "_isolation.py"))["defer"](globals())

from .base import DEFAULT_RANK, GaussianMoments, GaussianOperator, MomentAccumulator, MomentsError, structures
from .eigen import DENSE_MAX_DIM, DenseMoments, LowRankMoments
from .stationary import StationaryMoments
from .estimate import estimate_moments, estimate_moments_from_images, fit_images, start_accumulator, target_size
from .from_model import estimate_moments_from_model
from .files import (EXTENSION, MOMENTS_FOLDER, MomentsFiles, contained_path, is_moments_file, list_moments_files, load_moments,
                    moments_from_tensors, moments_save_path, path_inside, read_header, save_moments)
from .gaussian import gaussian_flow, gaussian_trajectory, gaussian_x0, model_implied_mean, variance_from_gain
from .latent_formats import LATENT_FORMATS, NO_FORMAT, LatentFormat, find_latent_format, to_model_space, to_model_space_named
from .latent_formats import ALL_LATENT_FORMATS, VAE_STATS, VIDEO_LATENT_FORMATS
from .video import (VIDEO_STRUCTURES, VideoMoments, VideoSpatialMoments, VideoStationaryMoments, estimate_video_moments,
                    is_video_moments, video_accumulator, video_moments_from_vae_stats)

STRUCTURES = structures()

__all__ = [
    "DEFAULT_RANK", "GaussianMoments", "GaussianOperator", "MomentAccumulator", "MomentsError", "STRUCTURES",
    "DENSE_MAX_DIM", "DenseMoments", "LowRankMoments", "StationaryMoments",
    "estimate_moments", "estimate_moments_from_images", "fit_images", "start_accumulator", "target_size",
    "estimate_moments_from_model",
    "EXTENSION", "MOMENTS_FOLDER", "MomentsFiles", "contained_path", "is_moments_file", "list_moments_files", "load_moments",
    "moments_from_tensors", "moments_save_path", "path_inside", "read_header", "save_moments",
    "gaussian_flow", "gaussian_trajectory", "gaussian_x0", "model_implied_mean", "variance_from_gain",
    "LATENT_FORMATS", "NO_FORMAT", "LatentFormat", "find_latent_format", "to_model_space", "to_model_space_named",
    "ALL_LATENT_FORMATS", "VAE_STATS", "VIDEO_LATENT_FORMATS",
    "VIDEO_STRUCTURES", "VideoMoments", "VideoSpatialMoments", "VideoStationaryMoments", "estimate_video_moments",
    "is_video_moments", "video_accumulator", "video_moments_from_vae_stats",
]
