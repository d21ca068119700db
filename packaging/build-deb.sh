#!/usr/bin/env bash
# npm run package: builds storage-agent_<version>_<arch>.deb (into $PKG_OUT, default
# ./packages) from this checkout: the built code (dist/src, bin) with its production
# dependencies (node_modules pruned of dev dependencies: better-sqlite3's native module
# is the one npm built here, for Node.js 20, hence Depends: nodejs (>= 20), (<< 21)),
# the systemd unit, a configuration and a sudoers example, storagectl's bash completion
# and man pages generated from the commands' own --help (packaging/gen-docs.mjs).
# Needs: node/npm (the repository's), dpkg-deb (Debian). Prints the package's path.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
OUT=${PKG_OUT:-$REPO/packages}
command -v dpkg-deb >/dev/null || { echo "package: dpkg-deb is missing (Debian package dpkg)" >&2; exit 1; }
[ -d node_modules ] || { echo "package: node_modules missing: run npm ci first" >&2; exit 1; }

version=$(node -p 'require("./package.json").version')
arch=$(dpkg --print-architecture)
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([~+.a-z0-9-]*)?$ ]] || { echo "package: package.json version '$version' is not a Debian version" >&2; exit 1; }
echo "package: building storage-agent $version ($arch)" >&2
# PKG_SKIP_BUILD=1: dist/ was just built by the caller (the openzfs-2.3 tier)
if [ "${PKG_SKIP_BUILD:-0}" = 1 ]; then
  [ -f dist/src/agent/main.js ] || { echo "package: PKG_SKIP_BUILD=1 but dist/ is not built" >&2; exit 1; }
else
  npm run --silent build
fi

STAGE=$(mktemp -d /tmp/storage-agent-pkg.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
root=$STAGE/root
lib=$root/usr/lib/storage-agent
mkdir -p "$lib/dist" "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/share/man/man8" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/doc/storage-agent/examples" "$root/DEBIAN"

# the code and its production dependencies
cp -a bin package.json package-lock.json "$lib/"
cp -a dist/src "$lib/dist/src"
cp -a node_modules "$lib/node_modules"
rm -f "$lib/node_modules/.lock-hash"
(cd "$lib" && npm prune --omit=dev --no-audit --no-fund --ignore-scripts >/dev/null) \
  || { echo "package: npm prune --omit=dev failed" >&2; exit 1; }
# build leftovers of the native module: only build/Release/*.node is loaded
bs=$lib/node_modules/better-sqlite3
[ -f "$bs/build/Release/better_sqlite3.node" ] || { echo "package: better-sqlite3's native module is not built (npm rebuild better-sqlite3)" >&2; exit 1; }
rm -rf "$bs/deps" "$bs/src" "$bs/build/Release/obj" "$bs/build/Release/obj.target" "$bs/build/Release/.deps" \
  "$bs/build/Release/test_extension.node" "$bs/build/deps" "$bs/build/"*.mk "$bs/build/Makefile" "$bs/build/config.gypi"
find "$lib/node_modules" \( -name '*.md' -o -name '*.map' -o -name '*.ts' ! -name '*.d.ts' \) -type f -delete
find "$lib/node_modules" -name '*.d.ts' -type f -delete
rm -f "$lib/package-lock.json"
ln -s ../lib/storage-agent/bin/storage-agent "$root/usr/bin/storage-agent"
ln -s ../lib/storage-agent/bin/storagectl "$root/usr/bin/storagectl"

# unit, examples, docs
install -m 0644 systemd/storage-agent.service "$root/usr/lib/systemd/system/storage-agent.service"
install -m 0644 packaging/examples/config.yaml "$root/usr/share/doc/storage-agent/examples/config.yaml"
install -m 0644 packaging/examples/sudoers "$root/usr/share/doc/storage-agent/examples/sudoers"
install -m 0644 deploy/prometheus/storage-alerts.yml "$root/usr/share/doc/storage-agent/examples/storage-alerts.yml"
install -m 0644 README.md "$root/usr/share/doc/storage-agent/README.md"
install -m 0644 packaging/debian/copyright "$root/usr/share/doc/storage-agent/copyright"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)} \
  node packaging/gen-docs.mjs "$lib" "$root/usr/share/man/man8" "$root/usr/share/bash-completion/completions/storagectl" "$version"
gzip -9n "$root/usr/share/man/man8/"*.8

size_kb=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size_kb/" packaging/debian/control.in > "$root/DEBIAN/control"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
(cd "$root" && find usr -type f -exec md5sum {} + | sort -k2) > "$root/DEBIAN/md5sums"

mkdir -p "$OUT"
deb="$OUT/storage-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "package: $deb ($(du -k "$deb" | cut -f1) KiB; installed $size_kb KiB)" >&2
echo "$deb"
