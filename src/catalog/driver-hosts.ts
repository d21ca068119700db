// Works around cassandra-driver 4.10's replaced hosts (no fix upstream up to 4.10.0).
//
// Root cause (read in the driver's source, reproduced with its own classes): when the
// control connection cannot borrow a pooled connection after a node restart, it
// re-initializes (control-connection.js _refreshControlConnection -> _initializeConnection,
// NODEJS-632) and _setLocalInfo(initializing) puts a NEW Host object for the node it
// connected to into client.hosts. HostMap.set emits 'remove' for the old Host, and the
// client only drops its listeners: the old Host is never shut down. Its pool keeps the
// connection it had, or reconnects on its own schedule (up to every 60 s, for ever), and
// client.shutdown(), which walks client.hosts, never reaches it: sockets open after
// shutdown(), and a process that cannot exit. Second effect: the token map was built once,
// at connect, with the old Host, and TokenAwarePolicy skips the child policy's hosts by
// address, so routed queries go only to the old Host and fail with NoHostAvailable while it
// is down, although the new one is up.
//
// What this does: on a replacement, rebuild the token map and the keyspaces' replica
// caches from client.hosts (so routing sees the new Host), then shut the old Host down.
// After client.shutdown(), shut down every Host ever seen and the control connection's
// socket, and keep doing so for a late refresh that was in flight at shutdown.
// It touches driver internals (Host.shutdown, metadata.buildTokens, keyspace.replicas,
// controlConnection.connection): test/cassandra-cluster checks the effect (no socket open
// after close, routed queries served after a restart), so a driver upgrade that changes
// them fails there, loudly.
import type { Client } from 'cassandra-driver';

interface DriverHost {
  address: string;
  shutdown?(waitForPending?: boolean): Promise<void>;
}
interface HostMapLike {
  values(): DriverHost[];
  forEach(fn: (h: DriverHost) => void): void;
  on(ev: 'add' | 'remove', fn: (h: DriverHost) => void): void;
  removeListener(ev: 'add' | 'remove', fn: (h: DriverHost) => void): void;
}
interface Internals {
  hosts: HostMapLike;
  metadata?: { buildTokens?(hosts: HostMapLike): void; keyspaces?: Record<string, { replicas?: unknown; tokenToReplica?: unknown }> };
  controlConnection?: { connection?: { close?(): void } | null; shutdown?(): void };
}

export interface HostGuard {
  /** Hosts the driver replaced and left running, shut down by the guard */
  replaced(): number;
  /** After client.shutdown(): every Host and the control connection socket, now and later. */
  afterShutdown(): void;
}

/** a Host's shutdown runs in the background: nothing waits for it, a failure is moot */
const settle = (p: Promise<unknown> | undefined): void => void p?.catch(() => undefined);

export function guardHosts(client: Client, onReplace?: (address: string) => void): HostGuard {
  const c = client as unknown as Internals;
  const seen = new Set<DriverHost>();
  let replacedCount = 0;
  let closed = false;
  c.hosts.forEach((h) => seen.add(h));
  const onAdd = (h: DriverHost) => {
    seen.add(h);
    if (closed) setImmediate(sweep); // a refresh that was in flight at shutdown
  };
  const onRemove = (old: DriverHost) => {
    seen.add(old);
    // HostMap.set emits remove(old) then add(new): look once both happened
    setImmediate(() => {
      const now = c.hosts.values().find((h) => h.address === old.address);
      if (!now || now === old) return; // removed for good (the driver shuts it down) or re-set as is
      replacedCount++;
      if (!closed) {
        try {
          c.metadata?.buildTokens?.(c.hosts);
          for (const ks of Object.values(c.metadata?.keyspaces ?? {})) ks.replicas = null;
        } catch {
          /* the routing stays as it was: queries still reach the node through the child policy once the old host is gone */
        }
      }
      settle(old.shutdown?.(false));
      onReplace?.(old.address);
    });
  };
  c.hosts.on('add', onAdd);
  c.hosts.on('remove', onRemove);

  function sweep(): void {
    for (const h of [...seen, ...c.hosts.values()]) settle(h.shutdown?.(false));
    try {
      c.controlConnection?.connection?.close?.();
    } catch {
      /* best effort */
    }
  }

  return {
    replaced: () => replacedCount,
    afterShutdown() {
      closed = true;
      sweep();
      // past connectTimeout + readTimeout of an attempt that was under way at shutdown
      const late = setTimeout(() => {
        sweep();
        c.hosts.removeListener('add', onAdd);
        c.hosts.removeListener('remove', onRemove);
      }, 16_000);
      late.unref();
    },
  };
}
