/**
 * The envelope ciphertext format, version 1 (docs/envelope-format.md is the specification).
 *
 * This module is the SDK's hazmat layer: the only one that touches AES-GCM, HKDF and HMAC, and
 * the only one that knows the byte layout. Pure functions over bytes, no I/O and no service.
 *
 *     offset     size  field
 *     0          4     magic, "KMSE"
 *     4          1     format version, 0x01
 *     5          2     algorithm suite, 0x0001
 *     7          4     frame size F: plaintext bytes in every non-final frame, 1 to 2^22
 *     11         32    salt, random per message
 *     43         1     key id length L, 1 to 64
 *     44         L     key id, ASCII [A-Za-z0-9_-]
 *     44+L       2     encoded context length C, 2 to 8192
 *     46+L       C     encryption context, canonical encoding (./context)
 *     46+L+C     32    commitment
 *     78+L+C     32    header tag: HMAC-SHA256(header key, bytes [0, 78+L+C))
 *     110+L+C    2     wrapped key length W, 1 to 1024
 *     112+L+C    W     wrapped data key (the service's format, opaque to the SDK)
 *     112+L+C+W        frames: AES-256-GCM(frame key, nonce(i, final), frame plaintext, aad=header tag)
 *
 *     frame key || header key || commitment = HKDF-SHA256(ikm=data key, salt=salt,
 *                                                         info="KMSE" 01 0001, length=96)
 *     nonce(i, final) = uint88 i || (0x01 if final else 0x00)
 *
 * Every non-final frame holds exactly F plaintext bytes; the final frame holds 0 to F-1, so a
 * frame's role follows from its length alone and the empty message is one empty final frame.
 * Everything before the header tag is authenticated; the wrapped key after it is not, which is
 * what lets `rewrap` replace it without the data key. A wrapped key for any other data key
 * fails the commitment check, which runs (with the header tag check) before any frame opens.
 */

import { createCipheriv, createDecipheriv, createHmac, hkdfSync, timingSafeEqual } from "node:crypto";
import { inspect } from "node:util";

import { decodeContext } from "./context";
import { InvalidArgument, InvalidCiphertext, TruncatedCiphertext } from "./errors";

export const FORMAT_VERSION = 1;
export const SUITE_AES256_GCM_HKDF_SHA256_COMMIT = 0x0001;
export const DEFAULT_FRAME_SIZE = 64 * 1024;
export const MAX_FRAME_SIZE = 4 * 1024 * 1024;
/** Frame indexes run from 0 to 2^32 - 1; the nonce has room for 88 bits. */
export const MAX_FRAMES = 2 ** 32;
export const MAX_WRAPPED_KEY_BYTES = 1024;
export const DATA_KEY_BYTES = 32;
export const SALT_BYTES = 32;
export const COMMITMENT_BYTES = 32;
/** The header tag (HMAC-SHA256). */
export const HEADER_TAG_BYTES = 32;
/** The AES-GCM tag that ends every frame. */
export const FRAME_TAG_BYTES = 16;
/** 112 + 64 (key id) + 8192 (context) + 1024 (wrapped key). */
export const MAX_HEADER_BYTES = 9392;
/** The one message of every integrity failure that must not say which check failed. */
export const INVALID = "ciphertext is invalid or does not match the encryption context";

const MAGIC = Buffer.from("KMSE", "latin1");
const KDF_INFO = Buffer.from([0x4b, 0x4d, 0x53, 0x45, FORMAT_VERSION, 0x00, SUITE_AES256_GCM_HKDF_SHA256_COMMIT]);
const KEY_ID = /^[A-Za-z0-9_-]{1,64}$/;
const AES_GCM = "aes-256-gcm";

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function checkWrappedKey(wrappedKey: Uint8Array): void {
  if (wrappedKey.length < 1 || wrappedKey.length > MAX_WRAPPED_KEY_BYTES) {
    throw new InvalidArgument(`a wrapped key must be 1 to ${MAX_WRAPPED_KEY_BYTES} bytes`);
  }
}

/** `frameSize` when it is an integer from 1 to MAX_FRAME_SIZE; throws InvalidArgument otherwise. */
export function checkFrameSize(frameSize: unknown): number {
  if (typeof frameSize !== "number" || !Number.isInteger(frameSize) || frameSize < 1 || frameSize > MAX_FRAME_SIZE) {
    throw new InvalidArgument(`frameSize must be an integer from 1 to ${MAX_FRAME_SIZE}`);
  }
  return frameSize;
}

// -- the header -------------------------------------------------------------------------------

export interface HeaderFields {
  keyId: string;
  encodedContext: Uint8Array;
  frameSize: number;
  salt: Uint8Array;
  commitment: Uint8Array;
  headerTag: Uint8Array;
  wrappedKey: Uint8Array;
}

/**
 * A parsed envelope header. Fields are as received: nothing here is authenticated until
 * `openHeader` has checked the commitment and the header tag with the data key. Holds copies
 * of its bytes (never a view into the ciphertext it came from). Nothing in it is secret; it
 * prints as its key id, context and frame size.
 */
export class Header {
  readonly keyId: string;
  readonly context: Readonly<Record<string, string>>;
  readonly frameSize: number;
  readonly encodedContext: Buffer;
  readonly salt: Buffer;
  readonly commitment: Buffer;
  readonly headerTag: Buffer;
  readonly wrappedKey: Buffer;

  constructor(fields: HeaderFields) {
    this.keyId = fields.keyId;
    this.encodedContext = Buffer.from(fields.encodedContext);
    this.context = decodeContext(this.encodedContext);
    this.frameSize = fields.frameSize;
    this.salt = Buffer.from(fields.salt);
    this.commitment = Buffer.from(fields.commitment);
    this.headerTag = Buffer.from(fields.headerTag);
    this.wrappedKey = Buffer.from(fields.wrappedKey);
    Object.freeze(this);
  }

  /** The header's length in bytes: the offset of the first frame. */
  get length(): number {
    return 112 + this.keyId.length + this.encodedContext.length + this.wrappedKey.length;
  }

  /** Offset of the wrapped key length field: everything before it is authenticated. */
  get wrappedKeyOffset(): number {
    return 110 + this.keyId.length + this.encodedContext.length;
  }

  /** Bytes [0, 78+L+C): every field before the header tag. */
  authenticatedBytes(): Buffer {
    const out = Buffer.alloc(78 + this.keyId.length + this.encodedContext.length);
    let offset = MAGIC.copy(out, 0);
    offset = out.writeUInt8(FORMAT_VERSION, offset);
    offset = out.writeUInt16BE(SUITE_AES256_GCM_HKDF_SHA256_COMMIT, offset);
    offset = out.writeUInt32BE(this.frameSize, offset);
    offset += this.salt.copy(out, offset);
    offset = out.writeUInt8(this.keyId.length, offset);
    offset += out.write(this.keyId, offset, "latin1");
    offset = out.writeUInt16BE(this.encodedContext.length, offset);
    offset += this.encodedContext.copy(out, offset);
    this.commitment.copy(out, offset);
    return out;
  }

  /** The header's bytes, as written at the start of a ciphertext. */
  encode(): Buffer {
    const authenticated = this.authenticatedBytes();
    const out = Buffer.alloc(this.length);
    let offset = authenticated.copy(out, 0);
    offset += this.headerTag.copy(out, offset);
    offset = out.writeUInt16BE(this.wrappedKey.length, offset);
    this.wrappedKey.copy(out, offset);
    return out;
  }

  /** This header with another wrapped key: what re-wrapping changes, and all it changes. */
  withWrappedKey(wrappedKey: Uint8Array): Header {
    checkWrappedKey(wrappedKey);
    return new Header({ ...this, wrappedKey });
  }

  toJSON(): object {
    return { keyId: this.keyId, context: { ...this.context }, frameSize: this.frameSize };
  }

  [inspect.custom](_depth: number, options: object): string {
    return `Header ${inspect(this.toJSON(), options)}`;
  }
}

/**
 * The header at the start of `data` (its length is `header.length`; the frames follow).
 * Throws TruncatedCiphertext when `data` ends inside the header, InvalidCiphertext for anything
 * that is not a version 1 header: unknown magic, version or suite, a length out of its range,
 * a key id outside the alphabet, a context that is not canonical.
 */
export function parseHeader(data: Uint8Array): Header {
  const bytes = asBuffer(data);
  let offset = 0;
  const read = (count: number): Buffer => {
    if (offset + count > bytes.length) {
      throw new TruncatedCiphertext("ciphertext ends inside its header");
    }
    offset += count;
    return bytes.subarray(offset - count, offset);
  };
  const identity = read(7);
  if (!identity.subarray(0, 4).equals(MAGIC)) {
    throw new InvalidCiphertext("not an envelope ciphertext (bad magic)");
  }
  const version = identity[4]!;
  if (version !== FORMAT_VERSION) {
    throw new InvalidCiphertext(`unsupported envelope format version ${version} (this SDK reads ${FORMAT_VERSION})`);
  }
  const suite = identity.readUInt16BE(5);
  if (suite !== SUITE_AES256_GCM_HKDF_SHA256_COMMIT) {
    throw new InvalidCiphertext(`unsupported algorithm suite 0x${suite.toString(16).padStart(4, "0")}`);
  }
  const prefix = read(4 + SALT_BYTES + 1);
  const frameSize = prefix.readUInt32BE(0);
  if (frameSize < 1 || frameSize > MAX_FRAME_SIZE) {
    throw new InvalidCiphertext(`frame size must be 1 to ${MAX_FRAME_SIZE} bytes`);
  }
  const salt = prefix.subarray(4, 4 + SALT_BYTES);
  const keyId = read(prefix[4 + SALT_BYTES]!).toString("latin1");
  if (!KEY_ID.test(keyId)) {
    throw new InvalidCiphertext("malformed key id in header");
  }
  const contextLength = read(2).readUInt16BE(0);
  if (contextLength < 2 || contextLength > 8192) {
    throw new InvalidCiphertext("malformed encryption context in header");
  }
  const encodedContext = read(contextLength);
  decodeContext(encodedContext); // canonical, before anything after it is read
  const commitment = read(COMMITMENT_BYTES);
  const headerTag = read(HEADER_TAG_BYTES);
  const wrappedLength = read(2).readUInt16BE(0);
  if (wrappedLength < 1 || wrappedLength > MAX_WRAPPED_KEY_BYTES) {
    throw new InvalidCiphertext("malformed wrapped key in header");
  }
  const wrappedKey = read(wrappedLength);
  return new Header({ keyId, encodedContext, frameSize, salt, commitment, headerTag, wrappedKey });
}

/**
 * `ciphertext` with the wrapped key in its header replaced by `wrappedKey`; every other byte
 * (the authenticated header, its tag and the body) is kept. The result decrypts if and only if
 * `wrappedKey` wraps the same data key under the same context. Returns a copy of `ciphertext`
 * when the wrapped key is the same.
 */
export function replaceWrappedKey(ciphertext: Uint8Array, wrappedKey: Uint8Array): Buffer {
  const bytes = asBuffer(ciphertext);
  const header = parseHeader(bytes);
  checkWrappedKey(wrappedKey);
  const replacement = asBuffer(wrappedKey);
  if (replacement.equals(header.wrappedKey)) {
    return Buffer.from(bytes);
  }
  const length = Buffer.alloc(2);
  length.writeUInt16BE(replacement.length, 0);
  return Buffer.concat([bytes.subarray(0, header.wrappedKeyOffset), length, replacement, bytes.subarray(header.length)]);
}

// -- keys -------------------------------------------------------------------------------------

/** The per-message secrets derived from a data key and a salt. The caller zeroes them. */
interface MessageKeys {
  frameKey: Buffer;
  headerKey: Buffer;
  commitment: Buffer;
}

function deriveMessageKeys(dataKey: Uint8Array, salt: Uint8Array): MessageKeys {
  if (dataKey.length !== DATA_KEY_BYTES || salt.length !== SALT_BYTES) {
    throw new InvalidArgument("a data key and a salt are 32 bytes each");
  }
  const okm = Buffer.from(hkdfSync("sha256", dataKey, salt, KDF_INFO, 96));
  const keys = {
    frameKey: Buffer.from(okm.subarray(0, 32)),
    headerKey: Buffer.from(okm.subarray(32, 64)),
    commitment: Buffer.from(okm.subarray(64, 96)),
  };
  okm.fill(0);
  return keys;
}

/**
 * frame key, header key and commitment derived from `dataKey` and `salt`, as hex: for the
 * golden vectors' intermediate values only. Never call it with a live data key in production.
 */
export function deriveMessageKeysForTesting(dataKey: Uint8Array, salt: Uint8Array): Record<string, string> {
  const keys = deriveMessageKeys(dataKey, salt);
  const hex = { frameKey: keys.frameKey.toString("hex"), headerKey: keys.headerKey.toString("hex"), commitment: keys.commitment.toString("hex") };
  keys.frameKey.fill(0);
  keys.headerKey.fill(0);
  return hex;
}

function headerTagOf(headerKey: Buffer, authenticated: Buffer): Buffer {
  return createHmac("sha256", headerKey).update(authenticated).digest();
}

export interface SealHeaderOptions {
  keyId: string;
  encodedContext: Uint8Array;
  wrappedKey: Uint8Array;
  frameSize: number;
  salt: Uint8Array;
}

/** A new message's header and the sealer for its frames. `dataKey` is not kept. */
export function sealHeader(dataKey: Uint8Array, options: SealHeaderOptions): { header: Header; sealer: FrameSealer } {
  const frameSize = checkFrameSize(options.frameSize);
  checkWrappedKey(options.wrappedKey);
  if (typeof options.keyId !== "string" || !KEY_ID.test(options.keyId)) {
    throw new InvalidArgument("a key id is 1-64 characters of [A-Za-z0-9_-]");
  }
  const keys = deriveMessageKeys(dataKey, options.salt);
  try {
    const unsigned = new Header({ ...options, frameSize, commitment: keys.commitment, headerTag: Buffer.alloc(HEADER_TAG_BYTES) });
    const headerTag = headerTagOf(keys.headerKey, unsigned.authenticatedBytes());
    const header = new Header({ ...unsigned, headerTag });
    return { header, sealer: new FrameSealer(keys.frameKey, headerTag, frameSize) };
  } finally {
    keys.frameKey.fill(0);
    keys.headerKey.fill(0);
  }
}

/**
 * Checks the key commitment, then the header tag, both in constant time; returns the opener
 * for the frames. Throws InvalidCiphertext when `dataKey` is not the message's data key or any
 * authenticated header field was altered. `dataKey` is not kept.
 */
export function openHeader(dataKey: Uint8Array, header: Header): FrameOpener {
  const keys = deriveMessageKeys(dataKey, header.salt);
  try {
    if (!timingSafeEqual(keys.commitment, header.commitment)) {
      throw new InvalidCiphertext(INVALID);
    }
    const expected = headerTagOf(keys.headerKey, header.authenticatedBytes());
    if (!timingSafeEqual(expected, header.headerTag)) {
      throw new InvalidCiphertext(INVALID);
    }
    return new FrameOpener(keys.frameKey, header.headerTag, header.frameSize);
  } finally {
    keys.frameKey.fill(0);
    keys.headerKey.fill(0);
  }
}

// -- frames -----------------------------------------------------------------------------------

/** The 12-byte nonce of frame `index`: uint88 index || final flag. */
export function frameNonce(index: number, final: boolean): Buffer {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_FRAMES) {
    throw new InvalidCiphertext(`a message has at most ${MAX_FRAMES} frames`);
  }
  const nonce = Buffer.alloc(12);
  nonce.writeUInt32BE(index, 7);
  nonce[11] = final ? 1 : 0;
  return nonce;
}

function lengthOf(parts: readonly Uint8Array[]): number {
  let total = 0;
  for (const part of parts) {
    total += part.length;
  }
  return total;
}

/** Frame indexes of one message, handed out in order, each once, the final one last. */
abstract class Frames {
  readonly frameSize: number;
  #key: Buffer;
  readonly #aad: Buffer;
  readonly #nonce = Buffer.alloc(12);
  #index = 0;
  #finished = false;

  constructor(frameKey: Buffer, headerTag: Buffer, frameSize: number) {
    this.#key = Buffer.from(frameKey); // a copy: the caller zeroes its own
    this.#aad = Buffer.from(headerTag);
    this.frameSize = frameSize;
  }

  /** Frames handed out so far. */
  get count(): number {
    return this.#index;
  }

  /** Whether the final frame has been handed out. */
  get finished(): boolean {
    return this.#finished;
  }

  protected abstract afterFinal(): Error;
  protected abstract tooMany(): Error;

  /** The key and nonce of the next frame (its index reserved), and the AAD. */
  protected next(final: boolean): [Buffer, Buffer, Buffer] {
    if (this.#finished) {
      throw this.afterFinal();
    }
    if (this.#key.length === 0) {
      throw new Error("this frame cipher was destroyed");
    }
    const index = this.#index;
    if (index >= MAX_FRAMES) {
      throw this.tooMany();
    }
    this.#index = index + 1;
    this.#finished = final;
    this.#nonce.writeUInt32BE(index, 7); // bytes 0-6 stay zero below 2^32 frames
    this.#nonce[11] = final ? 1 : 0;
    return [this.#key, this.#nonce, this.#aad];
  }

  /** Zeroes the frame key; the object is unusable afterwards. Idempotent. */
  destroy(): void {
    this.#key.fill(0);
    this.#key = Buffer.alloc(0);
  }

  [inspect.custom](): string {
    return `${this.constructor.name} { frameSize: ${this.frameSize}, frames: ${this.#index}, finished: ${this.#finished} }`;
  }

  toJSON(): object {
    return { frameSize: this.frameSize, frames: this.#index, finished: this.#finished };
  }
}

/**
 * Seals one message's frames in order: `frameSize` bytes for each non-final frame, fewer for
 * the final one.
 */
export class FrameSealer extends Frames {
  protected afterFinal(): Error {
    return new Error("the final frame of this message is already sealed");
  }

  protected tooMany(): Error {
    return new InvalidArgument(`plaintext needs more than ${MAX_FRAMES} frames of ${this.frameSize} bytes`);
  }

  /**
   * Seals the next frame, whose plaintext is the concatenation of `parts` (exactly `frameSize`
   * bytes unless `final`, fewer if `final`). Returns the sealed frame as consecutive pieces:
   * the ciphertext, then the 16-byte tag.
   */
  seal(parts: readonly Uint8Array[], final: boolean): Buffer[] {
    const length = lengthOf(parts);
    if (final ? length >= this.frameSize : length !== this.frameSize) {
      throw new RangeError("a non-final frame holds exactly frameSize bytes, the final frame fewer");
    }
    const [key, nonce, aad] = this.next(final);
    const cipher = createCipheriv(AES_GCM, key, nonce, { authTagLength: FRAME_TAG_BYTES });
    cipher.setAAD(aad);
    const out: Buffer[] = [];
    for (const part of parts) {
      if (part.length > 0) {
        out.push(cipher.update(part));
      }
    }
    const rest = cipher.final();
    if (rest.length > 0) {
      out.push(rest);
    }
    out.push(cipher.getAuthTag());
    return out;
  }
}

/** Opens one message's frames in order; exists only once `openHeader` has passed. */
export class FrameOpener extends Frames {
  protected afterFinal(): Error {
    return new InvalidCiphertext("data after the final frame");
  }

  protected tooMany(): Error {
    return new InvalidCiphertext(`a message has at most ${MAX_FRAMES} frames`);
  }

  /**
   * Opens the next frame, given as the concatenation of `parts`: exactly `frameSize + 16`
   * bytes unless `final`; 16 to `frameSize + 15` bytes if `final`. Returns its plaintext as
   * pieces, only once the frame's tag has verified. Throws TruncatedCiphertext for a final
   * frame shorter than a tag, InvalidCiphertext when the frame does not authenticate (any
   * plaintext computed before the tag check is zeroed first).
   */
  open(parts: readonly Uint8Array[], final: boolean): Buffer[] {
    const step = this.frameSize + FRAME_TAG_BYTES;
    const length = lengthOf(parts);
    if (final ? length >= step : length !== step) {
      throw new RangeError("a non-final frame is exactly frameSize + 16 bytes, the final frame fewer");
    }
    if (length < FRAME_TAG_BYTES) {
      throw new TruncatedCiphertext("ciphertext ends before its final frame");
    }
    const [key, nonce, aad] = this.next(final);
    const decipher = createDecipheriv(AES_GCM, key, nonce, { authTagLength: FRAME_TAG_BYTES });
    decipher.setAAD(aad);
    const out: Buffer[] = [];
    let remaining = length - FRAME_TAG_BYTES; // ciphertext bytes still to feed
    const tag = Buffer.alloc(FRAME_TAG_BYTES);
    let tagFilled = 0;
    for (const part of parts) {
      const body = Math.min(part.length, remaining);
      if (body > 0) {
        out.push(decipher.update(part.subarray(0, body)));
        remaining -= body;
      }
      if (body < part.length) {
        tagFilled += Buffer.from(part.buffer, part.byteOffset + body, part.length - body).copy(tag, tagFilled);
      }
    }
    decipher.setAuthTag(tag);
    try {
      const rest = decipher.final();
      if (rest.length > 0) {
        out.push(rest);
      }
    } catch {
      for (const piece of out) {
        piece.fill(0);
      }
      throw new InvalidCiphertext(INVALID);
    }
    return out;
  }
}

// -- whole messages ---------------------------------------------------------------------------

/** The body length of a plaintext of `plaintextLength` bytes: n + 16 * (floor(n / F) + 1). */
export function bodyLength(plaintextLength: number, frameSize: number): number {
  return plaintextLength + (Math.floor(plaintextLength / frameSize) + 1) * FRAME_TAG_BYTES;
}

/**
 * The body of a message: all of `plaintext` in frames, the last one final; after `prefix` (a
 * header, say) when one is given, so that a whole message is built without another copy.
 */
export function sealFrames(sealer: FrameSealer, plaintext: Uint8Array, prefix?: Uint8Array): Buffer {
  const source = asBuffer(plaintext);
  const size = sealer.frameSize;
  const out = Buffer.allocUnsafeSlow((prefix?.length ?? 0) + bodyLength(source.length, size));
  let written = prefix === undefined ? 0 : asBuffer(prefix).copy(out, 0);
  let offset = 0;
  for (;;) {
    const final = source.length - offset < size;
    const end = final ? source.length : offset + size;
    for (const piece of sealer.seal([source.subarray(offset, end)], final)) {
      written += piece.copy(out, written);
    }
    if (final) {
      return out;
    }
    offset = end;
  }
}

/**
 * The plaintext of a whole body, read as a stream would read it: every full-length frame opens
 * as non-final, in order, then the remainder as the final frame. Throws TruncatedCiphertext when
 * the body ends on a frame boundary or less than 16 bytes after one, InvalidCiphertext when a
 * frame fails to authenticate or data follows the end; no plaintext is returned or left behind.
 */
export function openFrames(opener: FrameOpener, body: Uint8Array): Buffer {
  const source = asBuffer(body);
  const step = opener.frameSize + FRAME_TAG_BYTES;
  const full = Math.floor(source.length / step);
  const rest = source.length - full * step;
  const out = Buffer.allocUnsafeSlow(full * opener.frameSize + Math.max(0, rest - FRAME_TAG_BYTES));
  let written = 0;
  const take = (pieces: Buffer[]): void => {
    for (const piece of pieces) {
      written += piece.copy(out, written);
      piece.fill(0);
    }
  };
  try {
    for (let offset = 0; offset < full * step; offset += step) {
      take(opener.open([source.subarray(offset, offset + step)], false));
    }
    take(opener.open([source.subarray(full * step)], true)); // TruncatedCiphertext under 16 bytes
  } catch (error) {
    out.fill(0);
    throw error;
  }
  return out;
}
