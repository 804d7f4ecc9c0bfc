"""What ``dlcli train`` was asked for, resolved into one config before anything runs.

The command's typed flags (``--output``, ``--device``, ``--seed``, ``--threads``) are set on the
config as values, never turned back into ``--set`` strings (``--output "runs/x #1"`` saves to
``runs/x #1``). ``--resume RUN_DIR`` needs no CONFIG: the config the run's newest checkpoint was
made with — overrides, epochs and all — is the source of truth, so the "continue with" line an
interrupted run prints is just ``dlcli train --resume RUN_DIR`` (plus its worker count).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlcli.config import Config, load_config, parse_resolved, read_yaml
from dlcli.errors import ConfigError, ModelDirError, UsageError
from dlcli.manifest import no_run_dir


@dataclass(frozen=True)
class TrainRequest:
    """``dlcli train [CONFIG] [--set ...] [--output DIR] [--device D] [--seed N]
    [--threads auto|N] [--overwrite | --resume [RUN_DIR]]``."""

    config_path: Path | None = None
    overrides: Sequence[str] = ()
    output: str | None = None
    device: str | None = None
    seed: int | None = None
    overwrite: bool = False
    resume: str | None = None  # None: a new run; "": the config's run dir; else RUN_DIR
    threads: str | int | None = None  # --threads: auto or a number

    @property
    def resuming(self) -> bool:
        return self.resume is not None

    def resolve(self) -> Config:
        """The config this request trains; conflicting options are a usage error (exit 2)."""
        if self.resuming and self.overwrite:
            raise UsageError("--resume continues a run and --overwrite replaces it: give one")
        if self.resume and self.output is not None and Path(self.output) != Path(self.resume):
            raise UsageError(
                f"--resume {self.resume} and --output {self.output} name different runs"
            )
        flags = {
            "output.dir": self.resume or self.output,
            "training.device": self.device,
            "training.seed": self.seed,
            "training.threads": self.threads,
        }
        values: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
        if self.config_path is not None:
            return load_config(self.config_path, self.overrides, values=values)
        if not self.resume:
            raise UsageError(
                "give the CONFIG to train, or --resume RUN_DIR to continue a run from its directory"
            )
        source = saved_config_path(Path(self.resume))
        try:
            saved = read_yaml(source, saved=True)
        except ConfigError as err:  # the run dir's file, damaged: not the user's config
            raise ModelDirError(f"{source}: unreadable saved config ({err})") from None
        return parse_resolved(saved, self.overrides, values, source=str(source), saved=True)


def saved_config_path(run_dir: Path) -> Path:
    """The resolved config a run continues with: its newest checkpoint's (an interrupted run
    has nothing else), else the saved run's ``config.yaml``."""
    from dlcli import checkpoint, store

    if os.path.lexists(run_dir) and not run_dir.is_dir():  # a file, a device: say so
        raise no_run_dir(run_dir, "run directory to resume")
    if not run_dir.is_dir():
        raise ModelDirError(f"{run_dir}: no such run directory to resume")
    try:
        return checkpoint.latest(run_dir) / checkpoint.CONFIG
    except ModelDirError:
        if (run_dir / store.CONFIG).is_file():
            return run_dir / store.CONFIG
        raise


def continue_command(run_dir: Path, *, workers: int = 1, nodes: int = 1) -> str:
    """The shell line that continues ``run_dir`` exactly as it was started (quoted for a POSIX
    shell)."""
    words = ["dlcli", "train", "--resume", str(run_dir)]
    if workers > 1 or nodes > 1:
        words += ["--nproc-per-node", str(workers)]
    line = shlex.join(words)
    if nodes > 1:
        line += f" (on each of the {nodes} nodes, with the same --nnodes/rendezvous options)"
    return line
