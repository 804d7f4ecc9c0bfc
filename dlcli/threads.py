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
   is taken as the user's choice (torchrun sets it for its workers). A number uses exactly that;
3. with ``auto`` chosen from the free cores, keeps following them while it trains
   (:class:`LoadFollower`, polled after each step): about every second, the median of the last
   few counts of other runnable tasks sets the thread count again. A machine that gets busy
   after the start (a CI runner's next job, a test suite beside it) would otherwise leave two
   threads waiting for each other's turn on the cores: on the 2-core machine, with helpers'
   test suites starting during a Fashion-MNIST MLP run, its epochs went from 0.85 s to
   8-18 s on two threads, where one thread took 2-4 s beside the same load.

Results depend on the thread count (float sums are split differently), so ``metrics.json``
records it. This module imports nothing heavy: it runs before torch is loaded.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dlcli import untrusted

WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
SHORT_SPIN = "30000"  # spins before a waiting OpenMP thread sleeps (GNU OpenMP's default: 300,000)
LOADAVG = Path("/proc/loadavg")
TASKS = Path("/proc/self/task")
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


def others_beside_us(loadavg: Path = LOADAVG, tasks: Path = TASKS) -> int | None:
    """Tasks runnable right now that are not threads of this process (one read; None when
    /proc cannot be read): while training, this process's own threads are runnable too."""
    try:
        running = int(loadavg.read_text().split()[3].split("/")[0])
        ours = 0
        for task in os.listdir(tasks):
            try:
                stat = (tasks / task / "stat").read_text()
            except OSError:  # the thread ended between the listing and the read
                continue
            ours += stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] == "R"
    except (OSError, IndexError, ValueError):
        return None
    return max(0, running - max(ours, 1))


@dataclass(frozen=True)
class ThreadChoice:
    count: int
    reason: str  # "training.threads", "OMP_NUM_THREADS", "free cores (...)"
    cores: int = 0  # with auto from the free cores: the usable cores (0: the count is fixed)

    @property
    def follows_load(self) -> bool:
        """Whether training keeps the count at the free cores (:class:`LoadFollower`)."""
        return self.cores > 1

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
    reason = f"free cores ({cores} usable, {others} other runnable tasks)"
    return ThreadChoice(free, reason, cores)


def apply_threads(setting: str | int) -> ThreadChoice:
    """Choose the thread count and set torch's (imported here: only training needs it)."""
    import torch

    choice = choose(setting)
    torch.set_num_threads(choice.count)
    return choice


CHANGES_KEPT = 100  # the first changes metrics.json lists (``changes`` counts them all)


@dataclass
class LoadFollower:
    """Keeps the thread count at the free cores while training (``training.threads: auto``).

    :meth:`poll` is called after every step and costs a clock read until ``period`` seconds
    have passed; then it counts the other runnable tasks (:func:`others_beside_us`), and once
    ``window`` counts are in, sets the count to the usable cores minus their median (at least
    one). The first :data:`CHANGES_KEPT` changes are kept for metrics.json."""

    choice: ThreadChoice
    set_threads: Callable[[int], None]
    others: Callable[[], int | None] = others_beside_us
    clock: Callable[[], float] = time.monotonic
    period: float = 0.25
    window: int = 4
    changes: int = 0
    changed_at: list[dict[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.count = self.choice.count
        self._counts: deque[int] = deque(maxlen=self.window)
        self._due = self.clock() + self.period

    def poll(self, epoch: int, step: int) -> None:
        """After ``step`` of ``epoch``: count the other tasks when due; follow the median."""
        now = self.clock()
        if now < self._due:
            return
        self._due = now + self.period
        others = self.others()
        if others is None:
            return
        self._counts.append(others)
        if len(self._counts) < self.window:
            return
        cores = self.choice.cores
        free = max(1, min(cores, cores - round(statistics.median(self._counts))))
        if free == self.count:
            return
        self.set_threads(free)
        self.count = free
        self._counts.clear()  # the next decision sees the load beside the new count
        self.changes += 1
        if len(self.changed_at) < CHANGES_KEPT:
            self.changed_at.append({"epoch": epoch, "step": step, "count": free})

    def describe(self) -> dict[str, object]:
        """What metrics.json adds to ``threads``."""
        return {
            "followed_load": True,
            "changes": self.changes,
            "changed_at": self.changed_at,
            "count_at_end": self.count,
        }
