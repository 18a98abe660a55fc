"""The demo: counts, PNG output (pillow and the built-in writer), seeds, and the summary."""

import struct
import zlib

import pytest
import torch

from gaussian_teleport import demo
from gaussian_teleport.scheduler import Handoff, model_calls, plan_teleport


def read_png_rgb(path):
    """Decode an 8-bit RGB, non-interlaced PNG with filter 0 rows (what the built-in writer makes)."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h = header[:2]
    raw = zlib.decompress(idat)
    rows = [raw[y * (3 * w + 1):(y + 1) * (3 * w + 1)] for y in range(h)]
    assert all(r[0] == 0 for r in rows)
    return torch.tensor([list(r[1:]) for r in rows], dtype=torch.uint8).reshape(h, w, 3)


def test_builtin_png_writer_round_trips(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no pillow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    img = torch.randint(0, 256, (7, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    demo.write_png(str(tmp_path / "x.png"), img)
    assert torch.equal(read_png_rgb(tmp_path / "x.png"), img)


def test_grid_places_each_image_and_maps_the_range():
    imgs = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 0.0, 1.0)])
    grid = demo.to_uint8_grid(imgs, cols=2, scale=1, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert int(grid[1, 1, 0]) == 0 and int(grid[1, 4, 0]) == 128 and int(grid[4, 1, 0]) == 255
    assert int(grid[0, 0, 0]) == 255   # padding is white


def test_seeds_parse_and_noise_depends_only_on_the_seed():
    assert demo.parse_seeds("0-3,9") == [0, 1, 2, 3, 9]
    with pytest.raises(ValueError, match="seeds"):
        demo.parse_seeds("a-b")
    a = demo.seeded_noise([5, 6], (1, 2, 2))
    b = demo.seeded_noise([6], (1, 2, 2))
    torch.testing.assert_close(a[1], b[0])


def test_plain_progress_bar_without_tqdm(capsys):
    bar = demo._PlainBar(4, "x")
    for _ in range(4):
        bar.update()
    bar.close()
    assert "4/4" in capsys.readouterr().err


def test_demo_runs_and_reports_the_calls_it_made(tmp_path):
    out = tmp_path / "grid.png"
    r = demo.main(["--seeds", "0-5", "--sampler", "heun", "--steps", "8", "--handoff", "steps:3",
                   "--out", str(out), "--quiet"])
    sigmas = demo.make_sigmas("edm", 8, r["sigma_data"])
    plan = plan_teleport(sigmas, Handoff("steps", 3))
    assert r["calls_plain"] == model_calls("heun", sigmas) == 15
    assert r["calls_teleport"] == model_calls("heun", plan.sigmas) + 1 == 10     # + the model-mean probe
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 < r["paired_rmse"] < r["unpaired_rmse"]
    assert "model calls: 15 plain → 10 with teleport" in demo.summary_text(r)
    data = demo.main(["--seeds", "0-5", "--sampler", "heun", "--steps", "8", "--handoff", "steps:3", "--mean", "data",
                      "--out", str(out), "--overwrite", "--quiet"])
    assert data["calls_teleport"] == 9 and "mean from the data" in demo.summary_text(data)


def test_demo_with_guidance_and_a_bad_request(tmp_path, capsys):
    r = demo.main(["--seeds", "0-3", "--sampler", "euler", "--steps", "6", "--label", "7", "--cfg", "2",
                   "--out", str(tmp_path / "g.png"), "--quiet"])
    assert r["calls_teleport"] < r["calls_plain"]
    with pytest.raises(SystemExit) as stop:
        demo.main(["--model", "patches", "--cfg", "2", "--out", str(tmp_path / "p.png"), "--quiet"])
    assert stop.value.code == 2 and "unconditional" in capsys.readouterr().err
