"""Input limits: how much dlcli reads, allocates and echoes from a file it did not just write.

Named constants only, in one place (the README's "Limits and untrusted input" section lists
them). Each bounds what a hostile or broken input can cost: memory, time, recursion or the
length of a message. A real config, run directory or dataset is far inside every one.
"""

from __future__ import annotations

# --- config files (YAML) and --set overrides -------------------------------------------------
CONFIG_MAX_BYTES = 1 << 20  # a config file larger than 1 MiB is refused before parsing
YAML_MAX_DEPTH = 64  # nesting levels of mappings and lists (after alias expansion)
YAML_MAX_NODES = 100_000  # values in the document once every alias is expanded
ECHO_MAX_CHARS = 200  # characters of a value repeated in an error message

# --- JSON read back from a run directory or checkpoint ---------------------------------------
JSON_MAX_BYTES = 64 << 20  # manifest.json, metrics.json, a checkpoint's state.json
JSON_MAX_DEPTH = 64  # nesting levels of objects and arrays
MANIFEST_MAX_FILES = 64  # entries of a manifest.json

# --- CSV read back from a run directory (history.csv) -----------------------------------------
CSV_MAX_BYTES = 16 << 20  # history.csv: one row per epoch, a few columns
CSV_MAX_VALUES = 1_000_000  # cells of that file (header included)

# --- integers a config may hold: what torch takes (int64) -------------------------------------
INT_MAX = 2**63 - 1  # every integer key; training.seed is 0 .. INT_MAX

THREADS_MAX = 1024  # training.threads / --threads: CPU threads torch may be asked for
WORKERS_MAX = 1024  # data.workers / data check --workers: processes decoding images

CHECKPOINT_MAX_EPOCHS = 10**9  # a checkpoint counter beyond this is refused as corrupt

# --- data files ---------------------------------------------------------------------------------
DATA_MAX_BYTES = 8 << 30  # one dataset archive or input file, as read or inflated (8 GiB)
CLASSES_MAX = 1_000_000  # classes integer labels may number (ImageNet-21k has 21,841)
IDX_MAX_DIMS = 8  # dimensions of an IDX array (MNIST uses 1 or 3)
IMAGE_MAX_PIXELS = 50_000_000  # width × height of one image file (above: a decompression bomb)
# One image file's size, read whole before decoding (by each decoding process at once): 50M
# pixels of 16-bit RGBA stored uncompressed are 400 MB; a larger file is no image dlcli decodes.
IMAGE_MAX_BYTES = 1 << 30
TAR_MAX_MEMBERS = 64  # entries of a dataset tar archive (CIFAR-10's binary version has 9)
TAR_MEMBER_MAX_BYTES = 64 << 20  # one member of it, as inflated (CIFAR-10's batches: 29.3 MiB)

# --- downloads ----------------------------------------------------------------------------------
DOWNLOAD_DEADLINE_S = 600.0  # total seconds one file may take from one mirror (--deadline)

# --- command-line numbers ---------------------------------------------------------------------
SECONDS_MAX = 365 * 24 * 3600  # any SECONDS option (--timeout, --deadline, --dist-timeout): a year
# The largest learning rate: a config's (optimizer, one_cycle's max_lr, a schedule's min_lr) and
# lr-find's --start-lr / --end-lr. Above it is a typo or a unit mistake.
LEARNING_RATE_MAX = 10.0
