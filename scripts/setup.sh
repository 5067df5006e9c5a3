#!/usr/bin/env bash
# Installs what ms-service-metric needs to build and test on Debian 12, then builds it.
#   apt: libbpf-dev libelf-dev (libbpf), bpftool, pkg-config, python3-dev (Python.h for the
#        provider's native library), prometheus (promtool, used by the tests), and the tools
#        the tests run: curl, gcc (the PEP 768 stand-in), util-linux (setpriv, unshare,
#        nsenter, prlimit)
#   pip: pytest (tests), prometheus_client (the reference side of the benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libbpf-dev libelf-dev bpftool pkg-config python3-dev prometheus curl gcc util-linux)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The prometheus package starts a server; the tests only need promtool.
systemctl disable --now prometheus >/dev/null 2>&1 || true

python3 -m pip install -q pytest prometheus_client 2>&1 | grep -v "already satisfied" || true

echo "setup: building (first build fetches and compiles the Swift dependencies, ~3 min)"
swift build 2>&1 | grep -E "error|warning: .*unhandled|Compiling|Build complete" | grep -v "^\[.*Compiling" || true
test -x .build/debug/ms-service-metric || { echo "setup: build failed" >&2; swift build; exit 1; }
echo "setup: ready: .build/debug/ms-service-metric"
