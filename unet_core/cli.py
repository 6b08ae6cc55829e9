"""Command line: ``python -m unet_core {predict,export,quantize,train,evaluate,synth}``.

Errors that a user can act on (unreadable image, wrong model file) are printed as one line naming
the file; the other files are still processed and the exit status is non-zero at the end.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from .errors import REPORT_TO, UserError, configure_logging

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "models" / "unet-nuclei.onnx"

log = logging.getLogger(__name__)


class FileProgress:
    """Progress on stderr (tqdm): one bar per file, ``[i/n] name``, counting ``unit`` (tiles of
    an image, blocks of a slide, files of a batch or images of an evaluation)."""

    def __init__(self, n_files: int, unit: str = "tile") -> None:
        self.n_files = n_files
        self.unit = unit
        self._bar: tqdm | None = None

    def start_file(self, index: int, name: str) -> None:
        self.close()
        self._bar = tqdm(total=0, desc=f"[{index + 1}/{self.n_files}] {name}", unit=self.unit, file=sys.stderr,
                         mininterval=0.1 if sys.stderr.isatty() else 5.0, dynamic_ncols=True)

    def tiles(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _pixels_or_auto(value: str, minimum: int, name: str = "") -> int | None:
    """``"auto"`` -> None, else a whole number of pixels >= ``minimum`` (argparse type helper)."""
    if value == "auto":
        return None
    prefix = f"{name} " if name else ""
    try:
        pixels = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{prefix}takes a number of pixels or 'auto'") from None
    if pixels < minimum:
        raise argparse.ArgumentTypeError(f"{prefix}must be positive" if minimum == 1 else f"{prefix}must be >= {minimum}")
    return pixels


def _tile_arg(value: str) -> int | None:
    return _pixels_or_auto(value, 1, "--tile")


def _diameter_arg(value: str):
    from .scale import Diameter

    try:
        return Diameter.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _channels_arg(value: str) -> list[int]:
    """``2`` or ``1,2``: channels numbered from 1, as Fiji numbers them."""
    try:
        channels = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"channels are numbers from 1 (as in Fiji), e.g. 2 or 1,2; not {value!r}"
                                         ) from None
    if not channels or min(channels) < 1:
        raise argparse.ArgumentTypeError(f"channels are numbered from 1 (as in Fiji), e.g. 2 or 1,2; not {value!r}")
    return channels


def _size_arg(value: str) -> int | None:
    return _pixels_or_auto(value, 0)


def _probability_arg(value: str) -> float | None:
    """``auto`` (None) or a probability in [0, 1) (0 = off)."""
    if value.strip().lower() == "auto":
        return None
    try:
        p = float(value)
    except ValueError:
        p = math.nan
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"a probability from 0 (off) to below 1, or auto; not {value!r}")
    return p


def _instance_options(args: argparse.Namespace):
    from .config import SWITCH_CHOICES
    from .instances import InstanceOptions

    return InstanceOptions(min_size=args.min_size, fill_holes=args.fill_holes, drop_border=args.drop_border,
                           expand=args.expand, outline_threshold=args.outline_threshold,
                           min_object_probability=args.min_object_probability,
                           split_merged=SWITCH_CHOICES[args.split_merged])


def _add_tta(p: argparse.ArgumentParser) -> None:
    """``--tta [auto|on|off]``: test-time augmentation (automatic by default; ``--tta`` alone: on)."""
    from .config import SWITCH_CHOICES

    p.add_argument("--tta", nargs="?", const="on", default="auto", choices=tuple(SWITCH_CHOICES),
                   type=str.lower, metavar="auto|on|off",
                   help="average over the 8 flips/rotations: auto (default) for images up to 1 megapixel, where it "
                        "raises the accuracy for seconds of work, on, or off")


def _tta(value: str) -> bool | None:
    from .config import SWITCH_CHOICES

    return SWITCH_CHOICES[value]


def _add_object_options(p: argparse.ArgumentParser) -> None:
    """Scale and post-processing options shared by predict and evaluate."""
    from .config import SWITCH_CHOICES

    p.add_argument("--diameter", type=_diameter_arg, default="auto", metavar="PX|auto|off",
                   help="object diameter in input pixels; auto (default) searches the scale the network is most certain at and reports the diameter measured there; "
                        "off segments at the input's scale (models without a canonical diameter ignore it)")
    p.add_argument("--min-size", type=_size_arg, default=None, metavar="PX|auto",
                   help="remove smaller objects (default auto: a tenth of the expected object area)")
    p.add_argument("--expand", type=_size_arg, default=None, metavar="PX|auto",
                   help="grow objects by PX into the background without merging them (default auto: none; "
                        "measured to lower the AP of the shipped nuclei model)")
    p.add_argument("--outline-threshold", type=_probability_arg, default=None, metavar="P|auto",
                   help="redraw object outlines on the image's own pixel grid where the foreground probability "
                        "exceeds P (0 = off: outlines of the class map at the network's scale; default auto: 0.4 "
                        "for models with a canonical diameter, measured to raise the nuclei model's AP, else off)")
    p.add_argument("--min-object-probability", type=_probability_arg, default=None, metavar="P|auto",
                   help="drop objects whose mean foreground probability is under P: what the network is unsure "
                        "of, such as dark folds of cytoplasm (0 = off, keep every object; default auto, by the "
                        "image's look: fluorescence 0.6, bright-field 0.75, stained 0.65, for models with a "
                        "canonical diameter, measured to raise the nuclei model's AP on new experiments; else off)")
    p.add_argument("--split-merged", default="auto", choices=tuple(SWITCH_CHOICES), type=str.lower,
                   metavar="auto|on|off",
                   help="cut apart objects that are several touching nuclei merged: an object much larger than "
                        "the image's typical one, along the watershed of its distance transform (default auto: "
                        "on for models with a canonical diameter, measured to raise the nuclei model's AP on new "
                        "experiments; else off)")
    p.add_argument("--fill-holes", action="store_true", help="fill holes inside objects")
    p.add_argument("--drop-border", action="store_true", help="drop objects touching the image border")



def _resolved(name: str) -> Path | None:
    try:
        return Path(name).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None


def _segment_file(name: str, stem: str, predictor, options, inst, args: argparse.Namespace, out: Path,
                  inputs: set[Path], bar: FileProgress):
    """Read, segment and write one image of ``predict``: (what was written, the segmentation)."""
    from .predict import segment_file

    return segment_file(name, stem, predictor, options, inst, out, args.channels, args.overwrite, inputs, bar.tiles)


def _report_file(name: str, stem: str, seg, written, inst) -> None:
    """What ``predict`` says about a segmented image: notes on stderr, the outputs on stdout."""
    from .instances import DEFAULT_MIN_OBJECT_PROBABILITY

    if stem != Path(name).stem:
        print(f"note: {name}: results named {stem}_* (another input has the same name)", file=sys.stderr)
    if seg.diameter_source in ("given", "estimated"):
        print(f"note: {name}: object diameter {seg.diameter:.1f} px ({seg.diameter_source}), "
              f"segmented at {seg.factor:.2f}x" if seg.diameter else
              f"note: {name}: object diameter could not be estimated", file=sys.stderr)
    if seg.look:
        auto = inst.min_object_probability is None
        print(f"note: {name}: looks like {seg.look}" + (f" (objects under a mean probability of "
              f"{DEFAULT_MIN_OBJECT_PROBABILITY[seg.look]:g} dropped)" if auto else ""), file=sys.stderr)
    for note in written.notes:
        print(f"note: {name}: {note}", file=sys.stderr)
    print(f"{name}: {written.n_objects} objects -> " + ", ".join(p.name for p in written.outputs))


def _open_predict(args: argparse.Namespace):
    """The output folder and the predictor of ``predict``, or an error message."""
    from .runtime import ModelLoadError, load_predictor

    out = Path(args.out)
    # Before any work: a file given as --out would fail only after the first image is segmented.
    if out.exists() and not out.is_dir():
        return None, f"--out {out} is a file, not a folder; give the folder the results go to"
    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    try:
        predictor = load_predictor(model_path, args.device)
    except ModelLoadError as exc:
        return None, " ".join(str(exc).split())
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return None, f"--out {out}: cannot create the folder ({exc.strerror or exc})"
    print(f"model {model_path.name} on {predictor.device_name}", file=sys.stderr)
    return (out, predictor), None


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import InferenceOptions
    from .predict import failure_message, output_stems

    opened, error = _open_predict(args)
    if opened is None:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out, predictor = opened
    options = InferenceOptions(tile=args.tile, batch=args.batch, tta=_tta(args.tta), keep_probs=args.probs,
                               diameter=args.diameter)
    inst = _instance_options(args)
    if args.scheduler:
        return _predict_on_dask(args, out, predictor, options, inst)
    bar = FileProgress(len(args.images))
    inputs = {p for p in map(_resolved, args.images) if p is not None}
    failed = 0
    for i, (name, stem) in enumerate(zip(args.images, output_stems(args.images))):
        bar.start_file(i, Path(name).name)
        try:
            written, seg = _segment_file(name, stem, predictor, options, inst, args, out, inputs, bar)
        except Exception as exc:  # noqa: BLE001 -- this file fails, the others go on; a bug is logged
            bar.close()
            failed += 1
            print(f"error: {failure_message(name, exc)}", file=sys.stderr)
            continue
        bar.close()
        _report_file(name, stem, seg, written, inst)
    if failed:
        print(f"{failed} of {len(args.images)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _predict_on_dask(args: argparse.Namespace, out: Path, predictor, options, inst) -> int:
    """``predict --scheduler``: whole files one per worker, large 2-D images in blocks."""
    from .distributed import DEFAULT_BLOCK, DaskOptions, dask_client, in_blocks
    from .predict import output_stems

    dask_options = DaskOptions(scheduler=args.scheduler, workers=args.workers, block=args.block or DEFAULT_BLOCK)
    stems = output_stems(args.images)
    model = Path(args.model) if args.model else DEFAULT_MODEL
    blocks = [i for i, name in enumerate(args.images) if in_blocks(name, dask_options.block)]
    whole = [i for i in range(len(args.images)) if i not in blocks]
    failed = 0
    with dask_client(dask_options) as client:
        n_workers = len(client.scheduler_info().get("workers", {}))
        print(f"dask scheduler {args.scheduler}: {n_workers} workers", file=sys.stderr)
        if whole:
            failed += _predict_whole_files(args, [args.images[i] for i in whole], [stems[i] for i in whole], model,
                                           out, client, dask_options, options, inst)
        for k, i in enumerate(blocks):
            failed += _predict_in_blocks(args, args.images[i], stems[i], model, out, client, dask_options, options,
                                         inst, predictor.meta, (k, len(blocks)))
    if failed:
        print(f"{failed} of {len(args.images)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _predict_whole_files(args, names: list[str], stems: list[str], model: Path, out: Path, client, dask_options,
                         options, inst) -> int:
    """Whole files on the workers, reported as ``predict`` reports them; the number that failed."""
    from types import SimpleNamespace

    from .distributed import predict_files

    bar = FileProgress(1, unit="file")
    bar.start_file(0, f"{len(names)} files")
    protected = {p for p in map(_resolved, args.images) if p is not None}
    outcomes = predict_files(names, stems, model, out, client, options, inst, dask_options, args.channels,
                             args.overwrite, protected, args.device, bar.tiles)
    bar.close()
    for o in outcomes:
        if o.error:
            print(f"error: {o.error}", file=sys.stderr)
        else:
            seg = SimpleNamespace(diameter=o.diameter, diameter_source=o.diameter_source, factor=o.factor,
                                  look=o.look)
            _report_file(o.name, o.stem, seg, o.written, inst)
    return sum(o.error is not None for o in outcomes)


def _predict_in_blocks(args, name: str, stem: str, model: Path, out: Path, client, dask_options, options, inst,
                       meta, position: tuple[int, int]) -> int:
    """One large image in blocks: its Zarr store, CSV and (when it fits in memory) the usual files."""
    from types import SimpleNamespace

    from .distributed import FILES_UP_TO, block_result_files, predict_blocks
    from .predict import failure_message

    bar = FileProgress(position[1], unit="block")
    bar.start_file(position[0], f"{Path(name).name} (blocks)")
    protected = {p for p in map(_resolved, args.images) if p is not None}
    store = Path(args.zarr) if args.zarr and position[1] == 1 else out / f"{stem}.zarr"
    try:
        result = predict_blocks(name, model, store, client, options, inst, dask_options, args.channels,
                                args.device, bar.tiles)
        bar.close()
        height, width = _zarr_shape(store)
        if height * width <= FILES_UP_TO:
            written = block_result_files(result, Path(name).name, meta, out, stem, args.overwrite, protected)
        else:
            written = _block_csv(result, out, stem, args.overwrite)
    except Exception as exc:  # noqa: BLE001 -- this file fails, the others go on; a bug is logged
        bar.close()
        print(f"error: {failure_message(name, exc)}", file=sys.stderr)
        return 1
    written.outputs.append(store)
    seg = SimpleNamespace(diameter=result.diameter, factor=result.factor, look=result.look,
                          diameter_source="off" if result.diameter is None else "estimated"
                          if options.diameter.mode == "auto" else "given")
    _report_file(name, stem, seg, written, inst)
    return 0


def _zarr_shape(store: Path) -> tuple[int, int]:
    import zarr

    return tuple(zarr.open_group(str(store), mode="r")["labels"].shape)


def _block_csv(result, out: Path, stem: str, overwrite: bool):
    """Only the objects CSV of a block run too large for the usual image files."""
    from .atomic import write_text
    from .instances import objects_csv
    from .predict import FileResult, check_outputs

    name = f"{stem}_objects.csv"
    check_outputs(out, [name], overwrite)
    write_text(out / name, objects_csv(result.objects, physical=result.resolution is not None))
    return FileResult(source=stem, outputs=[out / name], n_objects=len(result.objects),
                      notes=["too large for the usual image files: labels and instances are in the Zarr store",
                             *result.notes])


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, load_checkpoint
    from .export import parity, to_onnx

    try:
        model, meta = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        out = to_onnx(model, meta, args.out)
    except OSError as exc:
        print(f"error: --out {args.out}: cannot write the model ({exc.strerror or exc})", file=sys.stderr)
        return 2
    geometry = meta.geometry
    sizes = [geometry.input_size(geometry.floor_output(s)) for s in (100, 196)]
    diff = parity(model, out, sizes)
    print(f"wrote {out} (max |ONNX - PyTorch| = {diff:.2e} at inputs {sizes})")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """``quantize MODEL.onnx [--data DATA] [--out MODEL-int8.onnx]``: an int8 copy for the CPU;
    with ``--fp16`` an fp16 copy for GPUs (errors reach main: one line, exit 2)."""
    from .quantize import QuantizeError, QuantizeOptions, quantize_model

    if args.fp16:
        from .half import half_model

        half = half_model(args.model, args.out)
        print(f"wrote {half.path} (fp16, float32 inputs and outputs; largest probability difference to the fp32 "
              f"model {half.max_difference:.2e}); for CUDA GPUs: on a CPU it runs no faster than fp32")
        return 0

    try:
        options = QuantizeOptions(calibration=args.calibration, tiles=args.tiles, tile=args.tile,
                                  percentile=args.percentile, float_convs=args.float_convs, seed=args.seed)
        result = quantize_model(args.model, args.out, args.data, options)
    except QuantizeError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: not enough memory to calibrate; try fewer --tiles or a smaller --tile", file=sys.stderr)
        return 2
    except Exception as exc:  # ONNX Runtime's quantizer raises many types; a bug should say so in one line
        log.exception("internal error while quantizing %s", args.model)
        print(f"error: {args.model}: internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
              "please report it, with the traceback logged above", file=sys.stderr)
        return 1
    record = result.record
    print(f"wrote {result.path} ({record['format']}, {record['calibration']} calibration on {record['tiles']} tiles "
          f"of {record['tile_input']} px from {record['images']} training images of {record['data']}); "
          f"{100 * result.agreement:.1f} % of the calibration pixels keep their fp32 class; "
          f"kept in fp32: {', '.join(record['fp32_nodes'])}"
          + (f"; convolutions ONNX Runtime runs in float: {len(result.float_convs)}" if result.float_convs else ""))
    return 0


# --------------------------------------------------------------------------- train

def _split_arg(value: str) -> dict:
    """``every_kth:5`` / ``last_n:5`` -> a SplitRule dict (argparse type)."""
    from .config import TrainError, parse_split

    try:
        return parse_split(value)
    except TrainError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_train_settings(p: argparse.ArgumentParser) -> None:
    """One option per training setting of :mod:`unet_core.config` (its flag, type, help, choices)."""
    from .config import settings_schema

    types = {"int": int, "float": float, "text": str, "pair": float}
    for row in settings_schema():
        if row["kind"] == "switch":
            p.add_argument(row["flag"], dest=row["name"], action="store_const", const=False, default=None,
                           help=row["help"])
            # The "on" form too: a fine-tuning run takes its model's recipe, which may have it off.
            p.add_argument("--" + row["flag"].removeprefix("--no-"), dest=row["name"], action="store_const",
                           const=True, default=None, help=f"the opposite of {row['flag']} (default: on, or the "
                           "--init model's choice)")
            continue
        kind = _split_arg if row["parse"] == "split" else types[row["kind"]]
        p.add_argument(row["flag"], dest=row["name"], type=kind, nargs=2 if row["kind"] == "pair" else None, choices=row["choices"], metavar=row["metavar"],
                       help=row["help"])


def _train_config(args: argparse.Namespace):
    """The TrainConfig from the command line (or, with --resume, from the run folder)."""
    from .config import (
        TrainConfig,
        TrainError,
        config_from_settings,
        init_recipe,
        resumed_with,
        settings_schema,
    )

    given = {row["name"]: getattr(args, row["name"]) for row in settings_schema()}
    out = Path(args.out)
    if (args.resume or args.finish) and (out / "config.json").exists():
        return resumed_with(TrainConfig.load(out / "config.json"), given)
    if args.data is None and not args.config:
        if args.resume or args.finish:
            raise TrainError(f"{out} holds no saved settings (config.json): the run stopped before it saved them, "
                             "so nothing was trained; start it again with --data (and its other options)")
        raise TrainError("--data is required (a data set folder or 'synthetic')")
    # Fine-tuning continues the model's recipe where the command line does not say otherwise.
    base = TrainConfig.load(args.config).to_dict() if args.config else init_recipe(given.get("init"))
    return config_from_settings({**given, "out": args.out}, base)


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError as _CkptError
    from .training import TrainError, train

    try:
        cfg = _train_config(args)
        result = train(cfg, resume=args.resume or args.finish, progress=not args.quiet, finish=args.finish)
    except (TrainError, _CkptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m unet_core train --out {args.out} --resume", file=sys.stderr)
        return 130
    if not result.main:  # another process of a torchrun job: the first one reports
        return 0
    summary = {"out": str(result.out), "step": result.step, "elapsed_s": round(result.elapsed, 1),
               "data_wait": round(result.data_wait, 4), "best": result.best,
               "onnx": str(result.onnx) if result.onnx else None}
    import json

    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------- evaluate


def _open_eval_data(spec: str, n: int, seed: int, mode: str | None):
    from .datasets import open_dataset

    if spec == "synthetic" or spec.startswith("synthetic:"):
        from .synthetic import SynthConfig, synthetic_dataset

        mode = mode or (spec.split(":", 1)[1] if ":" in spec else "fluorescence")
        return synthetic_dataset(n, SynthConfig(mode=mode), seed)
    return open_dataset(spec)


def _eval_segmenter(args: argparse.Namespace):
    """The model (or baseline) ``evaluate`` scores, and the training record whose split it uses."""
    from .baseline import BaselineOptions
    from .runtime import load_predictor

    if (args.model is None) == (args.baseline is None):
        raise UserError("give --model or --baseline")
    recorded = load_predictor(args.rule_from, "cpu").meta.training if args.rule_from else None
    if args.baseline:
        return BaselineOptions(method=args.baseline), recorded or {}
    segmenter = load_predictor(args.model, args.device)
    return segmenter, recorded if recorded is not None else segmenter.meta.training


def _eval_indices(args: argparse.Namespace, dataset, training: dict):
    """The split rule (the model's own when it records one) and the images of ``--split``."""
    from .datasets import SplitRule

    rule_dict = training.get("split_rule")
    rule = SplitRule.from_dict(rule_dict) if rule_dict and args.data != "synthetic" else dataset.split_rule
    if args.split == "all":
        return rule, list(range(len(dataset)))
    try:
        indices = dataset.split_indices(args.split, rule)
    except ValueError as exc:  # a rule that holds out groups these images do not have
        raise UserError(str(exc)) from None
    if not indices:
        why = (": the model was trained on every image (split rule 'none'); give --rule-from with a model that "
               "held images out, or --split all" if rule.kind == "none" and not rule.groups else "")
        raise UserError(f"the {args.split} split of {args.data} ({rule.to_dict()}) is empty{why}")
    return rule, indices


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a model or a baseline on a data set (errors a user can fix reach main: exit 2)."""
    from .evaluate import EvalOptions, evaluate

    dataset = _open_eval_data(args.data, args.n, args.seed, args.mode)
    if len(dataset) == 0:
        raise UserError(f"{args.data}: no usable image/mask pairs")
    segmenter, training = _eval_segmenter(args)
    rule, indices = _eval_indices(args, dataset, training)
    bar = FileProgress(1, unit="image")
    bar.start_file(0, f"{args.split} split")
    try:
        options = EvalOptions(tile=args.tile, tta=_tta(args.tta), kind=args.kind, diameter=args.diameter,
                              instance_options=_instance_options(args))
        report = evaluate(segmenter, dataset, indices, options, progress=bar.tiles)
    except (UserError, OSError) as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    report.model = str(args.model) if args.model else f"baseline: {args.baseline}"
    report.split = f"{args.split} split, rule {rule.to_dict()}" if args.split != "all" else "all images"
    print(report.to_json(images=args.per_image))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(report.to_markdown())
        print(f"report: {args.report}", file=sys.stderr)
    for s in report.skipped:
        print(f"error: {s['name']}: {s['problem']} (not scored; the means leave it out)", file=sys.stderr)
    return 1 if report.skipped else 0


# --------------------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    from .synthetic import SynthConfig, write_dataset

    if args.n < 1:
        print("error: --n must be >= 1", file=sys.stderr)
        return 2
    kwargs = {"mode": args.mode}
    if args.size:
        kwargs["height"] = kwargs["width"] = args.size
    try:
        out = write_dataset(args.out, args.n, SynthConfig(**kwargs), args.seed)
    except (UserError, ValueError, OSError) as exc:  # ValueError: SynthConfig's checks of --size
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} {args.mode} samples to {out} (images/, masks/)")
    return 0


# --------------------------------------------------------------------------- masks


def cmd_masks(args: argparse.Namespace) -> int:
    from .annotations import AnnotationError, make_dataset

    try:
        reports = make_dataset(args.images, args.annotations, args.out)
    except AnnotationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in reports:
        if r.problem:
            print(f"{r.image}: left out: {r.problem}", file=sys.stderr)
        else:
            extra = f" ({r.skipped} points, lines or outlines outside the image left out)" if r.skipped else ""
            print(f"{r.image}: {r.objects} objects from {r.annotation}{extra}")
    done = [r for r in reports if not r.problem]
    print(f"wrote {len(done)} image{'s' if len(done) != 1 else ''} and masks to {args.out} (images/, masks/): "
          f"train on it with python -m unet_core train --data {args.out} --init MODEL.onnx ...")
    return 0


def _add_predict(sub) -> None:
    """The ``predict`` command and its options."""
    p = sub.add_parser("predict", help="segment images with an ONNX model (overlap-tile)",
                       epilog="File names starting with '-': put the images last, after '--', e.g. "
                              "predict --out results/ -- -scan1.tif scan2.tif")
    p.add_argument("images", nargs="+", help="PNG, JPEG or TIFF files (8/16-bit, float, stacks); "
                   "inputs with the same name get distinct result names (x.tif -> x.tif_labels.png)")
    p.add_argument("--model", help=f"model .onnx (default: {DEFAULT_MODEL.relative_to(REPO_ROOT)})")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results already in --out (default: such an image is refused, the others run)")
    p.add_argument("--tile", type=_tile_arg, default=None, metavar="N|auto",
                   help="output tile edge in px, rounded down to a valid size (default: auto)")
    p.add_argument("--batch", type=int, default=None, help="tiles per network call (default: auto)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--probs", action="store_true", help="also write <stem>_probs.tif (float32)")
    _add_tta(p)
    p.add_argument("--channel", "--channels", dest="channels", type=_channels_arg, action="extend", default=None,
                   metavar="N[,N]",
                   help="the channel(s) to segment in multi-channel (non-RGB) images, numbered from 1 as in "
                        "Fiji; repeatable or comma-separated (--channels 1,2 for a 2-channel model). Needed when "
                        "an image has more separate channels than the model takes; RGB images are converted "
                        "to gray as always")
    _add_object_options(p)
    d = p.add_argument_group("on a Dask cluster (see the README's 'Scaling out')")
    d.add_argument("--scheduler", metavar="local|ADDRESS", default=None,
                   help="run on Dask: 'local' starts a cluster of worker processes here, an address "
                        "(tcp://host:8786) uses a running one; many files go one per worker, a large 2-D TIFF, "
                        "OME-TIFF or Zarr image in blocks (default: this process only)")
    d.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of a local cluster (default: one per 2 cores)")
    d.add_argument("--block", type=int, default=None, metavar="PX",
                   help="block edge in pixels for large images (default 4096; whole tiles)")
    d.add_argument("--zarr", default=None, metavar="DIR",
                   help="the Zarr store of a block run (default: OUT/STEM.zarr); labels and instances are "
                        "written there block by block, the usual files too when the image fits in memory")
    p.set_defaults(func=cmd_predict)


def _add_export(sub) -> None:
    """The ``export`` command and its options."""
    e = sub.add_parser("export", help="export a checkpoint to ONNX (with metadata and a parity check)")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)


def _add_quantize(sub) -> None:
    """The ``quantize`` command and its options."""
    q = sub.add_parser("quantize", help="make an int8 copy of an ONNX model for fast CPU inference "
                       "(static, calibrated on its training images)")
    q.add_argument("model", help="the fp32 .onnx model")
    q.add_argument("--data", help="calibration data set folder, or 'synthetic' (default: the data set the model "
                   "records as its training data); only its training images are used (the model's split rule)")
    q.add_argument("--out", help="the int8 model to write (default: MODEL-int8.onnx next to MODEL.onnx)")
    q.add_argument("--calibration", choices=("minmax", "percentile", "entropy"), default="percentile",
                   help="how activation ranges are set (default percentile)")
    q.add_argument("--tiles", type=int, default=24, help="calibration tiles (default 24)")
    q.add_argument("--tile", type=int, default=244, help="output edge of a calibration tile in px, rounded down to "
                   "a valid size (default 244, i.e. 428 px input tiles for the paper's net)")
    q.add_argument("--percentile", type=float, default=99.999, help="percentile of --calibration percentile "
                   "(default 99.999)")
    q.add_argument("--float-convs", choices=("first-and-head", "first", "head", "none"), default="first",
                   help="layers that stay fp32: the first convolution and the 1x1 head, the first convolution only "
                   "(default; the head then has int8 weights and still writes float logits), the head only "
                   "(about 7 %% faster, slightly less accurate), or none; the probabilities are always fp32")
    q.add_argument("--seed", type=int, default=0, help="which images and tile positions are drawn (default 0)")
    q.add_argument("--fp16", action="store_true", help="instead, an fp16 copy for CUDA GPUs (tensor cores; float32 "
                   "inputs and outputs; default --out MODEL-fp16.onnx); needs no data")
    q.set_defaults(func=cmd_quantize)


def _add_train(sub) -> None:
    """The ``train`` command and its options."""
    t = sub.add_parser("train", help="train a U-Net (the paper's recipe; resumable)")
    t.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--finish", action="store_true",
                   help="end the run in --out at its last checkpoint and export its model (a stopped run)")
    t.add_argument("--config", help="a config.json to start from (command-line options override it)")
    _add_train_settings(t)
    t.add_argument("--quiet", action="store_true", help="no progress line")
    t.set_defaults(func=cmd_train)


def _add_evaluate(sub) -> None:
    """The ``evaluate`` command and its options."""
    v = sub.add_parser("evaluate", help="evaluate a model on a data set (metrics JSON + markdown report)")
    v.add_argument("--model", help="model .onnx (or .pt checkpoint)")
    v.add_argument("--baseline", choices=("otsu-watershed", "otsu"),
                   help="score the classical baseline instead of a model (Otsu threshold [+ watershed])")
    v.add_argument("--rule-from", metavar="MODEL", help="take the split rule from this model (default: the scored "
                   "model's own): a baseline, or another version, on exactly that model's validation images")
    v.add_argument("--data", required=True, help="data set folder, or 'synthetic[:fluorescence|phase]'")
    v.add_argument("--split", choices=("val", "val_random", "val_groups", "train", "all"), default="val",
                   help="which images (the split rule comes from the model's metadata; default val; "
                        "val_random / val_groups: only the random or only the held-out-group part)")
    _add_object_options(v)
    v.add_argument("--tile", type=_tile_arg, default=None, metavar="N|auto")
    _add_tta(v)
    v.add_argument("--kind", choices=("auto", "semantic", "instance"), default="auto")
    v.add_argument("--report", help="write a markdown report here")
    v.add_argument("--per-image", action="store_true", help="include per-image rows in the JSON")
    v.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    v.add_argument("--n", type=int, default=20, help="images of a synthetic data set")
    v.add_argument("--seed", type=int, default=1000, help="seed of a synthetic data set")
    v.add_argument("--mode", choices=("fluorescence", "phase"), help="look of a synthetic data set")
    v.set_defaults(func=cmd_evaluate)


def _add_synth(sub) -> None:
    """The ``synth`` command and its options."""
    s = sub.add_parser("synth", help="write a synthetic data set (images/ + masks/)")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mode", choices=("fluorescence", "phase"), default="fluorescence")
    s.add_argument("--size", type=int, help="image edge in px (default 512)")
    s.set_defaults(func=cmd_synth)


def _add_masks(sub) -> None:
    """The ``masks`` command and its options."""
    m = sub.add_parser("masks", help="make a data set of images and objects outlined in QuPath (GeoJSON) or Fiji "
                       "(ROI sets), to train on",
                       description="Turn annotation files into instance masks: for each image in IMAGES, the "
                       "file in ANNOTATIONS named after it (cells.geojson, cells.tif.geojson, cells_outlines.geojson, "
                       "cells_annotations.geojson, cells_RoiSet.zip, cells.zip or cells.roi). A pixel belongs to an object when its centre is "
                       "inside the outline; holes stay background; later objects are drawn over earlier ones; in "
                       "a QuPath file with detections, the detections are the objects (annotations are regions).")
    m.add_argument("images", help="folder of the images (PNG, JPEG, TIFF)")
    m.add_argument("annotations", help="folder of their annotation files (QuPath GeoJSON, ImageJ ROI sets)")
    m.add_argument("--out", required=True, help="new data set folder (images/ + masks/)")
    m.set_defaults(func=cmd_masks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m unet_core", description="U-Net Studio engine")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="say what the engine is doing (tile measurement, scale search, GPU fallback)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_export(sub)
    _add_quantize(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_synth(sub)
    _add_masks(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 an error the user can fix (its message printed),
    3 an internal error (a bug: logged with its traceback, and what to report), 130 interrupted."""
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        return args.func(args)
    except UserError as exc:  # one a command did not catch itself: still a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception:
        log.exception("internal error in %s", args.command)
        print(f"internal error: this is a bug in U-Net Studio, not a problem with your files; please report it "
              f"to {REPORT_TO}", file=sys.stderr)
        return 3
