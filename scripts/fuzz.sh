#!/usr/bin/env bash
# The fuzzers, each for a bounded time: the agent's parsers (symbol config, ring records fed
# to the aggregator, ELF files, /proc/PID/maps; Sources/msm-fuzz) and the provider's
# control-file reader (Tests/fuzz/fuzz_control.py). Prints how many inputs each tried and
# that none crashed; a crash leaves the input in /tmp/msm-fuzz-crash-* and fails.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60; CI runs 15)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
seed=${FUZZ_SEED:-$(date +%s)}
swift build --product msm-fuzz 2>&1 | grep -E "error|warning: .*msm-fuzz" || true
.build/debug/msm-fuzz --seconds "$seconds" --seed "$seed" --repo "$PWD"
python3 Tests/fuzz/fuzz_control.py --seconds "$seconds" --seed "$seed"
