"""Issue 19, items 3, 4, 13, 14: estimate_moments and moments files refuse nonsense with a message that names the fix."""

import json
import struct

import pytest
import torch
from conftest import correlated_latents
from safetensors.torch import load_file, save_file

from gaussian_teleport.moments import MomentsError, estimate_moments, load_moments, save_moments
from gaussian_teleport.moments import files as moments_files

LATENTS = correlated_latents(40, (4, 2, 2), seed=1).float()


# ----------------------------------------------------------------------------
# Item 3: the latent format is a known name with the latents' channel count.


@pytest.mark.parametrize("name, message", [
    ("sd15", r"unknown latent format 'sd15' \(did you mean 'SD15'\?\); choose one of none, Flux, SD15, SD3, SDXL"),
    ("SD99", r"unknown latent format 'SD99'; choose one of none, Flux, SD15, SD3, SDXL"),
])
def test_an_unknown_latent_format_is_refused_naming_the_valid_ones(name, message):
    with pytest.raises(MomentsError, match=message):
        estimate_moments([LATENTS], latent_format=name)


def test_a_format_with_another_channel_count_is_refused():
    with pytest.raises(MomentsError, match=r"Flux latents have 16 channels but these latents have 4.*SD15, SDXL"):
        estimate_moments([LATENTS], latent_format="Flux")
    assert estimate_moments([LATENTS], latent_format="SD15").latent_format == "SD15"
    assert estimate_moments([LATENTS]).latent_format == "none"


def test_an_older_file_with_a_miscased_tag_is_named_at_use():
    """Moments tagged 'sd15' before the tag was checked: the use names the tag, not two families."""
    from gaussian_teleport.moments import to_model_space

    m = estimate_moments([LATENTS])
    m.latent_format = "sd15"
    with pytest.raises(MomentsError, match=r"tagged 'sd15', which is not a format name .*latent_format='SD15'"):
        to_model_space(m, "SD15")


# ----------------------------------------------------------------------------
# Item 13: rank, dtype and overflowing statistics.


@pytest.mark.parametrize("rank", [2.5, True, "4", 0])
def test_a_rank_that_is_not_a_whole_number_is_refused(rank):
    with pytest.raises(MomentsError, match="rank must be a whole number ≥ 1"):
        estimate_moments([LATENTS], rank=rank)


def test_a_whole_float_rank_is_accepted():
    assert estimate_moments([LATENTS], rank=3.0).rank == 3


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, "float32"])
def test_a_storage_dtype_that_is_not_floating_point_is_refused(dtype):
    with pytest.raises(MomentsError, match="dtype must be a floating-point torch dtype"):
        estimate_moments([LATENTS], dtype=dtype)


@pytest.mark.parametrize("structure", ["lowrank", "dense", "stationary"])
@pytest.mark.parametrize("scale", [1e25, 1e30])
def test_statistics_that_overflow_are_refused(structure, scale):
    with pytest.raises(MomentsError, match="overflow.*far too large for VAE latents"):
        estimate_moments([LATENTS * scale], structure)


def test_statistics_that_overflow_float64_are_refused():
    with pytest.raises(MomentsError, match="far too large for VAE latents"):
        estimate_moments([LATENTS.double() * 1e160], "lowrank", dtype=torch.float64)


# ----------------------------------------------------------------------------
# Item 4: a file save_moments writes always loads; reserved metadata keys are refused.


@pytest.mark.parametrize("structure", ["dense", "lowrank", "stationary"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_float32_moments_saved_in_any_dtype_load(tmp_path, structure, dtype):
    m = estimate_moments([correlated_latents(300, (4, 4, 4), seed=2).float()], structure, rank=16)
    path = save_moments(m, tmp_path / "m.safetensors", dtype=dtype)
    loaded = load_moments(path)
    assert loaded.structure == structure
    assert loaded.metadata["eigvecs_precision"] == ("float32" if dtype in ("float64", "float32") else dtype)
    again = load_moments(save_moments(loaded, tmp_path / "again.safetensors", dtype="float64"))
    assert torch.allclose(again.eigvals, m.eigvals.to(again.eigvals.dtype))


def test_the_shipped_moments_saved_in_float64_load(tmp_path):
    from gaussian_teleport.reference import load_reference

    m = load_reference("digits").moments
    assert load_moments(save_moments(m, tmp_path / "digits64.safetensors", dtype="float64")).rank == m.rank


def test_float64_moments_keep_the_float64_tolerance(tmp_path):
    """Vectors computed in float64 are checked at 1e-8: a deviation of 1e-6 is damage."""
    m = estimate_moments([correlated_latents(300, (2, 3, 3), seed=2)], "dense", dtype=torch.float64)
    path = save_moments(m, tmp_path / "m.safetensors", dtype="float64")
    tensors, meta = load_file(path), moments_files.read_header(path)["__metadata__"]
    assert meta["eigvecs_precision"] == "float64"
    tensors["eigvecs"][0, 0] += 1e-6
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(MomentsError, match="not orthonormal"):
        load_moments(tmp_path / "bad.safetensors")


def test_an_older_file_without_the_precision_key_is_read_at_float32_tolerance(tmp_path):
    m = estimate_moments([LATENTS], "dense")
    path = save_moments(m, tmp_path / "m.safetensors", dtype="float64")
    meta = moments_files.read_header(path)["__metadata__"]
    del meta["eigvecs_precision"]
    save_file(load_file(path), str(tmp_path / "old.safetensors"), metadata=meta)
    assert load_moments(tmp_path / "old.safetensors").metadata["eigvecs_precision"] == "float32"


@pytest.mark.parametrize("key", ["format_version", "structure", "rank", "dtype", "eigvecs_precision"])
def test_metadata_cannot_overwrite_reserved_keys(tmp_path, key):
    m = estimate_moments([LATENTS])
    with pytest.raises(MomentsError, match=rf"reserved key\(s\) \['{key}'\].*rename"):
        save_moments(m, tmp_path / "m.safetensors", metadata={key: "2"})
    assert not (tmp_path / "m.safetensors").exists()
    if key != "eigvecs_precision":   # the moments' own metadata carries that one from a loaded file
        estimated = estimate_moments([LATENTS], metadata={key: "2"})
        with pytest.raises(MomentsError, match="the moments' metadata uses the reserved key"):
            save_moments(estimated, tmp_path / "m.safetensors")
    save_moments(m, tmp_path / "ok.safetensors", metadata={"note": "kept"})
    assert load_moments(tmp_path / "ok.safetensors").metadata["note"] == "kept"


# ----------------------------------------------------------------------------
# Item 14: a missing folder, a header too large.


def test_saving_into_a_missing_folder_says_so(tmp_path):
    target = tmp_path / "no" / "such" / "m.safetensors"
    with pytest.raises(FileNotFoundError, match=r"the folder .*no/such does not exist; create it first"):
        save_moments(estimate_moments([LATENTS]), target)


def test_a_header_over_the_limit_is_called_too_large(tmp_path, monkeypatch):
    """A valid safetensors file whose header is over the limit (lowered here to 1 kB) is not called a pickle."""
    path = save_moments(estimate_moments([LATENTS]), tmp_path / "big.safetensors", metadata={"note": "x" * 4000})
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        json.loads(fh.read(n))                       # a well-formed header
    monkeypatch.setattr(moments_files, "HEADER_MAX", 2**10)
    with pytest.raises(MomentsError, match=rf"header of {n:,} bytes, more than the 1,024 .*metadata is too large"):
        load_moments(path)


# ----------------------------------------------------------------------------
# Item 12 (files): a header nested too deeply; a folder as the path.


def test_a_header_nested_too_deeply_is_a_moments_error(tmp_path):
    """Python's JSON parser recurses: a deep header must not escape as a RecursionError."""
    path = tmp_path / "nested.safetensors"
    header = b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(MomentsError, match="malformed safetensors header .JSON nested too deeply"):
        load_moments(path)
    assert moments_files.is_moments_file(path) is False


def test_saving_onto_a_folder_is_refused_and_leaves_nothing(tmp_path):
    folder = tmp_path / "m.safetensors"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder; give a file name such as"):
        save_moments(estimate_moments([LATENTS]), folder, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"] and list(folder.iterdir()) == []
