#!/usr/bin/env bash
# Every test, as CI runs it (as root: the namespace and AF_XDP tests run,
# and XSOCK_REQUIRE_ROOT=1 makes a skipped one a failure). Installs what it
# needs first. Prints the wall time of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; }

step setup
bash scripts/setup.sh

step "format"
cargo fmt --all --check

step "clippy (warnings are errors)"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "tests"
# The preload is a shared object the tests LD_PRELOAD, and the C library
# the C programs link: built first, into the same target.
cargo build --locked -p xsock-preload -p xsock-capi
XSOCK_CAPI_LIB_DIR="$PWD/target/debug" XSOCK_REQUIRE_ROOT=1 cargo test --locked --workspace

step "fuzz (each target briefly, on the committed corpus)"
if cargo +nightly --version >/dev/null 2>&1; then
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
    for target in link_frame link_endpoint diag_frame overlay_frame attach_msg secure_session lan_preamble node_cert offload_frame tcp_segment; do
        (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="${XSOCK_FUZZ_SECONDS:-12}" 2>&1 | tail -2)
    done
else
    echo "*** no nightly toolchain: fuzz targets skipped (the corpus still replays in the tests) ***"
fi

step "leftovers"
left=$(ip netns list | awk '{print $1}' | grep '^xst' || true)
if [ -n "$left" ]; then
    echo "tests left network namespaces behind: $left" >&2
    exit 1
fi
# Host engines remove their socket and lock on SIGTERM (the tests' way to
# stop them); a file left here is an engine that died without cleaning up.
stale=$(ls /run/xsock 2>/dev/null || true)
if [ -n "$stale" ]; then
    echo "tests left host-engine files behind in /run/xsock: $stale" >&2
    exit 1
fi

echo
echo "all tests passed in $(( $(date +%s) - start )) s"
