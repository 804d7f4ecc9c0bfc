"""Data-parallel training on torch.distributed: one process per device, each on its shard.

    dlcli train CONFIG --nproc-per-node 2          # launch.py: torch.distributed.run
    torchrun --nproc-per-node 2 -m dlcli train CONFIG     # the same workers, started by torchrun

Each worker is an ordinary ``dlcli train`` process that finds torchrun's variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ...) in its environment. :func:`init_from_env` joins the process
group (NCCL on CUDA, gloo on the CPU) with a timeout on every collective, and returns the
:class:`World` the Trainer uses to

1. take its shard of every *global* batch (``index[rank::size]`` of the seeded per-epoch
   permutation, so every sample is used once an epoch and ``batch_size`` means what it means
   in a single process),
2. train through ``DistributedDataParallel`` (gradients averaged across workers), with each
   worker's loss scaled by its share of the batch so the update is the full batch's,
3. all-reduce the epoch's metric sums (and evaluate on a contiguous block of each split, then
   all-reduce), so every worker reports, and decides on, the same global numbers,
4. agree on stopping: a signal (Ctrl-C, the launcher's SIGTERM) that reached any worker stops
   all of them at the same step, one step after it arrived (the vote overlaps the next step).

Only rank 0 prints and writes (model dir, checkpoints); the others wait at a barrier. A
worker that dies, or a collective that waits longer than ``--dist-timeout``, ends every worker
with a clear message; the launcher then reports which worker failed and exits non-zero.

A single process (no torchrun variables, or ``WORLD_SIZE=1``) is :data:`SINGLE`: every method
of it is the identity, and training is exactly what it is without this package.

    world.py    the worker side: World, joining the process group, timeouts, the stop vote
    launch.py   the launcher: torch.distributed.run's arguments, failures → one DlcliError
"""

from dlcli.distributed.launch import (
    LAUNCH_OPTIONS,
    Launch,
    WorkersFailed,
    failure_error,
    launch,
    worker_args,
)
from dlcli.distributed.world import (
    DEFAULT_TIMEOUT,
    JSON_FILE,
    SINGLE,
    STOP_GRACE,
    SignalVote,
    World,
    collective_errors,
    env_rank,
    env_world,
    init_from_env,
    refuse_workers,
    shutdown,
    stop_watchdog,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "JSON_FILE",
    "LAUNCH_OPTIONS",
    "SINGLE",
    "STOP_GRACE",
    "Launch",
    "SignalVote",
    "WorkersFailed",
    "World",
    "collective_errors",
    "env_rank",
    "env_world",
    "failure_error",
    "init_from_env",
    "launch",
    "refuse_workers",
    "shutdown",
    "stop_watchdog",
    "worker_args",
]
