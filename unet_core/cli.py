"""Command line: ``python -m unet_core {predict,export,...}``.

Errors that a user can act on (unreadable image, wrong model file) are printed as one line naming
the file; the other files are still processed and the exit status is non-zero at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import CheckpointError
from .io import ImageReadError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "unet-nuclei.onnx"


class ProgressBar:
    """A dependency-free progress line on stderr: files done and tiles of the current file."""

    def __init__(self, n_files: int, stream=sys.stderr) -> None:
        self.n_files = n_files
        self.stream = stream
        self.interactive = stream.isatty()
        self.file_index = 0
        self.name = ""
        self.started = time.perf_counter()
        self._last = 0.0

    def start_file(self, index: int, name: str) -> None:
        self.file_index, self.name = index, name
        self.started = time.perf_counter()

    def tiles(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self._last < (0.1 if self.interactive else 5.0):
            return
        self._last = now
        width = 24
        filled = int(width * done / max(total, 1))
        line = (f"[{self.file_index + 1}/{self.n_files}] {self.name}  "
                f"|{'#' * filled}{'.' * (width - filled)}| tiles {done}/{total}  {now - self.started:5.1f}s")
        if self.interactive:
            self.stream.write("\r" + line + ("\n" if done == total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _tile_arg(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        tile = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("--tile takes a number of pixels or 'auto'") from None
    if tile <= 0:
        raise argparse.ArgumentTypeError("--tile must be positive")
    return tile


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import InferenceOptions
    from .instances import InstanceOptions
    from .io import read_image
    from .predict import run, write_outputs
    from .runtime import ModelLoadError, load_predictor

    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    try:
        predictor = load_predictor(model_path, args.device)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model {model_path.name} on {predictor.device_name}", file=sys.stderr)
    options = InferenceOptions(tile=args.tile, batch=args.batch, tta=args.tta, keep_probs=args.probs)
    inst = InstanceOptions(min_size=args.min_size, fill_holes=args.fill_holes, drop_border=args.drop_border)
    bar = ProgressBar(len(args.images))
    failed = 0
    for i, name in enumerate(args.images):
        bar.start_file(i, Path(name).name)
        try:
            image = read_image(name)
            result = run(image, predictor, options, inst, bar.tiles)
            written = write_outputs(result, args.out)
        except (ImageReadError, ValueError, OSError) as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        for note in written.notes:
            print(f"note: {name}: {note}", file=sys.stderr)
        print(f"{name}: {written.n_objects} objects -> " + ", ".join(p.name for p in written.outputs))
    if failed:
        print(f"{failed} of {len(args.images)} files failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .export import parity, to_onnx

    try:
        model, meta = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = to_onnx(model, meta, args.out)
    geometry = meta.geometry
    sizes = [geometry.input_size(geometry.floor_output(s)) for s in (100, 196)]
    diff = parity(model, out, sizes)
    print(f"wrote {out} (max |ONNX - PyTorch| = {diff:.2e} at inputs {sizes})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unet_core", description="U-Net Studio engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment images with an ONNX model (overlap-tile)")
    p.add_argument("images", nargs="+", help="PNG, JPEG or TIFF files (8/16-bit, float, stacks)")
    p.add_argument("--model", help=f"model .onnx (default: {DEFAULT_MODEL.relative_to(REPO_ROOT)})")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tile", type=_tile_arg, default=None, metavar="N|auto",
                   help="output tile edge in px, rounded down to a valid size (default: auto)")
    p.add_argument("--batch", type=int, default=None, help="tiles per network call (default: auto)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--probs", action="store_true", help="also write <stem>_probs.tif (float32)")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations")
    p.add_argument("--min-size", type=int, default=0, metavar="PX", help="remove smaller objects")
    p.add_argument("--fill-holes", action="store_true", help="fill holes inside objects")
    p.add_argument("--drop-border", action="store_true", help="drop objects touching the image border")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("export", help="export a checkpoint to ONNX (with metadata and a parity check)")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
