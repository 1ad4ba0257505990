"""The one guarded way ferkit decodes an image, whoever asks (library, command line, dataset loaders, service).

Pillow reads every header, restricted to a few well-known formats, and decodes the pixels (OpenCV decodes WebP's:
Pillow's WebP decoder needs 16 bytes a pixel, OpenCV's 4). In this order:
1. a file that is not a regular file (folder, FIFO, device) or is over `MAX_BYTES` is refused before reading;
2. the true width and height are read from the header (Pillow parses every segment, not a first block), and an
   image over `MAX_PIXELS` is refused before any pixel is decoded;
3. an image over `MAX_DECODED_PIXELS` is decoded reduced where the codec can (JPEG at 1/2, 1/4 or 1/8 by DCT
   scaling, JPEG 2000 at a lower resolution level, WebP with IMREAD_REDUCED_*), and any other is shrunk right after
   decoding, so what reaches the caller stays small (`Decoded.width`/`height` keep the full size);
4. EXIF orientation is applied; the result is 8-bit gray (H x W) or BGR (H x W x 3), OpenCV's order;
5. any decoder failure, whatever its type, becomes one `FerkitError` line naming the file.

`load` also takes a binary file object (`open(p, "rb")`, `io.BytesIO`, an upload's `.file`), read under the same
byte limit; `from_pil` turns a Pillow image an application already holds into the same kind of array.

Worst case, measured by tests/test_hostile.py in a fresh process: see docs/inference.md ("Input limits").
"""

from __future__ import annotations

import glob
import importlib
import io
import math
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ferkit.errors import FerkitError

# Refused before decoding. 50 MP covers the photos of any phone's default mode (and 8K video frames); what
# decides the number is the codecs' own scratch memory at this size (a progressive CMYK JPEG keeps 8 bytes of
# coefficients per pixel while it decodes), which has to stay well under 1 GB.
MAX_PIXELS = 50_000_000
# Refused before reading: no image ferkit needs is larger (a 50 MP JPEG is 10-30 MB).
MAX_BYTES = 64 * 1024 * 1024
# A TIFF's strips or tiles: Pillow builds one Python object per strip when it opens the file, so 3 million strips of
# one row each (24 MB of offsets) cost 30 s and 1 GB before a pixel is read. A 50 MP image in strips of one row has
# under 10,000; in the smallest tiles the format allows (16 x 16), 200,000.
MAX_TIFF_STRIPS = 1 << 18
# Images over this many pixels are handed back reduced (by a power of two for JPEG, a whole factor otherwise):
# the detector sees at most 320 pixels a side by default, and face crops of such photos stay far above 48 x 48.
MAX_DECODED_PIXELS = 16_000_000

# OpenCV reads its own cap once, when first imported: where ferkit imports it first, it gets the same one.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ferkit.utils import walk  # noqa: E402

# Pillow's names (a camera JPEG with extra pictures opens as "MPO"). No EPS (it runs Ghostscript), no PSD,
# ICO, ...: formats nobody sends a face in are only attack surface.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "JPEG2000")
# Image.open(formats=...) looks names up among the plugins already registered: register exactly these.
for _plugin in ("Jpeg", "Png", "WebP", "Bmp", "Gif", "Tiff", "Ppm", "Jpeg2K"):
    importlib.import_module(f"PIL.{_plugin}ImagePlugin")
SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".pgm", ".ppm",
            ".pbm", ".pnm", ".jp2", ".j2k"}

# Pillow's own bomb check raises over twice its limit: make that ours, since a few decoders allocate while opening
# (WebP's canvas), before ferkit sees the size. Below it Pillow only warns, which ferkit's own check makes redundant.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
# Pillow warns on stderr about damage it works around ("Corrupt EXIF data", ...): ferkit's answer is the picture or
# one error line, never a warning in between.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


class ImageTooLarge(FerkitError):
    """An image over the byte or pixel limit (the service answers 413 to it); `limit` is "bytes" or "pixels"."""

    def __init__(self, message: str, limit: str = "pixels"):
        super().__init__(message)
        self.limit = limit


class UnknownFormat(FerkitError):
    """Bytes that none of the allowed decoders recognises (the service answers 415 to it)."""


class EmptyImage(FerkitError):
    """A file or upload with no bytes at all (the service answers 400 empty_body to it)."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow's name: JPEG, PNG, ...
    width: int  # as stored (before EXIF orientation)
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class Decoded:
    image: np.ndarray  # uint8, H x W gray or H x W x 3 BGR, EXIF orientation applied, maybe reduced
    width: int  # of the full image after EXIF orientation: what coordinates refer to
    height: int
    format: str

    @property
    def scale(self) -> float:
        """Full-size pixels per decoded pixel (1.0 unless the image was reduced while decoding)."""
        return self.width / self.image.shape[1]


def probe(source: str | Path | bytes | BinaryIO, name: str | None = None, formats: tuple[str, ...] = FORMATS,
          max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> ImageInfo:
    """Format and size from the header only; FerkitError for anything `load` would refuse before decoding."""
    name = name or _name_of(source)
    fp = _open_source(source, name, max_bytes)
    try:
        im = _open_image(fp, name, formats, max_pixels)
        info = ImageInfo(im.format or "", *im.size)
        im.close()
        return info
    finally:
        fp.close()


def load(source: str | Path | bytes | BinaryIO, name: str | None = None, *, gray: bool = False,
         formats: tuple[str, ...] = FORMATS, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
         max_decoded: int = MAX_DECODED_PIXELS) -> Decoded:
    """Decode a file (path), encoded bytes or a binary file object (read from where it stands); see the module
    docstring. `name` names it in errors."""
    name = name or _name_of(source)
    fp = _open_source(source, name, max_bytes)
    try:
        im = _open_image(fp, name, formats, max_pixels)
        try:
            return _decode(im, fp, name, gray, max_decoded)
        except FerkitError:
            raise
        except Exception as e:  # noqa: BLE001 - a codec fails in many ways (OSError, ValueError, SyntaxError, ...)
            raise FerkitError(f"{name}: not a readable image ({_why(e)})") from None
        finally:
            im.close()
    finally:
        fp.close()


def is_file_object(source: object) -> bool:
    """A readable file object (not a path, bytes or an array): what `load` reads with .read()."""
    return hasattr(source, "read") and not isinstance(source, str | bytes | bytearray | memoryview | Path | Image.Image)


def file_object_name(f: object) -> str | None:
    """The path a file object was opened from (open(p, "rb").name), None for in-memory ones (BytesIO, uploads)."""
    name = getattr(f, "name", None)
    return name if isinstance(name, str) and name and not name.startswith("<") else None


def _name_of(source: object) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return "image"
    if is_file_object(source):
        return file_object_name(source) or "image"
    return str(source)


def from_pil(im: Image.Image) -> np.ndarray:
    """A Pillow image an application holds (RGB, L, RGBA, P, I;16, ...) as ferkit's arrays: 8-bit gray (H x W) or
    BGR (H x W x 3; alpha dropped, as for files), its EXIF orientation applied as `load` does for a file (Pillow's
    ImageOps.exif_transpose removes the tag, so an image already turned upright is not turned again)."""
    if not isinstance(im, Image.Image):
        raise FerkitError(f"{type(im).__name__}: not a Pillow image")
    try:
        im.load()
        orientation = _orientation(im)
        arr = _pil_to_u8(_flat_mode(im))
    except Exception as e:  # noqa: BLE001 - a lazily opened image decodes here, and fails in many ways
        raise FerkitError(f"{getattr(im, 'filename', '') or 'Pillow image'}: not a readable image ({_why(e)})") from None
    if min(arr.shape[:2]) == 0:
        raise FerkitError(f"Pillow image of size {im.size}: no pixels")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if orientation in _ORIENT:
        arr = _ORIENT[orientation](arr)
    return np.ascontiguousarray(arr)


def crop_batch(crops: object) -> np.ndarray | list[np.ndarray]:
    """Face crops as `predict_proba` takes them, as a batch: an N x H x W (x C) array or a list of images (arrays,
    Pillow images) stays one; a single image (an H x W array, H x W x 1/3/4, a Pillow image) becomes a batch of one,
    where it would otherwise be read as H images of W pixels."""
    if isinstance(crops, Image.Image):
        return [from_pil(crops)]
    if isinstance(crops, np.ndarray):
        if crops.ndim == 2 or (crops.ndim == 3 and crops.shape[2] in (1, 3, 4)):
            return [crops]
        return crops
    if isinstance(crops, str | bytes | Path) or not hasattr(crops, "__len__"):
        raise FerkitError(f"crops of type {type(crops).__name__}: expected an array (one crop or N x H x W), a Pillow "
                          "image or a list of them")
    return [from_pil(c) if isinstance(c, Image.Image) else c for c in crops]  # type: ignore[union-attr]


def read_image(path: str | Path, gray: bool = False) -> np.ndarray:
    """An image file as a uint8 array (gray or BGR); FerkitError naming the file if it is refused or unreadable."""
    return load(path, gray=gray).image


def decode_image(data: bytes, name: str = "image", gray: bool = False) -> np.ndarray:
    """Encoded image bytes as a uint8 array (gray or BGR); FerkitError naming `name` if refused or unreadable."""
    return load(data, name, gray=gray).image


def fetch(url: str, max_bytes: int = MAX_BYTES, timeout: float = 30.0) -> bytes:
    """The bytes of an http(s) URL, for `load`: refused past `max_bytes` (by its Content-Length before reading, else
    while reading), redirects only to http(s), every failure one FerkitError line naming the URL."""
    import urllib.error
    import urllib.request

    if not url.lower().startswith(("http://", "https://")):
        raise FerkitError(f"{url}: only http:// and https:// URLs are read")

    class _HttpOnly(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
            if not newurl.lower().startswith(("http://", "https://")):
                raise FerkitError(f"{url}: redirected to {newurl[:100]!r}, which is not an http(s) URL")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.build_opener(_HttpOnly)
    request = urllib.request.Request(url, headers={"User-Agent": "ferkit", "Accept": "image/*"})
    try:
        with opener.open(request, timeout=timeout) as r:
            declared = r.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise ImageTooLarge(f"{url}: {int(declared):,} bytes, over the limit of {max_bytes:,}", "bytes")
            data = r.read(max_bytes + 1)
    except FerkitError:
        raise
    except urllib.error.HTTPError as e:
        raise FerkitError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", None) or e
        raise FerkitError(f"{url}: cannot download ({_why(why) if isinstance(why, BaseException) else why})") from None
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{url}: over the limit of {max_bytes:,} bytes", "bytes")
    return data


def find_images(source: str | Path) -> tuple[list[tuple[Path, Path]], list[tuple[str, str]]]:
    """Image files of a folder (recursive) or a glob, with their paths relative to it, and every other entry met
    on the way as (path, reason): files that are not images (videos, text, ...), broken links, pipes and devices,
    folders named like images, links to folders (not followed). Hidden entries (".name") are left out."""
    src = str(source)
    root = Path(src)
    walked = root.is_dir()
    if walked:
        entries = _walk(root)
    elif any(c in src for c in "*?["):
        try:
            entries = [Path(f) for f in sorted(glob.glob(src, recursive=True))]
        except RecursionError:  # glob recurses once per folder level ('**') and per pattern part
            raise FerkitError(f"{src[:200]}: the pattern reaches folders nested too deep to list; give the folder "
                              "itself") from None
        if not entries:
            return [], []
        # Relative to the deepest common folder, so that 'a/x.jpg' and 'b/x.jpg' keep apart.
        root = Path(os.path.commonpath([str(e.parent.resolve()) for e in entries]))
    else:
        raise FerkitError(f"{src}: no such file or folder")
    found: list[tuple[Path, Path]] = []
    skipped: list[tuple[str, str]] = []
    for e in entries:
        if e.name.startswith("."):
            continue
        why = _not_an_image(e)
        if why is None:
            found.append((e, e.relative_to(root) if walked else e.parent.resolve().relative_to(root) / e.name))
        elif why:
            skipped.append((str(e), f"{e}: {why}"))
    return sorted(found), sorted(skipped)


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for base, dirs, files in walk(root):  # links to folders are listed in dirs but not followed
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [base / d for d in dirs if (base / d).is_symlink() or Path(d).suffix.lower() in SUFFIXES]
        out += [base / f for f in sorted(files)]
    return out


def _not_an_image(p: Path) -> str | None:
    """None for an image file; else why not ('' for a plain folder, which is no news)."""
    try:
        st = p.stat()
    except FileNotFoundError:
        return "broken link" if p.is_symlink() else "vanished"
    except OSError as e:
        return f"cannot read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        if p.is_symlink():
            return "a link to a folder (not followed)"
        return "a folder, not an image" if p.suffix.lower() in SUFFIXES else ""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a pipe, socket or device)"
    if p.suffix.lower() not in SUFFIXES:
        return f"not an image file ({p.suffix.lower() or 'no suffix'})"
    return None


# -- steps -------------------------------------------------------------------------------------------------------
def _open_source(source: str | Path | bytes | BinaryIO, name: str, max_bytes: int) -> io.BufferedIOBase:
    if is_file_object(source):
        text = f"{name}: a file opened as text; open it in binary mode (open(path, 'rb'))"
        if isinstance(source, io.TextIOBase):
            raise FerkitError(text)
        try:
            source = source.read(max_bytes + 1)  # type: ignore[union-attr]
        except UnicodeDecodeError:
            raise FerkitError(text) from None
        except OSError as e:
            raise FerkitError(f"{name}: cannot read ({e.strerror or e})") from None
        if isinstance(source, str):
            raise FerkitError(text)
        if not isinstance(source, bytes | bytearray | memoryview):
            raise FerkitError(f"{name}: its read() gave {type(source).__name__}, not bytes")
    if isinstance(source, bytes | bytearray | memoryview):
        if not len(source):
            raise EmptyImage(f"{name}: empty file")
        if len(source) > max_bytes:
            raise ImageTooLarge(f"{name}: {len(source):,} bytes, over the limit of {max_bytes:,}", "bytes")
        return io.BytesIO(source)
    path = str(source)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells what was opened.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        what = "broken link" if os.path.islink(path) else "no such file"
        raise FerkitError(f"{name}: {what}") from None
    except IsADirectoryError:
        raise FerkitError(f"{name}: is a folder, not an image") from None
    except OSError as e:
        raise FerkitError(f"{name}: cannot read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FerkitError(f"{name}: is a folder, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise FerkitError(f"{name}: not a regular file (a pipe, socket or device)")
        if st.st_size == 0:
            raise EmptyImage(f"{name}: empty file")
        if st.st_size > max_bytes:
            raise ImageTooLarge(f"{name}: {st.st_size:,} bytes, over the limit of {max_bytes:,}", "bytes")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _tiff_strips(fp: io.BufferedIOBase) -> int:
    """How many strips or tiles the first image of a TIFF (classic or BigTIFF) declares, read from its directory
    alone; 0 for another format or a directory that cannot be read (Pillow then says what is wrong)."""
    fp.seek(0)
    head = fp.read(16)
    if head[:4] not in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return 0
    order, big = "<" if head[:1] == b"I" else ">", b"+" in head[2:4]
    count_fmt, entry, offset = (("Q", 20, struct.unpack(order + "Q", head[8:16])[0]) if big
                                else ("H", 12, struct.unpack(order + "I", head[4:8])[0]))
    fp.seek(offset)
    raw = fp.read(struct.calcsize(count_fmt))
    if len(raw) != struct.calcsize(count_fmt):
        return 0
    n = min(struct.unpack(order + count_fmt, raw)[0], 65535)
    table = fp.read(n * entry)
    most = 0
    for i in range(0, len(table) - entry + 1, entry):
        tag = struct.unpack(order + "H", table[i : i + 2])[0]
        if tag in (273, 279, 324, 325):  # strip / tile offsets and byte counts
            count = struct.unpack(order + ("Q" if big else "I"), table[i + 4 : i + (12 if big else 8)])[0]
            most = max(most, count)
    return most


def _open_image(fp: io.BufferedIOBase, name: str, formats: tuple[str, ...], max_pixels: int) -> Image.Image:
    if "TIFF" in formats and (strips := _tiff_strips(fp)) > MAX_TIFF_STRIPS:
        raise ImageTooLarge(f"{name}: a TIFF of {strips:,} strips or tiles, over the limit of {MAX_TIFF_STRIPS:,}")
    fp.seek(0)
    try:
        im = Image.open(fp, formats=list(formats))
    except Image.DecompressionBombError as e:  # Pillow's own check, at twice its limit (set to ours)
        n = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(n.group(1)):,} pixels" if n else "too many pixels"
        raise ImageTooLarge(f"{name}: image is {size}, over the limit of {max_pixels:,}") from None
    except Image.UnidentifiedImageError:
        # Pillow reports a damaged header of a format it knows (a PNG chunk's checksum, ...) the same way.
        fp.seek(0)
        fmt = _magic(fp.read(16))
        if fmt in formats:
            raise FerkitError(f"{name}: not a readable image (damaged {_format_list((fmt,))} header)") from None
        raise UnknownFormat(f"{name}: not a readable image (unknown format; expected {_format_list(formats)})") from None
    except Exception as e:  # noqa: BLE001 - a malformed header fails in many ways
        raise FerkitError(f"{name}: not a readable image ({_why(e)})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageTooLarge(f"{name}: image is {w}x{h} pixels, over the limit of {max_pixels:,}")
    if w <= 0 or h <= 0:
        im.close()
        raise FerkitError(f"{name}: not a readable image (it is {w}x{h} pixels)")
    return im


def _decode(im: Image.Image, fp: io.BufferedIOBase, name: str, gray: bool, max_decoded: int) -> Decoded:
    w, h = im.size
    fmt = im.format or ""
    orientation = _orientation(im)
    arr = _decode_webp(im, fp, gray, max_decoded) if fmt == "WEBP" else _decode_pillow(im, gray, max_decoded)
    if min(arr.shape[:2]) == 0:
        raise FerkitError(f"{name}: not a readable image (decoded to shape {arr.shape})")
    if orientation in _ORIENT:
        arr = _ORIENT[orientation](arr)
        if orientation >= 5:
            w, h = h, w
    return Decoded(np.ascontiguousarray(arr), w, h, fmt)


def _decode_pillow(im: Image.Image, gray: bool, max_decoded: int) -> np.ndarray:
    w, h = im.size
    if im.format in ("JPEG", "MPO") and (gray or w * h > max_decoded):
        # The codec's own luma (as OpenCV's IMREAD_GRAYSCALE) and DCT scaling: both cost nothing.
        s = next((s for s in (1, 2, 4, 8) if math.ceil(w / s) * math.ceil(h / s) <= max_decoded), 8)
        im.draft("L" if gray else None, (w // s, h // s))
    if im.format == "JPEG2000" and w * h > max_decoded:
        # OpenJPEG keeps 4 bytes per pixel and channel while decoding: drop resolution levels instead.
        im.reduce = next(k for k in range(1, 32) if math.ceil(w / 2**k) * math.ceil(h / 2**k) <= max_decoded)
    im.load()
    im = _flat_mode(im)
    if im.width * im.height > max_decoded:
        im = _reduced(im, math.ceil(math.sqrt(im.width * im.height / max_decoded)))
    arr = _pil_to_u8(im)
    del im
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY if gray else cv2.COLOR_RGB2BGR)
    return arr


def _flat_mode(im: Image.Image) -> Image.Image:
    """Palette and 1-bit images as RGB(A) / L, the modes _pil_to_u8 turns into arrays."""
    if im.mode in ("P", "PA"):
        return im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode == "1":
        return im.convert("L")
    return im


def _decode_webp(im: Image.Image, fp: io.BufferedIOBase, gray: bool, max_decoded: int) -> np.ndarray:
    """Pillow decodes WebP through libwebp's animation API, about 16 bytes per pixel; OpenCV's decoder needs 3 or 4.
    Pillow has read the header (size checked, EXIF found); OpenCV decodes the pixels."""
    w, h = im.size
    fp.seek(0)
    buf = np.frombuffer(fp.read(), np.uint8)
    im.close()  # frees libwebp's animation canvas (allocated, never touched)
    s = next((s for s in (1, 2, 4, 8) if math.ceil(w / s) * math.ceil(h / s) <= max_decoded), 8)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[s]
    if gray:
        flags = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[s]
    arr = cv2.imdecode(buf, flags | cv2.IMREAD_IGNORE_ORIENTATION)  # orientation: applied once, by the caller
    if arr is None:
        raise OSError("the WebP decoder refused the data")
    return arr


# EXIF orientation -> what shows the pixels upright (as Pillow's ImageOps.exif_transpose).
_ORIENT = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: lambda a: cv2.transpose(a),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not lose the picture
        return 1
    return value if isinstance(value, int) else 1


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    try:
        return im.reduce(factor)
    except ValueError:  # a mode reduce() does not handle (16-bit, CMYK, ...): resize is slower but takes any
        return im.resize((max(1, im.width // factor), max(1, im.height // factor)), Image.Resampling.BOX)


def to_u8(image: np.ndarray) -> np.ndarray:
    """8-bit gray/BGR/BGRA (16-bit and float images scaled down) for the detector and the crops."""
    img = np.asarray(image)
    if img.ndim not in (2, 3) or min(img.shape[:2]) == 0:
        raise FerkitError(f"image has shape {img.shape}; expected H x W or H x W x C")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        raise FerkitError(f"image has {img.shape[2]} channels; expected 1, 3 or 4")
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype.kind == "f":
        scale = 255.0 if img.size and float(np.nanmax(img)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pil_to_u8(im: Image.Image) -> np.ndarray:
    """Pillow image -> uint8 array: gray as H x W, colour as H x W x 3 RGB."""
    mode = im.mode
    if mode == "L":
        return np.array(im)
    if mode.startswith("I;16"):
        return (np.array(im).astype(np.uint16) >> 8).astype(np.uint8)
    if mode in ("I", "F"):
        a = np.array(im)
        if mode == "F" or a.dtype.kind == "f":
            a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            scale = 255.0 if a.size and float(a.max()) <= 1.0 else 1.0
            return np.clip(a * scale, 0, 255).astype(np.uint8)
        top = int(a.max()) if a.size else 0
        if top > 255:  # 16-bit data stored as 32-bit
            a = a >> 8 if top <= 65535 else a >> 24
        return np.clip(a, 0, 255).astype(np.uint8)
    if mode in ("LA", "La"):
        return np.array(im.convert("L"))
    if mode != "RGB":
        im = im.convert("RGB")  # alpha dropped, as OpenCV's BGRA -> gray ignores it too
    return np.array(im)


_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
          (b"\xff\x4f\xff\x51", "JPEG2000"))


def _magic(head: bytes) -> str | None:
    """The format its first bytes claim (only to word an error; Pillow decides what is readable)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456":
        return "PPM"
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def _why(e: BaseException) -> str:
    text = str(e).splitlines()[0].strip() if str(e).strip() else ""
    return (f"{type(e).__name__}: {text}" if text else type(e).__name__)[:160]


def _format_list(formats: tuple[str, ...]) -> str:
    names = {"JPEG2000": "JPEG 2000", "PPM": "PGM/PPM", "WEBP": "WebP"}
    return ", ".join(names.get(f, f) for f in formats)
