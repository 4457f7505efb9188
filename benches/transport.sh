#!/usr/bin/env bash
# The cluster transport under a follower-fetch-shaped load: 100 B requests, 1 MiB
# responses, N in flight, server shard on core 0 and client shard on core 1, TLS over
# TCP then QUIC at each MTU asked for, then TCP again (the machine's load drifts: the two
# TCP runs bracket the QUIC ones). Prints MB/s, request p50/p99 and the QUIC/TCP ratios.
#
#   benches/transport.sh                                  # 5 s runs, 16 in flight
#   benches/transport.sh --seconds 10 --concurrency 4 --mtu 1200,4096,8192
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p ringmq-cluster --example transport_bench -- "$@"
