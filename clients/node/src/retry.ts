/**
 * Retrying UNAVAILABLE (and RESOURCE_EXHAUSTED when the service said when) with exponential
 * backoff and full jitter, never past the caller's deadline and never for any other code.
 */

import { KmsError, ResourceExhausted, Unavailable } from "./errors";

export interface RetryPolicyOptions {
  /** Attempts in all, the first included (default 5; 1 turns retries off). */
  maxAttempts?: number;
  /** Upper bound of the first wait, in ms (default 50). */
  initialBackoffMs?: number;
  /** Upper bound of any wait, in ms (default 2000). */
  maxBackoffMs?: number;
  /** Growth of the bound from one attempt to the next (default 2). */
  multiplier?: number;
}

/** What `RetryPolicy.run` needs from the outside world; injectable for tests. */
export interface RetryEnvironment {
  /** Milliseconds on a monotonic clock, the one `deadline` is on. */
  now(): number;
  sleep(ms: number): Promise<void>;
  /** Uniform in [0, 1). */
  random(): number;
}

export const SYSTEM_RETRY_ENVIRONMENT: RetryEnvironment = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  random: Math.random,
};

export class RetryPolicy {
  readonly maxAttempts: number;
  readonly initialBackoffMs: number;
  readonly maxBackoffMs: number;
  readonly multiplier: number;

  constructor(options: RetryPolicyOptions = {}) {
    this.maxAttempts = options.maxAttempts ?? 5;
    this.initialBackoffMs = options.initialBackoffMs ?? 50;
    this.maxBackoffMs = options.maxBackoffMs ?? 2000;
    this.multiplier = options.multiplier ?? 2;
    if (!Number.isInteger(this.maxAttempts) || this.maxAttempts < 1) {
      throw new RangeError("maxAttempts must be an integer of at least 1");
    }
    for (const [name, value] of [["initialBackoffMs", this.initialBackoffMs], ["maxBackoffMs", this.maxBackoffMs]] as const) {
      if (!Number.isFinite(value) || value < 0) {
        throw new RangeError(`${name} must be a finite number of milliseconds, at least 0`);
      }
    }
    if (!Number.isFinite(this.multiplier) || this.multiplier < 1) {
      throw new RangeError("multiplier must be at least 1");
    }
    Object.freeze(this);
  }

  /**
   * Calls `attempt(deadline)` until it succeeds, rejects with an error that is not retried,
   * runs out of attempts, or the next wait would reach `deadline` (on `env.now()`'s clock;
   * undefined: no deadline). The last error is the one rejected with.
   */
  async run<T>(
    attempt: (deadline: number | undefined) => Promise<T>,
    deadline: number | undefined,
    env: RetryEnvironment = SYSTEM_RETRY_ENVIRONMENT,
  ): Promise<T> {
    let backoff = this.initialBackoffMs;
    for (let number = 1; ; number++) {
      try {
        return await attempt(deadline);
      } catch (error) {
        const wait = this.#waitBefore(error, number, backoff, env);
        if (wait === undefined || (deadline !== undefined && env.now() + wait >= deadline)) {
          throw error;
        }
        await env.sleep(wait);
        backoff = Math.min(backoff * this.multiplier, this.maxBackoffMs);
      }
    }
  }

  /** The wait before attempt `number + 1`, or undefined when `error` ends the call. */
  #waitBefore(error: unknown, number: number, backoff: number, env: RetryEnvironment): number | undefined {
    if (number >= this.maxAttempts || !(error instanceof KmsError)) {
      return undefined;
    }
    const jitter = env.random() * backoff; // "full jitter": uniform in [0, backoff)
    if (error instanceof Unavailable) {
      return jitter;
    }
    if (error instanceof ResourceExhausted && error.retryAfterMs !== undefined) {
      return Math.max(jitter, error.retryAfterMs);
    }
    return undefined;
  }
}

/** For calls that must not be repeated (a lost response may hide a side effect). */
export const NO_RETRY = new RetryPolicy({ maxAttempts: 1 });
