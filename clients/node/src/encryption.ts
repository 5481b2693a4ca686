/**
 * Envelope encryption recipes: the service's data keys plus the local format of ./envelope.
 * KmsClient's `encrypt`, `decrypt`, their stream forms and `rewrap*` delegate here; nothing in
 * this module touches a cipher directly.
 *
 * Order of checks on decrypt, before any plaintext is released (docs/envelope-format.md,
 * "Reading"):
 * 1. the header parses (magic, version, suite, limits);
 * 2. the caller's encryption context equals the header's, byte for byte in canonical form
 *    (EncryptionContextMismatch, without a call to the service);
 * 3. the service unwraps the wrapped key with that context (it binds the context to the wrapped
 *    key) and says which key opened it: it must be the header's key id, checked again whenever
 *    a cached data key is used. The service's errors about the key version the wrapped key
 *    names (PermissionDenied, KeyVersionNotUsable, ...) pass through as they are: the wrapped
 *    key is not authenticated, so they describe that key, never the ciphertext's integrity;
 * 4. the key commitment and then the header tag are checked with keys derived from the data key;
 * 5. each frame is authenticated before its plaintext is released.
 */

import { randomBytes } from "node:crypto";

import type { DataKeyCache } from "./caching";
import { type EncryptionContext, contextRecord, encodeContext } from "./context";
import {
  DATA_KEY_BYTES,
  DEFAULT_FRAME_SIZE,
  FrameOpener,
  Header,
  INVALID,
  SALT_BYTES,
  checkFrameSize,
  openFrames,
  openHeader,
  parseHeader,
  replaceWrappedKey,
  sealFrames,
  sealHeader,
} from "./envelope";
import { EncryptionContextMismatch, InvalidCiphertext, KmsError } from "./errors";
import { OpenStream, RewrapStream, SealStream } from "./streaming";
import type { DataKey, Rewrapped } from "./types";

/** The service's BatchReWrap limit. */
export const MAX_REWRAP_BATCH = 1000;

/** The calls to the service the recipes need (KmsClient's own methods). */
export interface DataKeyService {
  generateDataKey(keyId: string, context: Record<string, string>): Promise<DataKey>;
  decryptDataKey(wrappedKey: Buffer, context: Record<string, string>): Promise<DataKey>;
  rewrapDataKey(wrappedKey: Buffer, context: Record<string, string>): Promise<Rewrapped>;
  rewrapDataKeys(items: { wrappedKey: Buffer; context: Record<string, string> }[]): Promise<(Rewrapped | KmsError)[]>;
}

export interface EncryptOptions {
  keyId: string;
  context?: EncryptionContext;
  /** Plaintext bytes per frame, 1 to 4 MiB (default 64 KiB). */
  frameSize?: number;
}

export interface DecryptOptions {
  context?: EncryptionContext;
}

export interface RewrapItem {
  ciphertext: Uint8Array;
  context?: EncryptionContext;
}

function asBuffer(data: Uint8Array): Buffer {
  if (!(data instanceof Uint8Array)) {
    throw new TypeError("expected a Buffer or Uint8Array");
  }
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** The plaintext of `dataKey` if it is a data key of the key the header names; else InvalidCiphertext. */
function checked(dataKey: DataKey, header: Header): Buffer {
  if (dataKey.keyId !== header.keyId || dataKey.plaintext?.length !== DATA_KEY_BYTES) {
    throw new InvalidCiphertext(INVALID);
  }
  return dataKey.plaintext;
}

function checkContext(header: Header, encodedContext: Buffer): void {
  if (!encodedContext.equals(header.encodedContext)) {
    throw new EncryptionContextMismatch("the encryption context does not match the one in the ciphertext");
  }
}

export class EnvelopeEncryption {
  readonly #service: DataKeyService;
  readonly #cache: DataKeyCache | undefined;

  constructor(service: DataKeyService, cache: DataKeyCache | undefined) {
    this.#service = service;
    this.#cache = cache;
  }

  // -- data keys ------------------------------------------------------------------------------

  /** A fresh data key from the service, checked against the request. The caller destroys it. */
  async #freshDataKey(keyId: string, context: EncryptionContext | undefined): Promise<DataKey> {
    const dataKey = await this.#service.generateDataKey(keyId, contextRecord(context));
    if (dataKey.keyId !== keyId || dataKey.plaintext?.length !== DATA_KEY_BYTES) {
      dataKey.destroy();
      throw new KmsError("the service returned a data key that does not fit the request");
    }
    return dataKey;
  }

  /**
   * The header and sealer of a new message: with a cached data key when caching is on and the
   * size is known (`size`), else with a fresh one. A cached key is used only inside the cache's
   * `use…` callback (so an eviction meanwhile cannot zero it mid-use); a fresh one is zeroed as
   * soon as the header is sealed. The sealer holds only keys derived for this message.
   */
  async #seal(keyId: string, context: EncryptionContext | undefined, encoded: Buffer, frameSize: number, size: number | undefined) {
    const cache = size === undefined ? undefined : this.#cache;
    const cached = cache?.useForEncrypt(keyId, encoded, size!, (dataKey) => this.#sealWith(dataKey, keyId, encoded, frameSize));
    if (cached?.hit) {
      return cached.value;
    }
    const fresh = await this.#freshDataKey(keyId, context);
    try {
      cache?.storeForEncrypt(keyId, encoded, fresh, size!);
      return this.#sealWith(fresh, keyId, encoded, frameSize);
    } finally {
      fresh.destroy();
    }
  }

  #sealWith(dataKey: DataKey, keyId: string, encodedContext: Buffer, frameSize: number) {
    return sealHeader(dataKey.plaintext!, {
      keyId,
      encodedContext,
      wrappedKey: dataKey.wrappedKey,
      frameSize,
      salt: randomBytes(SALT_BYTES),
    });
  }

  /** Steps 2-4 of reading: context, data key (service or cache), key id, commitment and tag. */
  async #open(header: Header, encoded: Buffer, context: EncryptionContext | undefined): Promise<FrameOpener> {
    checkContext(header, encoded);
    // Checked on a cache hit too: the cache is keyed by the wrapped key and the context, which
    // a forged header naming another key id can carry unchanged.
    const cached = this.#cache?.useForDecrypt(header.wrappedKey, encoded, (dataKey) => openHeader(checked(dataKey, header), header));
    if (cached?.hit) {
      return cached.value;
    }
    const fresh = await this.#service.decryptDataKey(header.wrappedKey, contextRecord(context));
    try {
      checked(fresh, header);
      this.#cache?.storeForDecrypt(header.wrappedKey, encoded, fresh);
      return openHeader(fresh.plaintext!, header);
    } finally {
      fresh.destroy();
    }
  }

  // -- messages -------------------------------------------------------------------------------

  async encrypt(plaintext: Uint8Array, options: EncryptOptions): Promise<Buffer> {
    const data = asBuffer(plaintext);
    const frameSize = checkFrameSize(options.frameSize ?? DEFAULT_FRAME_SIZE);
    const encoded = encodeContext(options.context);
    const { header, sealer } = await this.#seal(options.keyId, options.context, encoded, frameSize, data.length);
    try {
      return sealFrames(sealer, data, header.encode());
    } finally {
      sealer.destroy();
    }
  }

  async decrypt(ciphertext: Uint8Array, options: DecryptOptions = {}): Promise<Buffer> {
    const data = asBuffer(ciphertext);
    const encoded = encodeContext(options.context);
    const header = parseHeader(data);
    const opener = await this.#open(header, encoded, options.context);
    try {
      return openFrames(opener, data.subarray(header.length));
    } finally {
      opener.destroy();
    }
  }

  encryptStream(options: EncryptOptions): SealStream {
    const frameSize = checkFrameSize(options.frameSize ?? DEFAULT_FRAME_SIZE);
    const encoded = encodeContext(options.context);
    const { keyId, context } = options;
    return new SealStream(() => this.#seal(keyId, context, encoded, frameSize, undefined));
  }

  decryptStream(options: DecryptOptions = {}): OpenStream {
    const encoded = encodeContext(options.context);
    const { context } = options;
    return new OpenStream((header) => this.#open(header, encoded, context));
  }

  // -- rewrap ---------------------------------------------------------------------------------

  async #rewrappedHeader(header: Header, encoded: Buffer, context: EncryptionContext | undefined): Promise<Header> {
    checkContext(header, encoded);
    const result = await this.#service.rewrapDataKey(header.wrappedKey, contextRecord(context));
    if (result.keyId !== header.keyId) {
      throw new InvalidCiphertext(INVALID);
    }
    return header.withWrappedKey(result.wrappedKey);
  }

  async rewrap(ciphertext: Uint8Array, options: DecryptOptions = {}): Promise<Buffer> {
    const data = asBuffer(ciphertext);
    const encoded = encodeContext(options.context);
    const header = parseHeader(data);
    const rewrapped = await this.#rewrappedHeader(header, encoded, options.context);
    return replaceWrappedKey(data, rewrapped.wrappedKey);
  }

  rewrapStream(options: DecryptOptions = {}): RewrapStream {
    const encoded = encodeContext(options.context);
    const { context } = options;
    return new RewrapStream((header) => this.#rewrappedHeader(header, encoded, context));
  }

  /**
   * Each item's ciphertext re-wrapped, or the error for that item alone. Ciphertexts that share
   * a wrapped key (a cached data key) and context cost one BatchReWrap item between them, and
   * each is still checked against the key id its own header names.
   */
  async rewrapMany(items: Iterable<RewrapItem>): Promise<(Buffer | KmsError)[]> {
    const results: (Buffer | KmsError)[] = [];
    // (wrapped key, encoded context) -> the context, and every (item index, its header's key id)
    const groups = new Map<string, { wrappedKey: Buffer; context: Record<string, string>; members: [number, string][] }>();
    for (const item of items) {
      const index = results.length;
      let header: Header;
      let encoded: Buffer;
      try {
        const data = asBuffer(item.ciphertext);
        encoded = encodeContext(item.context);
        header = parseHeader(data);
        checkContext(header, encoded);
        results.push(data);
      } catch (error) {
        if (!(error instanceof KmsError)) {
          throw error;
        }
        results.push(error);
        continue;
      }
      const slot = `${header.wrappedKey.toString("base64")}.${encoded.toString("base64")}`;
      let group = groups.get(slot);
      if (group === undefined) {
        group = { wrappedKey: header.wrappedKey, context: contextRecord(item.context), members: [] };
        groups.set(slot, group);
      }
      group.members.push([index, header.keyId]);
    }
    const all = [...groups.values()];
    for (let start = 0; start < all.length; start += MAX_REWRAP_BATCH) {
      const batch = all.slice(start, start + MAX_REWRAP_BATCH);
      const answers = await this.#service.rewrapDataKeys(batch.map(({ wrappedKey, context }) => ({ wrappedKey, context })));
      if (answers.length !== batch.length) {
        throw new KmsError("the service answered a batch with the wrong number of results");
      }
      batch.forEach((group, position) => {
        const answer = answers[position]!;
        for (const [index, keyId] of group.members) {
          if (answer instanceof KmsError) {
            results[index] = answer;
          } else if (answer.keyId !== keyId) {
            results[index] = new InvalidCiphertext(INVALID);
          } else {
            results[index] = replaceWrappedKey(results[index] as Buffer, answer.wrappedKey);
          }
        }
      });
    }
    return results;
  }
}
