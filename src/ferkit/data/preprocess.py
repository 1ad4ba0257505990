"""The one preprocessing function that training, evaluation and inference share (no train/serve skew)."""

from __future__ import annotations

import cv2
import numpy as np

from ferkit.errors import FerkitError

# An image over this many pixels is refused before decoding (decompression bombs).
MAX_PIXELS = 100_000_000


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    """Any decoded image (gray, BGR, BGRA, 8- or 16-bit, float 0..1) as 8-bit gray."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype.kind == "f":
        scale = 255.0 if img.size and float(np.nanmax(img)) <= 1.0 else 1.0
        img = np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(img.shape[2])
        if code is None:
            raise FerkitError(f"image has {img.shape[2]} channels; expected 1, 3 or 4")
        img = cv2.cvtColor(img, code)
    if img.ndim != 2 or min(img.shape) == 0:
        raise FerkitError(f"image has shape {img.shape}; expected H x W or H x W x C")
    return img


def preprocess(image: np.ndarray, size: int = 48) -> np.ndarray:
    """Gray, resized to size x size, uint8: the model's input (normalisation is inside the model)."""
    gray = to_gray_u8(image)
    if gray.shape == (size, size):
        return gray
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interp)


def decode_image(data: bytes, name: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode image bytes (EXIF orientation respected), or raise FerkitError naming `name`."""
    if not data:
        raise FerkitError(f"{name}: empty file")
    buf = np.frombuffer(data, np.uint8)
    _check_pixel_limit(buf, name)
    # IMREAD_UNCHANGED ignores EXIF orientation; apply it ourselves below.
    img = cv2.imdecode(buf, flags)
    if img is None:
        raise FerkitError(f"{name}: not a readable image (corrupt, truncated or not an image)")
    if flags == cv2.IMREAD_UNCHANGED:
        img = _apply_exif_orientation(img, data)
    return img


def read_image(path: str) -> np.ndarray:
    """Read an image file from disk; see decode_image."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FerkitError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FerkitError(f"{path}: is a folder, not an image") from None
    except OSError as e:
        raise FerkitError(f"{path}: cannot read ({e.strerror})") from None
    return decode_image(data, path)


def _check_pixel_limit(buf: np.ndarray, name: str) -> None:
    # Reading the header only is cheap; a decode of a 50,000 x 50,000 PNG is not.
    ok, w, h = _header_size(buf.tobytes()[:65536])
    if ok and w * h > MAX_PIXELS:
        raise FerkitError(f"{name}: image is {w}x{h} pixels, over the limit of {MAX_PIXELS:,}")


def _header_size(head: bytes) -> tuple[bool, int, int]:
    import struct

    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return True, w, h
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">HH", head[i + 5 : i + 9])
                return True, w, h
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (seglen,) = struct.unpack(">H", head[i + 2 : i + 4])
            i += 2 + seglen
    return False, 0, 0


def _apply_exif_orientation(img: np.ndarray, data: bytes) -> np.ndarray:
    orientation = _exif_orientation(data)
    ops = {
        2: lambda a: cv2.flip(a, 1),
        3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
        4: lambda a: cv2.flip(a, 0),
        5: lambda a: cv2.flip(cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE), 1),
        6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
        7: lambda a: cv2.flip(cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE), 1),
        8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    return ops[orientation](img) if orientation in ops else img


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1..8) of a JPEG, or 1 when there is none."""
    import struct

    if data[:2] != b"\xff\xd8":
        return 1
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        (seglen,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker == 0xE1 and data[i + 4 : i + 10] == b"Exif\x00\x00":
            tiff = data[i + 10 : i + 2 + seglen]
            end = "<" if tiff[:2] == b"II" else ">"
            try:
                (ifd,) = struct.unpack(end + "I", tiff[4:8])
                (count,) = struct.unpack(end + "H", tiff[ifd : ifd + 2])
                for k in range(count):
                    entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
                    tag, _typ, _n = struct.unpack(end + "HHI", entry[:8])
                    if tag == 0x0112:
                        return struct.unpack(end + "H", entry[8:10])[0]
            except struct.error:
                return 1
            return 1
        if marker == 0xDA:
            return 1
        i += 2 + seglen
    return 1
