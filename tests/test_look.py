"""The image's look (fluorescence, bright-field, stained) and the probability filter it sets."""

from __future__ import annotations

import numpy as np
import pytest

from unet_core import instances as inst
from unet_core.inference import image_look
from unet_core.instances import DEFAULT_MIN_OBJECT_PROBABILITY, InstanceOptions
from unet_core.look import LOOK_WORDS, LOOKS, LookSums, look_sums


def _nuclei(shape=(60, 70)) -> np.ndarray:
    """An object mask: three discs."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for cy, cx in ((15, 15), (30, 45), (45, 20)):
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
    return mask


def _image(objects: np.ndarray, inside, outside, seed: int = 0) -> np.ndarray:
    """uint8 pixels (H, W) or (H, W, C): ``inside`` on the objects, ``outside`` elsewhere, plus noise."""
    inside, outside = np.atleast_1d(inside).astype(float), np.atleast_1d(outside).astype(float)
    pixels = np.where(objects[..., None], inside, outside)
    pixels += np.random.default_rng(seed).normal(0, 4, pixels.shape)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def test_bright_objects_are_fluorescence_dark_gray_ones_bright_field_dark_coloured_ones_stained() -> None:
    objects = _nuclei()
    assert look_sums(_image(objects, 200, 20), objects).look() == "fluorescence"
    assert look_sums(_image(objects, 60, 210), objects).look() == "bright-field"
    # A gray image stored as RGBA (as DSB 2018's are) has no colour: still bright-field.
    gray = _image(objects, 60, 210)
    assert look_sums(np.dstack([gray, gray, gray, np.full_like(gray, 255)]), objects).look() == "bright-field"
    # H&E-like: purple nuclei on pink.
    assert look_sums(_image(objects, (90, 60, 140), (230, 170, 200)), objects).look() == "stained"
    # Bright objects in colour (a blue DAPI channel in an RGB file): fluorescence.
    assert look_sums(_image(objects, (20, 30, 220), (5, 5, 15)), objects).look() == "fluorescence"


def test_a_faint_colour_cast_is_not_colour_and_sixteen_bit_images_work() -> None:
    objects = _nuclei()
    cast = _image(objects, (60, 62, 64), (205, 208, 212))  # a bright-field camera's slight white balance
    assert look_sums(cast, objects).look() == "bright-field"
    wide = _image(objects, 60, 210).astype(np.uint16) * 200  # 16-bit: the rule has no units
    assert look_sums(wide, objects).look() == "bright-field"


def test_without_objects_or_without_background_the_look_is_unknown() -> None:
    objects = _nuclei()
    pixels = _image(objects, 200, 20)
    assert look_sums(pixels, np.zeros_like(objects)).look() is None
    assert look_sums(pixels, np.ones_like(objects)).look() is None
    assert LookSums().look() is None


def test_sums_by_bands_and_by_parts_add_up_to_the_whole_image(monkeypatch) -> None:
    objects = _nuclei()
    pixels = _image(objects, (90, 60, 140), (230, 170, 200))
    whole = look_sums(pixels, objects)
    parts = sum((look_sums(pixels[r, c], objects[r, c]) for r in (slice(0, 25), slice(25, None))
                 for c in (slice(0, 40), slice(40, None))), LookSums())
    monkeypatch.setattr(inst, "BAND_PIXELS", 70 * 7)  # bands of 7 rows
    banded = look_sums(pixels, objects)
    for name in ("object_gray", "object_pixels", "gray", "pixels", "spread"):
        assert getattr(parts, name) == pytest.approx(getattr(whole, name), rel=1e-12)
        assert getattr(banded, name) == pytest.approx(getattr(whole, name), rel=1e-12)
    assert whole.spread > 0 and whole.object_pixels == objects.sum()
    assert parts.look() == banded.look() == whole.look() == "stained"


def test_a_stack_has_one_look_from_all_its_slices() -> None:
    objects = _nuclei()
    data = np.stack([_image(objects, 60, 210, seed=s)[..., None] for s in range(3)])  # Z, H, W, C
    labels = np.stack([objects.astype(np.uint8)] * 3)
    assert image_look(data, labels, (1,)) == "bright-field"
    assert image_look(data, np.zeros_like(labels), (1,)) is None


def test_the_automatic_probability_filter_follows_the_look() -> None:
    assert set(DEFAULT_MIN_OBJECT_PROBABILITY) == set(LOOKS) == set(LOOK_WORDS)
    for look, p in DEFAULT_MIN_OBJECT_PROBABILITY.items():
        assert InstanceOptions().resolved(24.0, look).min_object_probability == p
    # Unknown look: the fluorescence value; stricter for bright-field than for fluorescence.
    assert InstanceOptions().resolved(24.0).min_object_probability == DEFAULT_MIN_OBJECT_PROBABILITY["fluorescence"]
    assert DEFAULT_MIN_OBJECT_PROBABILITY["bright-field"] > DEFAULT_MIN_OBJECT_PROBABILITY["fluorescence"]
    # A given threshold holds for every look; a model without a diameter has no filter.
    assert InstanceOptions(min_object_probability=0.5).resolved(24.0, "bright-field").min_object_probability == 0.5
    assert InstanceOptions().resolved(None, "bright-field").min_object_probability == 0.0

