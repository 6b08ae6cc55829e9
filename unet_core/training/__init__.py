"""Training: the paper's recipe, a resumable loop, a JSONL log, and export.

Modules: :mod:`.data` (images prepared once, tiles per step), :mod:`.loss` (Eq. 1 and the
learning rate), :mod:`.finetune` (``--init``), :mod:`.trainer` (the :class:`Trainer` and
:func:`train`), :mod:`.distributed` (several processes under ``torchrun``), :mod:`.record` (what
the run folder holds), :mod:`.card` (export and model card), :mod:`.progress` (the console line). The settings are :class:`unet_core.config.TrainConfig`.

The recipe of Ronneberger et al. (2015), Sec. 3, as defaults of :class:`TrainConfig`: a weighted
pixel-wise softmax cross-entropy whose weights are the paper's maps (Eq. 2, ``w0 = 10``,
``sigma = 5``, balanced class weights; :func:`unet_core.weights.weight_map` of each image's
instance labels, computed once per image); batch 1 of large tiles (572 -> 388); SGD with momentum
0.99; He initialisation and dropout 0.5 at the end of the contracting path (one ``Dropout2d``
after the bottleneck, :class:`~unet_core.model.UNet`); elastic + geometric + gray-value augmentation
(:class:`~unet_core.augment.AugmentConfig`). Adam, learning-rate schedules, polarity inversion and
mixing in synthetic images are options.

Classes are background (0) and foreground (1). For ISBI 2012 the foreground is the white cell
interior and the background the membranes; the instances that the weight map separates are the
4-connected components of the interior, so the border term lives on the membranes between cells.

Reproducibility and resume
    Everything random in a step is a function of ``(seed, step)``: which image, where the tile
    sits, the warp and the gray values (``numpy.random.default_rng([seed, step, b])``), and the
    dropout masks (the torch generator is reseeded from ``(seed, step)`` before every forward
    pass). The learning rate is a pure function of the step. A checkpoint (``last.pt``, written
    atomically every ``checkpoint_every`` steps and at the end) holds the weights, the optimiser
    state, the step and the best validation value, so ``resume`` after a ``kill -9`` at any moment
    (also during a checkpoint write) replays the remaining steps exactly: the per-step losses equal
    those of an uninterrupted run.

Several processes
    ``torchrun --nproc_per_node N -m unet_core train ...`` trains with DistributedDataParallel
    (gloo on the CPU, NCCL on one GPU per process): each process trains on its share of every
    step's ``batch`` tiles (tiles ``rank, rank + N, ...``; the batch must be a multiple of N), so
    each update is the one-process update of the same tiles (to float rounding; the weights agree
    to 1e-6 in the tests). Only the first process writes the run folder; a run resumes on any
    number of processes that divides its batch (the checkpoint and the log record the number).

Data
    Images are normalised exactly as at inference (:func:`unet_core.io.fit_stretch` over the whole
    image, the model's :class:`~unet_core.io.Normalisation`), converted to the model's channels,
    and kept in memory with their class maps and weight maps. Tiles are cut and augmented in
    DataLoader worker processes (forked, so the arrays are shared), ahead of the model. Tile pixels
    that map outside the image (small images, tiles at the border) are mirrored for the input but
    get weight 0 in the loss. The loss is ``sum(w * CE) / #(w > 0)``.

Run folder (``runs/NAME``)
    ``config.json`` (the exact :class:`TrainConfig`), ``manifest.json`` (data files and split),
    ``versions.json`` (software and hardware), ``log.jsonl``, ``last.pt``, ``best.pt``, and at the
    end ``model.onnx`` (the best checkpoint, with :class:`~unet_core.metadata.ModelMeta`) and the
    model card ``model.md``.

Log (``log.jsonl``, one JSON object per line, appended and flushed per line)
    Step lines: ``step``, ``loss``, ``lr``, ``px_per_s`` (output pixels per second of the step),
    ``data_wait`` (fraction of the step spent waiting for data), ``step_s``, ``elapsed`` (seconds
    of training so far, across resumes) and, where validation ran, ``val`` (mean metrics) and
    ``best`` (whether it is the best so far). Event lines have ``event`` (``"start"``, ``"resume"``,
    ``"done"``) and no ``loss``.
"""


from ..config import TrainConfig, TrainError
from .trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainError", "TrainResult", "Trainer", "train"]
