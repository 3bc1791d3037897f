#!/usr/bin/env bash
# Installs what xsock's build, tests and demo need on Debian, idempotently:
# only packages that are missing are installed. Run as root.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (apt-get, network namespaces and AF_XDP need it)" >&2
    exit 1
fi

packages=(
    clang llvm libelf-dev zlib1g-dev m4 libpcap-dev pkg-config  # xsk-rs builds libxdp/libbpf; our XDP program
    iproute2 nftables procps iputils-ping ethtool netcat-openbsd # the namespace test bed, peers
    iperf3 sockperf                                              # kernel baselines
    mpich libmpich-dev python3                                   # programs run unmodified under the preload (mpicc needs mpi.h)
)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "setup: no cargo on PATH; install the Rust toolchain (https://rustup.rs) and re-run" >&2
    exit 1
fi
