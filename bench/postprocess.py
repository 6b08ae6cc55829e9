"""What a change of clean-up options costs on the Segment page, against the network pass it avoids,
and what the first image waits for (the one-time tile measurement), in the same process.

    python bench/postprocess.py [--model models/unet-nuclei.onnx] [--size 2000]

Segments one synthetic image of ``--size`` x ``--size`` px at the model's canonical diameter, then
re-derives its objects under other clean-up settings (``predict.with_instance_options``: no
network pass; the defaults again, outlines not redrawn, merged nuclei not split, then two others)
and prints each time and its ratio to the segmentation: the first three show what redrawing the
outlines and splitting merged nuclei cost. The tile measurement runs on
an empty cache folder, as on a fresh machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unet_core.inference import InferenceOptions, measure_tiles
from unet_core.instances import InstanceOptions
from unet_core.io import ImageFile
from unet_core.predict import run, with_instance_options
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


if __name__ == "__main__":
    main()
