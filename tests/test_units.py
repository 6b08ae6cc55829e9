"""Numbers a biologist can take home: channels of multi-channel TIFFs are told from colour and
chosen, never mixed; pixel sizes become µm columns; stacks count slices from 1 with unique ids;
binary labels are visible (0/255); vendor formats and NaN pixels get a clear answer."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_core.cli import main
from unet_core.inference import InferenceOptions
from unet_core.instances import object_table, objects_csv, stack_objects_csv, with_physical_units
from unet_core.io import (
    ChannelChoiceError,
    ImageFile,
    ImageReadError,
    Resolution,
    channels_for_model,
    pixel_size_um,
    read_image,
    read_image_bytes,
    read_image_header,
    select_channels,
    write_png,
)
from unet_core.predict import run
from unet_core.runtime import OnnxPredictor

REPO = Path(__file__).resolve().parent.parent
TILE = "100"  # a valid output size of the tiny depth-4 network


def _two_channel_tiff(path: Path, nuclei: np.ndarray, **kwargs) -> np.ndarray:
    """An ImageJ hyperstack (axes CYX): channel 1 a dim uniform noise, channel 2 the nuclei."""
    other = np.random.default_rng(5).integers(0, 40, nuclei.shape, dtype=nuclei.dtype)
    data = np.stack([other, nuclei])
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX", **kwargs.pop("metadata", {})}, **kwargs)
    return data


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- channels: reading


def test_readers_report_axes_and_what_the_channels_are(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    two = rng.integers(0, 255, (2, 12, 14), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "CYX"})
    img = read_image(tmp_path / "two.tif")
    # Both channels kept (the second is DAPI, not alpha), in order.
    assert img.data.shape == (1, 12, 14, 2) and np.array_equal(img.data[0, ..., 1], two[1])
    assert (img.axes, img.mode, img.has_separate_channels) == ("CYX", "channels", True)

    three = rng.integers(0, 255, (3, 12, 14), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "three.tif", three, imagej=True, metadata={"axes": "CYX"})
    assert read_image(tmp_path / "three.tif").mode == "channels"  # 3 channels are not RGB

    six = rng.integers(0, 255, (2, 6, 12, 14), dtype=np.uint8)  # more than 4 channels: not slices
    tifffile.imwrite(tmp_path / "six.tif", six, imagej=True, metadata={"axes": "ZCYX"})
    img = read_image(tmp_path / "six.tif")
    assert img.data.shape == (2, 12, 14, 6) and img.axes == "ZCYX" and img.is_stack

    rgb = rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    img = read_image(tmp_path / "rgb.tif")
    assert (img.axes, img.mode, img.has_separate_channels) == ("YXS", "rgb", False)
    assert read_image_header(tmp_path / "two.tif").mode == "channels"

    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    assert [(read_image(tmp_path / f).axes, read_image(tmp_path / f).mode)
            for f in ("rgb.png", "rgba.png", "gray.png")] == [("YXS", "rgb"), ("YXS", "rgba"), ("YX", "gray")]
    # An image made in code without saying: guessed from its channel count, as before.
    assert ImageFile("x.png", np.zeros((1, 4, 4, 3), np.uint8)).mode == "rgb"


def test_select_channels_copies_the_chosen_ones_and_refuses_missing_ones() -> None:
    data = np.arange(2 * 3 * 4 * 3, dtype=np.uint16).reshape(2, 3, 4, 3)
    image = ImageFile("h.tif", data, is_stack=True, axes="ZCYX", mode="channels")
    second = select_channels(image, [2])
    assert second.data.shape == (2, 3, 4, 1) and np.array_equal(second.data[..., 0], data[..., 1])
    assert (second.mode, second.axes, second.channels_used) == ("gray", "ZYX", (2,))
    assert "channel 2 of 3" in second.notes[-1]
    second.data[...] = 0
    assert data[..., 1].any(), "a copy, not a view of the original pixels"
    both = select_channels(image, [3, 1])
    assert np.array_equal(both.data, data[..., [2, 0]]) and both.mode == "channels"
    assert select_channels(image, None) is image
    with pytest.raises(ImageReadError, match=r"h\.tif: there is no channel 4: the image has 3 channels"):
        select_channels(image, [4])
    with pytest.raises(ImageReadError, match="no channel 0"):
        select_channels(image, [0])
    with pytest.raises(ImageReadError, match="chosen twice"):
        select_channels(image, [1, 1])


def test_channels_for_model_refuses_to_guess_and_keeps_rgb_as_before() -> None:
    two = ImageFile("dapi.tif", np.zeros((1, 5, 5, 2), np.uint16), axes="CYX", mode="channels")
    with pytest.raises(ChannelChoiceError, match=r"dapi\.tif: the image has 2 separate channels") as caught:
        channels_for_model(two, 1)
    assert (caught.value.n_channels, caught.value.in_channels) == (2, 1)
    assert channels_for_model(two, 1, [2]).channels_used == (2,)
    assert channels_for_model(two, 2) is two  # exactly what a 2-channel model takes
    with pytest.raises(ImageReadError, match="2 channels chosen, but the model takes 3"):
        channels_for_model(ImageFile("c.tif", np.zeros((1, 5, 5, 4), np.uint8), mode="channels"), 3, [1, 2])
    rgb = ImageFile("rgb.png", np.zeros((1, 5, 5, 3), np.uint8), axes="YXS", mode="rgb")
    assert channels_for_model(rgb, 1) is rgb  # luminance later, as always
    gray_alpha = ImageFile("la.png", np.ones((1, 5, 5, 2), np.uint8), mode="gray+alpha")
    assert channels_for_model(gray_alpha, 2).data.shape[-1] == 1  # alpha is never a second channel


def test_cli_segments_the_chosen_channel_and_refuses_without_one(tiny_model, tmp_path, capsys,
                                                                  cells_image) -> None:
    _, model = tiny_model
    nuclei = cells_image((90, 110), np.uint16)
    _two_channel_tiff(tmp_path / "dapi2.tif", nuclei)

    code = main(["predict", str(tmp_path / "dapi2.tif"), "--model", str(model), "--out", str(tmp_path / "no"),
                 "--tile", TILE])
    err = capsys.readouterr().err
    assert code == 1
    assert "dapi2.tif" in err and "2 separate channels" in err and "--channel N" in err
    assert not (tmp_path / "no" / "dapi2_labels.png").exists()

    write_png(tmp_path / "gray.png", nuclei[:60, :70])  # in the same batch: --channel leaves it alone
    code = main(["predict", str(tmp_path / "dapi2.tif"), str(tmp_path / "gray.png"), "--model", str(model),
                 "--out", str(tmp_path / "c2"), "--tile", TILE, "--channel", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (tmp_path / "c2" / "gray_labels.png").is_file()
    assert "segmented on channel 2 of 2" in err
    labels = read_image(tmp_path / "c2" / "dapi2_labels.png").data[0, ..., 0]
    # The same labels as the nuclei alone, as a gray image: channel 2 and only channel 2 was used.
    alone = run(ImageFile("n.png", nuclei[None, ..., None]), OnnxPredictor(model, "cpu"), InferenceOptions(tile=100))
    np.testing.assert_array_equal(labels, alone.label_image()[0])
    rows = _rows(tmp_path / "c2" / "dapi2_objects.csv")
    assert [float(r["mean_intensity"]) for r in rows] == [o["mean_intensity"] for o in alone.objects[0]]

    assert main(["predict", str(tmp_path / "dapi2.tif"), "--model", str(model), "--out", str(tmp_path / "c3"),
                 "--tile", TILE, "--channels", "3"]) == 1
    assert "there is no channel 3" in capsys.readouterr().err


# --------------------------------------------------------------------------- physical units


@pytest.mark.parametrize("how", ["tiff-tags", "imagej-unit"])
def test_micrometre_columns_from_the_pixel_size(tiny_model, tmp_path, cells_image, how: str) -> None:
    _, model = tiny_model
    path = tmp_path / "cells.tif"
    if how == "tiff-tags":
        tifffile.imwrite(path, cells_image((90, 110)), resolution=(1 / 0.5, 1 / 0.5), resolutionunit="MICROMETER")
    else:
        tifffile.imwrite(path, cells_image((90, 110)), imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                         metadata={"unit": "um"})
    assert read_image(path).pixel_size_um == pytest.approx((0.5, 0.5))
    assert main(["predict", str(path), "--model", str(model), "--out", str(tmp_path / "o"), "--tile", TILE]) == 0
    rows = _rows(tmp_path / "o" / "cells_objects.csv")
    assert rows, "the test image must give objects"
    assert list(rows[0])[-3:] == ["area_um2", "centroid_y_um", "centroid_x_um"]  # after the pixel columns
    for row in rows:
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * 0.25)
        assert float(row["centroid_x_um"]) == pytest.approx(float(row["centroid_x"]) * 0.5, abs=1e-3)
        assert float(row["centroid_y_um"]) == pytest.approx(float(row["centroid_y"]) * 0.5, abs=1e-3)


def test_pixel_size_units_and_a_file_without_one(tmp_path: Path) -> None:
    assert pixel_size_um(Resolution(2.0, 4.0, "micron")) == (0.25, 0.5)  # (y, x)
    assert pixel_size_um(Resolution(0.01, 0.01, "nm")) == pytest.approx((0.1, 0.1))
    assert pixel_size_um(Resolution(10_000.0, 10_000.0, "centimeter")) == pytest.approx((1.0, 1.0))
    assert pixel_size_um(Resolution(2.0, 2.0, "\\u00B5m")) == (0.5, 0.5)  # ImageJ's escaped micro sign
    # An image editor's 72 dpi is no microscope's pixel size; "none" is no unit at all.
    assert pixel_size_um(Resolution(72.0, 72.0, "inch")) is None
    assert pixel_size_um(Resolution(1.0, 1.0, "none")) is None and pixel_size_um(None) is None
    tifffile.imwrite(tmp_path / "ome.tif", np.zeros((2, 8, 9), np.uint16), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5})
    assert read_image(tmp_path / "ome.tif").pixel_size_um == pytest.approx((0.5, 0.25))
    write_png(tmp_path / "plain.png", np.zeros((8, 9), np.uint8))
    assert read_image(tmp_path / "plain.png").pixel_size_um is None


def test_object_table_and_csv_with_and_without_units() -> None:
    ids = np.zeros((6, 8), np.int32)
    ids[1:3, 1:4], ids[4:6, 5:8] = 1, 2
    rows = object_table(ids, np.ones((6, 8), np.uint8), pixel_size=(0.5, 0.25))
    assert rows[0]["area"] == 6 and rows[0]["area_um2"] == pytest.approx(6 * 0.125)
    assert rows[0]["centroid_x_um"] == pytest.approx(2.0 * 0.25) and rows[0]["centroid_y_um"] == pytest.approx(0.75)
    plain = object_table(ids, np.ones((6, 8), np.uint8))
    assert "area_um2" not in plain[0] and with_physical_units(plain, (0.5, 0.25)) == rows
    assert "area_um2" not in plain[0], "rows are not changed in place"
    assert objects_csv(rows).splitlines()[0].endswith("mean_intensity,area_um2,centroid_y_um,centroid_x_um")
    assert "area_um2" not in objects_csv(plain).splitlines()[0]
    # One header for a stack, slices from 1 (an empty first slice must not lose the µm columns).
    text = stack_objects_csv([[], rows], physical=True)
    lines = text.splitlines()
    assert lines[0].startswith("slice,id,") and lines[0].endswith("area_um2,centroid_y_um,centroid_x_um")
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "2"]
    assert objects_csv(rows, slice_index=0).splitlines()[1].startswith("1,")


# --------------------------------------------------------------------------- stacks and labels


def test_stack_counts_slices_from_1_with_ids_unique_in_the_stack(tiny_model, tmp_path, cells_image) -> None:
    _, model = tiny_model
    stack = cells_image((3, 90, 110), np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    assert main(["predict", str(tmp_path / "stack.tif"), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--tile", TILE]) == 0
    rows = _rows(tmp_path / "o" / "stack_objects.csv")
    instances = tifffile.imread(tmp_path / "o" / "stack_instances.tif")
    assert {r["slice"] for r in rows} == {"1", "2", "3"}, "every slice of the test stack has objects"
    ids = [int(r["id"]) for r in rows]
    assert len(ids) == len(set(ids)) and ids == list(range(1, len(ids) + 1))
    for s in range(3):  # the TIFF holds the CSV's ids, slice by slice
        in_tiff = set(np.unique(instances[s])) - {0}
        assert in_tiff == {int(r["id"]) for r in rows if r["slice"] == str(s + 1)}
    labels = tifffile.imread(tmp_path / "o" / "stack_labels.tif")
    assert set(np.unique(labels)) == {0, 255}


def test_binary_labels_are_0_and_255_and_more_classes_keep_their_index(tiny_model, tmp_path, cells_image) -> None:
    _, model = tiny_model
    write_png(tmp_path / "cells.png", cells_image((90, 110)))
    assert main(["predict", str(tmp_path / "cells.png"), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--tile", TILE]) == 0
    written = np.asarray(Image.open(tmp_path / "o" / "cells_labels.png"))
    assert written.dtype == np.uint8 and set(np.unique(written)) == {0, 255}
    result = run(read_image(tmp_path / "cells.png"), OnnxPredictor(model, "cpu"), InferenceOptions(tile=100))
    np.testing.assert_array_equal(written, result.segmentation.labels[0] * 255)
    result.n_classes = 3  # a 3-class model: class indexes, as Fiji's label tools expect
    np.testing.assert_array_equal(result.label_image(), result.segmentation.labels)
    # A model with an outline class writes its objects' pixels, interior and outline alike, as 255.
    result.border_class = 2
    result.segmentation.labels[0, :2, :2] = 2
    assert set(np.unique(result.label_image()[0, :2, :2])) == {255}
    np.testing.assert_array_equal(result.label_image(), (result.segmentation.labels > 0) * 255)


# --------------------------------------------------------------------------- formats, NaN, offline


@pytest.mark.parametrize("suffix, vendor", [(".czi", "Zeiss CZI"), (".nd2", "Nikon ND2"), (".LIF", "Leica LIF")])
def test_vendor_formats_say_how_to_convert(tmp_path: Path, suffix: str, vendor: str) -> None:
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(b"ZISRAWFILE" + b"\0" * 100)
    for read in (lambda: read_image(path), lambda: read_image_bytes(path.read_bytes(), path.name),
                 lambda: read_image_header(path)):
        with pytest.raises(ImageReadError) as caught:
            read()
        message = str(caught.value)
        assert message.startswith(f"scan{suffix}: {vendor} files are not read directly")
        assert "File > Import > Bio-Formats" in message and "Tiff" in message


def test_nan_pixels_become_background_with_a_note(tiny_model, tmp_path, capsys, cells_image) -> None:
    image = cells_image((90, 110)).astype(np.float32) + 10.0
    image[:20, :30] = np.nan  # outside the field of view
    tifffile.imwrite(tmp_path / "f.tif", image)
    read = read_image(tmp_path / "f.tif")
    assert not np.isnan(read.data).any()
    assert np.all(read.data[0, :20, :30, 0] == np.nanmin(image))
    assert "600 NaN pixels" in read.notes[0] and "background" in read.notes[0]

    _, model = tiny_model
    assert main(["predict", str(tmp_path / "f.tif"), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--tile", TILE]) == 0
    assert "600 NaN pixels" in capsys.readouterr().err

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ImageReadError, match=r"allnan\.tif: every pixel is NaN"):
        read_image_bytes(buf.getvalue(), "allnan.tif")


def test_the_app_icon_is_served_by_the_app_not_fetched() -> None:
    source = (REPO / "app.py").read_text()
    # A ":material/..." page icon makes the browser fetch it from fonts.gstatic.com.
    assert 'page_icon=":material' not in source and "page_icon=str(APP_ICON)" in source
    with Image.open(REPO / "assets" / "icon.png") as icon:
        assert icon.format == "PNG" and icon.size == (64, 64)
