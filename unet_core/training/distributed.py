"""Training over several processes (``torchrun``) with DistributedDataParallel.

``python -m unet_core train`` runs unchanged under ``torchrun --nproc_per_node N`` (and across
nodes: ``--nnodes``, ``--rdzv-endpoint``): :func:`detect_world` reads where this process stands
from the variables torchrun sets, :func:`join` starts the process group (gloo on the CPU, NCCL on
GPU ``cuda:LOCAL_RANK``) and :func:`data_parallel` wraps the network.

The processes share each step's ``batch`` tiles: process ``rank`` of ``size`` trains on tiles
``rank, rank + size, ...`` (:class:`~unet_core.training.data.StepTiles`), and tile ``b`` of a step
is the same whatever the number of processes (``step_rng(seed, step, b)``), so is its dropout mask
(:class:`ShardDropout2d`). Each process's loss is its tiles' part of the batch's loss (normalised
by the pixels of the whole batch, :func:`sum_over_ranks`) times the number of processes, since
DistributedDataParallel averages the gradients: every update is the one-process update of the same
batch, up to the order of float sums. Hence a run resumes exactly on as many processes, and on
another number that divides the batch as it would have gone on, to float rounding.

Only the first process (:attr:`World.is_main`) writes: ``config.json``, the manifest, the log,
checkpoints, validation (it alone validates while the others wait at the next step) and the
exported model. A run folder used by several nodes must be on a file system they share (the
others read the checkpoint when resuming).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import TrainError

log = logging.getLogger(__name__)

#: The variables torchrun sets that a process of a multi-process run needs.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How long a collective may wait for the others. The first process validates alone while the
#: others wait at the next step; on a CPU, many large validation images can take longer than
#: torch's default of 30 minutes. (A process that dies ends the others sooner: torchrun stops them.)
TIMEOUT = _dt.timedelta(hours=3)


@dataclass(frozen=True)
class World:
    """Where this process stands in its run: rank ``rank`` of ``size`` processes, ``local_rank``
    of the ``local_size`` on its node. One process alone is rank 0 of 1."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """The process that writes the run folder."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _int_var(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise TrainError(f"the environment variable {name}={env[name]!r} is not a whole number; start the "
                         "training with torchrun, which sets it") from None


def detect_world(env: Mapping[str, str] | None = None) -> World:
    """This process's place from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); one process alone when none is set.

    Raises:
        TrainError: some of them are set but not all, or their values do not fit together.
    """
    env = os.environ if env is None else env
    present = [name for name in TORCHRUN_VARS if name in env]
    if not present:
        return World()
    missing = [name for name in TORCHRUN_VARS if name not in env]
    if missing:
        raise TrainError(f"{', '.join(present)} {'is' if len(present) == 1 else 'are'} set but not "
                         f"{', '.join(missing)}: start a multi-process training with torchrun (torchrun "
                         "--nproc_per_node N -m unet_core train ...), which sets them all, or unset "
                         f"{', '.join(present)} to train in one process")
    rank, size, local_rank = (_int_var(env, name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    # LOCAL_WORLD_SIZE only shares a node's cores among its processes' data-loader workers; without
    # it, as few processes as LOCAL_RANK allows.
    local_size = _int_var(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else local_rank + 1
    if not 0 <= rank < size or not 0 <= local_rank < local_size:
        raise TrainError(f"RANK={rank}, WORLD_SIZE={size}, LOCAL_RANK={local_rank} and LOCAL_WORLD_SIZE="
                         f"{local_size} do not fit together (0 <= RANK < WORLD_SIZE, 0 <= LOCAL_RANK < "
                         "LOCAL_WORLD_SIZE); start the training with torchrun, which sets them")
    return World(rank, size, local_rank, local_size)


def join(world: World, device: torch.device) -> torch.device:
    """Start the process group of a multi-process run (gloo for the CPU, NCCL for GPUs) and return
    this process's device (``cuda:LOCAL_RANK`` on GPUs); ``device`` as it is for one process."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise TrainError(f"process {world.rank} (LOCAL_RANK {world.local_rank}) has no GPU of its own: this "
                             f"node has {torch.cuda.device_count()}; start at most that many processes per node "
                             "(--nproc_per_node)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    log.info("process %d of %d (%s, %s)", world.rank, world.size, backend, device)
    return device


def leave(finished: bool) -> None:
    """End the process group, if this process started one.

    Args:
        finished: every process reached the end of the run. Then they first wait for each other,
            so that none tears its connections down while another still uses them (the first
            process exports alone; a gloo process that left early was seen to abort with
            "terminate called without an active exception"). After an error they do not wait: the
            others may never come.
    """
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over the processes (``value`` itself in one process)."""
    if not dist.is_initialized():
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set in any process: every process gets the same answer."""
    if not dist.is_initialized():
        return flag
    return bool(sum_over_ranks(torch.tensor(int(flag), device=device)).item())


def check_same(value: int, what: str) -> None:
    """Refuse to go on when the processes disagree about ``value`` (``what`` it is).

    Raises:
        TrainError: they do (a run folder that the nodes do not share, say).
    """
    if not dist.is_initialized():
        return
    values: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise TrainError(f"the processes see different {what}s ({', '.join(map(str, values))}, by rank): every "
                         "node must see the same run folder (a file system they share) and the same data")


class ShardDropout2d(torch.nn.Dropout2d):
    """:class:`torch.nn.Dropout2d` of one process's share of the global batch.

    The channel masks are drawn for the whole batch (``world`` times the tiles here), as torch's
    feature dropout draws them (one Bernoulli per tile and channel, scaled by ``1 / (1 - p)``),
    and this process keeps the rows of its tiles (``rank``, ``rank + world``, ...). The trainer
    seeds the generator before each step's forward pass, so every tile gets the mask it gets in a
    one-process run (tested against :func:`torch.nn.functional.dropout2d`).
    """

    def __init__(self, p: float, rank: int, world: int) -> None:
        super().__init__(p)
        self.rank, self.world = rank, world

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        noise = x.new_empty((x.shape[0] * self.world, x.shape[1], *[1] * (x.dim() - 2))).bernoulli_(1 - self.p)
        noise.div_(1 - self.p)
        return x * noise[self.rank :: self.world]


def data_parallel(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module a training step calls: ``model`` itself in one process; in several, ``model``
    with its dropout drawn for the global batch (:class:`ShardDropout2d`) inside
    DistributedDataParallel (which starts every process from the first one's weights)."""
    if not world.distributed:
        return model
    dropout = getattr(model, "dropout", None)
    if isinstance(dropout, torch.nn.Dropout2d):
        model.dropout = ShardDropout2d(dropout.p, world.rank, world.size)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
