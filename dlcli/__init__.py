"""dlcli: a YAML file in, a trained, evaluated, saved PyTorch model out.

The command line (``dlcli train CONFIG``) and the Python API are the same library::

    import dlcli

    run = dlcli.train("configs/fashion-mnist-mlp.yaml", overrides={"training.epochs": 3})
    model = dlcli.load(run.run_dir)
    model.evaluate("test"), model.predict(images).classes

(see :mod:`dlcli.api`). They are imported on first use, so ``import dlcli`` (and
``dlcli --help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dlcli.version import __version__

if TYPE_CHECKING:
    from dlcli.api import Model, Predictions, load, train

__all__ = ["Model", "Predictions", "__version__", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in ("Model", "Predictions", "load", "train"):
        from dlcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlcli' has no attribute {name!r}")
