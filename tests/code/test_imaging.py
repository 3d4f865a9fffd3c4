"""Shared image decoding: modes, broken files, the pixel-count guard, arrays, resizing."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fashionops.data.imaging import decode_file, file_sha256, load_rgb, resize_rgb
from fashionops.errors import DataError


@pytest.fixture(scope="module")
def manifest(shared_catalogue) -> pd.DataFrame:
    return pd.read_csv(shared_catalogue / "images_manifest.csv")


@pytest.fixture(scope="module")
def rgb_file(shared_catalogue, manifest) -> Path:
    row = manifest[(manifest["mode"] == "RGB") & (manifest["width"] == 60) & (manifest["height"] == 80)].iloc[0]
    return shared_catalogue / "images" / f"{row['id']}.jpg"


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_real_jpeg_from_path_bytes_and_str(rgb_file):
    image = load_rgb(rgb_file)
    assert image.dtype == np.uint8 and image.shape == (80, 60, 3)
    assert np.array_equal(load_rgb(str(rgb_file)), image)
    assert np.array_equal(load_rgb(rgb_file.read_bytes()), image)
    assert np.array_equal(image, np.asarray(Image.open(rgb_file).convert("RGB")))


def test_real_grayscale_becomes_three_equal_channels(shared_catalogue, manifest):
    row = manifest[manifest["mode"] == "L"].iloc[0]
    path = shared_catalogue / "images" / f"{row['id']}.jpg"
    image = load_rgb(path)
    assert image.shape == (row["height"], row["width"], 3)
    gray = np.asarray(Image.open(path))
    for channel in range(3):
        assert np.array_equal(image[:, :, channel], gray)


def test_alpha_is_composited_on_white(rgb_file):
    base = np.asarray(Image.open(rgb_file).convert("RGB"))
    alpha = np.full(base.shape[:2], 255, np.uint8)
    alpha[:10] = 0  # transparent top band
    rgba = Image.fromarray(np.dstack([base, alpha]), "RGBA")
    image = load_rgb(_encode(rgba, "PNG"))
    assert (image[:10] == 255).all()
    assert np.array_equal(image[10:], base[10:])

    la = Image.fromarray(np.dstack([base[:, :, 0], alpha]), "LA")
    image = load_rgb(_encode(la, "PNG"))
    assert (image[:10] == 255).all() and np.array_equal(image[10:, :, 1], base[10:, :, 0])


def test_palette_cmyk_16bit_and_bilevel_modes(rgb_file):
    base = Image.open(rgb_file).convert("RGB")
    pal = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert np.array_equal(load_rgb(_encode(pal, "PNG")), np.asarray(pal.convert("RGB")))

    pal_t = pal.copy()
    first = int(np.asarray(pal_t)[0, 0])
    pal_t.info["transparency"] = first
    image = load_rgb(_encode(pal_t, "PNG", transparency=first))
    assert (image[np.asarray(pal_t) == first] == 255).all()

    cmyk = load_rgb(_encode(base.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == (80, 60, 3)
    assert np.abs(cmyk.astype(int) - np.asarray(base, dtype=int)).mean() < 8

    ramp = (np.arange(80 * 60, dtype=np.uint32).reshape(80, 60) * 13 % 65536).astype(np.uint16)
    sixteen = Image.fromarray(ramp)
    assert sixteen.mode == "I;16"
    image = load_rgb(_encode(sixteen, "PNG"))
    assert image.shape == (80, 60, 3)
    assert np.abs(image[:, :, 0].astype(int) - np.rint(ramp / 257).astype(int)).max() <= 1

    bilevel = Image.fromarray(np.asarray(base.convert("L")) > 128)
    image = load_rgb(_encode(bilevel, "PNG"))
    assert set(np.unique(image)) <= {0, 255} and image.shape == (80, 60, 3)


def test_exif_orientation_is_applied(rgb_file):
    base = Image.open(rgb_file).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image = load_rgb(_encode(base, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.shape == (60, 80, 3)


@pytest.mark.parametrize("cut", [2, 40, 600])
def test_truncated_jpeg_is_an_error(tmp_path, rgb_file, cut):
    data = rgb_file.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[:-cut])
    with pytest.raises(DataError, match="cut.jpg.*truncated"):
        load_rgb(bad)
    with pytest.raises(DataError, match="upload.jpg.*truncated"):
        load_rgb(data[:-cut], name="upload.jpg")
    with pytest.raises(DataError, match="cut.jpg"):
        decode_file(bad, 80, 60)


def test_empty_text_missing_and_directory(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg.*empty"):
        load_rgb(empty)
    with pytest.raises(DataError, match="<bytes>.*empty"):
        load_rgb(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("id,label\n1,shirt\n")
    with pytest.raises(DataError, match="notes.jpg.*not an image"):
        load_rgb(text)
    with pytest.raises(DataError, match="missing.jpg.*not found"):
        load_rgb(tmp_path / "missing.jpg")
    with pytest.raises(DataError, match="directory"):
        load_rgb(tmp_path)


def _png_header_only(width: int, height: int) -> bytes:
    """A grayscale PNG with a valid IHDR of the given size whose pixel data stops after a few
    rows (file cut off): decoding it fails as truncated, so a 'too large' error proves the
    size check came before decoding."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compressobj().compress((b"\x00" + b"\x01" * width) * 4)  # unfinished zlib stream
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows)


def test_pixel_guard_runs_before_decoding(tmp_path):
    data = _png_header_only(3000, 3000)
    with pytest.raises(DataError, match="truncated|decode"):
        load_rgb(data)  # no limit: the decoder notices the missing rows
    with pytest.raises(DataError, match=r"bomb.png: image too large: 3000x3000 = 9000000 pixels \(limit 1000000\)"):
        load_rgb(data, max_pixels=1_000_000, name="bomb.png")
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(100_000, 100_000))  # beyond PIL's own bomb limit too
    with pytest.raises(DataError, match="huge.png.*too large"):
        load_rgb(huge, max_pixels=4_000_000)
    # A real image within the limit passes.
    small = _encode(Image.new("RGB", (60, 80), (1, 2, 3)), "PNG")
    assert load_rgb(small, max_pixels=4800).shape == (80, 60, 3)
    with pytest.raises(DataError, match="too large"):
        load_rgb(small, max_pixels=4799)


def test_arrays_are_validated():
    rgb = np.random.default_rng(0).integers(0, 256, (80, 60, 3), dtype=np.uint8)
    assert np.array_equal(load_rgb(rgb), rgb)
    gray = rgb[:, :, 0]
    out = load_rgb(gray)
    assert out.shape == (80, 60, 3) and all(np.array_equal(out[:, :, c], gray) for c in range(3))
    with pytest.raises(DataError, match="frame.*dtype must be uint8"):
        load_rgb(rgb.astype(np.float32), name="frame")
    with pytest.raises(DataError, match=r"<array>.*shape.*\(80, 60, 4\)"):
        load_rgb(np.zeros((80, 60, 4), np.uint8))
    with pytest.raises(DataError, match="shape"):
        load_rgb(np.zeros((2, 80, 60, 3), np.uint8))
    with pytest.raises(DataError, match="no pixels"):
        load_rgb(np.zeros((0, 60, 3), np.uint8))
    with pytest.raises(DataError, match="too large"):
        load_rgb(rgb, max_pixels=100)


def test_resize_rgb_exact_size_and_noop(shared_catalogue, manifest):
    row = manifest[(manifest["width"] != 60) | (manifest["height"] != 80)].iloc[0]
    image = load_rgb(shared_catalogue / "images" / f"{row['id']}.jpg")
    assert image.shape[:2] == (row["height"], row["width"])
    resized = resize_rgb(image, 80, 60)
    assert resized.shape == (80, 60, 3) and resized.dtype == np.uint8
    assert resize_rgb(resized, 80, 60) is resized
    flat = np.full((40, 30, 3), 77, np.uint8)
    assert (resize_rgb(flat, 224, 224) == 77).all()


def test_decode_file_matches_load_rgb_and_manifest_hash(shared_catalogue, manifest):
    odd = manifest[(manifest["width"] != 60) | (manifest["height"] != 80)].head(3)
    gray = manifest[manifest["mode"] == "L"].head(3)
    for row in pd.concat([odd, gray, manifest.head(3)]).itertuples():
        path = shared_catalogue / "images" / f"{row.id}.jpg"
        pixels, digest = decode_file(path, 80, 60)
        assert digest == row.sha256 == file_sha256(path)
        assert pixels.shape == (80, 60, 3) and pixels.dtype == np.uint8
        assert np.array_equal(pixels, resize_rgb(load_rgb(path), 80, 60))


def test_fast_jpeg_path_gives_the_full_pil_pixels(shared_catalogue, manifest, rgb_file):
    from fashionops.data.imaging import _decode_jpeg_fast, _jpeg_header

    assert _jpeg_header(rgb_file.read_bytes()) == (60, 80, "RGB")  # the truncation tests use the fast path
    picks = pd.concat(
        [
            manifest[manifest["mode"] == "L"].head(20),
            manifest[(manifest["width"] != 60) | (manifest["height"] != 80)].head(10),
            manifest.sample(n=120, random_state=3),
        ]
    )
    fast_used = 0
    for row in picks.itertuples():
        data = (shared_catalogue / "images" / f"{row.id}.jpg").read_bytes()
        fast = _decode_jpeg_fast(data, None, str(row.id))
        fast_used += fast is not None
        full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(load_rgb(data), full), row.id
        if fast is not None:
            assert np.array_equal(fast, full), row.id
    assert fast_used >= 0.9 * len(picks)
    # Markers that change pixels (EXIF orientation, Adobe transform) and CMYK take the full path.
    base = Image.open(rgb_file).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 3
    assert _jpeg_header(_encode(base, "JPEG", exif=exif.tobytes())) is None
    assert _jpeg_header(_encode(base.convert("CMYK"), "JPEG")) is None
    assert _jpeg_header(b"GIF89a....") is None
