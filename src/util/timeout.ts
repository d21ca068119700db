// A promise bounded in time: rejects with TimeoutError(message()) when `ms` pass first.
// The timer is cleared either way (a pending timer would keep a CLI process alive).

export class TimeoutError extends Error {
  override name = 'TimeoutError';
}

export function withTimeout<T>(p: Promise<T>, ms: number, message: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(message())), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
