"""Inference on Dask: a local cluster of 2 worker processes against the single process.

Blocks must give the single-process class labels and object ids exactly (and its object table),
whatever the block size, at the input's scale and rescaled, from TIFF and from OME-Zarr; objects
that straddle block borders are one object; many files go one per worker with ``predict``'s
outputs, and a bad file among them is reported while the others are written.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import random_net
from scipy import ndimage as ndi

from unet_core.cli import main
from unet_core.distributed import (
    DaskOptions,
    DistributedError,
    dask_client,
    in_blocks,
    plan_blocks,
    predict_blocks,
    predict_files,
)
from unet_core.export import to_onnx
from unet_core.inference import InferenceOptions
from unet_core.instances import InstanceOptions
from unet_core.io import ImageReadError, channels_for_model, read_image
from unet_core.look import LOOKS
from unet_core.metadata import ModelMeta
from unet_core.predict import output_stems, run
from unet_core.runtime import load_predictor

pytestmark = pytest.mark.slow

TILE = 100  # steps of 96 px: blocks of 2 tiles are 192 px, so a 700 px image has 4 x 5 of them


@pytest.fixture(scope="module")
def client():
    with dask_client(DaskOptions(workers=2, threads=1)) as c:
        yield c


@pytest.fixture(scope="module")
def scaled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random network with a canonical diameter: inference rescales images for it."""
    net = random_net(seed=1)
    path = tmp_path_factory.mktemp("scaled") / "tiny_d12.onnx"
    to_onnx(net, ModelMeta(name="tiny-d12", unet=net.config, diameter=12.0), path)
    return path


def _blobs(shape: tuple[int, ...], seed: int = 0, dtype=np.uint16) -> np.ndarray:
    """Smooth random structure: the tiny random network finds thousands of objects of all sizes in it."""
    noise = np.random.default_rng(seed).random(shape)
    smooth = ndi.gaussian_filter(noise, (4, 4) + (0,) * (len(shape) - 2))
    return (smooth * 4000).astype(dtype)


def _single(path: Path, model: Path, options: InferenceOptions, inst: InstanceOptions, channels=None):
    image = channels_for_model(read_image(path), load_predictor(model, "cpu").meta.unet.in_channels, channels)
    return run(image, load_predictor(model, "cpu"), options, inst)


def _stored(store: Path) -> tuple[np.ndarray, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    return np.asarray(root["labels"]), np.asarray(root["instances"])


def _same_table(blocks: list[dict], single: list[dict]) -> None:
    assert [r["id"] for r in blocks] == [r["id"] for r in single]
    for a, b in zip(blocks, single):
        assert a["area"] == b["area"] and a["bbox_min_y"] == b["bbox_min_y"] and a["bbox_max_x"] == b["bbox_max_x"]
        assert a["centroid_y"] == pytest.approx(b["centroid_y"], abs=2e-3)
        assert a["mean_intensity"] == pytest.approx(b["mean_intensity"], rel=1e-6, abs=2e-4)


def test_blocks_give_the_single_process_labels_and_objects_exactly(tiny_model, tmp_path: Path, client) -> None:
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, _blobs((700, 900)), tile=(128, 128), resolution=(2.0, 2.0),
                     metadata={"unit": "um"}, imagej=True)
    options = InferenceOptions(tile=TILE, diameter="off", tta=False)
    inst = InstanceOptions(min_size=5, drop_border=True, min_object_probability=0.55, split_merged=True)
    single = _single(path, tiny_model[1], options, inst)
    unsure = _single(path, tiny_model[1], options, InstanceOptions(min_size=5, drop_border=True, split_merged=True))
    assert 0 < single.n_objects < unsure.n_objects  # the probability filter drops some objects, not all
    whole = _single(path, tiny_model[1], options, replace(inst, split_merged=False))
    assert single.n_objects > whole.n_objects  # and merged ones were split
    for block, n_blocks in ((450, 2 * 3), (200, 4 * 5)):
        store = tmp_path / f"b{block}.zarr"
        result = predict_blocks(path, tiny_model[1], store, client, options, inst, DaskOptions(block=block))
        labels, ids = _stored(store)
        assert result.blocks == n_blocks
        assert np.array_equal(labels, single.segmentation.labels[0])
        assert np.array_equal(ids, single.instances[0])  # the same numbering, not only the same objects
        _same_table(result.objects, single.objects[0])
        assert "area_um2" in result.objects[0]  # the TIFF's pixel size travels
    # Objects straddle the block borders and are still one object each.
    grid = plan_blocks((700, 900), (TILE, TILE), load_predictor(tiny_model[1], "cpu").meta, 200)
    border = grid.grid[1][0].y0
    across = set(np.unique(ids[border - 1])) & set(np.unique(ids[border])) - {0}
    assert len(across) > 10


def test_rescaled_blocks_equal_the_rescaled_single_process(scaled_model: Path, tmp_path: Path, client) -> None:
    path = tmp_path / "rgb.tif"
    rgb = np.stack([_blobs((500, 610), seed=s, dtype=np.uint8) for s in (1, 2, 3)], axis=-1)
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(64, 64))
    inst = InstanceOptions()  # automatic: outlines redrawn, merged objects split, the filter by look
    for diameter in (20.0, 7.0, "auto", "off"):  # shrunk, enlarged, searched, as it is (outlines redrawn in all)
        options = InferenceOptions(tile=TILE, diameter=diameter, keep_probs=True)
        single = _single(path, scaled_model, options, inst)
        store = tmp_path / f"d{diameter}.zarr"
        result = predict_blocks(path, scaled_model, store, client, options, inst, DaskOptions(block=300))
        assert result.factor == pytest.approx(single.segmentation.factor)
        # the look (which sets the automatic probability filter) summed over regions, as over the image
        assert result.look == single.segmentation.look, diameter
        labels, ids = _stored(store)
        assert np.array_equal(labels, single.segmentation.labels[0]), diameter
        assert np.array_equal(ids, single.instances[0]), diameter
        probs = np.asarray(zarr.open_group(str(store), mode="r")["probs"])
        assert np.abs(probs - single.segmentation.probs[0]).max() < 1e-5, diameter


def test_merged_objects_are_split_chunk_by_chunk_as_in_the_single_process(client, tmp_path: Path) -> None:
    """Touching pairs and a triple that straddle chunk borders: the pieces and their numbers are
    the single process's, whichever chunks an object reaches."""
    from unet_core.distributed import _boxes, _input_regions, _merged_boxes, _split_in_blocks
    from unet_core.instances import object_areas, split_candidates, split_merged

    yy, xx = np.mgrid[:200, :260]
    centres = [(20, 20 + 30 * k) for k in range(8)] + [(64, 120), (64, 134), (128, 57), (128, 71), (141, 64),
                                                       (100, 192), (114, 192)]
    mask = np.zeros((200, 260), bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 8**2
    ids, n = ndi.label(mask, output=np.int32)
    median, candidate = split_candidates(object_areas(ids, n))
    wanted = np.flatnonzero(candidate)
    assert len(wanted) == 3
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w-")
    root.create_array("work_instances", shape=ids.shape, chunks=(64, 64), dtype="int32", fill_value=0)
    root["work_instances"][:] = ids
    parts = [_boxes(ids[t:b, l:r], wanted, (t, l)) for t, b, l, r in _input_regions(ids.shape, (64, 64))]
    assert sum(len(p) for p in parts) > len(wanted)  # the merged objects reach several chunks
    total = _split_in_blocks(client, str(tmp_path / "s.zarr"), _merged_boxes(parts), median, n, ids.shape, (64, 64))
    expected = split_merged(ids.copy())
    assert total == expected.max() == n + 4
    assert np.array_equal(np.asarray(root["work_instances"]), expected)


def test_uncertain_objects_are_dropped_in_blocks_as_in_the_single_process(tiny_model, tmp_path: Path,
                                                                          client) -> None:
    """Enlarged (objects span more blocks), with the probability filter dropping most objects: the
    blocks erase the same ones, from every chunk they reach, leave them out of the table and number
    the others 1..n as the single process does."""
    net = random_net(seed=0)
    model = tmp_path / "tiny_d12.onnx"
    to_onnx(net, ModelMeta(name="tiny-d12", unet=net.config, diameter=12.0), model)
    path = tmp_path / "blobs.tif"
    tifffile.imwrite(path, _blobs((700, 900)), tile=(128, 128))
    options = InferenceOptions(tile=TILE, diameter=7.0, tta=False)
    inst = InstanceOptions(min_object_probability=0.5)
    single = _single(path, model, options, inst)
    assert 50 < single.n_objects < _single(path, model, options, InstanceOptions(min_object_probability=0)).n_objects
    store = tmp_path / "filtered.zarr"
    result = predict_blocks(path, model, store, client, options, inst, DaskOptions(block=300))
    _, ids = _stored(store)
    assert np.array_equal(ids, single.instances[0])
    # the dropped objects' numbers are not left unused: the largest id is the count, in both
    assert int(ids.max()) == single.n_objects == len(result.objects)
    # the look (which sets the automatic threshold) summed over the regions, as over the whole image
    assert result.look == single.segmentation.look and result.look in LOOKS
    _same_table(result.objects, single.objects[0])


def test_ome_zarr_with_the_chosen_channel(tiny_model, tmp_path: Path, client) -> None:
    stack = np.stack([_blobs((400, 420), seed=5), _blobs((400, 420), seed=6)])  # C, Y, X
    tif = tmp_path / "two.ome.tif"
    tifffile.imwrite(tif, stack, metadata={"axes": "CYX"})
    store = tmp_path / "two.ome.zarr"
    root = zarr.open_group(str(store), mode="w")
    root.create_array("0", data=stack[None, :, None], chunks=(1, 1, 1, 128, 128))  # T, C, Z, Y, X
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
        {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0, 0.5, 0.5]}]}]}]
    options, inst = InferenceOptions(tile=TILE, diameter="off"), InstanceOptions(min_size=3)
    single = _single(tif, tiny_model[1], options, inst, channels=[2])
    with pytest.raises(ImageReadError, match="choose with --channel"):
        predict_blocks(store, tiny_model[1], tmp_path / "none.zarr", client, options, inst)
    result = predict_blocks(store, tiny_model[1], tmp_path / "out.zarr", client, options, inst,
                            DaskOptions(block=200), channels=[2])
    labels, ids = _stored(tmp_path / "out.zarr")
    assert np.array_equal(labels, single.segmentation.labels[0]) and np.array_equal(ids, single.instances[0])
    assert result.objects[0]["area_um2"] == pytest.approx(result.objects[0]["area"] * 0.25, rel=1e-3)


def test_what_blocks_cannot_do_is_refused_with_a_reason(tiny_model, tmp_path: Path, client) -> None:
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, _blobs((300, 300)))
    with pytest.raises(DistributedError, match="--fill-holes"):
        predict_blocks(path, tiny_model[1], tmp_path / "x.zarr", client, None, InstanceOptions(fill_holes=True))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, _blobs((3, 200, 200)), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ImageReadError, match="stack"):
        predict_blocks(stack, tiny_model[1], tmp_path / "y.zarr", client)
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(DistributedError, match="already exists"):
        predict_blocks(path, tiny_model[1], tmp_path / "taken.zarr", client)


def test_many_files_one_per_worker_and_a_bad_one_among_them(tiny_model, tmp_path: Path, client) -> None:
    names = []
    for k in range(3):
        names.append(str(tmp_path / "in" / f"cells{k}.tif"))
        Path(names[-1]).parent.mkdir(exist_ok=True)
        tifffile.imwrite(names[-1], _blobs((180, 200), seed=k))
    bad = tmp_path / "in" / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 40)
    names.insert(1, str(bad))
    options, inst = InferenceOptions(tile=TILE, diameter="off"), InstanceOptions()
    outcomes = predict_files(names, output_stems(names), tiny_model[1], tmp_path / "dask", client, options, inst)
    assert [o.error is None for o in outcomes] == [True, False, True, True]
    assert outcomes[1].error.startswith(f"{names[1]}: ") and "Traceback" not in outcomes[1].error
    single_out = tmp_path / "single"
    assert main(["predict", *[n for n in names if "broken" not in n], "--model", str(tiny_model[1]), "--out",
                 str(single_out), "--tile", str(TILE), "--diameter", "off"]) == 0
    for name in sorted(p.name for p in single_out.iterdir()):
        assert (tmp_path / "dask" / name).read_bytes() == (single_out / name).read_bytes(), name


def test_predict_scheduler_from_the_command_line(tiny_model, tmp_path: Path, capsys) -> None:
    big, small = tmp_path / "big.tif", tmp_path / "small.png"
    tifffile.imwrite(big, _blobs((520, 500)), tile=(128, 128))
    from PIL import Image

    Image.fromarray(_blobs((120, 130), dtype=np.uint8)).save(small)
    assert in_blocks(big, 200) and not in_blocks(small, 200) and not in_blocks(big, 4096)
    code = main(["predict", str(big), str(small), "--model", str(tiny_model[1]), "--out", str(tmp_path / "out"),
                 "--tile", str(TILE), "--diameter", "off", "--probs", "--scheduler", "local", "--workers", "2",
                 "--block", "200"])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(["big.zarr", *(f"{stem}_{kind}" for stem in ("big", "small") for kind in (
        "instances.tif", "labels.png", "objects.csv", "outlines.geojson", "RoiSet.zip", "probs.tif"))])
    single = _single(big, tiny_model[1], InferenceOptions(tile=TILE, diameter="off", keep_probs=True),
                     InstanceOptions())
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "big_instances.tif"), single.instances[0])
    probs = tifffile.imread(tmp_path / "out" / "big_probs.tif")
    assert np.abs(probs - single.segmentation.probs[0]).max() < 1e-5
    assert "big.tif: " in out and "small.png: " in out
    shutil.rmtree(tmp_path / "out")
