#!/usr/bin/env bash
# Benchmarks in their own sandbox `stb` (pools of 8 GiB, sparse). Prints figures and ratios.
#   BENCH_PARTS=throughput,scale (default)
#   throughput: BENCH_DELTA_MB=512 BENCH_RUNS=3
#   scale:      BENCH_DATASETS=10000 BENCH_SNAPSHOTS=30 BENCH_RUNS=5 BENCH_CHANGED=100 BENCH_LONG_PERIOD=43200
#     (the scale pools are built once by bench/scale-pools.sh, ~25 min, and cached in
#      /var/cache/storage-bench; later runs restore them in about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench: must run as root" >&2; exit 2; }
bash test/env/sandbox.sh deps
npm run --silent build
trap 'bash test/env/sandbox.sh down --name stb >/dev/null 2>&1 || true' EXIT
bash test/env/sandbox.sh up --name stb --pool-size 8G >/dev/null
case ",${BENCH_PARTS:-throughput,scale}," in
  *,scale,*) bash bench/scale-pools.sh ensure --datasets "${BENCH_DATASETS:-10000}" --snapshots "${BENCH_SNAPSHOTS:-30}" ;;
esac
SANDBOX_MANIFEST=/var/tmp/storage-sandbox-stb/sandbox.json nsenter --net=/run/netns/stb-ctl node dist/bench/replication-bench.js
