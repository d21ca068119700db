#!/bin/sh
# The openzfs-vm guest's job for bench/openzfs-vm.sh: tools and the project from the
# share, a kernel-ZFS sandbox `stb`, the scale pools, the scale benchmark.
set -eu
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH
. /mnt/env.sh
export BENCH_DATASETS BENCH_SNAPSHOTS BENCH_RUNS BENCH_CHANGED BENCH_BASELINE_SAMPLE
echo "guest: kernel $(uname -r), $(zfs version | head -1)"
sh /mnt/install.sh
cd /opt/storage
export SANDBOX_ZFS=kernel SANDBOX_MANIFEST=/var/tmp/storage-sandbox-stb/sandbox.json SCALE_CACHE_DIR=/var/tmp/storage-bench
bash test/env/sandbox.sh up --name stb --pool-size 4G
bash bench/scale-pools.sh ensure --datasets "$BENCH_DATASETS" --snapshots "$BENCH_SNAPSHOTS"
BENCH_PARTS=scale nsenter --net=/run/netns/stb-ctl node dist/bench/replication-bench.js
