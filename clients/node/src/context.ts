/**
 * Canonical encoding of an encryption context: the exact bytes the service binds to a wrapped
 * key as associated data (docs/wrapped-key-format.md, "Encryption context encoding"), and the
 * copy an envelope header carries (docs/envelope-format.md, "Encryption context").
 *
 *     uint16  number of entries N (0-64)
 *     N times, sorted by the UTF-8 bytes of the keys, strictly ascending:
 *         uint16  len(key)    1-128
 *         key                 len(key) bytes of UTF-8
 *         uint16  len(value)  0-1024
 *         value               len(value) bytes of UTF-8
 *     at most 8192 bytes in all; the empty context is 00 00
 */

import { InvalidCiphertext, InvalidEncryptionContext } from "./errors";

export const MAX_ENTRIES = 64;
export const MAX_KEY_BYTES = 128;
export const MAX_VALUE_BYTES = 1024;
export const MAX_ENCODED_BYTES = 8192;

/** A map of non-secret strings; a `Map` or a plain object (own enumerable string keys). */
export type EncryptionContext = Readonly<Record<string, string>> | ReadonlyMap<string, string>;

const MALFORMED = "malformed encryption context in header";
// fatal: invalid UTF-8 is refused, not replaced; ignoreBOM: a leading U+FEFF is kept as data.
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function entriesOf(context: EncryptionContext | null | undefined): [unknown, unknown][] {
  if (context === undefined || context === null) {
    return [];
  }
  if (context instanceof Map) {
    return [...context.entries()];
  }
  if (typeof context !== "object") {
    throw new InvalidEncryptionContext("an encryption context is a Map or an object of strings");
  }
  return Object.entries(context);
}

/**
 * The canonical encoding of `context` (undefined is the empty context). Throws
 * InvalidEncryptionContext naming the broken limit, never echoing a key or value.
 */
export function encodeContext(context?: EncryptionContext | null): Buffer {
  const entries = entriesOf(context);
  if (entries.length > MAX_ENTRIES) {
    throw new InvalidEncryptionContext(`encryption context has more than ${MAX_ENTRIES} entries`);
  }
  const encoded: [Buffer, Buffer][] = [];
  for (const [key, value] of entries) {
    if (typeof key !== "string" || typeof value !== "string") {
      throw new InvalidEncryptionContext("encryption context keys and values must be strings");
    }
    // A lone surrogate has no UTF-8 encoding; Buffer.from would silently replace it.
    if (!key.isWellFormed() || !value.isWellFormed()) {
      throw new InvalidEncryptionContext("encryption context is not valid Unicode");
    }
    const keyBytes = Buffer.from(key, "utf8");
    const valueBytes = Buffer.from(value, "utf8");
    if (keyBytes.length < 1 || keyBytes.length > MAX_KEY_BYTES) {
      throw new InvalidEncryptionContext(`encryption context keys must be 1-${MAX_KEY_BYTES} bytes`);
    }
    if (valueBytes.length > MAX_VALUE_BYTES) {
      throw new InvalidEncryptionContext(`encryption context values must be at most ${MAX_VALUE_BYTES} bytes`);
    }
    encoded.push([keyBytes, valueBytes]);
  }
  encoded.sort(([a], [b]) => Buffer.compare(a, b));
  let size = 2;
  for (const [key, value] of encoded) {
    size += 4 + key.length + value.length;
  }
  if (size > MAX_ENCODED_BYTES) {
    throw new InvalidEncryptionContext(`encryption context exceeds ${MAX_ENCODED_BYTES} bytes encoded`);
  }
  const out = Buffer.alloc(size);
  let offset = out.writeUInt16BE(encoded.length, 0);
  for (const [key, value] of encoded) {
    offset = out.writeUInt16BE(key.length, offset);
    offset += key.copy(out, offset);
    offset = out.writeUInt16BE(value.length, offset);
    offset += value.copy(out, offset);
  }
  return out;
}

/**
 * The context whose canonical encoding is exactly `encoded`, as a frozen object without a
 * prototype. Only canonical input is accepted (keys strictly ascending, so no duplicates; every
 * limit respected; strict UTF-8; nothing left over), so decoding and encoding are inverse
 * bijections. Throws InvalidCiphertext otherwise: these bytes come from a ciphertext header.
 */
export function decodeContext(encoded: Uint8Array): Readonly<Record<string, string>> {
  const data = Buffer.from(encoded.buffer, encoded.byteOffset, encoded.byteLength);
  if (data.length < 2 || data.length > MAX_ENCODED_BYTES) {
    throw new InvalidCiphertext(MALFORMED);
  }
  const count = data.readUInt16BE(0);
  if (count > MAX_ENTRIES) {
    throw new InvalidCiphertext(MALFORMED);
  }
  let offset = 2;
  const field = (minimum: number, limit: number): Buffer => {
    if (offset + 2 > data.length) {
      throw new InvalidCiphertext(MALFORMED);
    }
    const length = data.readUInt16BE(offset);
    if (length < minimum || length > limit || offset + 2 + length > data.length) {
      throw new InvalidCiphertext(MALFORMED);
    }
    const bytes = data.subarray(offset + 2, offset + 2 + length);
    offset += 2 + length;
    return bytes;
  };
  const context: Record<string, string> = Object.create(null);
  let previous: Buffer | undefined;
  try {
    for (let i = 0; i < count; i++) {
      const key = field(1, MAX_KEY_BYTES);
      const value = field(0, MAX_VALUE_BYTES);
      if (previous !== undefined && Buffer.compare(key, previous) <= 0) {
        throw new InvalidCiphertext(MALFORMED);
      }
      previous = key;
      context[strictUtf8.decode(key)] = strictUtf8.decode(value);
    }
  } catch (error) {
    throw error instanceof InvalidCiphertext ? error : new InvalidCiphertext(MALFORMED);
  }
  if (offset !== data.length) {
    throw new InvalidCiphertext(MALFORMED);
  }
  return Object.freeze(context);
}

/** A copy of `context` as a plain object without a prototype (what the gRPC request takes). */
export function contextRecord(context?: EncryptionContext | null): Record<string, string> {
  const record: Record<string, string> = Object.create(null);
  for (const [key, value] of entriesOf(context)) {
    record[key as string] = value as string;
  }
  return record;
}
