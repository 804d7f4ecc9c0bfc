"""Device names: the one parser for ``training.device`` and every ``--device`` option.

:func:`check_device_name` checks a name's spelling without importing torch (config loading,
``config validate``); :func:`resolve_device` turns a name into a ``torch.device`` on this machine:
``auto`` picks CUDA, then Apple's MPS, then the CPU, and a device this machine does not have is a
:class:`ConfigError` that says why.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dlcli.errors import ConfigError
from dlcli.untrusted import shorten

if TYPE_CHECKING:
    import torch

DEVICE_NAMES = "auto | cpu | cuda | cuda:N | mps"
DEVICE_HELP = f"{DEVICE_NAMES} (auto: CUDA, else MPS, else the CPU)."
# ASCII digits without leading zeros: torch refuses "cuda:01" and "cuda:٣" with a RuntimeError.
_NAME = re.compile(r"auto|cpu|mps|cuda(?::(0|[1-9][0-9]*))?")
# torch keeps a device index in 8 signed bits: "cuda:128" became cuda:-128, "cuda:256" cuda:0.
CUDA_INDEX_MAX = 127


def check_device_name(name: object, key: str = "training.device") -> str:
    """``name`` if it is a device name dlcli knows, else a :class:`ConfigError` naming ``key``."""
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ConfigError(f"{key}: expected auto, cpu, cuda, cuda:N or mps, found {name!r}")
    index = match.group(1)
    if index is not None and (len(index) > 3 or int(index) > CUDA_INDEX_MAX):
        raise ConfigError(
            f"{key}: {shorten(repr(name))}: a CUDA device index is at most {CUDA_INDEX_MAX}"
        )
    return str(name)


def resolve_device(name: str, key: str = "training.device") -> torch.device:
    """The ``torch.device`` a name means here; a device that is not available is an error."""
    import torch

    check_device_name(name, key)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        _check_cuda(device, name, key)
    elif device.type == "mps" and not mps_available():
        raise ConfigError(f"{key}: {name!r} requested, but {_no_mps_reason()}; use cpu or auto")
    return device


def mps_available() -> bool:
    """Apple's Metal GPU backend (macOS on Apple silicon, with a torch built for it)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _no_mps_reason() -> str:
    import torch

    backend = getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_built():
        return f"this torch ({torch.__version__}) was built without MPS (Apple GPUs)"
    return "MPS is not available on this machine (it needs macOS 12.3+ on Apple silicon)"


def _check_cuda(device: torch.device, name: str, key: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key}: {name!r} requested, but CUDA is not available "
            f"(torch {torch.__version__}); use cpu or auto"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{key}: {name!r} requested, but only {count} CUDA device(s) are visible")
