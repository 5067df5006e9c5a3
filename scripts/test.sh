#!/usr/bin/env bash
# The test command: unit tests (Swift and the provider's Python), then integration tests as
# root with real BPF and real Python processes. Needs scripts/setup.sh to have run once.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build
echo "== unit tests (Swift)"
swift test
echo "== provider tests (Python)"
python3 -m pytest -q Tests/provider
echo "== fuzzers (config, ring records, ELF, maps, control file; 15 s each)"
bash scripts/fuzz.sh 15
echo "== integration tests (root, real BPF, real processes)"
MSM_BIN="$PWD/.build/debug/ms-service-metric" python3 -m pytest -v Tests/integration
echo "== end-to-end tests (a real vllm serve; needs scripts/vllm-setup.sh, skipped without it)"
MSM_BIN="$PWD/.build/debug/ms-service-metric" python3 -m pytest -v -s Tests/e2e
