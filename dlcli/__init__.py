"""dlcli: a YAML file in, a trained, evaluated, saved PyTorch model out."""

__version__ = "0.1.0"
