"""The device a run uses: ``training.device`` / ``--device`` (``auto``, ``cpu``, ``cuda``,
``cuda:N``) resolved against what this machine has."""

from __future__ import annotations

import torch

from dlcli.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"training.device: expected auto, cpu, cuda or cuda:N, found {name!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"training.device: {name!r} requested, but CUDA is not available "
                f"(torch {torch.__version__}); use device: cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"training.device: {name!r} requested, but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type != "cpu":
        raise ConfigError(f"training.device: expected auto, cpu, cuda or cuda:N, found {name!r}")
    return device
