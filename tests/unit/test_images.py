"""Every image mode, EXIF orientation, PNG checksums, output names and resize modes (issue 16)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normadd.errors import ImageLoadError
from normadd.images import (
    first_readable,
    letterbox_box,
    load_image,
    load_image_bytes,
    open_rgb,
    output_stems,
    to_rgb,
    to_tensor,
)
from normadd.masks import image_size_of, resize_mask

WIDTH, HEIGHT = 32, 8
TOLERANCE = 1.5 / 255  # one 8-bit step plus rounding


def _gray_gradient() -> np.ndarray:
    """Values 0..1 rising left to right, the same on every row."""
    return np.tile(np.linspace(0.0, 1.0, WIDTH), (HEIGHT, 1))


def _color_gradient() -> np.ndarray:
    """(H, W, 3) in 0..1: red rises, green falls, blue is constant 0.5 (no extreme saturation)."""
    ramp = np.linspace(0.1, 0.9, WIDTH)
    return np.stack([np.tile(ramp, (HEIGHT, 1)), np.tile(ramp[::-1], (HEIGHT, 1)), np.full((HEIGHT, WIDTH), 0.5)], -1)


def _decoded(image: Image.Image, fmt: str = "TIFF") -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return _rgb_array(buffer.getvalue())


def _rgb_array(data: bytes) -> np.ndarray:
    """Decode through normadd (no resize: the tensor at the image's own size) as (H, W, 3) in [0, 1]."""
    from normadd.images import _decode

    rgb = _decode(io.BytesIO(data), "test", 10**8)
    return np.asarray(rgb, dtype=np.float64) / 255.0


GRAY = _gray_gradient()
GRAY_MODES = {
    "L": lambda: Image.fromarray(np.rint(GRAY * 255).astype(np.uint8), mode="L"),
    "LA": lambda: Image.fromarray(np.rint(GRAY * 255).astype(np.uint8), mode="L").convert("LA"),
    "I;16": lambda: Image.fromarray(np.rint(GRAY * 65535).astype(np.uint16)),
    "I;16B": lambda: Image.frombytes("I;16B", (WIDTH, HEIGHT), np.rint(GRAY * 65535).astype(">u2").tobytes()),
    "I (16-bit data)": lambda: Image.fromarray(np.rint(GRAY * 65535).astype(np.int32), mode="I"),
    "I (8-bit data)": lambda: Image.fromarray(np.rint(GRAY * 255).astype(np.int32), mode="I"),
    "F (0..1)": lambda: Image.fromarray(GRAY.astype(np.float32), mode="F"),
    "F (0..255)": lambda: Image.fromarray((GRAY * 255).astype(np.float32), mode="F"),
}


@pytest.mark.parametrize("mode", sorted(GRAY_MODES))
def test_every_grayscale_mode_reads_as_its_gradient(mode: str) -> None:
    image = GRAY_MODES[mode]()
    decoded = _decoded(image)
    assert decoded.shape == (HEIGHT, WIDTH, 3)
    for channel in range(3):
        np.testing.assert_allclose(decoded[..., channel], GRAY, atol=TOLERANCE)


def test_a_float_tiff_in_0_1_is_not_read_as_black() -> None:
    """The reported bug: values 0..1 were divided by 255 again and came out all black."""
    decoded = _decoded(GRAY_MODES["F (0..1)"]())
    assert decoded.max() > 0.99 and decoded[:, -1].min() > 0.99


def test_binary_mode_reads_as_black_and_white() -> None:
    bits = GRAY > 0.5
    decoded = _decoded(Image.fromarray(bits))
    np.testing.assert_array_equal(decoded[..., 0], bits.astype(float))


COLOR = _color_gradient()
COLOR_8 = np.rint(COLOR * 255).astype(np.uint8)
COLOR_MODES = {
    "RGB": lambda: Image.fromarray(COLOR_8, mode="RGB"),
    "RGBA": lambda: Image.fromarray(COLOR_8, mode="RGB").convert("RGBA"),
    "P": lambda: Image.fromarray(COLOR_8, mode="RGB").quantize(256),
    "CMYK": lambda: Image.fromarray(COLOR_8, mode="RGB").convert("CMYK"),
    "YCbCr": lambda: Image.fromarray(COLOR_8, mode="RGB").convert("YCbCr"),
    "LAB": lambda: Image.fromarray(COLOR_8, mode="RGB").convert("LAB"),
    "HSV": lambda: Image.fromarray(COLOR_8, mode="RGB").convert("HSV"),
    "RGBa": lambda: Image.fromarray(COLOR_8, mode="RGB").convert("RGBA").convert("RGBa"),
    "PA": lambda: Image.fromarray(COLOR_8, mode="RGB").quantize(256).convert("PA"),
}
# Conversions that are lossy by nature (a 256-colour palette, 8-bit YCbCr/LAB/HSV round trips; the
# 8-bit LAB round trip loses up to 14 steps here, in PIL and in LittleCMS's ImageCms alike).
COLOR_TOLERANCE = {"P": 8 / 255, "PA": 8 / 255, "YCbCr": 3 / 255, "LAB": 15 / 255, "HSV": 4 / 255}


@pytest.mark.parametrize("mode", sorted(COLOR_MODES))
def test_every_color_mode_reads_as_its_gradient(mode: str) -> None:
    image = COLOR_MODES[mode]()
    assert image.mode == mode
    decoded = np.asarray(to_rgb(image), dtype=np.float64) / 255.0
    np.testing.assert_allclose(decoded, COLOR_8 / 255.0, atol=COLOR_TOLERANCE.get(mode, TOLERANCE))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "YCbCr", "LAB", "P"])
def test_color_modes_survive_a_file_round_trip(mode: str) -> None:
    decoded = _decoded(COLOR_MODES[mode]())
    np.testing.assert_allclose(decoded, COLOR_8 / 255.0, atol=COLOR_TOLERANCE.get(mode, TOLERANCE))


def test_grayscale_jpeg_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "gray.jpg"
    GRAY_MODES["L"]().save(path, quality=100)
    tensor = load_image(path, 16)
    assert tensor.shape == (3, 16, 16)
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])


def _with_orientation(image: Image.Image, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif)


def test_exif_orientation_is_applied_to_images_and_mask_sizes(tmp_path: Path) -> None:
    stored = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    stored[:, :4] = 255  # a white band on the stored left edge
    path = tmp_path / "phone.jpg"
    _with_orientation(Image.fromarray(stored), path, 6)  # 6: rotate 90° clockwise to view
    upright = open_rgb(path)
    assert upright.size == (HEIGHT, WIDTH)  # portrait once turned
    array = np.asarray(upright)
    assert array[:4].mean() > 200 and array[-4:].mean() < 50  # the band is now on top
    mask = tmp_path / "phone_mask.png"
    _with_orientation(Image.fromarray(stored[..., 0]), mask, 6)
    assert image_size_of(mask) == image_size_of(path) == (HEIGHT, WIDTH)


def _png_with_bad_idat_crc() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(COLOR_8).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    crc_at = start + 8 + length
    good = zlib.crc32(bytes(data[start + 4 : crc_at])) & 0xFFFFFFFF
    assert struct.unpack(">I", data[crc_at : crc_at + 4])[0] == good
    data[crc_at : crc_at + 4] = struct.pack(">I", good ^ 1)
    return bytes(data)


def test_a_png_with_a_wrong_idat_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad_crc.png"
    path.write_bytes(_png_with_bad_idat_crc())
    with pytest.raises(ImageLoadError, match=r"bad_crc.png: corrupt or truncated PNG \(checksum"):
        load_image(path, 16)
    with pytest.raises(ImageLoadError, match="corrupt or truncated PNG"):
        load_image_bytes(path.read_bytes(), 16, "upload.png")


def test_first_readable_stops_a_run_with_no_readable_input(tmp_path: Path) -> None:
    bad = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in bad:
        path.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="no readable input: none of the 2 image file"):
        first_readable(bad)
    good = tmp_path / "c.png"
    Image.new("RGB", (4, 4)).save(good)
    assert first_readable([*bad, good]) == good


def test_output_names_are_unique_and_say_which_file_they_came_from() -> None:
    paths = [Path("images/a/rgb.bmp"), Path("images/b/rgb.webp"), Path("x/solo.png")]
    assert output_stems(paths) == ["rgb.bmp", "rgb.webp", "solo"]


def test_output_names_add_the_distinguishing_folders() -> None:
    paths = [Path("test/broken_large/000.png"), Path("test/good/000.png"), Path("test/good/001.png")]
    assert output_stems(paths) == ["broken_large__000", "good__000", "001"]


def test_output_names_of_the_same_tail_get_a_counter() -> None:
    paths = [Path("a/x/1.png"), Path("b/x/1.png"), Path("c/y/1.png")]
    names = output_stems(paths)
    assert names == ["a__x__1", "b__x__1", "c__y__1"]
    assert len(set(output_stems([Path("1.png"), Path("./1.png").absolute()]))) == 2


def test_control_characters_never_reach_an_output_name() -> None:
    names = output_stems([Path("a/evil\x1b[2J.png"), Path("b/evil\x1b[2J.png")])
    assert all("\x1b" not in name for name in names)


def test_letterbox_keeps_the_aspect_ratio_and_pads_with_black() -> None:
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    squashed = to_tensor(image, 20)
    boxed = to_tensor(image, 20, "letterbox")
    assert squashed.min() > 0.99
    left, top, width, height = letterbox_box(40, 20, 20)
    assert (left, top, width, height) == (0, 5, 20, 10)
    assert boxed[:, :5].max() == 0 and boxed[:, 15:].max() == 0 and boxed[:, 6:14].min() > 0.99


def test_masks_are_letterboxed_exactly_where_their_images_are() -> None:
    mask = torch.ones(20, 40)
    boxed = resize_mask(mask, 20, "letterbox")
    image = to_tensor(Image.new("RGB", (40, 20), (255, 255, 255)), 20, "letterbox")[0]
    assert torch.equal(boxed > 0.5, image > 0.5)
    assert resize_mask(mask, 20).min() == 1  # squash fills the square


def test_an_unknown_resize_mode_is_one_line() -> None:
    from normadd.errors import NormaddError

    with pytest.raises(NormaddError, match="resize 'crop' is unknown: choose squash or letterbox"):
        to_tensor(Image.new("RGB", (4, 4)), 4, "crop")
