"""ferkit.images: the one decode path. Formats, EXIF orientation, reduced decoding of large images and the
coordinates that come back (bad input of every kind is in test_hostile.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ferkit import images
from ferkit.errors import FerkitError


def pil_bytes(bgr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "tolerance"), [
    ("PNG", 0), ("BMP", 0), ("TIFF", 0), ("PPM", 0), ("JPEG2000", 0), ("JPEG", 8), ("WEBP", 8), ("GIF", 40),
])
def test_every_format_decodes_to_bgr(astronaut, fmt, tolerance):
    d = images.load(pil_bytes(astronaut, fmt), f"a.{fmt.lower()}")
    assert d.format == fmt and d.image.dtype == np.uint8 and d.image.shape == astronaut.shape
    assert (d.width, d.height, d.scale) == (512, 512, 1.0)
    assert np.abs(d.image.astype(int) - astronaut).mean() <= tolerance
    gray = images.decode_image(pil_bytes(astronaut, fmt), "g", gray=True)
    assert gray.shape == (512, 512)


def test_jpeg_and_png_decode_as_opencv_does(astronaut):
    jpg = cv2.imencode(".jpg", astronaut)[1].tobytes()
    np.testing.assert_array_equal(images.decode_image(jpg), cv2.imdecode(np.frombuffer(jpg, np.uint8), 1))
    np.testing.assert_array_equal(images.decode_image(jpg, gray=True), cv2.imdecode(np.frombuffer(jpg, np.uint8), 0))
    png = cv2.imencode(".png", astronaut)[1].tobytes()
    np.testing.assert_array_equal(images.decode_image(png, gray=True), cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))


def test_deep_and_alpha_images_become_8_bit(astronaut):
    deep = astronaut.astype(np.uint16) * 257
    assert np.array_equal(images.decode_image(cv2.imencode(".png", deep)[1].tobytes()), astronaut)
    gray16 = images.decode_image(cv2.imencode(".png", deep[:, :, 0])[1].tobytes())
    assert gray16.shape == (512, 512) and np.array_equal(gray16, astronaut[:, :, 0])
    bgra = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    bgra[:, :, 3] = 7
    assert np.array_equal(images.decode_image(cv2.imencode(".png", bgra)[1].tobytes()), astronaut)
    rgba16 = cv2.cvtColor(deep, cv2.COLOR_BGR2BGRA)
    assert np.array_equal(images.decode_image(cv2.imencode(".png", rgba16)[1].tobytes()), astronaut)
    bits = Image.fromarray(astronaut[:, :, 0] > 128)
    buf = io.BytesIO()
    bits.save(buf, "PNG")
    assert set(np.unique(images.decode_image(buf.getvalue()))) <= {0, 255}


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(fmt, orientation):
    # An asymmetric picture, stored as a camera would store it for each orientation: decoding turns it upright.
    upright = np.zeros((60, 100, 3), np.uint8)
    upright[:20, :30] = (0, 0, 255)  # red block at the top left
    upright[40:, 70:] = (255, 0, 0)
    stored = {1: upright, 2: upright[:, ::-1], 3: upright[::-1, ::-1], 4: upright[::-1],
              5: upright.transpose(1, 0, 2), 6: np.rot90(upright, 1), 7: upright.transpose(1, 0, 2)[::-1, ::-1],
              8: np.rot90(upright, -1)}[orientation]
    im = Image.fromarray(cv2.cvtColor(np.ascontiguousarray(stored), cv2.COLOR_BGR2RGB))
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt != "PNG" else {}))
    d = images.load(buf.getvalue(), "o")
    assert d.image.shape == upright.shape and (d.width, d.height) == (100, 60)
    assert np.abs(d.image.astype(int) - upright).mean() < 6


def test_damaged_exif_keeps_the_picture(astronaut):
    jpg = bytearray(pil_bytes(astronaut, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"))
    assert images.decode_image(bytes(jpg)).shape == astronaut.shape


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_large_images_come_back_reduced_with_their_full_size(fmt):
    big = np.zeros((3000, 2000, 3), np.uint8)
    big[1000:2000, 500:1500] = (30, 200, 90)
    d = images.load(pil_bytes(big, fmt), "big", max_decoded=1_000_000)
    assert (d.width, d.height) == (2000, 3000) and d.format == fmt
    assert d.image.shape[0] * d.image.shape[1] <= 1_000_000 and d.scale >= 2
    assert d.image.shape[0] / d.image.shape[1] == pytest.approx(1.5, rel=0.01)
    y, x = np.argwhere(d.image[:, :, 1] > 150).mean(0) * d.scale
    assert (x, y) == (pytest.approx(1000, abs=30), pytest.approx(1500, abs=30))


def test_reduced_decoding_keeps_boxes_in_full_size_pixels(astronaut, tmp_path):
    from ferkit.inference import EmotionRecognizer
    from ferkit.inference.onnx_classifier import default_model_path

    if not default_model_path().is_file():
        pytest.skip("no shipped model")
    rec = EmotionRecognizer(threads=1)
    small = rec.predict(astronaut)
    big = cv2.resize(astronaut, (4608, 4608), interpolation=cv2.INTER_CUBIC)  # 21 MP: decoded at half size
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert images.load(path).scale == 2
    pred = rec.predict(path)
    assert (pred.width, pred.height) == (4608, 4608) and len(pred.faces) == len(small.faces) == 1
    assert np.allclose(np.array(pred.faces[0].box) / 9, small.faces[0].box, atol=8)
    assert pred.faces[0].label == small.faces[0].label


def test_probe_reads_the_header_only(astronaut):
    png = cv2.imencode(".png", astronaut)[1].tobytes()
    info = images.probe(png[:200], "head.png")  # the pixels are not even there
    assert (info.format, info.width, info.height, info.pixels) == ("PNG", 512, 512, 512 * 512)
    with pytest.raises(images.ImageTooLarge, match="head.png: image is 512x512 pixels, over the limit of 1,000"):
        images.probe(png, "head.png", max_pixels=1000)
    with pytest.raises(images.UnknownFormat):
        images.probe(png, "x.png", formats=("JPEG",))


def test_files_are_checked_before_reading(tmp_path, astronaut):
    good = tmp_path / "a.jpg"
    cv2.imwrite(str(good), astronaut)
    assert images.read_image(good).shape == astronaut.shape
    with pytest.raises(images.ImageTooLarge, match=r"a.jpg: [\d,]+ bytes, over the limit of 1,000") as e:
        images.load(good, max_bytes=1000)
    assert e.value.limit == "bytes"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        with pytest.raises(FerkitError, match="pipe.jpg: not a regular file"):
            images.read_image(tmp_path / "pipe.jpg")  # returns at once: a FIFO is never opened for a blocking read


def test_find_images_lists_what_it_leaves_out(tmp_path, astronaut):
    cv2.imwrite(str(tmp_path / "a.jpg"), astronaut)
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "b.png"), astronaut)
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 10)
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "linked").symlink_to(tmp_path / "sub")
    files, skipped = images.find_images(tmp_path)
    assert [rel.as_posix() for _, rel in files] == ["a.jpg", "sub/b.png"]
    why = {Path(s).name: reason for s, reason in skipped}
    assert set(why) == {"clip.mp4", "folder.jpg", "gone.jpg", "linked"}
    assert "not an image file (.mp4)" in why["clip.mp4"] and "broken link" in why["gone.jpg"]
    assert "a folder" in why["folder.jpg"] and "not followed" in why["linked"]
    files, skipped = images.find_images(str(tmp_path / "s*" / "*.*"))
    assert [rel.as_posix() for _, rel in files] == ["b.png"] and not skipped


# -- what applications hold: Pillow images, file objects, single crops (issue 33, item 8) ------------------------------
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "1"])
def test_pillow_images_become_ferkits_arrays(astronaut, mode):
    im = Image.fromarray(cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB))
    if mode == "I;16":  # 16-bit gray: 0..65535
        im = Image.fromarray(cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    else:
        im = im.convert(mode)
    arr = images.from_pil(im)
    assert arr.dtype == np.uint8 and arr.shape[:2] == (512, 512)
    if mode in ("RGB", "RGBA"):
        assert np.array_equal(arr, astronaut)  # BGR, OpenCV's order; alpha dropped as for files
    elif mode in ("L", "I;16"):
        assert arr.ndim == 2 and np.abs(arr.astype(int) - cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)).mean() < 2


def test_pillow_image_keeps_exif_orientation_as_files_do(astronaut):
    jpeg = pil_bytes(astronaut[:, :400], "JPEG", exif=_exif_rotated())  # stored 400 wide, shown 400 high
    assert images.from_pil(Image.open(io.BytesIO(jpeg))).shape[:2] == images.load(jpeg).image.shape[:2] == (400, 512)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    return exif.tobytes()


def test_file_objects_are_read_like_files(astronaut, tmp_path):
    import tempfile

    data = pil_bytes(astronaut, "PNG")
    (tmp_path / "a.png").write_bytes(data)
    with open(tmp_path / "a.png", "rb") as f:
        assert np.array_equal(images.load(f).image, astronaut)
    with open(tmp_path / "a.png", "rb") as f:
        assert images.file_object_name(f) == str(tmp_path / "a.png")
    assert np.array_equal(images.load(io.BytesIO(data)).image, astronaut)
    with tempfile.SpooledTemporaryFile() as upload:  # what FastAPI's UploadFile.file is
        upload.write(data)
        upload.seek(0)
        assert np.array_equal(images.load(upload, "upload").image, astronaut)
    with open(tmp_path / "a.png") as text, pytest.raises(FerkitError, match="open it in binary mode"):
        images.load(text)
    with pytest.raises(images.ImageTooLarge):
        images.load(io.BytesIO(data), max_bytes=1000)


def test_crop_batch_takes_one_crop_as_one():
    crop = np.zeros((48, 48), np.uint8)
    assert len(images.crop_batch(crop)) == 1  # before: 48 "images" of 48 pixels
    assert len(images.crop_batch(np.zeros((48, 48, 3), np.uint8))) == 1
    assert images.crop_batch(np.zeros((5, 48, 48), np.uint8)).shape == (5, 48, 48)
    assert len(images.crop_batch([crop, Image.fromarray(crop)])) == 2
    assert images.crop_batch(Image.fromarray(crop))[0].shape == (48, 48)
