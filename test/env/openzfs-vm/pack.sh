# Sourced by tier.sh and bench/openzfs-vm.sh: packs the BUILT project (bin, dist,
# node_modules, the sandbox and bench scripts) with this host's node, jq and rsync
# binaries (and the shared libraries the guest's minbase image lacks) into a share
# directory for the openzfs-vm guest. pack_project SHARE; fails with a message on stderr.
pack_project() {
  local share=$1 node jq rsync
  tar -cf "$share/repo.tar" bin dist node_modules package.json test/env/sandbox.sh test/system/*.sh bench/scale-pools.sh || { echo "could not pack the project" >&2; return 1; }
  mkdir -p "$share/tools/lib" "$share/results"
  node=$(command -v node) || { echo "no node on the host" >&2; return 1; }
  cp -L "$node" "$share/tools/node"
  jq=$(command -v jq) || { echo "no jq on the host (test/env/sandbox.sh deps installs it)" >&2; return 1; }
  cp -L "$jq" "$share/tools/jq"
  ldd "$jq" | awk '$3 ~ /^\// && $1 ~ /^lib(jq|onig)/ {print $3}' | while read -r l; do cp -L "$l" "$share/tools/lib/"; done
  # rsync (restore --mode rollback copies with it)
  rsync=$(command -v rsync) || { echo "no rsync on the host (test/env/sandbox.sh deps installs it)" >&2; return 1; }
  cp -L "$rsync" "$share/tools/rsync"
  ldd "$rsync" | awk '$3 ~ /^\// && $1 ~ /^lib(popt|lz4|xxhash)/ {print $3}' | while read -r l; do cp -L "$l" "$share/tools/lib/"; done
  # fuser (psmisc: the fence lists the processes using a mount) and faketime (the clock
  # skew test), with faketime's preload libraries at the path the binary was built with
  for t in fuser faketime; do
    command -v "$t" >/dev/null || { echo "no $t on the host (test/env/sandbox.sh deps installs it)" >&2; return 1; }
    cp -L "$(command -v "$t")" "$share/tools/$t"
  done
  mkdir -p "$share/tools/faketime-lib"
  cp -L /usr/lib/x86_64-linux-gnu/faketime/libfaketime*.so.1 "$share/tools/faketime-lib/" || { echo "no libfaketime on the host" >&2; return 1; }
  # what the guest runs first: those tools in place, the project unpacked in /opt/storage
  cat > "$share/install.sh" <<'GUEST'
set -eu
install -m 0755 /mnt/tools/node /usr/local/bin/node
install -m 0755 /mnt/tools/jq /usr/local/bin/jq
install -m 0755 /mnt/tools/rsync /usr/bin/rsync
install -m 0755 /mnt/tools/fuser /usr/bin/fuser
install -m 0755 /mnt/tools/faketime /usr/bin/faketime
mkdir -p /usr/lib/x86_64-linux-gnu/faketime
cp /mnt/tools/faketime-lib/* /usr/lib/x86_64-linux-gnu/faketime/
cp /mnt/tools/lib/* /usr/local/lib/ 2>/dev/null || true
ldconfig
mkdir -p /opt/storage
tar -xf /mnt/repo.tar -C /opt/storage
GUEST
}
