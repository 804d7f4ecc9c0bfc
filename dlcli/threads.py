"""How many CPU threads dlcli computes with, and how they wait (``training.threads``).

On a machine that other processes keep busy, OpenMP threads that *spin* while they wait for
each other turn every parallel kernel into a wait for a descheduled thread: on the 2-core
development machine, with two CPU-bound processes beside it, one epoch of the MNIST speedrun
took 73 s at torch's default 2 threads, 10.7 s with ``OMP_WAIT_POLICY=PASSIVE`` and ~5 s on
one thread (3.4 s quiet). So dlcli

1. sets ``OMP_WAIT_POLICY=PASSIVE`` after a short spin before torch is imported
   (:func:`set_wait_policy`, called by the command line's entry point) unless the environment
   already sets it: waiting threads sleep instead of spinning for long;
2. with ``training.threads: auto`` uses as many threads as there are *free* cores: the cores
   this process may run on (``os.sched_getaffinity``) minus the other runnable tasks, read from
   ``/proc/loadavg`` (its fourth field is the number of tasks runnable right now; the median
   of a few reads ~10 ms apart, so one burst does not decide). ``OMP_NUM_THREADS``, when set,
   is taken as the user's choice (torchrun sets it for its workers). A number uses exactly that.

Results depend on the thread count (float sums are split differently), so ``metrics.json``
records it. This module imports nothing heavy: it runs before torch is loaded.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from dlcli import untrusted

WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
SHORT_SPIN = "30000"  # spins before a waiting OpenMP thread sleeps (GNU OpenMP's default: 300,000)
LOADAVG = Path("/proc/loadavg")
_SAMPLES, _PAUSE = 5, 0.01


def set_wait_policy() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` with a short spin (``GOMP_SPINCOUNT``, :data:`SHORT_SPIN`)
    unless the environment sets either; only effective before torch loads.

    PASSIVE alone makes a waiting thread sleep at once, and waking it costs more than the
    small kernels of a step last: the MNIST speedrun's fit took 15-18 s against 13-14 s with
    OpenMP's default spin on the quiet 2-core machine. A short spin first (GNU OpenMP honours an
    explicit ``GOMP_SPINCOUNT`` over PASSIVE's zero) keeps the quiet speed (12.9-13.8 s), and a
    thread whose partner was descheduled still goes to sleep after ~tens of microseconds instead
    of the default 300,000 spins. Other OpenMP runtimes ignore ``GOMP_SPINCOUNT``."""
    if WAIT_POLICY in os.environ or SPIN_COUNT in os.environ:
        return  # the user's choice
    os.environ[WAIT_POLICY] = "PASSIVE"
    os.environ[SPIN_COUNT] = SHORT_SPIN


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def other_runnable(path: Path = LOADAVG) -> int | None:
    """Tasks runnable right now besides this one (median of a few reads), or None when
    /proc/loadavg cannot be read."""
    counts = []
    for i in range(_SAMPLES):
        try:
            running = path.read_text().split()[3].split("/")[0]
            counts.append(int(running))
        except (OSError, IndexError, ValueError):
            return None
        if i < _SAMPLES - 1:
            time.sleep(_PAUSE)
    return max(0, round(statistics.median(counts)) - 1)  # minus the reading thread itself


@dataclass(frozen=True)
class ThreadChoice:
    count: int
    reason: str  # "training.threads", "OMP_NUM_THREADS", "free cores (...)"

    def describe(self) -> dict[str, object]:
        """What metrics.json records."""
        return {
            "count": self.count,
            "chosen_by": self.reason,
            "omp_wait_policy": os.environ.get(WAIT_POLICY, "default"),
            "gomp_spincount": os.environ.get(SPIN_COUNT, "default"),
        }


def choose(setting: str | int) -> ThreadChoice:
    """The thread count for ``training.threads`` (``auto`` or a number)."""
    if isinstance(setting, int):
        return ThreadChoice(setting, "training.threads")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if untrusted.is_number(env) and int(env) > 0:
        return ThreadChoice(int(env), "OMP_NUM_THREADS")
    cores = usable_cores()
    others = other_runnable()
    if others is None:
        return ThreadChoice(cores, f"usable cores ({cores}; /proc/loadavg unreadable)")
    free = max(1, min(cores, cores - others))
    return ThreadChoice(free, f"free cores ({cores} usable, {others} other runnable tasks)")


def apply_threads(setting: str | int) -> ThreadChoice:
    """Choose the thread count and set torch's (imported here: only training needs it)."""
    import torch

    choice = choose(setting)
    torch.set_num_threads(choice.count)
    return choice
