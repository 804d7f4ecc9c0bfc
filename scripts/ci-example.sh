#!/usr/bin/env bash
# dlcli in CI: download -> validate the config -> train with a quality gate -> evaluate on the
# test set with a gate -> predict the test images.
#
# Each step prints one JSON document on stdout, kept as $OUT/<step>.json; human text and
# progress go to stderr (the job log). The script stops at the first failing step and exits
# with its code, the same for every dlcli command:
#   2 usage error or invalid config · 3 data, model-dir or network problem · 4 a gate failed
#
# Settings (environment variables):
#   CONFIG        the config to train                  [configs/fashion-mnist-mlp.yaml]
#   MIN_ACCURACY  the accuracy gate (validation, test) [0.75]
#   OUT           where the JSON and the model go      [ci-out]
#   DLCLI_DATA_DIR where datasets live                 [data]
set -uo pipefail

CONFIG=${CONFIG:-configs/fashion-mnist-mlp.yaml}
MIN_ACCURACY=${MIN_ACCURACY:-0.75}
OUT=${OUT:-ci-out}
DATA=${DLCLI_DATA_DIR:-data}
# Smoke-test settings: one epoch on a fifth of the training set (seconds on a CPU, about 0.8
# accuracy). Drop them to train the config as written.
QUICK=(--set training.epochs=1 --set data.validation_split=0.8)

mkdir -p "$OUT"

# step NAME COMMAND...: run a dlcli command with --json into $OUT/NAME.json; stop on failure.
step() {
  local name=$1
  shift
  "$@" --json >"$OUT/$name.json"
  local code=$?
  case $code in
    0) echo "ci: $name: ok" >&2; return 0 ;;
    2) echo "ci: $name: usage error or invalid config (exit 2)" >&2 ;;
    3) echo "ci: $name: data, model-dir or network problem (exit 3)" >&2 ;;
    4) echo "ci: $name: quality gate failed (exit 4)" >&2 ;;
    *) echo "ci: $name: failed (exit $code)" >&2 ;;
  esac
  exit "$code"
}

step download dlcli download fashion-mnist --quiet
step validate dlcli config validate "$CONFIG" "${QUICK[@]}"
step train dlcli train "$CONFIG" "${QUICK[@]}" --output "$OUT/model" --overwrite \
  --min "accuracy=$MIN_ACCURACY" --quiet
step evaluate dlcli evaluate "$OUT/model" --split test --min "accuracy=$MIN_ACCURACY" --quiet
step predict dlcli predict "$OUT/model" "$DATA/fashion-mnist/t10k-images-idx3-ubyte.gz" \
  --top-k 3 --quiet
echo "ci: all steps passed; the model is in $OUT/model, the JSON documents in $OUT" >&2
