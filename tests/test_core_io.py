"""Moments files: round trips, metadata, and clear refusals of corrupt, foreign or unsafe files."""

import json
import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import correlated_latents, dense_covariance
from safetensors.torch import load_file, save_file

from gaussian_teleport.moments import (LATENT_FORMATS, MomentsError, estimate_moments,
                                       load_moments, read_header, save_moments, to_model_space,
                                       to_model_space_named)

STRUCTURES = ["dense", "lowrank", "stationary"]


@pytest.fixture(params=STRUCTURES)
def moments(request):
    return estimate_moments([correlated_latents(60, (4, 2, 3), seed=1)], request.param, rank=5,
                            latent_format="SD15")   # SD15 latents have 4 channels


def test_round_trip_keeps_tensors_and_metadata(moments, tmp_path):
    path = save_moments(moments, tmp_path / "m.safetensors", metadata={"source": "unit test"})
    back = load_moments(path)
    assert type(back) is type(moments) and back.latent_shape == (4, 2, 3)
    assert (back.count, back.space, back.latent_format, back.rank) == (60, "raw", "SD15", moments.rank)
    assert back.metadata["source"] == "unit test" and back.metadata["estimator"]
    for a, b in zip(dense_covariance(moments), dense_covariance(back)):
        np.testing.assert_array_equal(a, b)
    meta = read_header(path)["__metadata__"]
    assert meta["structure"] == moments.structure and meta["latent_shape"] == "4,2,3"
    assert meta["format_version"] == "1" and meta["dtype"] == "float32"


def test_half_precision_eigenvectors_load_within_tolerance(tmp_path):
    m = estimate_moments([correlated_latents(300, (4, 8, 8), seed=2)], "lowrank", rank=64)
    back = load_moments(save_moments(m, tmp_path / "h.safetensors", dtype="float16"))
    assert back.eigvecs.dtype == torch.float32 and back.eigvals.dtype == torch.float32
    torch.testing.assert_close(back.eigvecs, m.eigvecs, atol=2e-3, rtol=1e-2)


def test_save_refuses_to_overwrite(moments, tmp_path):
    save_moments(moments, tmp_path / "m.safetensors")
    with pytest.raises(FileExistsError, match="already exists"):
        save_moments(moments, tmp_path / "m.safetensors")
    save_moments(moments, tmp_path / "m.safetensors", overwrite=True)


def test_a_pickle_is_refused_without_being_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(MomentsError, match="not a safetensors file"):
        load_moments(path)
    assert not marker.exists()


def test_truncated_and_empty_files_are_refused(moments, tmp_path):
    path = save_moments(moments, tmp_path / "m.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 100])
    with pytest.raises(MomentsError, match="truncated"):
        load_moments(path)
    open(path, "wb").write(b"")
    with pytest.raises(MomentsError, match="empty or truncated"):
        load_moments(path)


def test_a_model_checkpoint_is_not_taken_for_moments(tmp_path):
    save_file({"weight": torch.zeros(3)}, tmp_path / "model.safetensors")
    with pytest.raises(MomentsError, match="not a moments file"):
        load_moments(tmp_path / "model.safetensors")


def rewrite(path, edit_tensors=None, edit_meta=None):
    tensors = load_file(path)
    meta = read_header(path)["__metadata__"]
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=meta)


@pytest.mark.parametrize("damage, message", [
    (lambda t: t["mean"].view(-1).__setitem__(0, float("nan")), "NaN"),
    (lambda t: t["eigvals"].view(-1).__setitem__(0, -1.0), "negative"),
    (lambda t: t.__setitem__("eigvecs", t["eigvecs"] * 1.1) if "eigvecs" in t
        else t.__setitem__("eigvecs_real", t["eigvecs_real"] * 1.1), "not orthonormal"),
    (lambda t: t.__setitem__("eigvals", t["eigvals"][..., :-1]), "do not fit"),
    (lambda t: t.pop("mean"), "lack tensors"),
])
def test_corrupt_content_is_named(moments, tmp_path, damage, message):
    path = save_moments(moments, tmp_path / "m.safetensors")
    rewrite(path, edit_tensors=damage)
    with pytest.raises(MomentsError, match=message):
        load_moments(path)


def test_bad_metadata_is_named(moments, tmp_path):
    path = save_moments(moments, tmp_path / "m.safetensors")
    rewrite(path, edit_meta=lambda m: m.update(format_version="99"))
    with pytest.raises(MomentsError, match="format version"):
        load_moments(path)
    rewrite(path, edit_meta=lambda m: m.update(format_version="1", latent_shape="2,4,4"))
    with pytest.raises(MomentsError, match="metadata says"):
        load_moments(path)


def test_header_length_lies_are_refused(tmp_path):
    path = tmp_path / "lie.safetensors"
    header = json.dumps({"__metadata__": {}}).encode()
    path.write_bytes(struct.pack("<Q", 10**12) + header)
    with pytest.raises(MomentsError, match="not a safetensors file"):
        load_moments(path)


# -- latent formats -----------------------------------------------------------


@pytest.mark.parametrize("structure", STRUCTURES)
def test_model_space_conversion_equals_moments_of_converted_data(structure):
    data = correlated_latents(80, (4, 3, 3), seed=3)
    fmt = LATENT_FORMATS["SD15"]
    raw = estimate_moments([data], structure, rank=6, dtype=torch.float64)
    converted = to_model_space_named(raw, "SD15")
    direct = estimate_moments([data * fmt.scale], structure, rank=6, dtype=torch.float64)
    for a, b in zip(dense_covariance(converted), dense_covariance(direct)):
        np.testing.assert_allclose(a, b, atol=1e-12)
    assert converted.space == "model" and converted.latent_format == "SD15"


@pytest.mark.parametrize("structure", ["dense", "stationary"])
def test_per_channel_affine_is_exact_for_dense_and_stationary(structure):
    data = correlated_latents(80, (3, 3, 2), seed=4)
    scale, shift = torch.tensor([0.5, 2.0, 1.3]), torch.tensor([0.1, -0.2, 0.3])
    raw = estimate_moments([data], structure, dtype=torch.float64)
    converted = to_model_space(raw, scale, shift, latent_format="custom")
    mapped = (data - shift.double()[:, None, None]) * scale.double()[:, None, None]
    direct = estimate_moments([mapped], structure, dtype=torch.float64)
    for a, b in zip(dense_covariance(converted), dense_covariance(direct)):
        np.testing.assert_allclose(a, b, atol=1e-11)


def test_lowrank_refuses_unequal_channel_scales_with_a_fix():
    raw = estimate_moments([correlated_latents(50, (2, 4, 4), seed=5)], "lowrank", rank=3)
    with pytest.raises(MomentsError, match="scales channels unequally"):
        to_model_space(raw, torch.tensor([1.0, 2.0]), latent_format="custom")


def test_channel_mismatch_names_the_model_family():
    raw = estimate_moments([correlated_latents(50, (4, 2, 2), seed=6)], "dense")
    with pytest.raises(MomentsError, match="4 latent channels but Flux latents have 16"):
        to_model_space_named(raw, "Flux")
    with pytest.raises(MomentsError, match="latent channels"):
        raw.operator((16, 2, 2))


@pytest.mark.parametrize("space", ["raw", "model"])
def test_moments_made_for_one_family_are_refused_for_another_with_both_names(space):
    """Issue 14 #8: SD15 moments were silently converted with SDXL's scale and retagged."""
    raw = estimate_moments([correlated_latents(50, (4, 2, 2), seed=6)], "dense", latent_format="SD15", space=space)
    with pytest.raises(MomentsError, match="made for SD15 latents but the model uses SDXL"):
        to_model_space_named(raw, "SDXL")
    assert to_model_space_named(raw, "SD15").latent_format == "SD15"


def test_auto_storage_halves_only_large_eigenvectors():
    from gaussian_teleport.moments.files import AUTO_HALF_ABOVE, storage_dtype

    small = estimate_moments([correlated_latents(20, (2, 4, 4), seed=7)], "lowrank", rank=4)
    assert storage_dtype(small) == "float32"
    big = type(small)(torch.zeros(1, 1, AUTO_HALF_ABOVE // 2 + 1), torch.ones(2),
                      torch.zeros(AUTO_HALF_ABOVE // 2 + 1, 2), 0.0, count=2)
    assert storage_dtype(big) == "float16" and storage_dtype(big, "float32") == "float32"


# -- issue-style defects: headers of the wrong shape, metadata that disagrees with the tensors -------------


def raw_file(path, header: bytes):
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.mark.parametrize("header", [
    [1, 2, 3],
    {"t": {"dtype": "F32", "shape": [1]}},
    {"t": 5},
    {"__metadata__": [1]},
    {"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}},
    {"__metadata__": {"format": 3}},
])
def test_a_header_of_the_wrong_shape_is_a_moments_error(tmp_path, header):
    path = raw_file(tmp_path / "odd.safetensors", json.dumps(header).encode())
    with pytest.raises(MomentsError, match="malformed safetensors header"):
        load_moments(path)


@pytest.mark.parametrize("field, value, message", [
    ("channels", "3", "channels"),
    ("rank", "7", "rank"),
    ("dtype", "float16", "stored as float32"),
    ("count", "0", "'count' is 0"),
    ("count", "-4", "'count' is -4"),
    ("count", "many", "not a whole number"),
])
def test_metadata_that_disagrees_with_the_tensors_is_refused(moments, tmp_path, field, value, message):
    path = save_moments(moments, tmp_path / "m.safetensors")
    rewrite(path, edit_meta=lambda m: m.update({field: value}))
    with pytest.raises(MomentsError, match=message):
        load_moments(path)


def test_integer_tensors_are_refused(moments, tmp_path):
    path = save_moments(moments, tmp_path / "m.safetensors")
    rewrite(path, edit_tensors=lambda t: t.__setitem__("mean", t["mean"].round().to(torch.int32)))
    with pytest.raises(MomentsError, match="holds torch.int32 values"):
        load_moments(path)
