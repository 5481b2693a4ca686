/**
 * Opt-in data key caching: fewer calls to the service, at a price stated here.
 *
 * Without caching every `encrypt` asks the service for a fresh data key and every `decrypt`
 * asks it to unwrap one. With `new KmsClient(target, { dataKeyCaching: {} })`:
 *
 * - `encrypt` reuses one data key for many messages under the same key id and encryption
 *   context, until the first of `maxAgeMs`, `maxMessages` messages or `maxBytes` plaintext bytes
 *   is reached. Streams (`encryptStream`) always get a fresh data key: their length is unknown
 *   in advance, and one service call is nothing beside a large stream.
 * - `decrypt` keeps unwrapped data keys, keyed by the exact wrapped key and encryption context
 *   the service accepted, for `decryptMaxAgeMs`, at most `decryptMaxEntries` of them. A cached
 *   key opens only headers that name the key id the service reported for it: the check a cache
 *   miss makes is made on every hit too.
 *
 * Why reuse is safe, and what the limits are for: every message draws a fresh 256-bit salt and
 * derives its own frame key, header key and commitment from (data key, salt) with HKDF, so no
 * AES-GCM key ever sees more than one message, whatever the cache does. The limits bound
 *
 * - the blast radius of one data key: a plaintext data key that leaks (a core dump, a memory
 *   disclosure) opens every message encrypted under it: at most `maxMessages` messages and
 *   `maxBytes` bytes, from a window of `maxAgeMs`;
 * - how long changes at the service take to bite: after RotateKey new messages still use the
 *   old version's cached data key for up to `maxAgeMs`; after a version is disabled, a client
 *   with a cached unwrapped key still decrypts for up to `decryptMaxAgeMs`; and the service's
 *   audit trail sees one call per data key, not one per message;
 * - memory: at most `maxEntries` + `decryptMaxEntries` keys of 32 bytes, least recently used
 *   evicted first.
 *
 * The defaults are the Python SDK's, deliberately conservative (5 minutes, 2^16 messages, 2^32
 * bytes, 256 and 1024 entries); the hard ceilings (a day, 2^32 messages, 2^40 bytes) keep a data
 * key from living unbounded.
 *
 * The cache holds its own copy of every key in a Buffer that is zeroed (`fill(0)`) when the
 * entry leaves: evicted as least recently used, expired, used up (`maxMessages`, `maxBytes`),
 * replaced, or cleared (`clearDataKeyCache()`, `close()`). Expiry is checked at every cache
 * operation, so the keys of an idle client are zeroed at its next encrypt or decrypt,
 * `clearDataKeyCache()` or `close()`; there is no timer. Keys never appear
 * in `inspect`, `JSON.stringify`, `toString` or an error message. (JavaScript gives no control
 * over copies the runtime or the transport made before the SDK got the bytes.)
 */

import { inspect } from "node:util";

import { DataKey } from "./types";

export const MAX_AGE_CEILING_MS = 24 * 3600 * 1000;
export const MAX_MESSAGES_CEILING = 2 ** 32;
export const MAX_BYTES_CEILING = 2 ** 40;

export interface DataKeyCachingOptions {
  /** How long a data key encrypts new messages, in ms (default 300,000; at most a day). */
  maxAgeMs?: number;
  /** Messages per data key (default 2^16; at most 2^32). */
  maxMessages?: number;
  /** Plaintext bytes per data key (default 2^32; at most 2^40). */
  maxBytes?: number;
  /** (key id, context) pairs cached for encrypt (default 256; 0 turns encrypt-side caching off). */
  maxEntries?: number;
  /** How long an unwrapped data key is kept, in ms (default 300,000; at most a day). */
  decryptMaxAgeMs?: number;
  /** Unwrapped data keys kept (default 1024; 0 turns decrypt-side caching off). */
  decryptMaxEntries?: number;
  /** Milliseconds on a monotonic clock (default `performance.now`); injectable for tests. */
  clock?: () => number;
}

/** The validated limits of the data key caches of one client. */
export class DataKeyCaching {
  readonly maxAgeMs: number;
  readonly maxMessages: number;
  readonly maxBytes: number;
  readonly maxEntries: number;
  readonly decryptMaxAgeMs: number;
  readonly decryptMaxEntries: number;
  readonly clock: () => number;

  constructor(options: DataKeyCachingOptions = {}) {
    this.maxAgeMs = options.maxAgeMs ?? 300_000;
    this.maxMessages = options.maxMessages ?? 2 ** 16;
    this.maxBytes = options.maxBytes ?? 2 ** 32;
    this.maxEntries = options.maxEntries ?? 256;
    this.decryptMaxAgeMs = options.decryptMaxAgeMs ?? 300_000;
    this.decryptMaxEntries = options.decryptMaxEntries ?? 1024;
    this.clock = options.clock ?? (() => performance.now());
    const checks: [boolean, string][] = [
      [isAge(this.maxAgeMs), `maxAgeMs must be in (0, ${MAX_AGE_CEILING_MS}] ms`],
      [isAge(this.decryptMaxAgeMs), `decryptMaxAgeMs must be in (0, ${MAX_AGE_CEILING_MS}] ms`],
      [isInteger(this.maxMessages, 1, MAX_MESSAGES_CEILING), `maxMessages must be an integer from 1 to ${MAX_MESSAGES_CEILING}`],
      [isInteger(this.maxBytes, 1, MAX_BYTES_CEILING), `maxBytes must be an integer from 1 to ${MAX_BYTES_CEILING}`],
      [isInteger(this.maxEntries, 0, Number.MAX_SAFE_INTEGER), "maxEntries must be an integer >= 0 (0 turns encrypt-side caching off)"],
      [isInteger(this.decryptMaxEntries, 0, Number.MAX_SAFE_INTEGER), "decryptMaxEntries must be an integer >= 0 (0 turns decrypt-side caching off)"],
      [typeof this.clock === "function", "clock must be a function returning milliseconds"],
    ];
    for (const [ok, message] of checks) {
      if (!ok) {
        throw new RangeError(message);
      }
    }
    Object.freeze(this);
  }
}

function isAge(value: number): boolean {
  return typeof value === "number" && value > 0 && value <= MAX_AGE_CEILING_MS;
}

function isInteger(value: number, low: number, high: number): boolean {
  return Number.isInteger(value) && value >= low && value <= high;
}

/**
 * A cached data key: the cache's own copy of the plaintext, and what the encrypt side has
 * sealed under it. Zeroed when the cache lets go of it (at once, or when the use in progress
 * ends: see `DataKeyCache`).
 */
class Entry {
  readonly dataKey: DataKey;
  sealedMessages = 0;
  sealedBytes = 0;
  #inUse = false;
  #retired = false;

  constructor(dataKey: DataKey) {
    this.dataKey = dataKey.copy();
  }

  /** Runs `use` on the key; an entry retired meanwhile is zeroed when `use` returns. */
  lease<T>(use: (dataKey: DataKey) => T): T {
    this.#inUse = true;
    try {
      return use(this.dataKey);
    } finally {
      this.#inUse = false;
      if (this.#retired) {
        this.dataKey.destroy();
      }
    }
  }

  retire(): void {
    this.#retired = true;
    if (!this.#inUse) {
      this.dataKey.destroy();
    }
  }
}

/**
 * An LRU map of cached data keys, each expiring `maxAgeMs` after insertion. Expired entries are
 * swept (and zeroed) at every operation; every entry that leaves is retired.
 */
class KeyMap {
  readonly #lru = new Map<string, Entry>(); // insertion order = least recently used first
  readonly #born = new Map<string, number>(); // insertion order = oldest first: the expiry order
  readonly #maxEntries: number;
  readonly #maxAgeMs: number;
  readonly #clock: () => number;

  constructor(maxEntries: number, maxAgeMs: number, clock: () => number) {
    this.#maxEntries = maxEntries;
    this.#maxAgeMs = maxAgeMs;
    this.#clock = clock;
  }

  get size(): number {
    return this.#lru.size;
  }

  get enabled(): boolean {
    return this.#maxEntries > 0;
  }

  /** The live entry for `slot`, now the most recently used. */
  get(slot: string): Entry | undefined {
    this.#expire();
    const entry = this.#lru.get(slot);
    if (entry !== undefined) {
      this.#lru.delete(slot);
      this.#lru.set(slot, entry);
    }
    return entry;
  }

  /** Inserts `entry`, retiring the one it replaces and the least recently used beyond the limit. */
  put(slot: string, entry: Entry): void {
    this.#expire();
    if (!this.enabled) {
      entry.retire();
      return;
    }
    this.discard(slot);
    this.#lru.set(slot, entry);
    this.#born.set(slot, this.#clock());
    while (this.#lru.size > this.#maxEntries) {
      this.discard(this.#lru.keys().next().value!);
    }
  }

  discard(slot: string): void {
    const entry = this.#lru.get(slot);
    if (entry !== undefined) {
      this.#lru.delete(slot);
      this.#born.delete(slot);
      entry.retire();
    }
  }

  clear(): void {
    for (const entry of this.#lru.values()) {
      entry.retire();
    }
    this.#lru.clear();
    this.#born.clear();
  }

  discardWhere(matches: (slot: string) => boolean): void {
    for (const slot of [...this.#lru.keys()].filter(matches)) {
      this.discard(slot);
    }
  }

  #expire(): void {
    const now = this.#clock();
    for (const [slot, born] of this.#born) {
      if (now - born < this.#maxAgeMs) {
        return;
      }
      this.discard(slot);
    }
  }
}

/** Whether a decrypt slot's wrapped key (formats 1 and 2 name their key at [2, 2+L)) is under `keyId`. */
function wrappedUnder(slot: string, keyId: string): boolean {
  const colon = slot.indexOf(":");
  const wrapped = slot.slice(colon + 1, colon + 1 + Number(slot.slice(0, colon)));
  return wrapped.length > 2 && wrapped.slice(2, 2 + wrapped.charCodeAt(1)) === keyId;
}

/** An unambiguous map key for a sequence of byte strings (latin1 is one char per byte). */
function slotOf(...parts: (Uint8Array | string)[]): string {
  return parts
    .map((part) => {
      const text = typeof part === "string" ? part : Buffer.from(part.buffer, part.byteOffset, part.byteLength).toString("latin1");
      return `${text.length}:${text}`;
    })
    .join("");
}

/**
 * Both caches of one client. JavaScript runs one piece of code at a time, so each method is
 * atomic: concurrent encrypts can never push a key past its message or byte limit. Two
 * encrypts that miss at once each fetch a key; the later one takes the slot (and the earlier
 * one's copy is zeroed).
 *
 * `useForEncrypt` and `useForDecrypt` lend a cached key to a synchronous function: the key is
 * not zeroed before that function returns, even if its entry leaves the cache meanwhile. Keep
 * no reference to it (nor to the Buffer) beyond that call.
 */
export class DataKeyCache {
  readonly policy: DataKeyCaching;
  readonly #encrypt: KeyMap;
  readonly #decrypt: KeyMap;

  constructor(policy: DataKeyCaching) {
    this.policy = policy;
    this.#encrypt = new KeyMap(policy.maxEntries, policy.maxAgeMs, policy.clock);
    this.#decrypt = new KeyMap(policy.decryptMaxEntries, policy.decryptMaxAgeMs, policy.clock);
  }

  /**
   * `use(key)` with a cached data key that has room for one more message of `plaintextBytes`,
   * that message counted; `miss` (undefined) when there is none. An exhausted entry is dropped
   * and zeroed; one that this message uses up is zeroed once `use` returns.
   */
  useForEncrypt<T>(keyId: string, encodedContext: Uint8Array, plaintextBytes: number, use: (dataKey: DataKey) => T): { hit: true; value: T } | { hit: false } {
    const slot = slotOf(keyId, encodedContext);
    const entry = this.#encrypt.get(slot);
    if (entry === undefined) {
      return { hit: false };
    }
    if (entry.sealedMessages >= this.policy.maxMessages || entry.sealedBytes + plaintextBytes > this.policy.maxBytes) {
      this.#encrypt.discard(slot);
      return { hit: false };
    }
    entry.sealedMessages += 1;
    entry.sealedBytes += plaintextBytes;
    try {
      return { hit: true, value: entry.lease(use) };
    } finally {
      if (this.#usedUp(entry)) {
        this.#encrypt.discard(slot); // no further message fits: zeroed now that this one is sealed
      }
    }
  }

  /**
   * Caches a copy of a fresh data key that was just used for one message of `plaintextBytes`
   * (nothing is copied when no further message could use it).
   */
  storeForEncrypt(keyId: string, encodedContext: Uint8Array, dataKey: DataKey, plaintextBytes: number): void {
    if (!this.#encrypt.enabled || this.policy.maxMessages <= 1 || plaintextBytes >= this.policy.maxBytes) {
      return;
    }
    const entry = new Entry(dataKey);
    entry.sealedMessages = 1;
    entry.sealedBytes = plaintextBytes;
    this.#encrypt.put(slotOf(keyId, encodedContext), entry);
  }

  /** `use(key)` with the data key cached for this wrapped key and context, if any. */
  useForDecrypt<T>(wrappedKey: Uint8Array, encodedContext: Uint8Array, use: (dataKey: DataKey) => T): { hit: true; value: T } | { hit: false } {
    const entry = this.#decrypt.get(slotOf(wrappedKey, encodedContext));
    return entry === undefined ? { hit: false } : { hit: true, value: entry.lease(use) };
  }

  /** Caches a copy of the data key the service unwrapped from `wrappedKey` under this context. */
  storeForDecrypt(wrappedKey: Uint8Array, encodedContext: Uint8Array, dataKey: DataKey): void {
    if (this.#decrypt.enabled) {
      this.#decrypt.put(slotOf(wrappedKey, encodedContext), new Entry(dataKey));
    }
  }

  /** Drops and zeroes every cached key. */
  clear(): void {
    this.#encrypt.clear();
    this.#decrypt.clear();
  }

  /**
   * Drops and zeroes the keys of `keyId` whose encryption context holds `subject` as a value
   * (after eraseSubject, no data key of that subject is used again here). Matching is on the
   * canonical context encoding, so an entry that merely contains those bytes goes too: that
   * costs at most one more call to the service.
   */
  forgetSubject(keyId: string, subject: string): void {
    const encoded = Buffer.from(subject, "utf8");
    const length = Buffer.alloc(2);
    length.writeUInt16BE(encoded.length);
    const needle = Buffer.concat([length, encoded]).toString("latin1");
    const named = slotOf(keyId);
    this.#encrypt.discardWhere((slot) => slot.startsWith(named) && slot.includes(needle));
    this.#decrypt.discardWhere((slot) => wrappedUnder(slot, keyId) && slot.includes(needle));
  }

  #usedUp(entry: Entry): boolean {
    return entry.sealedMessages >= this.policy.maxMessages || entry.sealedBytes >= this.policy.maxBytes;
  }

  toJSON(): object {
    return { encryptEntries: this.#encrypt.size, decryptEntries: this.#decrypt.size };
  }

  [inspect.custom](): string {
    return `DataKeyCache { encryptEntries: ${this.#encrypt.size}, decryptEntries: ${this.#decrypt.size} }`;
  }
}
