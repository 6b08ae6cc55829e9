"""What a change of clean-up options costs on the Segment page, against the network pass it avoids,
and what the first image waits for (the one-time tile measurement), in the same process.

    python bench/postprocess.py [--model models/unet-nuclei.onnx] [--size 2000]

Segments one synthetic image of ``--size`` x ``--size`` px at the model's canonical diameter, then
re-derives its objects under other clean-up settings (``predict.with_instance_options``: no
network pass; the defaults again, outlines not redrawn, merged nuclei not split, then two others)
and prints each time and its ratio to the segmentation: the first three show what redrawing the
outlines and splitting merged nuclei cost. Then the result files the page offers after each change
(``predict.result_files``), and the object outlines for QuPath and Fiji of a dense image (a
``--size`` square grid of 24 px discs, 30 px apart: thousands of nuclei), written and read back as
a mask (``unet_core.annotations``). The tile
measurement runs on an empty cache folder, as on a fresh machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from unet_core.annotations import geojson_shapes, rasterize, roi_shapes
from unet_core.inference import InferenceOptions, measure_tiles
from unet_core.instances import InstanceOptions, object_table
from unet_core.io import ImageFile
from unet_core.outlines import imagej_roiset, qupath_geojson, stack_outlines
from unet_core.predict import result_files, run, with_instance_options
from unet_core.runtime import OnnxPredictor
from unet_core.synthetic import SynthConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/unet-nuclei.onnx")
    parser.add_argument("--size", type=int, default=2000)
    args = parser.parse_args()
    os.environ["UNET_STUDIO_CACHE"] = tempfile.mkdtemp(prefix="bench_cache_")
    predictor = OnnxPredictor(args.model, "cpu")
    t = time.perf_counter()
    tile, _, _ = measure_tiles(predictor)
    print(f"tile measurement (the first image's one-time wait): {time.perf_counter() - t:.1f} s -> tile {tile}")

    pixels, _ = generate(SynthConfig(height=args.size, width=args.size), 3)
    image = ImageFile("bench.png", pixels[None, ..., None] if pixels.ndim == 2 else pixels[None])
    diameter = predictor.meta.diameter or "off"
    t = time.perf_counter()
    result = run(image, predictor, InferenceOptions(tile=tile, diameter=diameter))
    seg_s = time.perf_counter() - t
    print(f"segment {args.size} x {args.size} (diameter {diameter}): {seg_s:.2f} s, {result.n_objects} objects")
    for options in (InstanceOptions(), InstanceOptions(outline_threshold=0), InstanceOptions(split_merged=False),
                    InstanceOptions(min_size=200),
                    InstanceOptions(fill_holes=True, drop_border=True)):
        t = time.perf_counter()
        again = with_instance_options(result, predictor.meta, options)
        s = time.perf_counter() - t
        print(f"  clean-up {options}: {s:.3f} s = {s / seg_s:.3f} x the segmentation, {again.n_objects} objects")
    t = time.perf_counter()
    files = result_files(result)
    s = time.perf_counter() - t
    print(f"  result files ({', '.join(files)}): {s:.3f} s = {s / seg_s:.3f} x the segmentation")
    dense = disc_grid(args.size)
    t = time.perf_counter()
    outlines = stack_outlines(dense[None], [object_table(dense, dense)])
    geojson, roiset = qupath_geojson(outlines), imagej_roiset(outlines)
    s = time.perf_counter() - t
    n = int(dense.max())
    print(f"  outlines of {n} discs (table, trace, GeoJSON {len(geojson) / 1e6:.1f} MB, RoiSet {len(roiset) / 1e6:.1f} "
          f"MB): {s:.3f} s = {s / n * 1e3:.3f} ms per object = {s / seg_s:.3f} x the segmentation above")
    for name, data, read in (("GeoJSON", geojson.encode(), geojson_shapes), ("RoiSet", roiset, roi_shapes)):
        t = time.perf_counter()
        shapes, skipped = read(data, name)
        back = rasterize(shapes, (1, *dense.shape), skipped).ids[0]
        s = time.perf_counter() - t
        same = "the same objects" if np.array_equal(back, dense) else "OBJECTS DIFFER"
        print(f"  read back as a mask ({name}, what 'masks' does): {s:.3f} s = {s / n * 1e3:.3f} ms per object, {same}")


def disc_grid(size: int, diameter: int = 24, spacing: int = 30) -> np.ndarray:
    """Instance ids of a ``size`` x ``size`` image tiled with discs (a dense nuclei image)."""
    rows, cols = np.mgrid[:size, :size]
    r, c = rows % spacing - spacing // 2, cols % spacing - spacing // 2
    ids = (rows // spacing) * (size // spacing + 1) + cols // spacing + 1
    return np.where(r * r + c * c <= (diameter / 2) ** 2, ids, 0).astype(np.int32)


if __name__ == "__main__":
    main()
