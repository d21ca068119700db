#!/bin/bash
# First boot of the openzfs-2.3 guest (systemd PID 1, run by tier-guest.sh): the package
# is installed on the clean guest, a pool with 1,000 project datasets is made and the
# packaged agent runs its first (cold) cycle over them; then the guest reboots, and
# boot-measure.sh times the next boot. Results in /mnt/results (the host's share).
set -euo pipefail
R=/mnt/results; mkdir -p "$R"
N=${BOOT_PROJECTS:-1000}
ts() { awk '{printf "[guest %7.1fs] ", $1}' /proc/uptime; echo "$*"; }

# 1. the package, on the clean guest, before any configuration exists
deb=$(ls /mnt/storage-agent_*.deb)
ts "apt install $deb"
set +e
( cd /tmp && apt-get install -y --no-install-recommends "$deb" ) >"$R/package-install.log" 2>&1
echo $? >"$R/package-install.rc"
set -e
systemctl show storage-agent.service -p ActiveState -p ConditionResult -p UnitFileState -p Result >"$R/package-after-install.txt"
ts "package: exit $(cat "$R/package-install.rc"); $(tr '\n' ' ' <"$R/package-after-install.txt")"
[ "$(cat "$R/package-install.rc")" = 0 ] || { tail -20 "$R/package-install.log"; exit 1; }

# 2. the pool: imported at every boot from the cache file (zfs-import-cache: -N)
mkdir -p /var/lib/boot-pool
truncate -s 4G /var/lib/boot-pool/boot.img
zpool create -f -o cachefile=/etc/zfs/zpool.cache -O mountpoint=none -O compression=off boot /var/lib/boot-pool/boot.img
zfs create -o mountpoint=/srv/projects -o canmount=off boot/projects
zfs create -o mountpoint=none -o canmount=off -o readonly=on boot/replicas
for i in $(seq "$N"); do cat /proc/sys/kernel/random/uuid; done >/var/lib/boot-pool/ids
t0=$(date +%s)
# projects are canmount=noauto (as storagectl project create makes them): `zfs mount -a`
# at boot leaves them alone; they are mounted on demand (storagectl open)
xargs -P 8 -I{} zfs create -o canmount=noauto boot/projects/{} </var/lib/boot-pool/ids
ts "$N project datasets created in $(( $(date +%s) - t0 )) s"
echo "$(( $(date +%s) - t0 ))" >"$R/boot-create-seconds"

# 3. the configuration and the catalog; the agent's first (cold) cycle
install -d -m 0750 /etc/storage-agent /var/lib/storage-agent
ssh-keygen -q -t ed25519 -N '' -f /etc/storage-agent/id_ed25519
: >/etc/storage-agent/known_hosts
cat >/etc/storage-agent/config.yaml <<CFG
host: boot-a
datacenter: dc1
address: 127.0.0.1
pool: boot
projectsRoot: boot/projects
replicasRoot: boot/replicas
mountBase: /srv/projects
catalog: { backend: sqlite, path: /var/lib/storage-agent/catalog.db }
ssh: { user: root, privateKey: /etc/storage-agent/id_ed25519, knownHosts: /etc/storage-agent/known_hosts }
interval: 60s
replication: { factor: 0 }
metrics: { listen: 127.0.0.1:9464 }
log: { level: info }
stateDir: /var/lib/storage-agent
receiverLog: /var/log/storage-agent/receiver.log
CFG
storagectl config check /etc/storage-agent/config.yaml
node /opt/storage/dist/test/system/boot-catalog.js /var/lib/storage-agent/catalog.db boot-a /var/lib/boot-pool/ids
t0=$(date +%s)
systemctl start storage-agent
for i in $(seq 1800); do
  journalctl -u storage-agent -o cat | grep -q '"msg":"cycle done"' && break
  sleep 1
done
journalctl -u storage-agent -o cat | grep -q '"msg":"cycle done"' || { journalctl -u storage-agent --no-pager | tail -30; exit 1; }
ts "the packaged agent's first (cold) cycle over $N projects done $(( $(date +%s) - t0 )) s after its start"
echo "$(( $(date +%s) - t0 ))" >"$R/boot-cold-cycle-seconds"
journalctl -u storage-agent -o cat | grep '"msg":"cycle done"' | head -1 >"$R/boot-cold-cycle.json"
sync
ts "rebooting"
touch /mnt/reboot
