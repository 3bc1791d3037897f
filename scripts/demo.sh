#!/usr/bin/env bash
# The demo: builds two hosts in network namespaces and compares xsock with
# kernel TCP on the link between them. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked -p xsock-tools
exec target/release/xsock demo "$@"
