"""``python -m dlcli`` (also what ``torchrun -m dlcli`` runs)."""

from dlcli.cli import main

if __name__ == "__main__":
    main()
