"""The worker side of a data-parallel run: this process's place in it (:class:`World`), joining
the process group from torchrun's variables, and what the Trainer asks of the others (see
:mod:`dlcli.distributed`)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from dlcli.device import resolve_device
from dlcli.errors import ConfigError, TrainingError, UsageError

T = TypeVar("T")

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the other workers (--dist-timeout)
STOP_GRACE = 15  # seconds a worker has to stop after the launcher's SIGINT/SIGTERM (at most)

JSON_FILE = "DLCLI_JSON_FILE"  # set by launch(): where rank 0 writes its JSON document

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # as dlcli.signals
_control: Any = None  # a gloo group for CPU-side agreement (the default group may be NCCL)


@dataclass(frozen=True)
class World:
    """Where this process stands in a data-parallel run; ``World()`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str = ""
    timeout: float = DEFAULT_TIMEOUT

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that prints and writes."""
        return self.rank == 0

    def summary(self, batch_size: int) -> str:
        """The line ``train`` prints on rank 0."""
        per = batch_size / self.size
        return (
            f"distributed: {self.size} workers ({self.backend}, timeout {self.timeout:g}s); "
            f"global batch {batch_size}, {per:g} per worker"
        )

    def describe(self) -> dict[str, Any]:
        """What metrics.json records about the run's workers (nothing for one process)."""
        if not self.distributed:
            return {}
        return {"distributed": {"world_size": self.size, "backend": self.backend}}

    # --- the training step ---------------------------------------------------------------------

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This worker's part of a global batch: every ``size``-th sample from ``rank``."""
        return index[self.rank :: self.size] if self.distributed else index

    def block(self, n: int) -> range:
        """This worker's contiguous block of ``n`` samples (evaluation: slices stay views)."""
        if not self.distributed:
            return range(n)
        per = -(-n // self.size)
        return range(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def scale_loss(self, loss: torch.Tensor, shard: int, batch: int) -> torch.Tensor:
        """The loss to back-propagate: DDP averages the workers' gradients, so weighting each
        worker's mean loss by ``size * shard / batch`` makes the update the global batch's
        mean-loss gradient, whatever the shard sizes (the last batch may not divide)."""
        if not self.distributed or shard * self.size == batch:
            return loss
        return loss * (shard * self.size / batch)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(model)`` (which broadcasts rank 0's weights), or ``model``."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def seed(self, seed: int, step: int) -> None:
        """Give each worker its own random stream (dropout) for the step, the same for the
        same (seed, step, rank), so a resumed run's is the uninterrupted one's; a single
        process keeps the one it has (its RNG state is checkpointed)."""
        if self.distributed:
            torch.manual_seed((seed * 1_000_003 + step * 7_919 + self.rank) % 2**63)

    # --- agreeing -------------------------------------------------------------------------------

    def sum_metrics(self, sums: torch.Tensor, count: int) -> tuple[list[float], int]:
        """Metric sums and sample count over all workers (one all-reduce, float64)."""
        if not self.distributed:
            return sums.tolist(), count
        totals = torch.cat([sums.double(), sums.new_tensor([count], dtype=torch.float64)])
        dist.all_reduce(totals)
        values = totals.tolist()
        return values[:-1], int(values[-1])

    def agree(self, stop: bool, interrupted: str | None) -> tuple[bool, str | None]:
        """Stop everywhere when any worker wants to (a callback, a signal), at the same step:
        a worker that left the loop alone would leave the others waiting in a collective."""
        if not self.distributed:
            return stop, interrupted
        flags = torch.tensor([int(stop), int(interrupted is not None)])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=_control)
        if flags[1] and interrupted is None:
            interrupted = "a signal to another worker"
        return bool(flags[0]), interrupted

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) everywhere: each worker updated its own on
        its last step, and evaluation must score the model rank 0 saves."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 and its result sent to every worker (e.g. a checkpoint read
        where only rank 0's node may have it)."""
        if not self.distributed:
            return fn()
        box = [fn() if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=_control)
        return box[0]  # type: ignore[return-value]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier(group=_control)

    def signal_vote(self) -> SignalVote:
        """The per-step vote on stopping (see :class:`SignalVote`)."""
        return SignalVote(self)


SINGLE = World()


class SignalVote:
    """Whether a signal reached any worker, agreed on one step late: each step posts this
    worker's flag (an all-reduce that runs while the next step computes) and reads the
    previous step's result, so every worker reads the same answers at the same steps."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._flag = torch.zeros(1, dtype=torch.int32)
        self._work: Any = None

    def step(self, signalled: bool) -> bool:
        """The previous step's answer; posts this step's question."""
        agreed = self.settle()
        self._flag = torch.tensor([int(signalled)], dtype=torch.int32)
        self._work = dist.all_reduce(
            self._flag, op=dist.ReduceOp.MAX, group=_control, async_op=True
        )
        return agreed

    def settle(self) -> bool:
        """Wait for the answer in flight, if any, and return it."""
        if self._work is None:
            return False
        self._work.wait()
        self._work = None
        return bool(self._flag.item())


# --- joining the process group ------------------------------------------------------------------


def env_world() -> World:
    """The World torchrun's variables describe, or :data:`SINGLE` when there are none."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    values: dict[str, int] = {}
    for name in names:
        raw = os.environ.get(name, "0" if name != "LOCAL_WORLD_SIZE" else "1")
        try:
            values[name] = int(raw)
        except ValueError:
            raise UsageError(
                f"${name}: expected an integer (set by torchrun), found {raw!r}"
            ) from None
    if values["WORLD_SIZE"] <= 1:
        return SINGLE
    return World(
        rank=values["RANK"],
        size=values["WORLD_SIZE"],
        local_rank=values["LOCAL_RANK"],
        local_size=values["LOCAL_WORLD_SIZE"],
    )


def refuse_workers(command: str) -> None:
    """``dlcli COMMAND`` runs in one process: started as one of several workers (torchrun, or
    any launcher that sets ``WORLD_SIZE`` above 1), every worker would run it whole, each
    printing and writing the same files; a usage error (exit 2) instead, before anything."""
    world = env_world()
    if world.distributed:
        raise UsageError(
            f"dlcli {command} runs in one process, but this one was started as worker rank "
            f"{world.rank} of {world.size} ($WORLD_SIZE={world.size}, set by torchrun): "
            f"run `dlcli {command}` on its own, without torchrun (in an environment that sets "
            "$WORLD_SIZE for every process, with it unset: `env -u WORLD_SIZE dlcli ...`; only "
            "`dlcli train` trains data-parallel)"
        )


def env_rank() -> int:
    """This process's rank (0 outside torchrun); read before the process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_from_env(device: str, timeout: float | None = None) -> tuple[World, torch.device]:
    """Join the process group torchrun's variables describe and pick this worker's device
    (``cuda:LOCAL_RANK`` on GPUs); a single process just resolves ``device``."""
    world = env_world()
    if not world.distributed:
        return world, resolve_device(device)
    resolved = _worker_device(device, world, resolve_device(device))
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    seconds = DEFAULT_TIMEOUT if timeout is None else timeout
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
        global _control  # CPU-side votes, barriers and objects: gloo, whatever the backend
        _control = dist.new_group(backend="gloo", timeout=timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as err:
        raise TrainingError(
            f"worker rank {world.rank} of {world.size}: cannot join the other workers at "
            f"{where} within {seconds:g}s ({_first_line(err)})"
        ) from None
    atexit.register(shutdown)  # a process group left to the interpreter's exit can abort it
    return World(world.rank, world.size, world.local_rank, world.local_size, backend, seconds), (
        resolved
    )


def _worker_device(name: str, world: World, resolved: torch.device) -> torch.device:
    """``cuda:LOCAL_RANK`` for auto/cuda on a GPU machine; the CPU stays the CPU."""
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "mps":  # one Apple GPU a machine, and no collective backend for it
        raise ConfigError(
            "training.device: data-parallel training runs on CUDA GPUs or CPUs, found mps; "
            "train in one process, or use device: cpu"
        )
    if resolved.index is not None and name not in ("auto", "cuda") and world.local_size > 1:
        raise ConfigError(
            f"training.device: {name!r} names one GPU, but each of the {world.local_size} "
            "workers on this node takes the GPU of its LOCAL_RANK; use device: cuda or auto"
        )
    if name not in ("auto", "cuda"):
        return resolved
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"training.device: worker LOCAL_RANK {world.local_rank} needs GPU "
            f"{world.local_rank}, but {torch.cuda.device_count()} are visible; start at most "
            f"{torch.cuda.device_count()} workers per node"
        )
    return torch.device("cuda", world.local_rank)


def shutdown() -> None:
    """Leave the process group (also at exit: see :func:`init_from_env`)."""
    global _control
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def collective_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: a collective that failed (a worker died, or none answered within the
    timeout) becomes a :class:`TrainingError` that says so, not an internal error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:
            if not (dist.is_available() and dist.is_initialized()) or not _is_collective(err):
                raise
            raise TrainingError(_lost_message(err)) from None

    return wrapper


def _is_collective(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return any(s in text for s in ("gloo", "NCCL", "nccl", "Connection", "Timed out", "timed out"))


def _lost_message(err: BaseException) -> str:
    rank, size = dist.get_rank(), dist.get_world_size()
    first = _first_line(err)
    if "timed out" in first.lower():
        reason = "waited longer than --dist-timeout for the other workers (one of them hangs)"
    else:
        reason = "lost contact with the other workers (one of them failed or was stopped)"
    return f"worker rank {rank} of {size} {reason}: {first}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    if line.startswith("[") and "] " in line:  # gloo's "[/path/to/pair.cc:537] Read error ..."
        line = line.split("] ", 1)[1]
    return line.split(". This is typically caused by", 1)[0].strip()  # gloo's advice


@contextlib.contextmanager
def stop_watchdog(world: World) -> Iterator[None]:
    """After a SIGINT/SIGTERM (the launcher sends one to every worker when one fails), a
    distributed worker has ``min(timeout, STOP_GRACE)`` seconds to stop: then SIGALRM ends it,
    even when it hangs. Chains to the handlers already installed (dlcli.signals)."""
    main = threading.current_thread() is threading.main_thread()
    if not world.distributed or not main or not hasattr(signal, "SIGALRM"):
        yield
        return
    grace = max(1, min(int(world.timeout), STOP_GRACE))
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def arm(signum: int, frame: Any) -> None:
        left = signal.alarm(grace)
        if left:  # a later signal keeps the first one's deadline
            signal.alarm(left)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:  # the default action: end now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in previous:
        signal.signal(sig, arm)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.alarm(0)
