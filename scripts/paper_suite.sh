#!/usr/bin/env bash
# The launcher shared by scripts/reproduce_*.sh (see them for what each reproduces):
#
#   scripts/paper_suite.sh SUITE [key=value ...]
#
# runs configs/suites/SUITE.yaml on run.device=$DEVICE (default cuda) into $OUTPUT_DIR (default runs/SUITE);
# every key=value becomes a --set override of every run of the suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: scripts/paper_suite.sh SUITE [key=value ...]" >&2; exit 2; }
suite="$1"
shift
sets=()
for item in "$@"; do sets+=(--set "$item"); done
exec "${PYTHON:-python}" -m lm.cli suite "$ROOT/configs/suites/$suite.yaml" --output-dir "${OUTPUT_DIR:-runs/$suite}" \
  --set "run.device=${DEVICE:-cuda}" ${sets[@]+"${sets[@]}"}
