"""``python -m dlcli`` (also what ``torchrun -m dlcli`` runs)."""

from dlcli.entry import main

if __name__ == "__main__":
    main()
