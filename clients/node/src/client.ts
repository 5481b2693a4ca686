/**
 * KmsClient: the connection to the service and its RPCs, with typed errors and retries, and
 * envelope encryption on top (./encryption).
 */

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { BlockList, isIP } from "node:net";
import { Readable, type Transform, pipeline } from "node:stream";
import { inspect } from "node:util";

import * as grpc from "@grpc/grpc-js";

import { DataKeyCache, DataKeyCaching, type DataKeyCachingOptions } from "./caching";
import { type EncryptionContext, contextRecord } from "./context";
import { type DecryptOptions, type EncryptOptions, EnvelopeEncryption, type RewrapItem } from "./encryption";
import { checkDataKey, checkDecrypted, checkRewrapped, checkToken, checkWrappedOnly } from "./checksums";
import { crc32c } from "./crc32c";
import { Cancelled, ChecksumMismatch, KmsError, ResponseChecksumMismatch, errorFor, fromServiceError } from "./errors";
import * as wire from "./proto";
import { NO_RETRY, RetryPolicy, type RetryPolicyOptions } from "./retry";
import type { OpenStream, RewrapStream, SealStream } from "./streaming";
import { DataKey, type Erasure, type Key, type Rewrapped, erasureFromWire, keyFromWire, rewrappedFromWire } from "./types";

export const DEFAULT_TIMEOUT_MS = 30_000;
const MAX_RECEIVE_MESSAGE_BYTES = 16 * 1024 * 1024;

/** PEM contents, or the path of a PEM file. */
export type PemSource = Buffer | Uint8Array | string;

export interface TlsOptions {
  /** The CA that signs the server's certificate (default: the system's roots). */
  ca?: PemSource;
  /** For mutual TLS: this client's certificate chain, and its private key. */
  cert?: PemSource;
  key?: PemSource;
}

export interface KmsClientOptions {
  /** Deadline of each call in ms, retries included (default 30,000; 0: none). */
  timeoutMs?: number;
  /** Retries of UNAVAILABLE (and rate limits that say when); default `new RetryPolicy()`. */
  retry?: RetryPolicy | RetryPolicyOptions;
  /** Data key caching (off by default): `{}` for the defaults, or the limits to use. */
  dataKeyCaching?: DataKeyCaching | DataKeyCachingOptions;
  /** TLS, or mutual TLS with `cert` and `key`. */
  tls?: TlsOptions;
  /** Channel credentials made elsewhere (instead of `tls`). */
  credentials?: grpc.ChannelCredentials;
  /**
   * Plaintext to a target that is not loopback. Without it a client refuses to send keys and
   * data in clear anywhere but 127.0.0.0/8, ::1, localhost or a Unix socket.
   */
  insecure?: boolean;
  /** Extra grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
  /** grpc-js client interceptors (metrics, tracing, tests). */
  interceptors?: grpc.Interceptor[];
  /**
   * CRC32C of every byte field, sent with requests and checked on responses (docs/api.md,
   * "Integrity in transit"); default true. False only for a service that predates it.
   */
  verifyChecksums?: boolean;
}

export interface CallOptions {
  /** This call's deadline in ms, retries included (default: the client's `timeoutMs`). */
  timeoutMs?: number;
}

export interface CreateKeyOptions extends CallOptions {
  description?: string;
  /** When set the key rotates on this schedule. */
  rotationPeriodMs?: number;
  /** "ENCRYPT_DECRYPT" (the default: data keys) or "PSEUDONYMIZE" (tokens, `pseudonymize`). */
  purpose?: "ENCRYPT_DECRYPT" | "PSEUDONYMIZE";
  /**
   * The encryption-context entry naming the data subject (e.g. "user_id"): every data key is
   * protected by a key of its own subject, and `eraseSubject` forgets one (docs/privacy.md).
   */
  subjectField?: string;
  /** Versions that stopped being primary longer ago than this are destroyed by the scheduler. */
  retentionPeriodMs?: number;
  /** With a subjectField: the bound on erasures being final in backups (server default 30 days). */
  erasureFinalityMs?: number;
}

export interface ListErasuresOptions extends CallOptions {
  pageSize?: number;
  pageToken?: string;
}

export interface PseudonymizeOptions extends CallOptions {
  keyId: string;
  /** Binds the tokens: the same value under another context gives an unrelated token. */
  context?: EncryptionContext;
  /** The key version to use (default: the primary), so that joins survive a rotation. */
  keyVersion?: number;
}

export interface RewrapDataKeyOptions extends CallOptions {
  /** Move the data key to this key's primary version instead of its own key's. */
  destinationKeyId?: string;
}

export interface ListKeysOptions extends CallOptions {
  pageSize?: number;
  pageToken?: string;
}

type Callback<T> = (error: grpc.ServiceError | null, response?: T) => void;
type UnaryMethod = (request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: Callback<unknown>) => grpc.ClientUnaryCall;

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");
LOOPBACK.addSubnet("::ffff:127.0.0.0", 104, "ipv6");

function isLoopbackHost(host: string): boolean {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  const family = isIP(bare);
  if (family === 4) {
    return LOOPBACK.check(bare, "ipv4");
  }
  if (family === 6) {
    return LOOPBACK.check(bare, "ipv6");
  }
  return bare.toLowerCase() === "localhost" || bare.toLowerCase() === "localhost.";
}

function hostOf(address: string): string {
  if (address.startsWith("[")) {
    const end = address.indexOf("]");
    return end < 0 ? address : address.slice(0, end + 1);
  }
  const colons = address.split(":").length - 1;
  if (colons === 1) {
    return address.slice(0, address.indexOf(":"));
  }
  return address; // a bare host, or a bare IPv6 address
}

/**
 * Whether a gRPC target stays on this machine: a Unix socket, or every address it names on a
 * loopback interface ("127.0.0.1:50051", "[::1]:50051", "localhost:50051", "dns:///localhost:1",
 * "ipv4:127.0.0.1:1,127.0.0.2:1", "unix:/run/kms.sock").
 */
export function isLocalTarget(target: string): boolean {
  if (/^unix(-abstract)?:/.test(target)) {
    return true;
  }
  let rest = target;
  const scheme = /^(dns|ipv4|ipv6):/.exec(rest);
  if (scheme !== null) {
    rest = rest.slice(scheme[0].length);
    if (rest.startsWith("//")) {
      rest = rest.slice(rest.indexOf("/", 2) + 1); // dns://authority/host:port
    }
  }
  const addresses = scheme !== null && scheme[1] !== "dns" ? rest.split(",") : [rest];
  return addresses.length > 0 && addresses.every((address) => address !== "" && isLoopbackHost(hostOf(address)));
}

function pem(source: PemSource | undefined, what: string): Buffer | null {
  if (source === undefined) {
    return null;
  }
  if (typeof source === "string") {
    try {
      return readFileSync(source);
    } catch (error) {
      throw new Error(`cannot read the TLS ${what} from ${source}: ${(error as NodeJS.ErrnoException).code ?? "error"}`);
    }
  }
  if (source instanceof Uint8Array) {
    return Buffer.from(source);
  }
  throw new TypeError(`the TLS ${what} is a Buffer of PEM or the path of a PEM file`);
}

/** Channel credentials for TLS (and mutual TLS when `cert` and `key` are given). */
export function tlsCredentials(options: TlsOptions = {}): grpc.ChannelCredentials {
  if ((options.cert === undefined) !== (options.key === undefined)) {
    throw new Error("a client certificate needs its private key, and the other way round");
  }
  return grpc.credentials.createSsl(pem(options.ca, "CA"), pem(options.key, "private key"), pem(options.cert, "certificate"));
}

function channelCredentials(target: string, options: KmsClientOptions): grpc.ChannelCredentials {
  const given = [options.tls !== undefined, options.credentials !== undefined, options.insecure === true].filter(Boolean).length;
  if (given > 1) {
    throw new Error("give at most one of tls, credentials and insecure");
  }
  if (options.tls !== undefined) {
    return tlsCredentials(options.tls);
  }
  const credentials = options.credentials ?? grpc.credentials.createInsecure();
  const secure = (credentials as unknown as { _isSecure?: () => boolean })._isSecure?.() ?? true;
  if (!secure && options.insecure !== true && !isLocalTarget(target)) {
    throw new Error(
      `refusing a plaintext connection to ${target}: data keys and plaintext would cross the network in clear. ` +
        "Pass tls: { ca, cert, key } (or credentials), or insecure: true if this really is what you want.",
    );
  }
  return credentials;
}

function cachingOf(option: KmsClientOptions["dataKeyCaching"]): DataKeyCache | undefined {
  if (option === undefined) {
    return undefined;
  }
  return new DataKeyCache(option instanceof DataKeyCaching ? option : new DataKeyCaching(option));
}

function durationOf(ms: number): wire.Duration {
  if (!Number.isFinite(ms) || ms < 0) {
    throw new RangeError("a duration is a finite number of milliseconds, at least 0");
  }
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

function itemError(error: wire.ItemError | null | undefined): KmsError {
  return errorFor(error?.code ?? grpc.status.UNKNOWN, error?.message || "item failed", { reason: error?.reason || undefined });
}

/**
 * A client of the key management service.
 *
 * `new KmsClient("127.0.0.1:50051")` connects without TLS (loopback only);
 * `new KmsClient("kms.internal:443", { tls: { ca, cert, key } })` with mutual TLS (PEM Buffers
 * or file paths). `close()` releases the channel and zeroes any cached data key.
 *
 * Every method rejects with a `KmsError` subclass, never a grpc-js error. UNAVAILABLE is retried
 * with exponential backoff and full jitter within the call's deadline (`timeoutMs`), and so is
 * RESOURCE_EXHAUSTED when the service said how long to wait; RotateKey never is.
 *
 * `encrypt`/`decrypt`, their stream forms and `rewrap` implement envelope encryption in the
 * format of docs/envelope-format.md. Integrity failures reject with InvalidCiphertext or one of
 * its subclasses, TruncatedCiphertext and EncryptionContextMismatch; `decrypt` says what else.
 */
export class KmsClient {
  readonly target: string;
  readonly #client: grpc.Client;
  readonly #timeoutMs: number;
  readonly #retry: RetryPolicy;
  readonly #cache: DataKeyCache | undefined;
  readonly #envelope: EnvelopeEncryption;
  readonly #verify: boolean;
  #closed = false;

  constructor(target: string, options: KmsClientOptions = {}) {
    if (typeof target !== "string" || target === "") {
      throw new TypeError("give a target such as '127.0.0.1:50051'");
    }
    this.target = target;
    // Everything that can throw comes before the channel exists.
    const credentials = channelCredentials(target, options);
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (typeof this.#timeoutMs !== "number" || !(this.#timeoutMs >= 0)) {
      throw new RangeError("timeoutMs must be a number of milliseconds, at least 0 (0: no deadline)");
    }
    this.#retry = options.retry instanceof RetryPolicy ? options.retry : new RetryPolicy(options.retry);
    this.#cache = cachingOf(options.dataKeyCaching);
    this.#verify = options.verifyChecksums ?? true;
    const Service = wire.keyManagementService();
    this.#client = new Service(target, credentials, {
      "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES,
      ...options.channelOptions,
      ...(options.interceptors === undefined ? {} : { interceptors: options.interceptors }),
    });
    this.#envelope = new EnvelopeEncryption(
      {
        generateDataKey: (keyId, context) => this.generateDataKey(keyId, context),
        decryptDataKey: (wrappedKey, context) => this.decryptDataKey(wrappedKey, context),
        rewrapDataKey: (wrappedKey, context) => this.rewrapDataKey(wrappedKey, context),
        rewrapDataKeys: (items) => this.rewrapDataKeys(items),
      },
      this.#cache,
    );
  }

  // -- lifecycle ------------------------------------------------------------------------------

  /** Closes the channel and zeroes every cached data key. Calls after this reject (Cancelled). */
  close(): void {
    if (!this.#closed) {
      this.#closed = true;
      this.#cache?.clear();
      this.#client.close();
    }
  }

  /** Drops (and zeroes) every cached data key; a no-op without caching. */
  clearDataKeyCache(): void {
    this.#cache?.clear();
  }

  [inspect.custom](): string {
    return `KmsClient { target: ${JSON.stringify(this.target)}, caching: ${this.#cache !== undefined}, closed: ${this.#closed} }`;
  }

  toJSON(): object {
    return { target: this.target, caching: this.#cache !== undefined, closed: this.#closed };
  }

  // -- keys -----------------------------------------------------------------------------------

  /**
   * Creates a key with one version. Retried on UNAVAILABLE like any call: a retry can never
   * create a second key, but after a lost response it can report KeyAlreadyExists for the key
   * the first attempt created.
   */
  async createKey(keyId: string, options: CreateKeyOptions = {}): Promise<Key> {
    const request: Record<string, unknown> = { keyId, description: options.description ?? "" };
    if (options.rotationPeriodMs !== undefined) {
      request.rotationPeriod = durationOf(options.rotationPeriodMs);
    }
    if (options.purpose !== undefined) {
      request.purpose = options.purpose;
    }
    if (options.subjectField !== undefined) {
      request.subjectField = options.subjectField;
    }
    if (options.retentionPeriodMs !== undefined) {
      request.retentionPeriod = durationOf(options.retentionPeriodMs);
    }
    if (options.erasureFinalityMs !== undefined) {
      request.erasureFinality = durationOf(options.erasureFinalityMs);
    }
    return keyFromWire(await this.#unary<wire.Key>("CreateKey", request, options));
  }

  // -- data subjects --------------------------------------------------------------------------

  /**
   * Erases one data subject of a key with a subjectField: every data key issued for it stops
   * opening (SubjectErased) on every replica within the service's metadata cache bound, and none
   * is issued again. Data keys of that subject in this client's cache are destroyed at once.
   * Safe to repeat: an erased subject answers with its original receipt. Needs `erase`.
   */
  async eraseSubject(keyId: string, subject: string, options: CallOptions = {}): Promise<Erasure> {
    this.#cache?.forgetSubject(keyId, subject);
    return erasureFromWire(await this.#unary<wire.Erasure>("EraseSubject", { keyId, subject }, options));
  }

  /** One page of a key's erasures, newest first; `nextPageToken` is empty on the last page. */
  async listErasures(keyId: string, options: ListErasuresOptions = {}): Promise<{ erasures: Erasure[]; nextPageToken: string }> {
    const request = { keyId, pageSize: options.pageSize ?? 0, pageToken: options.pageToken ?? "" };
    const response = await this.#unary<wire.ListErasuresResponse>("ListErasures", request, options);
    return { erasures: response.erasures.map(erasureFromWire), nextPageToken: response.nextPageToken };
  }

  async getKey(keyId: string, options: CallOptions = {}): Promise<Key> {
    return keyFromWire(await this.#unary<wire.Key>("GetKey", { keyId }, options));
  }

  /** One page of keys ordered by key id; `nextPageToken` is empty on the last page. */
  async listKeys(options: ListKeysOptions = {}): Promise<{ keys: Key[]; nextPageToken: string }> {
    const request = { pageSize: options.pageSize ?? 0, pageToken: options.pageToken ?? "" };
    const response = await this.#unary<wire.ListKeysResponse>("ListKeys", request, options);
    return { keys: response.keys.map(keyFromWire), nextPageToken: response.nextPageToken };
  }

  /** Adds a version and makes it primary. Never retried: a lost response would rotate twice. */
  async rotateKey(keyId: string, options: CallOptions = {}): Promise<Key> {
    return keyFromWire(await this.#unary<wire.Key>("RotateKey", { keyId }, options, NO_RETRY));
  }

  async disableKeyVersion(keyId: string, version: number, options: CallOptions = {}): Promise<Key> {
    return keyFromWire(await this.#unary<wire.Key>("DisableKeyVersion", { keyId, version }, options));
  }

  async enableKeyVersion(keyId: string, version: number, options: CallOptions = {}): Promise<Key> {
    return keyFromWire(await this.#unary<wire.Key>("EnableKeyVersion", { keyId, version }, options));
  }

  // -- data keys ------------------------------------------------------------------------------

  /** A fresh AES-256 data key and its wrapped copy. Keep only the wrapped copy; `destroy()` it. */
  async generateDataKey(keyId: string, context?: EncryptionContext, options: CallOptions = {}): Promise<DataKey> {
    const request = { keyId, encryptionContext: contextRecord(context) };
    const response = await this.#unary<wire.GenerateDataKeyResponse>("GenerateDataKey", request, options, this.#retry, this.#checking(checkDataKey));
    const dataKey = new DataKey(response.keyId, response.keyVersion, response.wrappedKey, response.plaintext);
    response.plaintext.fill(0);
    return dataKey;
  }

  /** A fresh data key's wrapped copy only (no plaintext leaves the service). */
  async generateDataKeyWithoutPlaintext(keyId: string, context?: EncryptionContext, options: CallOptions = {}): Promise<DataKey> {
    const request = { keyId, encryptionContext: contextRecord(context) };
    const response = await this.#unary<wire.GenerateDataKeyResponse>(
      "GenerateDataKeyWithoutPlaintext",
      request,
      options,
      this.#retry,
      this.#checking(checkWrappedOnly),
    );
    return new DataKey(response.keyId, response.keyVersion, response.wrappedKey);
  }

  /** Unwraps a wrapped key (the context must be the one it was issued with). */
  async decryptDataKey(wrappedKey: Uint8Array, context?: EncryptionContext, options: CallOptions = {}): Promise<DataKey> {
    const request = { wrappedKey: Buffer.from(wrappedKey), encryptionContext: contextRecord(context), ...this.#crc(wrappedKey, "wrappedKeyCrc32c") };
    const response = await this.#unary<wire.DecryptResponse>("Decrypt", request, options, this.#retry, this.#checking(checkDecrypted));
    const dataKey = new DataKey(response.keyId, response.keyVersion, wrappedKey, response.plaintext);
    response.plaintext.fill(0);
    return dataKey;
  }

  /** Re-wraps a wrapped key under the primary version of its key (or of `destinationKeyId`). */
  async rewrapDataKey(wrappedKey: Uint8Array, context?: EncryptionContext, options: RewrapDataKeyOptions = {}): Promise<Rewrapped> {
    const request = this.#rewrapRequest(wrappedKey, context, options.destinationKeyId);
    return rewrappedFromWire(await this.#unary<wire.ReWrapResponse>("ReWrap", request, options, this.#retry, this.#checking(checkRewrapped)));
  }

  /**
   * One BatchReWrap call (at most 1000 items): each result is a Rewrapped or the error for that
   * item alone; errors of the call itself reject.
   */
  async rewrapDataKeys(
    items: readonly { wrappedKey: Uint8Array; context?: EncryptionContext }[],
    options: RewrapDataKeyOptions = {},
  ): Promise<(Rewrapped | KmsError)[]> {
    const send = async (chosen: readonly { wrappedKey: Uint8Array; context?: EncryptionContext }[]): Promise<(Rewrapped | KmsError)[]> => {
      const request = { requests: chosen.map((item) => this.#rewrapRequest(item.wrappedKey, item.context, options.destinationKeyId)) };
      const response = await this.#unary<wire.BatchReWrapResponse>("BatchReWrap", request, options);
      return response.results.map((result) => {
        if (!(result.outcome === "rewrapped" && result.rewrapped)) {
          return itemError(result.error);
        }
        const altered = this.#altered(checkRewrapped, result.rewrapped);
        return altered ?? rewrappedFromWire(result.rewrapped);
      });
    };
    return resendingAltered(items, send);
  }

  // -- pseudonymization (docs/pseudonymization.md) --------------------------------------------

  /**
   * One token per value, in order, from a PSEUDONYMIZE key: deterministic for a key version,
   * context and value; unrelated under another context. Strings are taken as their UTF-8 bytes;
   * each value is at most 4096 bytes. Any number of values: they go in calls of 1000, all under
   * the version the first call used (the primary, or `keyVersion`). A token names its version
   * ("kps1.<version>.<MAC>"). Rejects with the first failing value's error, or the call's
   * (WrongKeyPurpose, PermissionDenied, KeyVersionNotUsable...); `pseudonymizeResults` gives
   * per-value outcomes instead.
   */
  async pseudonymize(values: Iterable<string | Uint8Array>, options: PseudonymizeOptions): Promise<string[]> {
    const results = await this.pseudonymizeResults(values, options);
    const failed = results.find((result): result is KmsError => result instanceof KmsError);
    if (failed !== undefined) {
      throw failed;
    }
    return results as string[];
  }

  /** As `pseudonymize`, each value's outcome its token or its own error. */
  async pseudonymizeResults(values: Iterable<string | Uint8Array>, options: PseudonymizeOptions): Promise<(string | KmsError)[]> {
    const encoded = Array.from(values, (value) => (typeof value === "string" ? Buffer.from(value, "utf8") : Buffer.from(value)));
    const results: (string | KmsError)[] = [];
    let version = options.keyVersion ?? 0;
    for (let start = 0; start < encoded.length; start += MAX_VALUES_PER_CALL) {
      const chunk = encoded.slice(start, start + MAX_VALUES_PER_CALL);
      let used = version;
      const send = async (chosen: readonly Buffer[]): Promise<(string | KmsError)[]> => {
        const request = {
          keyId: options.keyId,
          values: chosen,
          context: contextRecord(options.context),
          keyVersion: used,
          valuesCrc32c: this.#verify ? chosen.map((value) => crc32c(value)) : [],
        };
        const response = await this.#unary<wire.PseudonymizeResponse>("Pseudonymize", request, options);
        used = response.keyVersion; // a resend of altered values stays on this version
        if (response.results.length !== chosen.length) {
          throw new ResponseChecksumMismatch("the response does not hold one result per value");
        }
        return response.results.map((result) =>
          result.outcome === "token" && result.token !== undefined
            ? (this.#altered(checkToken, result) ?? result.token)
            : itemError(result.error),
        );
      };
      results.push(...(await resendingAltered(chunk, send)));
      version = version || used;
    }
    return results;
  }

  // -- envelope encryption (docs/envelope-format.md) ------------------------------------------
  //
  // The context is a map of non-secret strings (an object or a Map); the same map must be given
  // to decrypt and rewrap (undefined is the empty map).

  /**
   * `plaintext` encrypted under a data key of `keyId`, bound to `context`: a header naming the
   * key, the context and the wrapped data key, then AES-256-GCM frames of `frameSize` bytes.
   */
  encrypt(plaintext: Uint8Array, options: EncryptOptions): Promise<Buffer> {
    return this.#envelope.encrypt(plaintext, options);
  }

  /**
   * The plaintext of an `encrypt` result.
   *
   * Integrity failures, which never say more than this:
   * - EncryptionContextMismatch: `context` is not the one in the header (before any call);
   * - TruncatedCiphertext: the ciphertext was cut short;
   * - InvalidCiphertext (the base of both): any other alteration or corruption, including the
   *   service refusing to unwrap the wrapped key.
   *
   * Errors about the key version the header's wrapped key names, as the service reports them:
   * - PermissionDenied: no permission to decrypt with that key under `context`;
   * - KeyVersionNotUsable (a FailedPrecondition): KeyVersionDisabled,
   *   KeyVersionDestroyScheduled, KeyVersionDestroyed or KeyVersionBelowMinimum;
   * - KeyMaterialMissing (a FailedPrecondition): the HSM has no master key for it;
   * and, as for any call, ResourceExhausted, Unavailable, DeadlineExceeded, Unauthenticated.
   * The wrapped key is not authenticated (`rewrap` replaces it), so an altered ciphertext can
   * reject with these as well as with InvalidCiphertext: they say the key cannot be used, not
   * that the ciphertext is intact.
   */
  decrypt(ciphertext: Uint8Array, options: DecryptOptions = {}): Promise<Buffer> {
    return this.#envelope.decrypt(ciphertext, options);
  }

  /**
   * A Transform: plaintext in, ciphertext out (the format of `encrypt`), in constant memory.
   * Always uses a fresh data key (asked for when the stream is created). Use it with
   * `stream.pipeline`.
   */
  encryptStream(options: EncryptOptions): SealStream {
    return this.#envelope.encryptStream(options);
  }

  /**
   * A Transform: ciphertext in, plaintext out, in constant memory. Each frame is pushed only
   * after it is authenticated, but earlier frames are already out when a later one fails or the
   * input ends early (TruncatedCiphertext): write to a temporary place and publish it only once
   * the pipeline has finished without an error. Fails with what `decrypt` rejects with.
   */
  decryptStream(options: DecryptOptions = {}): OpenStream {
    return this.#envelope.decryptStream(options);
  }

  /** `encryptStream` over an (async) iterable of chunks: yields the ciphertext's chunks. */
  encryptIterable(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, options: EncryptOptions): AsyncIterableIterator<Buffer> {
    return through(source, this.encryptStream(options));
  }

  /** `decryptStream` over an (async) iterable of chunks: yields the plaintext's chunks. */
  decryptIterable(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, options: DecryptOptions = {}): AsyncIterableIterator<Buffer> {
    return through(source, this.decryptStream(options));
  }

  /**
   * `ciphertext` with its data key re-wrapped under the primary version of its key (by the
   * service's ReWrap: the data key never reaches this process). Every byte but the wrapped key
   * is unchanged; returned as is when it was already current. Rejects with what `decrypt`
   * rejects with, PermissionDenied meaning no permission to re-wrap.
   */
  rewrap(ciphertext: Uint8Array, options: DecryptOptions = {}): Promise<Buffer> {
    return this.#envelope.rewrap(ciphertext, options);
  }

  /** `rewrap` as a Transform: the new header, then the body copied unchanged. */
  rewrapStream(options: DecryptOptions = {}): RewrapStream {
    return this.#envelope.rewrapStream(options);
  }

  /**
   * `rewrap` for many ciphertexts through BatchReWrap, one call per 1000 distinct wrapped keys.
   * Each result is the new ciphertext or that item's error (any `rewrap` rejects with); errors
   * of a call itself (Unavailable, ...) reject.
   */
  rewrapMany(items: Iterable<RewrapItem>): Promise<(Buffer | KmsError)[]> {
    return this.#envelope.rewrapMany(items);
  }

  // -- plumbing -------------------------------------------------------------------------------

  /** `check` when checksums are on (it throws ResponseChecksumMismatch), else nothing. */
  #checking<T>(check: (response: T) => void): ((response: T) => void) | undefined {
    return this.#verify ? check : undefined;
  }

  /** The request field carrying `data`'s CRC32C, when checksums are on. */
  #crc(data: Uint8Array, name: string): Record<string, number> {
    return this.#verify ? { [name]: crc32c(data) } : {};
  }

  /** A batch item's alteration as its result, or undefined when it checks (or checks are off). */
  #altered<T>(check: (item: T) => void, item: T): KmsError | undefined {
    if (!this.#verify) {
      return undefined;
    }
    try {
      check(item);
      return undefined;
    } catch (error) {
      if (error instanceof ResponseChecksumMismatch) {
        return error;
      }
      throw error;
    }
  }

  #rewrapRequest(wrappedKey: Uint8Array, context: EncryptionContext | undefined, destinationKeyId: string | undefined): object {
    return {
      wrappedKey: Buffer.from(wrappedKey),
      encryptionContext: contextRecord(context),
      destinationKeyId: destinationKeyId ?? "",
      ...this.#crc(wrappedKey, "wrappedKeyCrc32c"),
    };
  }

  /**
   * One call with the retry policy. `check` vets the response (checksums). Bytes altered in
   * transit, either way (ChecksumMismatch from the service, or from `check`), are sent once more
   * at once, as a transport fault would be.
   */
  #unary<T>(
    method: string,
    request: object,
    options: CallOptions,
    retry: RetryPolicy = this.#retry,
    check?: (response: T) => void,
  ): Promise<T> {
    return this.#unaryOnce<T>(method, request, options, retry, check).catch((error: unknown) => {
      if (error instanceof ChecksumMismatch) {
        return this.#unaryOnce<T>(method, request, options, retry, check);
      }
      throw error;
    });
  }

  #unaryOnce<T>(method: string, request: object, options: CallOptions, retry: RetryPolicy, check?: (response: T) => void): Promise<T> {
    if (this.#closed) {
      return Promise.reject(new Cancelled("this KmsClient is closed"));
    }
    const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
    const deadline = timeoutMs > 0 && Number.isFinite(timeoutMs) ? performance.now() + timeoutMs : undefined;
    const metadata = new grpc.Metadata();
    metadata.set("x-request-id", randomUUID().replaceAll("-", ""));
    const call = (this.#client as unknown as Record<string, UnaryMethod>)[method]!.bind(this.#client);
    return retry.run(
      (until) =>
        new Promise<T>((resolve, reject) => {
          const callOptions: grpc.CallOptions = {};
          if (until !== undefined) {
            callOptions.deadline = new Date(Date.now() + Math.max(0, until - performance.now()));
          }
          try {
            call(request, metadata, callOptions, (error, response) => {
              if (error) {
                reject(fromServiceError(error));
                return;
              }
              try {
                check?.(response as T);
                resolve(response as T);
              } catch (altered) {
                reject(altered);
              }
            });
          } catch (error) {
            reject(this.#closed ? new Cancelled("this KmsClient is closed") : fromServiceError(error));
          }
        }),
      deadline,
    );
  }
}

const MAX_VALUES_PER_CALL = 1000;

/**
 * `send(items)`, then once more for the items whose bytes were altered in transit (their outcome
 * a ChecksumMismatch), whose outcomes replace the first ones.
 */
async function resendingAltered<I, O>(items: readonly I[], send: (chosen: readonly I[]) => Promise<(O | KmsError)[]>): Promise<(O | KmsError)[]> {
  const outcomes = await send(items);
  const again = outcomes.flatMap((outcome, index) => (outcome instanceof ChecksumMismatch ? [index] : []));
  if (again.length > 0) {
    const retried = await send(again.map((index) => items[index]!));
    again.forEach((index, position) => {
      outcomes[index] = retried[position]!;
    });
  }
  return outcomes;
}

/** The chunks `transform` makes of `source`, as an async iterator; errors of either reject. */
function through(source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, transform: Transform): AsyncIterableIterator<Buffer> {
  const input = Readable.from(source as AsyncIterable<Uint8Array>, { objectMode: false });
  // Errors reach the consumer through the iterator: pipeline destroys `transform` with them.
  pipeline(input, transform, () => undefined);
  return transform[Symbol.asyncIterator]() as AsyncIterableIterator<Buffer>;
}
