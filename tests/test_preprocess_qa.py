"""QA of fer_edge.preprocess: pixel ranges (to_uint8), PIL EXIF orientation, normalize's uint8 contract."""
from __future__ import annotations

import numpy as np
import pytest

from fer_edge.errors import DataError


def _smooth_face() -> np.ndarray:
    """A float 0..1 64 x 64 face-like picture with soft edges (max exactly 1.0)."""
    import cv2

    y, x = np.mgrid[0:64, 0:64]
    face = np.where((x - 32) ** 2 / 22 ** 2 + (y - 32) ** 2 / 28 ** 2 < 1, 0.8, 0.0).astype(np.float32)
    face[24:29, 18:26] = 0.1
    face[24:29, 38:46] = 0.1
    face[44:48, 24:40] = 1.0
    face = cv2.GaussianBlur(face, (0, 0), 0.5)
    return face / face.max()


def test_a_cubic_resize_overshoot_of_a_0_1_image_is_clipped_not_read_as_0_255():
    """cv2's cubic resize of a 0..1 face leaves values a little past 0..1. Where only the top overshot it was read as
    a 0..255 image: a black picture, classified without a word. A real FER2013 face upscaled 2x reaches 1.125 (and
    a sharp one further): still 0..1. Below 0 it is refused, saying to clip (an undershoot cannot be told from a
    normalised image; an earlier rule that clipped it read such a face, -0.054..1.125, as a black 0..255 one)."""
    import cv2

    from fer_edge.preprocess import to_uint8

    resized = cv2.resize(_smooth_face(), (96, 96), interpolation=cv2.INTER_CUBIC)
    assert 1.0 < resized.max() <= 1.1 and -0.1 < resized.min() < 0  # really overshoots both ways
    expected = np.clip(np.rint(resized.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    top_only = np.clip(resized, 0, None)  # only the top overshoots: it was taken as 0..255 (black)
    np.testing.assert_array_equal(to_uint8(top_only), expected)
    assert to_uint8(top_only).max() == 255
    sharper = top_only * 1.125 / top_only.max()  # the real face's 1.125, past the first rule's 1.1
    assert to_uint8(sharper).max() == 255 and to_uint8(sharper).mean() > 50  # not a black 0..255 picture
    for both_ways in (resized, np.where(resized < 0, resized, sharper)):
        with pytest.raises(DataError, match="clip them to the range first"):
            to_uint8(both_ways)


def test_float_overshoot_limits_and_normalised_images():
    from fer_edge.preprocess import FLOAT_UNIT_MAX, to_uint8

    g = np.linspace(0, 1, 48 * 48, dtype=np.float64).reshape(48, 48)
    a = g.copy()
    a[-1, -1] = FLOAT_UNIT_MAX  # a 0..1 image's overshoot
    assert to_uint8(a)[-1, -1] == 255  # clipped; the rest scaled as 0..1
    np.testing.assert_array_equal(to_uint8(a).ravel()[:-1], np.rint(g.ravel()[:-1] * 255).astype(np.uint8))
    b = g * 255
    b[-1, -1] = 270.0  # a 0..255 image's overshoot, within 10%
    assert to_uint8(b)[-1, -1] == 255
    np.testing.assert_array_equal(to_uint8(b)[1:-1], to_uint8(g * 255)[1:-1])
    for lo, hi in ((-1, 1), (-2, 2), (-120, 135), (-0.05, 1.0), (-5, 127)):
        # images already normalised, the bright low-contrast ones too: refused as before
        with pytest.raises(DataError, match="fer-edge normalises them itself"):
            to_uint8(g * (hi - lo) + lo)
    with pytest.raises(DataError, match="fer-edge normalises them itself") as e:
        to_uint8(g - 0.02)  # raw pixels a resize undershot? or a normalised image? refused either way
    assert "clip them to the range first" in str(e.value)  # what to do when they are raw pixels
    with pytest.raises(DataError) as e:
        to_uint8(np.full((4, 4), -0.5))  # nothing above 0: no resize made this
    assert "clip" not in str(e.value)
    with pytest.raises(DataError, match="expected 0..1 or 0..255"):
        to_uint8(g * 281)  # past 255 * 1.1


def test_big_endian_uint16_gets_the_16_bit_range():
    """'>u2' is not == np.uint16 (native order): a dark 16-bit picture was read as 0..255 integers."""
    from fer_edge.preprocess import load_image, to_uint8

    y, x = np.mgrid[0:60, 0:50]
    eight = ((x * 5 + y * 3) % 256).astype(np.uint8)
    sixteen = eight.astype(np.uint16) * 257
    sixteen[0, 0] = 255 * 257 // 2  # (not every value above 255)
    dark = (eight // 2).astype(np.uint16) * 257  # values up to 32639: all taken as 16-bit either way
    for native in (sixteen, dark, np.full((48, 48), 200, np.uint16)):  # 200 of 65535: almost black
        big = native.astype(">u2")
        assert big.dtype != np.uint16
        np.testing.assert_array_equal(to_uint8(big), to_uint8(native))
        np.testing.assert_array_equal(np.asarray(load_image(big)), to_uint8(native))
    assert to_uint8(np.full((4, 4), 200, ">u2")).max() == 1  # not 200


@pytest.mark.parametrize("gray", [
    np.full((48, 48), 0.5, np.float32),  # a 0..1 image: was divided by 255 again, a near-constant input
    np.full((2, 48, 48), 128.0, np.float64),
    np.full((48, 48), -3, np.int16),
    np.full((48, 48), 128, np.int32),
    np.full((48, 48), 1000, np.uint16),
    np.ones((48, 48), bool),
], ids=["float32_01", "float64_255", "int16_negative", "int32", "uint16", "bool"])
def test_normalize_takes_uint8_only(gray):
    from fer_edge.preprocess import Normalization, normalize

    with pytest.raises(DataError, match=rf"must be uint8 48 x 48 pixels \(0..255\), got dtype {gray.dtype}: .*to_gray48"):
        normalize(gray, Normalization(0.5, 0.25))


def test_normalize_of_uint8():
    from fer_edge.preprocess import Normalization, normalize

    x = normalize(np.full((48, 48), 255, np.uint8), Normalization(0.5, 0.25))
    assert x.shape == (1, 1, 48, 48) and x.dtype == np.float32 and np.allclose(x, 2.0)


def test_normalize_torch_is_normalize_for_every_shape_normalize_takes():
    """A 48 x 48 tensor came back 48 x 48 (normalize gives 1 x 1 x 48 x 48), though its docstring said the same."""
    import torch

    from fer_edge.preprocess import Normalization, normalize, normalize_torch

    norm = Normalization(0.5, 0.25)
    faces = np.random.default_rng(0).integers(0, 256, size=(3, 48, 48), dtype=np.uint8)
    for gray in (faces[0], faces, faces[:, None]):
        out = normalize_torch(torch.from_numpy(gray), norm)
        assert out.dtype == torch.float32 and tuple(out.shape) == (len(gray) if gray.ndim > 2 else 1, 1, 48, 48)
        if gray.ndim < 4:
            np.testing.assert_allclose(out.numpy(), normalize(gray, norm), rtol=0, atol=1e-6)
    with pytest.raises(DataError, match="got dtype torch.float32"):
        normalize_torch(torch.from_numpy(faces).float() / 255, norm)
    with pytest.raises(DataError, match=r"got shape \(3, 2, 48, 48\)"):
        normalize_torch(torch.zeros((3, 2, 48, 48), dtype=torch.uint8), norm)
    with pytest.raises(DataError, match="takes a torch tensor, got ndarray: use normalize"):  # not "got uint8"
        normalize_torch(faces, norm)


def test_nan_pixels_are_left_out_of_the_range_an_error_gives():
    """Regression QA: NaN read as 0 was counted in the range: NaNs beside one -1 said 'span -1..0'."""
    from fer_edge.preprocess import to_uint8

    a = np.full((4, 4), np.nan)
    a[0, 0] = -1
    with pytest.raises(DataError, match=r"span -1\.\.-1:"):
        to_uint8(a)


def test_a_pil_image_whose_file_was_closed_unread_is_a_data_error(tmp_path):
    """Regression QA: an Image.open image used after its with block, unread, raised a bare AssertionError (or one
    blamed on EXIF) out of to_gray48; predict_image promises a DataError for a bad image."""
    from PIL import Image

    from fer_edge.preprocess import to_gray48

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        pass
    with pytest.raises(DataError, match=r"cannot read the image's pixels .*before its file is closed"):
        to_gray48(im)
    with Image.open(tmp_path / "x.png") as im:
        im.load()  # read inside the block: fine after it
    assert to_gray48(im).shape == (48, 48)
