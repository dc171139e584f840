#!/usr/bin/env bash
# Runs `waymark simulate` over the golden trace in ../shared/golden and checks it with check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:=${WAYMARK_CACHE:-$HOME/.cache/waymark}/target}"
golden=${WAYMARK_GOLDEN:-../shared/golden}
if [[ ! -f $golden/check.py ]]; then
  echo "golden: $golden/check.py not found; the shared folder must sit beside the project (or set WAYMARK_GOLDEN)" >&2
  exit 1
fi
until=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["until"])' "$golden/expected.json")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$CARGO_TARGET_DIR/release/waymark" simulate --journeys deploy/journeys/b2b-onboarding.yaml \
  --events "$golden/events.jsonl" --until "$until" > "$out"
python3 "$golden/check.py" --output "$out"
