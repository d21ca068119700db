// A bounded number of concurrent receives per peer, across the receiver's processes
// (each SSH session is its own process): a slot is a file <dir>/<peer>.<n> created
// exclusively and holding the session's pid. A slot whose process is gone is taken over.
import { mkdirSync, openSync, closeSync, writeSync, readFileSync, unlinkSync } from 'node:fs';

export interface Slot {
  release(): void;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A free slot for `peer`, or null when all `limit` are held by live sessions. */
export function acquireSlot(dir: string, peer: string, limit: number, pid = process.pid): Slot | null {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (let n = 0; n < limit; n++) {
    const path = `${dir}/${peer}.${n}`;
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(path, 'wx', 0o600);
        writeSync(fd, String(pid));
        closeSync(fd);
        return {
          release: () => {
            try {
              if (readFileSync(path, 'utf8') === String(pid)) unlinkSync(path);
            } catch {
              /* already gone */
            }
          },
        };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        let holder = NaN;
        try {
          holder = Number(readFileSync(path, 'utf8'));
        } catch {
          continue; // released meanwhile: try again
        }
        if (Number.isInteger(holder) && holder > 0 && alive(holder)) break; // held: next slot
        try {
          unlinkSync(path); // its session died without releasing it
        } catch {
          /* someone else took it over first */
        }
      }
    }
  }
  return null;
}
