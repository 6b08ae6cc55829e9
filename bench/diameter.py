"""What the automatic diameter costs: ``diameter="auto"`` (the scale search) against one pass at a
given diameter, on the same images in the same process.

    python bench/diameter.py [--model models/unet-nuclei.onnx] [--data ../shared/data/dsb2018] [--n 12]

Prints, per image, seconds for the given diameter (the image's true median diameter: the best a
user could type) and for auto, the ratio auto / given, and the scale search's passes; then the
ratio of the totals. Without the data folder, synthetic nuclei at three sizes are used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unet_core import inference
from unet_core.inference import InferenceOptions, segment
from unet_core.io import ImageFile
from unet_core.runtime import OnnxPredictor
from unet_core.scale import median_diameter


def images(data: Path, n: int) -> list[tuple[str, np.ndarray, float]]:
    """(name, pixels (H, W, C), true median diameter) of up to ``n`` images."""
    if data.is_dir():
        from unet_core.datasets import open_dataset

        ds = open_dataset(data)
        picks = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)
        return [(ds.samples[i].name, ds.load_image(i), median_diameter(ds.load_instances(i)) or 20.0) for i in picks]
    from unet_core.synthetic import SynthConfig, generate

    out = []
    for k, radius in enumerate((6, 12, 24)[: max(1, n)]):
        image, truth = generate(SynthConfig(height=384, width=384, radius=(radius * 0.9, radius * 1.1)), seed=k)
        out.append((f"synthetic r={radius}", image[..., None], median_diameter(truth) or 2.0 * radius))
    return out


def seconds(image: ImageFile, predictor: OnnxPredictor, options: InferenceOptions) -> float:
    start = time.perf_counter()
    segment(image, predictor, options)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/unet-nuclei.onnx")
    parser.add_argument("--data", default="../shared/data/dsb2018")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--tile", type=int, default=244)
    args = parser.parse_args()
    predictor = OnnxPredictor(args.model, "cpu")
    picked = images(Path(args.data), args.n)
    segment(ImageFile("warm-up", picked[0][1][None]), predictor, InferenceOptions(tile=args.tile, diameter="off"))
    passes: list[int] = []
    original = inference._segment_at

    def counting(*a, **k):
        passes.append(1)
        return original(*a, **k)

    inference._segment_at = counting
    total_given = total_auto = 0.0
    print(f"{'image':<28} {'size':>10} {'true d':>7} {'given s':>8} {'auto s':>7} {'ratio':>6} {'passes':>6}")
    for name, pixels, true_d in picked:
        image = ImageFile(name, pixels[None])
        given = seconds(image, predictor, InferenceOptions(tile=args.tile, diameter=true_d))
        passes.clear()
        auto = seconds(image, predictor, InferenceOptions(tile=args.tile, diameter="auto"))
        total_given, total_auto = total_given + given, total_auto + auto
        size = f"{pixels.shape[0]}x{pixels.shape[1]}"
        print(f"{name[:28]:<28} {size:>10} {true_d:7.1f} {given:8.2f} {auto:7.2f} {auto / given:6.2f} {len(passes):6d}")
    inference._segment_at = original
    print(f"total: given {total_given:.1f} s, auto {total_auto:.1f} s, auto / given = {total_auto / total_given:.2f}")


if __name__ == "__main__":
    main()
