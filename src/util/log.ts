// Structured JSON-lines logs (journald-friendly). Never log key material or secrets:
// the redaction list drops common secret-bearing fields if they ever appear.
import { pino, type Logger } from 'pino';

export type { Logger };

export function makeLogger(opts: { level?: string; component: string; destination?: NodeJS.WritableStream }): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { component: opts.component, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['privateKey', 'password', '*.privateKey', '*.password', 'key', '*.key'], remove: true },
      formatters: { level: (label) => ({ level: label }) },
    },
    (opts.destination ?? process.stdout) as pino.DestinationStream,
  );
}

/** A logger that discards everything (tests, one-shot CLI commands with --json). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
