"""Image decoding shared by prepare, training, prediction, indexing and serving.

One decoder so that a catalogue image is turned into the same pixels everywhere:
PIL full decode (a truncated file is an error, never silently padded), any mode to RGB
(transparency composited on white, the catalogue's background), EXIF orientation applied
when present, and a pixel-count guard checked on the header before any pixel is decoded.
Every failure is a ``DataError`` naming the source and what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fashionops.errors import DataError

Source = str | Path | bytes | bytearray | np.ndarray

# Modes PIL converts to RGB losslessly enough with a plain convert().
_PLAIN_MODES = {"RGB", "L", "CMYK", "YCbCr", "LAB", "HSV", "1"}
_ALPHA_MODES = {"RGBA", "LA", "RGBa", "La", "PA"}
_WHITE = (255, 255, 255)


def _describe(source: Source, name: str | None) -> str:
    if name:
        return str(name)
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, np.ndarray):
        return "<array>"
    return "<bytes>"


def read_image_bytes(path: str | Path, label: str | None = None) -> bytes:
    """An image file's bytes; a missing or unreadable file is a ``DataError`` naming ``label``
    (default: the path)."""
    path = Path(path)
    label = label or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{label}: image file not found") from None
    except IsADirectoryError:
        raise DataError(f"{label}: is a directory, not an image file") from None
    except OSError as exc:
        raise DataError(f"{label}: cannot read image file: {exc}") from None
    return data


def _check_pixels(width: int, height: int, max_pixels: int | None, label: str) -> None:
    if width <= 0 or height <= 0:
        raise DataError(f"{label}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(f"{label}: image too large: {width}x{height} = {width * height} pixels (limit {max_pixels})")


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Decoded PIL image of any mode -> (H, W, 3) uint8."""
    mode = img.mode
    if mode == "P":
        # A palette with a transparent entry is composited like any alpha image.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode in ("L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = img.mode
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode == "RGB":
        return np.asarray(img)
    if mode == "L":
        gray = np.asarray(img)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in _PLAIN_MODES:
        return np.asarray(img.convert("RGB"))
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float grayscale: 16-bit range scaled to 8 bits.
        values = np.asarray(img).astype(np.float64)
        if values.size and values.max() > 255:
            values = values / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


# JPEG markers that may precede the scan on the fast path: APPn except APP1 (EXIF orientation)
# and APP14 (Adobe colour transform), quantisation/Huffman tables, restart interval, comments
# and baseline/extended/progressive frames. Anything else takes the full PIL path.
_FAST_MARKERS = frozenset(range(0xE0, 0xF0)) - {0xE1, 0xEE} | {0xDB, 0xC4, 0xDD, 0xFE, 0xC0, 0xC1, 0xC2}
_fast_jpeg_ok = True  # turned off for good if this Pillow lacks the internals used below


def _jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, mode) of a plain 8-bit L/RGB JPEG the fast path can take, else None."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, end, found = 2, len(data), None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the header is complete
            return found
        if marker not in _FAST_MARKERS:
            return None
        if marker in (0xC0, 0xC1, 0xC2):
            if pos + 10 > end or data[pos + 4] != 8 or data[pos + 9] not in (1, 3):
                return None
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            found = (width, height, "L" if data[pos + 9] == 1 else "RGB")
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return None


def _decode_jpeg_fast(data: bytes, max_pixels: int | None, label: str) -> np.ndarray | None:
    """Decode a plain L/RGB JPEG with PIL's own libjpeg decoder, skipping PIL's Python header
    parser (the larger part of the cost of a 60x80 image). Same decoder, same arguments as
    ``Image.open(...).load()``, hence the same pixels. None when not applicable or on any
    decoding problem: the caller then takes the full path, which reports the error."""
    global _fast_jpeg_ok
    if not _fast_jpeg_ok:
        return None
    header = _jpeg_header(data)
    if header is None:
        return None
    width, height, mode = header
    _check_pixels(width, height, max_pixels, label)
    try:
        core = Image.core.new(mode, (width, height))
        decoder = Image._getdecoder(mode, "jpeg", (mode, ""))
    except (AttributeError, TypeError):
        _fast_jpeg_ok = False
        return None
    try:
        decoder.setimage(core, (0, 0, width, height))
        consumed, status = decoder.decode(data)
    except (OSError, ValueError):
        return None
    finally:
        decoder.cleanup()
    if consumed >= 0 or status < 0:  # wants more data (truncated) or failed
        return None
    pixels = np.asarray(Image.Image()._new(core))
    return pixels if mode == "RGB" else np.repeat(pixels[:, :, None], 3, axis=2)


def _decode_bytes(data: bytes, label: str, max_pixels: int | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Bytes of an image file -> (H, W, 3) uint8, optionally resized to ``size`` = (H, W)."""
    if not data:
        raise DataError(f"{label}: empty file (0 bytes)")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone enabled PIL's global "pad truncated images"; we never accept that.
        raise DataError(f"{label}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode")
    fast = _decode_jpeg_fast(data, max_pixels, label)
    if fast is not None:
        return fast if size is None else resize_rgb(fast, size[0], size[1])
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size  # header only; no pixel decoded yet
        _check_pixels(width, height, max_pixels, label)
        img.load()
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{label}: not an image (PIL cannot identify the format)") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{label}: image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise DataError(f"{label}: truncated or corrupt image ({text})") from None
        raise DataError(f"{label}: cannot decode image ({text})") from None
    rgb = _to_rgb(ImageOps.exif_transpose(img) if "exif" in img.info else img)
    if size is not None:
        rgb = resize_rgb(rgb, size[0], size[1])
    return rgb


def _from_array(array: np.ndarray, label: str, max_pixels: int | None) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(f"{label}: array dtype must be uint8 (got {array.dtype})")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim != 3 or array.shape[2] != 3:
        raise DataError(f"{label}: array shape must be (H, W, 3) or (H, W) (got {array.shape})")
    _check_pixels(array.shape[1], array.shape[0], max_pixels, label)
    return np.ascontiguousarray(array)


def load_rgb(source: Source, max_pixels: int | None = None, name: str | None = None) -> np.ndarray:
    """Decode an image file, encoded bytes or a uint8 array into an (H, W, 3) uint8 RGB array.

    ``source``: a path, the bytes of an encoded image, or an (H, W, 3)/(H, W) uint8 array.
    ``max_pixels``: reject larger images before decoding (decompression-bomb guard).
    ``name``: how errors refer to the source (default: the path, ``<bytes>`` or ``<array>``).
    Raises ``DataError`` for a missing/empty/non-image/truncated file, an image over
    ``max_pixels`` and an array of the wrong dtype or shape.
    """
    label = _describe(source, name)
    if isinstance(source, np.ndarray):
        return _from_array(source, label, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(source), label, max_pixels)
    if isinstance(source, (str, Path)):
        return _decode_bytes(read_image_bytes(Path(source), label), label, max_pixels)
    raise DataError(f"{label}: unsupported image source type {type(source).__name__}")


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to exactly (height, width, 3) (PIL bilinear, antialiased).

    Returns the input unchanged when it already has that size. Aspect ratio is not kept:
    the catalogue's odd sizes (53x80, 60x60, ...) are only a few pixels off.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"resize_rgb: target size must be positive (got {height}x{width})")
    if image.shape[0] == height and image.shape[1] == width:
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def decode_file(path: str | Path, height: int, width: int, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Fast path for the training cache: file -> ((height, width, 3) uint8, sha256 of its bytes).

    Reads the file once, hashes the bytes and decodes them with the same rules as
    ``load_rgb`` (so cached pixels equal ``resize_rgb(load_rgb(path), height, width)``).
    """
    label = str(path)
    data = read_image_bytes(Path(path), label)
    digest = hashlib.sha256(data).hexdigest()
    return _decode_bytes(data, label, max_pixels, size=(height, width)), digest


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the content hash used to group byte-identical images)."""
    label = str(path)
    return hashlib.sha256(read_image_bytes(Path(path), label)).hexdigest()


def decode_files_into(npy_path: str | Path, start: int, files: list[str], height: int, width: int) -> list[str]:
    """Decode ``files`` into rows ``start, start+1, ...`` of an existing uint8 (N, height, width, 3)
    ``.npy`` file; several processes may fill disjoint row ranges of one file at once.

    Returns the sha256 of each file's bytes. Lives here, not in ``prepare``, so that worker
    processes import only numpy and PIL.
    """
    header = np.load(npy_path, mmap_mode="r")  # maps the file; reads only the header
    shape, offset, dtype = header.shape, header.offset, header.dtype
    del header
    if dtype != np.uint8 or tuple(shape[1:]) != (height, width, 3) or start < 0 or start + len(files) > shape[0]:
        raise ValueError(
            f"{npy_path}: a {dtype} array of shape {shape} cannot take rows "
            f"{start}..{start + len(files) - 1} of {height}x{width}x3 uint8"
        )
    # Decode into RAM, then one positioned write per chunk: cheaper than faulting in
    # memmap pages row by row.
    buffer = np.empty((len(files), height, width, 3), dtype=np.uint8)
    hashes = []
    for k, path in enumerate(files):
        buffer[k], digest = decode_file(path, height, width)
        hashes.append(digest)
    view = buffer.reshape(-1).data  # a flat byte view of the rows
    fd = os.open(npy_path, os.O_WRONLY)
    try:
        written = 0
        while written < len(view):  # pwrite may write less than asked
            written += os.pwrite(fd, view[written:], offset + start * height * width * 3 + written)
    finally:
        os.close(fd)
    return hashes
