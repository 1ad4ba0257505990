"""A corpus of hostile input, every file written here by code (no third-party data): decompression bombs, files that
lie about their size or format, truncated and damaged files, odd file-system entries, malformed CSVs, archives and
votes, broken models and configs, and abusive HTTP requests.

Each kind is a `Kind`: `make(folder)` writes it and returns what an entry point takes (a path; for configs a
(path, overrides) pair; for HTTP a request). `expect` is a piece of the one-line error, or None for input that must
work (awkward but legal) or may either work or be refused (never a crash). test_hostile.py runs every kind through
every entry point where it belongs.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# Groups: image (a file fed to the image decoders), entry (file-system entries: CLI, library and batch only),
# image_ok (awkward but legal: must decode), csv / archive / ferplus / manifest (dataset loaders), convert
# (names that must not escape the output folder), model (ONNX files), config (training configs), http and ws
# (requests to the service).
GROUPS = ("image", "entry", "image_ok", "csv", "archive", "ferplus", "manifest", "convert", "model", "config",
          "http", "ws")


@dataclass
class Kind:
    name: str
    group: str
    make: Callable[[Path], Any]
    expect: str | None  # a piece of the one-line error; None: must work (image_ok) or may go either way
    status: int | None = None  # the service's answer to it as an upload (image kinds), None: not sent
    bomb: bool = False  # its memory is checked in a subprocess
    extra: dict = field(default_factory=dict)


KINDS: list[Kind] = []


def kind(group: str, expect: str | None, status: int | None = None, bomb: bool = False, **extra: Any):
    def register(make: Callable[[Path], Any]) -> Callable[[Path], Any]:
        KINDS.append(Kind(make.__name__.lstrip("_"), group, make, expect, status, bomb, extra))
        return make

    return register


def of(group: str) -> list[Kind]:
    return [k for k in KINDS if k.group == group]


# -- builders ------------------------------------------------------------------------------------------------------
def small_image(h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(img: np.ndarray | None = None, **params: int) -> bytes:
    flags = [v for kv in params.items() for v in (getattr(cv2, kv[0]), kv[1])]
    return cv2.imencode(".jpg", small_image() if img is None else img, flags)[1].tobytes()


def png_bytes(img: np.ndarray | None = None) -> bytes:
    return cv2.imencode(".png", small_image() if img is None else img)[1].tobytes()


def chunk(kind_: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind_ + data + struct.pack(">I", zlib.crc32(kind_ + data))


def png(w: int, h: int, depth: int = 8, color: int = 0, idat: bytes | None = None, before: bytes = b"") -> bytes:
    """A well-formed PNG claiming w x h; its pixel data is `idat` (default: a few rows of zeros)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + before + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def with_sof(data: bytes, w: int, h: int) -> bytes:
    """A JPEG whose start-of-frame claims w x h."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", h, w) + data[i + 9 :]


def gif(w: int, h: int) -> bytes:
    """35 bytes: a GIF whose screen and one frame claim w x h."""
    size = w.to_bytes(2, "little") + h.to_bytes(2, "little")
    return b"GIF89a" + size + b"\x00\x00\x00" + b"\x2c\x00\x00\x00\x00" + size + b"\x00\x02\x02\x44\x01\x00\x3b"


def tiff(w: int, h: int, strip_offset: int | None = None, nbytes: int = 16) -> bytes:
    entries = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
               (278, 4, h), (279, 4, nbytes)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, typ, value in entries:
        if tag == 273:
            value = data_offset if strip_offset is None else strip_offset
        out += struct.pack("<HHIHH", tag, typ, 1, value, 0) if typ == 3 else struct.pack("<HHII", tag, typ, 1, value)
    return out + struct.pack("<I", 0) + b"\0" * nbytes


def tiff_strips(w: int, h: int) -> bytes:
    """A TIFF of w x h pixels in h strips of one row each: its directory lists h offsets and h byte counts."""
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, h, 0),
               (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, h, 0)]
    offsets = 8 + 2 + 12 * len(entries) + 4
    counts, pixels = offsets + 4 * h, offsets + 8 * h
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, typ, count, value in entries:
        value = {273: offsets, 279: counts}.get(tag, value)
        out += (struct.pack("<HHIHH", tag, typ, count, value, 0) if typ == 3
                else struct.pack("<HHII", tag, typ, count, value))
    out += struct.pack("<I", 0)
    out += np.full(h, pixels, "<u4").tobytes() + np.full(h, w, "<u4").tobytes() + b"\0" * w
    return bytes(out)


def bmp(w: int, h: int, bpp: int = 8, compression: int = 1, data: bytes = b"\x00\x01") -> bytes:
    palette = b"\0" * 1024 if bpp <= 8 else b""
    offset = 14 + 40 + len(palette)
    head = b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, bpp, compression, len(data), 2835, 2835, 0, 0)
    return head + info + palette + data


def riff_webp(fourcc: bytes, payload: bytes) -> bytes:
    body = fourcc + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def write(folder: Path, name: str, data: bytes | str) -> Path:
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        p.write_text(data, encoding="utf-8")
    else:
        p.write_bytes(data)
    return p


# -- images: bombs ----------------------------------------------------------------------------------------------
@kind("image", "over the limit", 415, bomb=True)  # the service takes no GIF at all
def _gif_30000(d: Path) -> Path:
    return write(d, "bomb_30000.gif", gif(30000, 30000))  # 35 bytes; 7.2 GB once, through OpenCV


@kind("image", "over the limit", 415, bomb=True)
def _gif_65535(d: Path) -> Path:
    return write(d, "bomb_65535.gif", gif(65535, 65535))  # a raw cv2.error once


@kind("image", "over the limit", 413, bomb=True)
def _png_60000(d: Path) -> Path:
    return write(d, "bomb_60000.png", png(60000, 60000))


@kind("image", "over the limit", 413, bomb=True)
def _png_16bit_rgba_10000(d: Path) -> Path:
    return write(d, "rgba16_10000.png", png(10000, 10000, depth=16, color=6))  # legal under the old 100 MP: 2.0 GB


@kind("image", "over the limit", 413, bomb=True)
def _jpeg_size_past_64k(d: Path) -> Path:
    # The start-of-frame sits behind 70 kB of comments: the old header parser read the first 64 kB only.
    data = with_sof(jpeg(), 30000, 30000)
    comments = b"".join(b"\xff\xfe" + struct.pack(">H", 65535) + b"c" * 65533 for _ in range(2))
    return write(d, "sof_past_64k.jpg", data[:2] + comments + data[2:])


@kind("image", "over the limit", 413, bomb=True)
def _jpeg_65535(d: Path) -> Path:
    return write(d, "bomb_65535.jpg", with_sof(jpeg(), 65535, 65535))


@kind("image", "over the limit", 415, bomb=True)
def _tiff_30000(d: Path) -> Path:
    return write(d, "bomb_30000.tif", tiff(30000, 30000))


@kind("image", "over the limit", 415, bomb=True)  # the service takes no TIFF at all
def _tiff_million_strips(d: Path) -> Path:
    # 8 MB of strip offsets: Pillow took 10 s and 350 MB to open it (3 million strips: 30 s and 1 GB), and the
    # decoder then gave no face; refused from the directory now.
    return write(d, "strips.tif", tiff_strips(16, 1_000_000))


@kind("image", "over the limit", 413, bomb=True)
def _bmp_rle8_30000(d: Path) -> Path:
    return write(d, "rle8_30000.bmp", bmp(30000, 30000) + b"\0" * 900)  # 1 kB: decoded 900 MP once


@kind("image", "over the limit", 413, bomb=True)
def _bmp_32bit_30000(d: Path) -> Path:
    return write(d, "bomb_32bit.bmp", bmp(30000, 30000, 32, 0, b"\0" * 16))


@kind("image", "over the limit", 413, bomb=True)
def _bmp_top_down_30000(d: Path) -> Path:
    return write(d, "top_down.bmp", bmp(30000, -30000, 24, 0, b"\0" * 16))


@kind("image", "over the limit", 413, bomb=True)
def _webp_vp8l_16383(d: Path) -> Path:
    bits = 16382 | (16382 << 14)
    return write(d, "bomb_vp8l.webp", riff_webp(b"VP8L", b"\x2f" + struct.pack("<I", bits) + b"\0" * 8))


@kind("image", "over the limit", 413, bomb=True)
def _webp_vp8x_canvas(d: Path) -> Path:
    side = (1 << 24) - 1
    return write(d, "bomb_vp8x.webp", riff_webp(b"VP8X", b"\0" * 4 + side.to_bytes(3, "little") * 2))


@kind("image", "over the limit", 415, bomb=True)
def _ppm_30000(d: Path) -> Path:
    return write(d, "bomb.ppm", b"P6\n30000 30000\n255\n" + b"\0" * 100)


@kind("image", "over the limit", 415, bomb=True)
def _j2k_60000(d: Path) -> Path:
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 60000, 60000, 0, 0, 60000, 60000, 0, 0, 1) + b"\x07\x01\x01"
    return write(d, "bomb.j2k", b"\xff\x4f\xff\x51" + siz + b"\xff\xd9")


@kind("image", "over the limit", None, bomb=True)
def _sparse_3gib_jpg(d: Path) -> Path:
    p = write(d, "sparse_3gib.jpg", jpeg())
    with open(p, "r+b") as f:
        f.truncate(3 << 30)  # sparse: no disk used; read whole once (5.4 GB)
    return p


# -- images: damaged, lying, not images ----------------------------------------------------------------------------
@kind("image", "empty file", 400)
def _empty(d: Path) -> Path:
    return write(d, "empty.jpg", b"")


@kind("image", "damaged PNG header", 400)
def _png_bad_crc(d: Path) -> Path:
    data = bytearray(png_bytes())
    data[29] ^= 0xFF  # the IHDR checksum
    return write(d, "bad_crc.png", bytes(data))


@kind("image", "not a readable image", 400)
def _png_zero_size(d: Path) -> Path:
    return write(d, "zero.png", png(0, 0))


@kind("image", "not a readable image", 400)
def _png_truncated(d: Path) -> Path:
    data = png_bytes(small_image(64, 64))
    return write(d, "truncated.png", data[: len(data) // 2])


@kind("image", "not a readable image", 400)
def _png_no_pixels(d: Path) -> Path:
    return write(d, "no_pixels.png", png(64, 64, idat=b""))


@kind("image", "not a readable image", 400)
def _png_ztxt_bomb(d: Path) -> Path:
    text = chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"\0" * (64 << 20), 9))  # 64 MiB of text in 64 kB
    return write(d, "ztxt_bomb.png", png(16, 16, before=text))


@kind("image", "not a readable image", 400)
def _png_iccp_bomb(d: Path) -> Path:
    icc = chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"\0" * (64 << 20), 9))
    return write(d, "iccp_bomb.png", png(16, 16, before=icc))


@kind("image", None, None)
def _png_idat_inflates_past_its_size(d: Path) -> Path:
    # 16 x 16 pixels whose data inflates to 64 MiB: the decoder stops at the image's size (or refuses).
    return write(d, "idat_bomb.png", png(16, 16, idat=zlib.compress(b"\0" * (64 << 20), 9)))


@kind("image", "not a readable image", 400)
def _jpeg_zero_size(d: Path) -> Path:
    return write(d, "zero.jpg", with_sof(jpeg(), 0, 0))


@kind("image", "not a readable image", 400)
def _jpeg_truncated(d: Path) -> Path:
    data = jpeg(small_image(128, 128))
    return write(d, "truncated.jpg", data[: len(data) // 2])


@kind("image", "not a readable image", 400)
def _jpeg_without_end_marker(d: Path) -> Path:
    return write(d, "no_eoi.jpg", jpeg(small_image(128, 128))[:-2])


@kind("image", "not a readable image", 400)
def _jpeg_header_only(d: Path) -> Path:
    return write(d, "header_only.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")


@kind("image", "not a readable image", 400)
def _jpeg_marker_flood(d: Path) -> Path:
    return write(d, "ff_flood.jpg", b"\xff\xd8" + b"\xff" * 200_000)


@kind("image", "not a readable image", 400)
def _jpeg_segment_length_lies(d: Path) -> Path:
    data = jpeg()
    return write(d, "bad_segment.jpg", data[:4] + b"\xff\xff" + data[6:])  # APP0 claims 64 kB


@kind("image", "not a readable image", 415)
def _tiff_strip_past_end(d: Path) -> Path:
    return write(d, "strip_past_end.tif", tiff(4, 4, strip_offset=10**6))


@kind("image", "not a readable image", 400)
def _bmp_bad_depth(d: Path) -> Path:
    return write(d, "depth7.bmp", bmp(4, 4, 7, 0, b"\0" * 16))


@kind("image", "not a readable image", 400)
def _bmp_rle_short(d: Path) -> Path:
    return write(d, "rle_short.bmp", bmp(16, 16))


@kind("image", "not a readable image", 400)
def _webp_truncated(d: Path) -> Path:
    data = cv2.imencode(".webp", small_image(64, 64))[1].tobytes()
    return write(d, "truncated.webp", data[: len(data) // 2])


@kind("image", "not a readable image", 415)
def _pgm_zero_maxval(d: Path) -> Path:
    return write(d, "maxval0.pgm", b"P5\n4 4\n0\n" + b"\0" * 16)


@kind("image", "not a readable image", 415)
def _gif_lzw_garbage(d: Path) -> Path:
    return write(d, "garbage.gif", b"GIF89a\x10\x00\x10\x00\x00\x00\x00,\x00\x00\x00\x00\x10\x00\x10\x00\x00\x08"
                 + b"\xff" * 50 + b"\x00;")


@kind("image", "unknown format", 415)
def _text_named_jpg(d: Path) -> Path:
    return write(d, "notes.jpg", "this is not an image\n")


@kind("image", "unknown format", 415)
def _html_named_png(d: Path) -> Path:
    return write(d, "page.png", "<!doctype html><html><body><img src=x onerror=alert(1)></body></html>")


@kind("image", "unknown format", 415)
def _svg_named_png(d: Path) -> Path:
    return write(d, "vector.png", '<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>')


@kind("image", "unknown format", 415)
def _zip_named_jpg(d: Path) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "x")
    return write(d, "archive.jpg", buf.getvalue())


@kind("image", "unknown format", 415)
def _mp4_named_jpg(d: Path) -> Path:
    return write(d, "clip.jpg", struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2" + b"\0" * 64)


@kind("image", "unknown format", 415)
def _random_bytes(d: Path) -> Path:
    return write(d, "noise.webp", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())


@kind("image", "unknown format", 415)
def _eps_named_jpg(d: Path) -> Path:
    # Pillow would hand an EPS to Ghostscript; ferkit never opens that format.
    return write(d, "doc.jpg", "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")


# -- file-system entries (not uploads) -----------------------------------------------------------------------------
@kind("entry", "a folder", cli="no images in this folder")
def _folder_named_jpg(d: Path) -> Path:
    (d / "folder.jpg").mkdir(parents=True)
    return d / "folder.jpg"


@kind("entry", "not a regular file")
def _fifo_named_jpg(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    os.mkfifo(d / "pipe.jpg")  # reading it would wait forever for a writer
    return d / "pipe.jpg"


@kind("entry", "broken link")
def _broken_link(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "gone.jpg").symlink_to(d / "nowhere.jpg")
    return d / "gone.jpg"


@kind("entry", "cannot read")
def _symlink_loop(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "loop_a.jpg").symlink_to(d / "loop_b.jpg")
    (d / "loop_b.jpg").symlink_to(d / "loop_a.jpg")
    return d / "loop_a.jpg"


@kind("entry", "cannot read", single_only=True)
def _name_too_long(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d / ("a" * 300 + ".jpg")  # over the 255 bytes a file name may have: ENAMETOOLONG, not "no such file"


@kind("entry", "cannot read", single_only=True)
def _path_too_long(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d.joinpath(*["b" * 200] * 25, "x.jpg")  # 5,000 characters, over PATH_MAX


@kind("entry", "not an image file", batch_only=True)
def _video_in_image_folder(d: Path) -> Path:
    return write(d, "holiday.mp4", struct.pack(">I", 24) + b"ftypisom\x00\x00\x02\x00isomiso2")


@kind("entry", "not an image file", batch_only=True)
def _text_file_in_image_folder(d: Path) -> Path:
    return write(d, "readme.txt", "notes")


# -- awkward but legal images: must decode ---------------------------------------------------------------------
def _pil(d: Path, name: str, mode: str, fmt: str, **kw: Any) -> Path:
    from PIL import Image

    img = Image.fromarray(cv2.cvtColor(small_image(40, 48), cv2.COLOR_BGR2RGB)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return write(d, name, buf.getvalue())


@kind("image_ok", None)
def _png_16bit_rgba_small(d: Path) -> Path:
    return write(d, "rgba16.png", cv2.imencode(".png", cv2.cvtColor(small_image().astype(np.uint16) * 257,
                                                                     cv2.COLOR_BGR2BGRA))[1].tobytes())


@kind("image_ok", None)
def _jpeg_cmyk(d: Path) -> Path:
    return _pil(d, "cmyk.jpg", "CMYK", "JPEG")


@kind("image_ok", None)
def _jpeg_progressive(d: Path) -> Path:
    return _pil(d, "progressive.jpg", "RGB", "JPEG", progressive=True)


@kind("image_ok", None)
def _png_one_bit(d: Path) -> Path:
    return _pil(d, "bits.png", "1", "PNG")


@kind("image_ok", None)
def _png_palette_transparency(d: Path) -> Path:
    return _pil(d, "palette.png", "P", "PNG", transparency=0)


@kind("image_ok", None)
def _png_gray_alpha(d: Path) -> Path:
    return _pil(d, "gray_alpha.png", "LA", "PNG")


@kind("image_ok", None)
def _tiff_float(d: Path) -> Path:
    return _pil(d, "float.tif", "F", "TIFF")


@kind("image_ok", None)
def _tiff_int32(d: Path) -> Path:
    return _pil(d, "int32.tif", "I", "TIFF")


@kind("image_ok", None)
def _pgm_16bit(d: Path) -> Path:
    return write(d, "deep.pgm", b"P5\n8 8\n65535\n" + (np.arange(64, dtype=">u2") * 1000).tobytes())


@kind("image_ok", None)
def _jpeg_exif_rotated_damaged_exif(d: Path) -> Path:
    return _pil(d, "damaged_exif.jpg", "RGB", "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")


@kind("image_ok", None)
def _gif_animated(d: Path) -> Path:
    from PIL import Image

    frames = [Image.fromarray(small_image(20, 30, seed=s)).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return write(d, "animated.gif", buf.getvalue())


@kind("image_ok", None)
def _jpeg_huge_comment(d: Path) -> Path:
    data = jpeg()
    return write(d, "comment.jpg", data[:2] + b"\xff\xfe" + struct.pack(">H", 65535) + b"c" * 65533 + data[2:])


# -- CSV ---------------------------------------------------------------------------------------------------------
PX = " ".join(["9"] * 16)


def _csv(d: Path, name: str, body: str | bytes) -> Path:
    return write(d, name, body)


@kind("csv", "is not an integer")
def _label_superscript(d: Path) -> Path:
    return _csv(d, "super.csv", f"emotion,pixels\n0,{PX}\n\u00b2,{PX}\n")


@kind("csv", "integer labels must be")
def _label_huge_integer(d: Path) -> Path:
    return _csv(d, "huge_label.csv", f"emotion,pixels\n0,{PX}\n99999999999,{PX}\n")


@kind("csv", "empty 'emotion'")
def _label_empty(d: Path) -> Path:
    return _csv(d, "empty_label.csv", f"emotion,pixels\n0,{PX}\n,{PX}\n")


@kind("csv", "field larger than field limit")
def _field_200k(d: Path) -> Path:
    return _csv(d, "wide.csv", f"emotion,pixels\n0,{PX}\n1,{'1 ' * 100_000}\n")


@kind("csv", "not UTF-8")
def _latin1_byte(d: Path) -> Path:
    return _csv(d, "latin1.csv", f"emotion,pixels\nhappy,{PX}\ncaf\u00e9,{PX}\n".encode("latin-1"))


@kind("csv", "row 3: emotion")
def _nul_byte(d: Path) -> Path:
    return _csv(d, "nul.csv", f"emotion,pixels\n0,{PX}\n0\x00,{PX}\n")


@kind("csv", "truncated or damaged gzip")
def _gzip_truncated(d: Path) -> Path:
    return _csv(d, "cut.csv.gz", gzip.compress(f"emotion,pixels\n{f'0,{PX}' + chr(10)}".encode() * 5000)[:-300])


@kind("csv", "inflates more than", bomb=True)
def _gzip_bomb(d: Path) -> Path:
    # 64 MiB of rows in about 64 kB (the same kind at 1 GiB is in the memory test).
    return _csv(d, "bomb.csv.gz", gzip_rows(64 << 20))


@kind("csv", "header must have columns")
def _header_missing(d: Path) -> Path:
    return _csv(d, "no_header.csv", f"0,{PX}\n1,{PX}\n")


@kind("csv", "no data rows")
def _header_only(d: Path) -> Path:
    return _csv(d, "header_only.csv", "emotion,pixels,Usage\n")


@kind("csv", "expected 3 columns")
def _short_row(d: Path) -> Path:
    return _csv(d, "short.csv", f"emotion,pixels,Usage\n0,{PX},Training\n1\n")


@kind("csv", "values 0..255")
def _pixel_256(d: Path) -> Path:
    return _csv(d, "px256.csv", f"emotion,pixels\n0,{PX}\n1,{PX[:-1]}256\n")


@kind("csv", "must be a square image")
def _pixels_not_square(d: Path) -> Path:
    return _csv(d, "nonsquare.csv", f"emotion,pixels\n0,{PX}\n1,1 2 3\n")


@kind("csv", "not a number")
def _pixel_text(d: Path) -> Path:
    return _csv(d, "pxtext.csv", f"emotion,pixels\n0,{PX}\n1,{PX[:-1]}x\n")


@kind("csv", "unknown Usage")
def _usage_unknown(d: Path) -> Path:
    return _csv(d, "usage.csv", f"emotion,pixels,Usage\n0,{PX},Training\n1,{PX},Holdout\n")


@kind("csv", "field larger than field limit")
def _unclosed_quote(d: Path) -> Path:
    return _csv(d, "quote.csv", f'emotion,pixels\n0,"{PX}\n' + f"1,{PX}\n" * 20_000)


@kind("csv", "rows; refused", bomb=True)
def _too_many_rows(d: Path) -> Path:
    return _csv(d, "rows.csv.gz", gzip.compress(b"emotion,pixels\n" + b"0,7\n" * 1_000_001, 6))


@kind("csv", "header must have columns")
def _binary_named_csv(d: Path) -> Path:
    return _csv(d, "binary.csv", np.random.default_rng(2).integers(1, 128, 3000, dtype=np.uint8).tobytes()
                .replace(b"\n", b" ").replace(b"\r", b" ").replace(b'"', b" "))


def gzip_rows(size: int) -> bytes:
    row = b"0," + b"7 " * 15 + b"7\n"
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    parts = [z.compress(b"emotion,pixels\n")]
    block = row * (1 << 16)
    for _ in range(size // len(block)):
        parts.append(z.compress(block))
    parts.append(z.flush())
    return b"".join(parts)


# -- archives ----------------------------------------------------------------------------------------------------
def zip_of(d: Path, name: str, members: dict[str, bytes], raw_names: bool = True) -> Path:
    p = d / name
    d.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            z.writestr(zipfile.ZipInfo(member) if raw_names else member, data, zipfile.ZIP_DEFLATED)
    return p


def class_members(extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    face = png_bytes(small_image(48, 48))
    return {"train/happy/a.png": face, "train/sad/b.png": face, **(extra or {})}


@kind("archive", "unsafe path")
def _zip_parent_member(d: Path) -> Path:
    return zip_of(d, "parent.zip", class_members({"../x.png": png_bytes()}))


@kind("archive", "unsafe path")
def _zip_absolute_member(d: Path) -> Path:
    return zip_of(d, "absolute.zip", class_members({"/x.png": png_bytes()}))


@kind("archive", "unsafe path")
def _zip_inner_parent_member(d: Path) -> Path:
    return zip_of(d, "inner.zip", class_members({"train/../x.png": png_bytes()}))


@kind("archive", "unsafe path")
def _zip_backslash_member(d: Path) -> Path:
    return zip_of(d, "backslash.zip", class_members({"train\\..\\..\\x.png": png_bytes()}))


@kind("archive", "inflates", bomb=True)
def _zip_csv_bomb(d: Path) -> Path:
    # A member that honestly declares 2.5 GiB would be refused the same way, before a byte is inflated.
    return zip_of(d, "csv_bomb.zip", {"fer2013.csv": b"emotion,pixels\n" + b"0,7\n" * (16 << 20)})


@kind("archive", None, bomb=True, skipped="inflates")
def _zip_image_member_bomb(d: Path) -> Path:
    return zip_of(d, "image_bomb.zip", class_members({"train/happy/bomb.png": b"\0" * (48 << 20)}))


@kind("archive", "not a dataset")
def _zip_truncated(d: Path) -> Path:
    p = zip_of(d, "cut.zip", class_members())
    p.write_bytes(p.read_bytes()[:-40])
    return p


@kind("archive", None, skipped="cannot read")
def _zip_unknown_compression(d: Path) -> Path:
    p = zip_of(d, "method99.zip", class_members({"train/happy/odd.png": png_bytes()}))
    data = bytearray(p.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # mark the last member as compressed with method 99 (AES)
        i = data.rindex(sig)
        at = i + (8 if sig == b"PK\x03\x04" else 10)
        data[at : at + 2] = struct.pack("<H", 99)
    p.write_bytes(bytes(data))
    return p


@kind("archive", "unknown layout")
def _zip_of_a_zip(d: Path) -> Path:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("train/happy/a.png", png_bytes())
    return zip_of(d, "nested.zip", {"inner.zip": inner.getvalue()})


@kind("archive", "empty")
def _zip_empty(d: Path) -> Path:
    return zip_of(d, "empty.zip", {})


# -- FER+ label files ----------------------------------------------------------------------------------------------
def ferplus(d: Path, name: str, row: str) -> Path:
    root = d / name
    for folder in ("FER2013Train", "FER2013Valid"):
        for i in range(2):
            write(root / folder, f"fer{i}.png", png_bytes(small_image(48, 48, seed=i)))
        (root / folder / "label.csv").write_text('fer0.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n' + row + "\n")
    return root


@kind("ferplus", "votes must be counts")
def _votes_nan(d: Path) -> Path:
    return ferplus(d, "nan", 'fer1.png,"(0, 0, 48, 48)",nan,0,0,0,0,0,0,0,0,0')


@kind("ferplus", "votes must be counts")
def _votes_inf(d: Path) -> Path:
    return ferplus(d, "inf", 'fer1.png,"(0, 0, 48, 48)",inf,0,0,0,0,0,0,0,0,0')


@kind("ferplus", "votes must be counts")
def _votes_negative(d: Path) -> Path:
    return ferplus(d, "neg", 'fer1.png,"(0, 0, 48, 48)",10,-5,0,0,0,0,0,0,0,0')


@kind("ferplus", "10 vote counts")
def _votes_too_few(d: Path) -> Path:
    return ferplus(d, "few", 'fer1.png,"(0, 0, 48, 48)",10,0')


@kind("ferplus", "10 vote counts")
def _votes_text(d: Path) -> Path:
    return ferplus(d, "text", 'fer1.png,"(0, 0, 48, 48)",ten,0,0,0,0,0,0,0,0,0')


@kind("ferplus", "not UTF-8")
def _label_csv_latin1(d: Path) -> Path:
    root = ferplus(d, "latin1", 'fer1.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0')
    (root / "FER2013Train" / "label.csv").write_bytes('f\u00e9r1.png,"(0,0,48,48)",10,0,0,0,0,0,0,0,0,0\n'
                                                      .encode("latin-1"))
    return root


@kind("ferplus", None, bomb=True, skipped="listed in label.csv but missing")
def _label_csv_just_under_the_row_limit(d: Path) -> Path:
    # 999,999 rows (52 MB) naming images that are not there: the whole file, its text and every row's fields were
    # held at once, then a skip for each (over 1 GB and 40 s); now streamed, a name and ten votes kept per row.
    root = ferplus(d, "rows", 'fer1.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0')
    rows = b"".join(b'fer%07d.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\n' % i for i in range(999_999))
    (root / "FER2013Train" / "label.csv").write_bytes(rows)
    return root


@kind("ferplus", None, skipped="listed in label.csv but missing")
def _label_names_escape(d: Path) -> Path:
    return ferplus(d, "escape", '../../../../etc/passwd,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0')


# -- manifests -------------------------------------------------------------------------------------------------
@kind("manifest", "not a ferkit manifest")
def _manifest_not_json(d: Path) -> Path:
    return write(d, "bad.json", "{source: nowhere")


@kind("manifest", "not a ferkit manifest")
def _manifest_wrong_types(d: Path) -> Path:
    return write(d, "types.json", json.dumps({"source": 5, "keep": ["train"]}))


@kind("manifest", "not a ferkit manifest")
def _manifest_deep(d: Path) -> Path:
    return write(d, "deep.json", "[" * 200_000 + "]" * 200_000)


@kind("manifest", "source must be a dataset")
def _manifest_of_itself(d: Path) -> Path:
    return write(d, "self.json", json.dumps({"source": "self.json", "keep": {}}))


@kind("manifest", "not a ferkit manifest")
def _manifest_is_a_folder(d: Path) -> Path:
    (d / "folder.json").mkdir(parents=True)
    return d / "folder.json"


# -- convert: names that must not leave the output folder ------------------------------------------------------
def labels_csv(d: Path, name: str, labels: list[str]) -> Path:
    rows = "".join(f'"{lbl}",{PX}\n' for lbl in labels for _ in range(2))
    return write(d, name, "emotion,pixels\n" + rows)


@kind("convert", "no usable folder name")
def _class_dotdot(d: Path) -> Path:
    return labels_csv(d, "dotdot.csv", ["..", "happy"])


@kind("convert", "no usable folder name")
def _class_dot(d: Path) -> Path:
    return labels_csv(d, "dot.csv", [".", "happy"])


@kind("convert", "would share the folder")
def _classes_collide(d: Path) -> Path:
    return labels_csv(d, "collide.csv", ["a/b", "a_b"])


@kind("convert", None)
def _class_absolute(d: Path) -> Path:
    return labels_csv(d, "absolute.csv", ["/etc", "../../up", "sad"])  # sanitised: written inside


# -- models --------------------------------------------------------------------------------------------------
def onnx_model(d: Path, name: str, meta: dict[str, str] | None = None, classes: int = 3, size: int = 48,
               in_shape: list | None = None, out_shape: list | None = None, inputs: int = 1,
               tail: Callable[[], tuple[list, list]] | None = None, domain: str = "") -> Path:
    """A tiny runnable classifier in ferkit's format (mean brightness -> softmax), with metadata as given. `tail`
    gives (nodes, initializers) that turn the logits "z" (1 x classes) into "probabilities" instead of a Softmax;
    they may also read "input"."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, classes], list(np.linspace(-0.02, 0.02, classes)))
    in_shape = in_shape or ["batch", 1, size, size]
    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=list(range(1, len(in_shape))), keepdims=0),
             helper.make_node("Unsqueeze", ["m", "one"], ["m2"]),
             helper.make_node("MatMul", ["m2", "w"], ["z"], domain=domain)]
    tail_nodes, tail_inits = tail() if tail else ([helper.make_node("Softmax", ["z"], ["probabilities"], axis=1)], [])
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    ins = [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)]
    ins += [helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, [1]) for i in range(inputs - 1)]
    graph = helper.make_graph(nodes + tail_nodes, "tiny", ins,
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                             out_shape or ["batch", classes])],
                              initializer=[w, one, *tail_inits])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    base = {"classes": json.dumps(["angry", "happy", "neutral"][:classes] + [f"c{i}" for i in range(classes - 3)]),
            "input_size": str(size), "name": "tiny", "version": "0"}
    for k, v in {**base, **(meta or {})}.items():
        if v is not None:
            model.metadata_props.add(key=k, value=v)
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(d / name))
    return d / name


def _i64(name: str, values: list[int]) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _softmax_plus(extra: str) -> Any:
    """Nodes that add the scalar `extra` (zero whatever it reads) to the logits before the softmax: what a hostile
    graph computes on the side still has to be computed."""
    from onnx import helper

    return [helper.make_node("ReduceSum", [extra], ["side"], keepdims=0),
            helper.make_node("Mul", ["side", "zero"], ["nothing"]),
            helper.make_node("Add", ["z", "nothing"], ["z2"]),
            helper.make_node("Softmax", ["z2"], ["probabilities"], axis=1)]


def _zero() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])


def _tail_constant_of_shape_gigabytes() -> tuple[list, list]:
    from onnx import TensorProto, helper

    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    return ([helper.make_node("ConstantOfShape", ["big"], ["zeros"], value=fill), *_softmax_plus("zeros")],
            [_i64("big", [50_000, 50_000]), _zero()])  # 10 GB of float32


def _tail_expand_gigabytes() -> tuple[list, list]:
    from onnx import helper

    # Computed from the input, so nothing folds it away at load time: 1 x 1 x 48 x 48 x 100,000 floats, 0.9 GB.
    return ([helper.make_node("Unsqueeze", ["input", "last"], ["x5"]),
             helper.make_node("Expand", ["x5", "shape"], ["wide"]), *_softmax_plus("wide")],
            [_i64("last", [4]), _i64("shape", [1, 1, 48, 48, 100_000]), _zero()])


def _tail_size_from_pixels(op: str) -> Callable[[], tuple[list, list]]:
    def tail() -> tuple[list, list]:
        from onnx import TensorProto, helper

        # The brightest pixel, as a size: 255 rows of 255 columns of ... on a real face, nothing on a blank one.
        nodes = [helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
                 helper.make_node("Cast", ["peak"], ["n"], to=TensorProto.INT64),
                 helper.make_node("Reshape", ["n", "one"], ["n1"]),
                 helper.make_node("Concat", ["n1", "n1", "n1", "n1"], ["shape"], axis=0)]
        if op == "ConstantOfShape":
            nodes.append(helper.make_node("ConstantOfShape", ["shape"], ["grown"]))
        else:
            nodes.append(helper.make_node(op, ["z", "shape"] if op == "Expand" else ["input", "shape"], ["grown"]))
        return nodes + _softmax_plus("grown"), [_zero()]

    return tail


def _tail_nonzero() -> tuple[list, list]:
    from onnx import helper

    # How many pixels are bright, squared, as a size: nothing for a blank face, 10^13 floats for a real one. Shape
    # of a tensor whose own size depends on the values is not a constant of the run.
    return ([helper.make_node("NonZero", ["input"], ["where"]), helper.make_node("Shape", ["where"], ["s"]),
             helper.make_node("Slice", ["s", "one", "two"], ["count"]),
             helper.make_node("Concat", ["count", "count"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["grown"]), *_softmax_plus("grown")],
            [_i64("two", [2]), _zero()])


def _tail_reshape_from_pixels() -> tuple[list, list]:
    from onnx import TensorProto, helper

    # [1, n] or [n, 1] by a pixel's value, then broadcast against itself: n^2 for a real face.
    return ([helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
             helper.make_node("Cast", ["peak"], ["n"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["n", "one"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
             helper.make_node("Flatten", ["input"], ["flat"], axis=0),
             helper.make_node("Reshape", ["flat", "shape"], ["tall"]),
             helper.make_node("Transpose", ["tall"], ["wide"]), helper.make_node("Add", ["tall", "wide"], ["grown"]),
             *_softmax_plus("grown")], [_i64("minus_one", [-1]), _zero()])


def _tail_loop(trips: int) -> Callable[[], tuple[list, list]]:
    def tail() -> tuple[list, list]:
        from onnx import TensorProto, helper

        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["zin"], ["zout"])],
            "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                     helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("zin", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("zout", TensorProto.FLOAT, None)])
        trip = helper.make_tensor("trips", TensorProto.INT64, [], [trips])
        cond = helper.make_tensor("go", TensorProto.BOOL, [], [True])
        return ([helper.make_node("Loop", ["trips", "go", "z"], ["zl"], body=body),
                 helper.make_node("Softmax", ["zl"], ["probabilities"], axis=1)], [trip, cond])

    return tail


def _tail_if() -> tuple[list, list]:
    from onnx import TensorProto, helper

    branch = [helper.make_graph([helper.make_node("Identity", ["z"], [f"z_{b}"])], b, [],
                                [helper.make_tensor_value_info(f"z_{b}", TensorProto.FLOAT, None)])
              for b in ("then", "else")]
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    return ([helper.make_node("If", ["cond"], ["zi"], then_branch=branch[0], else_branch=branch[1]),
             helper.make_node("Softmax", ["zi"], ["probabilities"], axis=1)], [cond])


def _tail_nan() -> tuple[list, list]:
    from onnx import TensorProto, helper

    return ([helper.make_node("Softmax", ["z"], ["p"], axis=1), helper.make_node("Div", ["p", "zero"], ["q"]),
             helper.make_node("Sub", ["q", "q"], ["probabilities"])],  # inf - inf
            [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])


def _tail_logits() -> tuple[list, list]:
    from onnx import helper

    return [helper.make_node("Sigmoid", ["z"], ["probabilities"])], []  # each in 0..1, the row sums to 1.5


def _tail_nan_on_faces() -> tuple[list, list]:
    from onnx import TensorProto, helper

    # sqrt(1 - mean / 50): 1 on a blank face, NaN on any face brighter than 50 on average.
    return ([helper.make_node("Softmax", ["z"], ["p"], axis=1),
             helper.make_node("Div", ["m2", "fifty"], ["r"]), helper.make_node("Sub", ["one_f", "r"], ["d"]),
             helper.make_node("Sqrt", ["d"], ["s"]), helper.make_node("Mul", ["p", "s"], ["probabilities"])],
            [helper.make_tensor("fifty", TensorProto.FLOAT, [], [50.0]),
             helper.make_tensor("one_f", TensorProto.FLOAT, [], [1.0])])


def external_data_model(d: Path) -> Path:
    """The tiny model with its weight `w` in a file beside it (ONNX's external data)."""
    import onnx
    from onnx import numpy_helper

    p = onnx_model(d, "external.onnx")
    m = onnx.load(str(p))
    for t in m.graph.initializer:  # as raw bytes: only those go to external data
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
    onnx.save_model(m, str(p), save_as_external_data=True, all_tensors_to_one_file=True, location="external.bin",
                    size_threshold=0)
    return p


def _model_kind(name: str, expect: str, bomb: bool = False, **kw: Any) -> None:
    def make(d: Path) -> Path:
        return onnx_model(d, f"{name}.onnx", **kw)

    make.__name__ = name
    kind("model", expect, bomb=bomb)(make)


_model_kind("classes_not_json", "'classes' is not JSON", meta={"classes": "angry,happy"})
_model_kind("classes_empty", "different names", meta={"classes": "[]"})
_model_kind("classes_numbers", "different names", meta={"classes": "[1, 2, 3]"})
_model_kind("classes_repeated", "different names", meta={"classes": '["a", "a", "b"]'})
_model_kind("classes_object", "different names", meta={"classes": '{"a": 1}'})
_model_kind("classes_deep", "'classes' is not JSON", meta={"classes": "[" * 100_000})
_model_kind("classes_more_than_outputs", "classes in its metadata", meta={"classes": '["a", "b", "c", "d"]'})
_model_kind("classes_fewer_than_outputs", "is not N x 2", meta={"classes": '["a", "b"]'}, out_shape=["batch", "n"])
_model_kind("no_classes", "without ferkit metadata", meta={"classes": None})
_model_kind("input_size_text", "'input_size' is 'big'", meta={"input_size": "big"})
_model_kind("input_size_zero", "'input_size' is 0", meta={"input_size": "0"})
_model_kind("input_size_negative", "'input_size' is -48", meta={"input_size": "-48"})
_model_kind("input_size_huge", "'input_size' is 100000", meta={"input_size": "100000"})
_model_kind("input_size_float", "'input_size' is '48.5'", meta={"input_size": "48.5"})
_model_kind("crop_over_input_size", "'crop' is 64", meta={"crop": "64"})
_model_kind("crop_zero", "'crop' is 0", meta={"crop": "0"})
_model_kind("crop_not_the_graphs", "does not take N x 1 x 40 x 40", meta={"crop": "40"})
_model_kind("temperature_text", "'temperature' is 'warm'", meta={"temperature": "warm"})
_model_kind("temperature_nan", "'temperature' is nan", meta={"temperature": "nan"})
_model_kind("temperature_zero", "'temperature' is 0", meta={"temperature": "0"})
_model_kind("temperature_negative", "'temperature' is -1", meta={"temperature": "-1"})
_model_kind("tta_unknown", "metadata 'tta'", meta={"tta": "rotate"})
_model_kind("input_rgb", "does not take N x 1 x 48 x 48", in_shape=["batch", 3, 48, 48])
_model_kind("input_rank_3", "does not take N x 1 x 48 x 48", in_shape=["batch", 48, 48])
_model_kind("two_inputs", "2 inputs", inputs=2)


# Family 1 of issue 32: metadata out of range, and graphs that loop, allocate or give no probabilities.
_model_kind("temperature_tiny", "a temperature lies in 0.01..100", meta={"temperature": "1e-300"})
_model_kind("temperature_huge", "a temperature lies in 0.01..100", meta={"temperature": "1e300"})
_model_kind("temperatures_deep", "'temperatures' is not JSON", meta={"temperatures": "[" * 50_000})
_model_kind("temperatures_tiny", "a temperature lies in", meta={"temperatures": '{"flip": 1e-300}'})
_model_kind("classes_100000", "at most 1000", meta={"classes": json.dumps([f"c{i}" for i in range(100_000)])})
_model_kind("classes_name_too_long", "at most 200 characters", meta={"classes": json.dumps(["a" * 5000, "b"])})
_model_kind("model_name_too_long", "'name' is 100,000 characters long", meta={"name": "n" * 100_000})
_model_kind("constant_of_shape_gigabytes", "needs more than 512 MB", bomb=True, tail=_tail_constant_of_shape_gigabytes)
_model_kind("expand_gigabytes", "needs more than 512 MB", bomb=True, tail=_tail_expand_gigabytes)
_model_kind("constant_of_shape_from_pixels", "depends on the input's values",
            tail=_tail_size_from_pixels("ConstantOfShape"))
_model_kind("expand_from_pixels", "depends on the input's values", tail=_tail_size_from_pixels("Expand"))
_model_kind("tile_from_pixels", "depends on the input's values", tail=_tail_size_from_pixels("Tile"))
_model_kind("nonzero_size_from_pixels", "as pass a test on the input's values", tail=_tail_nonzero)
_model_kind("reshape_from_pixels", "depends on the input's values", tail=_tail_reshape_from_pixels)
_model_kind("loop_2_63", "must not loop or branch", tail=_tail_loop(2**63 - 1))
_model_kind("if_subgraphs", "must not loop or branch", tail=_tail_if)
_model_kind("custom_domain", "from domain 'com.example.evil'", domain="com.example.evil")
_model_kind("nan_outputs", "NaN or infinite probabilities", tail=_tail_nan)
_model_kind("outputs_not_summing_to_one", "not probabilities", tail=_tail_logits)


@kind("model", "keep its weights inside the file")
def _model_external_data(d: Path) -> Path:
    return external_data_model(d)


@kind("model", "not an ONNX model")
def _model_random_bytes(d: Path) -> Path:
    return write(d, "noise.onnx", np.random.default_rng(3).integers(0, 256, 2048, dtype=np.uint8).tobytes())


@kind("model", "not an ONNX model")
def _model_truncated(d: Path) -> Path:
    p = onnx_model(d, "full.onnx")
    return write(d, "cut.onnx", p.read_bytes()[:200])


@kind("model", "not an ONNX model")
def _model_empty(d: Path) -> Path:
    return write(d, "empty.onnx", b"")


@kind("model", "no such model file")
def _model_is_a_folder(d: Path) -> Path:
    (d / "folder.onnx").mkdir(parents=True)
    return d / "folder.onnx"


# -- training configs ----------------------------------------------------------------------------------------------
def _config_kind(name: str, expect: str, toml: str | bytes | None = None, sets: list[str] | None = None) -> None:
    def make(d: Path) -> tuple[Path | None, list[str]]:
        path = None
        if toml is not None:
            path = write(d, f"{name}.toml", toml)
        return path, list(sets or [])

    make.__name__ = name
    kind("config", expect)(make)


_config_kind("epochs_fraction", "epochs: expected a number without decimals", "epochs = 1.5\n")
_config_kind("batch_size_list", "batch_size: expected a number without decimals", "batch_size = [16, 32]\n")
_config_kind("batch_size_zero", "batch_size: 0 is outside", "batch_size = 0\n")
_config_kind("epochs_negative", "epochs: -3 is outside", sets=["epochs=-3"])
_config_kind("warmup_two", "warmup: 2.0 is outside", "warmup = 2.0\n")
_config_kind("select_metric_unknown", "select_metric: 'accuracy' is not one of", 'select_metric = "accuracy"\n')
_config_kind("device_tpu", "device: 'tpu'", sets=["device=tpu"])
_config_kind("lr_nan", "lr: nan is outside", sets=["lr=nan"])
_config_kind("lr_true", "lr: expected a number", "lr = true\n")
_config_kind("lr_inf", "lr: inf is outside", sets=["lr=inf"])
_config_kind("precision_fp8", "precision: 'fp8' is not one of", 'precision = "fp8"\n')
_config_kind("balance_oversample", "balance: 'oversample' is not one of", sets=["balance=oversample"])
_config_kind("optimizer_unknown", "optimizer: 'sgdd' is not one of", sets=["optimizer=sgdd"])
_config_kind("schedule_unknown", "schedule: 'linear' is not one of", sets=["schedule=linear"])
_config_kind("label_smoothing_one", "label_smoothing: 1.0 is outside", sets=["label_smoothing=1"])
_config_kind("dropout_text", "dropout: expected a number", sets=["dropout=high"])
_config_kind("crop_negative", "crop: -8 is outside", sets=["crop=-8"])
_config_kind("crop_fraction", "crop: expected a number without decimals", sets=["crop=0.8"])
_config_kind("seed_negative", "seed: -1 is outside", sets=["seed=-1"])
_config_kind("model_unknown", "model: 'transformer' is unknown", sets=["model=transformer"])
_config_kind("augment_rotate_huge", "augment.rotate: 720.0 is outside", "[augment]\nrotate = 720\n")
_config_kind("augment_not_a_section", "augment must be a section", "augment = 5\n")
_config_kind("unknown_setting", "unknown setting 'learning_rate'", "learning_rate = 0.1\n")
_config_kind("freeze_maybe", "freeze: expected true or false", sets=["freeze=maybe"])
_config_kind("override_without_value", "expected key=value", sets=["epochs"])
_config_kind("override_not_a_section", "is not a section", sets=["lr.max=1"])
_config_kind("toml_syntax", "not valid TOML", "epochs = = 3\n")
_config_kind("toml_not_utf8", "not UTF-8", b"model = \"vgg_s\"\n# caf\xe9\n")
_config_kind("toml_deep", "not valid TOML", "x = " + "[" * 50_000 + "]" * 50_000 + "\n")
_config_kind("teacher_numbers", "teacher: expected", "teacher = [1, 2]\n")


@kind("config", "is a file")
def _config_out_is_a_file(d: Path) -> tuple[None, list[str]]:
    f = write(d, "taken.txt", "not a folder")
    return None, [f"out={f}"]


@kind("config", "is a folder")
def _config_is_a_folder(d: Path) -> tuple[Path, list[str]]:
    (d / "folder.toml").mkdir(parents=True)
    return d / "folder.toml", []


@kind("config", "no such config file")
def _config_missing(d: Path) -> tuple[Path, list[str]]:
    return d / "missing.toml", []


# -- HTTP requests (the service) ---------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    json_body: Any = None
    files: list | None = None
    status: int = 400
    code: str | None = None


def _http(name: str, status: int, code: str | None, **kw: Any) -> None:
    def make(_d: Path) -> Request:
        return Request(status=status, code=code, **{k: (v() if callable(v) else v) for k, v in kw.items()})

    make.__name__ = name
    kind("http", code or str(status), status)(make)


DEEP_JSON = ("[" * 100_000 + "]" * 100_000).encode()
_http("deep_json", 400, "malformed_json", method="POST", url="/v1/predict",
      headers={"content-type": "application/json"}, content=b'{"image": ' + DEEP_JSON + b"}")
_http("deep_json_batch", 400, "malformed_json", method="POST", url="/v1/predict/batch",
      headers={"content-type": "application/json"}, content=b'{"images": ' + DEEP_JSON + b"}")
_http("json_not_object", 400, "malformed_json", method="POST", url="/v1/predict", json_body=[1, 2, 3])
_http("json_image_number", 400, "malformed_json", method="POST", url="/v1/predict", json_body={"image": 5})
_http("json_images_not_list", 400, "malformed_json", method="POST", url="/v1/predict/batch",
      json_body={"images": "x"})
_http("json_bad_base64", 400, "bad_base64", method="POST", url="/v1/predict", json_body={"image": "@@@"})
_http("json_data_url_garbage", 400, "bad_base64", method="POST", url="/v1/predict",
      json_body={"image": "data:image/png;base64,%%%"})
_http("json_not_utf8", 400, "malformed_json", method="POST", url="/v1/predict",
      headers={"content-type": "application/json"}, content=b'{"image": "\xff\xfe"}')
_http("no_content_type", 415, "unsupported_media_type", method="POST", url="/v1/predict", content=b"abc")
_http("text_plain", 415, "unsupported_media_type", method="POST", url="/v1/predict",
      headers={"content-type": "text/plain"}, content=b"abc")
_http("multipart_garbage", 400, None, method="POST", url="/v1/predict",
      headers={"content-type": "multipart/form-data; boundary=xyz"}, content=b"--xyz\r\nnonsense")
_http("multipart_no_boundary", 400, None, method="POST", url="/v1/predict",
      headers={"content-type": "multipart/form-data"}, content=b"--x\r\n")
_http("too_many_files", 413, None, method="POST", url="/v1/predict/batch",
      files=lambda: [("f", (f"{i}.png", b"x", "image/png")) for i in range(200)])
_http("content_length_over_limit", 413, "too_large", method="POST", url="/v1/predict",
      headers={"content-type": "image/jpeg", "content-length": str(10**12)}, content=b"")
_http("bad_query", 422, "invalid_parameter", method="POST", url="/v1/predict?top_k=-5",
      headers={"content-type": "image/jpeg"}, content=b"x")
_http("unknown_route", 404, "not_found", method="GET", url="/../../etc/passwd")
_http("method_not_allowed", 405, None, method="DELETE", url="/v1/predict")
_http("made_up_method", 405, None, method="BREW", url="/v1/models")
_http("rebinding_host", 400, None, method="GET", url="/v1/models", headers={"host": "evil.example"})
_http("rebinding_host_with_port", 400, None, method="GET", url="/healthz", headers={"host": "attacker.test:8000"})


@kind("ws", "403")
def _ws_foreign_origin(_d: Path) -> dict:
    return {"url": "/v1/stream", "headers": {"origin": "http://evil.example"}, "refused": 403,
            "code": "forbidden_origin"}


@kind("ws", "malformed_json")
def _ws_deep_json_text(_d: Path) -> dict:
    return {"url": "/v1/stream", "text": "[" * 100_000 + "]" * 100_000, "answer": "malformed_json"}


@kind("ws", "unsupported_media_type")
def _ws_garbage_frame(_d: Path) -> dict:
    return {"url": "/v1/stream", "bytes": b"\0" * 100, "answer": "unsupported_media_type"}


@kind("ws", "too_many_pixels")
def _ws_bomb_frame(_d: Path) -> dict:
    return {"url": "/v1/stream", "bytes": png(60000, 60000), "answer": "too_many_pixels"}


@kind("ws", "unknown_message")
def _ws_json_not_reset(_d: Path) -> dict:
    return {"url": "/v1/stream", "text": json.dumps({"type": "explode"}), "answer": "unknown_message"}
