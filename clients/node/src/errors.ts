/**
 * Typed errors rebuilt from the service's gRPC status.
 *
 * The service names the exact condition in the trailing metadata entry `kms-error-reason`
 * (the name of its exception class, e.g. "KeyNotFound"); when that entry is absent, unknown,
 * or names a class whose status code disagrees with the status (a proxy answered, say), the
 * status code alone picks the class. Code that only cares about the broad kind catches the
 * per-code classes (`InvalidArgument`, `NotFound`, `FailedPrecondition`, `Unavailable`, ...),
 * or `KmsError` for everything this SDK raises.
 *
 * One registry maps reasons to classes: a class registers itself in a static block, so adding
 * a reason is one line:
 *
 *     export class KeyNotFound extends NotFound { static { reason(this); } }
 *
 * Messages are the service's own (which never carry key material, plaintext or context
 * values) or fixed strings of this SDK: no error built here ever includes a key or plaintext.
 */

import { type Metadata, status } from "@grpc/grpc-js";

/** The trailing metadata entry naming the service's condition. */
export const REASON_KEY = "kms-error-reason";
/** The trailing metadata entry of a rate limit: milliseconds to wait before retrying. */
export const RETRY_AFTER_KEY = "retry-after-ms";

export interface KmsErrorOptions {
  /** The condition's name; defaults to the class's registered reason. */
  reason?: string;
  /** From the service's `retry-after-ms` trailer (rate limits). */
  retryAfterMs?: number;
  cause?: unknown;
}

type KmsErrorClass = (new (message: string, options?: KmsErrorOptions) => KmsError) & {
  readonly grpcCode: status;
  readonly reasonName: string;
};

const byReason = new Map<string, KmsErrorClass>();
const byCode = new Map<status, KmsErrorClass>();

/** Base of every error this SDK raises. `code` is the gRPC status code (grpc-js `status`). */
export class KmsError extends Error {
  /** The gRPC status code of this class (inherited by subclasses). */
  static readonly grpcCode: status = status.UNKNOWN;
  /** The reason this class stands for (set by `reason()`; the class name otherwise). */
  static readonly reasonName: string = "KmsError";

  readonly code: status;
  /** The service's condition name, e.g. "KeyNotFound", or this class's when raised locally. */
  readonly reason: string;
  /** How long the service asked to wait before a retry (rate limits), if it said. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, options: KmsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const cls = new.target as unknown as KmsErrorClass;
    Object.defineProperty(this, "name", { value: cls.name, enumerable: false, configurable: true, writable: true });
    this.code = cls.grpcCode;
    this.reason = options.reason ?? (Object.hasOwn(cls, "reasonName") ? cls.reasonName : cls.name);
    this.retryAfterMs = options.retryAfterMs;
  }

  /** The status code's name, e.g. "NOT_FOUND". */
  get codeName(): string {
    return status[this.code] ?? String(this.code);
  }
}

/**
 * Registers `cls` as the class of the service conditions `names` (default: the class name; the
 * first name is the class's own reason). Called from the class's static block; the status code
 * is inherited from the parent class.
 */
export function reason(cls: abstract new (...args: never[]) => KmsError, ...names: string[]): void {
  const registered = cls as unknown as KmsErrorClass;
  const all = names.length === 0 ? [cls.name] : names;
  for (const name of all) {
    const existing = byReason.get(name);
    if (existing !== undefined && existing !== registered) {
      throw new Error(`reason ${name} is registered twice (${existing.name}, ${cls.name})`);
    }
    byReason.set(name, registered);
  }
  Object.defineProperty(cls, "reasonName", { value: all[0], enumerable: false });
}

/**
 * Registers `cls` as the class of status `code`, and as the reason of its own name (then of
 * `aliases`: names older services used for the same condition).
 */
function codeClass(cls: abstract new (...args: never[]) => KmsError, code: status, ...aliases: string[]): void {
  Object.defineProperty(cls, "grpcCode", { value: code, enumerable: false });
  byCode.set(code, cls as unknown as KmsErrorClass);
  reason(cls, cls.name, ...aliases);
}

// -- one class per status code ----------------------------------------------------------------

export class InvalidArgument extends KmsError { static { codeClass(this, status.INVALID_ARGUMENT); } }
export class NotFound extends KmsError { static { codeClass(this, status.NOT_FOUND); } }
export class AlreadyExists extends KmsError { static { codeClass(this, status.ALREADY_EXISTS); } }
export class FailedPrecondition extends KmsError { static { codeClass(this, status.FAILED_PRECONDITION); } }
export class PermissionDenied extends KmsError { static { codeClass(this, status.PERMISSION_DENIED); } }
export class Unauthenticated extends KmsError { static { codeClass(this, status.UNAUTHENTICATED); } }
export class ResourceExhausted extends KmsError { static { codeClass(this, status.RESOURCE_EXHAUSTED); } }
export class Unavailable extends KmsError { static { codeClass(this, status.UNAVAILABLE); } }
export class DeadlineExceeded extends KmsError { static { codeClass(this, status.DEADLINE_EXCEEDED); } }
export class Cancelled extends KmsError { static { codeClass(this, status.CANCELLED); } }
/** A bug in the service; its message carries the request id to find it in the service's log. */
// "InternalError" is the name services before this SDK used for "Internal".
export class Internal extends KmsError { static { codeClass(this, status.INTERNAL, "InternalError"); } }

// -- one class per condition (the service's reasons, kms/errors.py and the rest of kms/) --------

// INVALID_ARGUMENT
export class InvalidKeyId extends InvalidArgument { static { reason(this); } }
export class InvalidEncryptionContext extends InvalidArgument { static { reason(this); } }
export class InvalidPageToken extends InvalidArgument { static { reason(this); } }
export class InvalidRotationPeriod extends InvalidArgument { static { reason(this); } }
export class MalformedRequest extends InvalidArgument { static { reason(this); } }
export class BatchTooLarge extends InvalidArgument { static { reason(this); } }
/**
 * Bytes were altered between this client and the service: the service found a request's CRC32C
 * wrong (and did nothing with it), or this SDK found a response's wrong
 * (ResponseChecksumMismatch). The SDK has already sent them once more.
 */
export class ChecksumMismatch extends InvalidArgument { static { reason(this); } }
/**
 * A response's byte field does not match its CRC32C, or a response lacks the checksum or the
 * verification this SDK asked for. Raised by this SDK only (docs/api.md).
 */
export class ResponseChecksumMismatch extends ChecksumMismatch { static { reason(this); } }
/** A value to pseudonymize is longer than the service takes (4096 bytes). */
export class ValueTooLong extends InvalidArgument { static { reason(this); } }
/** A key's subjectField, retentionPeriod or erasureFinality is out of bounds or cannot apply (docs/privacy.md). */
export class InvalidPrivacySetting extends InvalidArgument { static { reason(this); } }
/** A key with a subjectField was used without the encryption-context entry naming the subject. */
export class SubjectMissing extends InvalidArgument { static { reason(this); } }
/**
 * A ciphertext or wrapped key that is malformed, altered, truncated, or opened with the wrong
 * encryption context. Deliberately does not say which. An altered wrapped key can also produce
 * an error about the key version it names instead (PermissionDenied, KeyVersionNotUsable, ...):
 * the absence of this error is no proof of integrity.
 */
export class InvalidCiphertext extends InvalidArgument { static { reason(this); } }
/**
 * The ciphertext ended before its final frame: inside the header, on a frame boundary, or
 * inside a frame's tag. Plaintext already emitted by a decrypting stream is incomplete.
 */
export class TruncatedCiphertext extends InvalidCiphertext { static { reason(this); } }
/**
 * The caller's encryption context is not the one recorded in the ciphertext's header. Raised
 * before the service is asked for the data key (the header's context is public).
 */
export class EncryptionContextMismatch extends InvalidCiphertext { static { reason(this); } }

// NOT_FOUND
export class KeyNotFound extends NotFound { static { reason(this); } }
export class KeyVersionNotFound extends NotFound { static { reason(this); } }
export class GrantNotFound extends NotFound { static { reason(this); } }

// ALREADY_EXISTS
export class KeyAlreadyExists extends AlreadyExists { static { reason(this); } }

// FAILED_PRECONDITION
/** A key version exists but its state, or the key's minimum decryption version, forbids the use. */
export class KeyVersionNotUsable extends FailedPrecondition { static { reason(this); } }
export class KeyVersionDisabled extends KeyVersionNotUsable { static { reason(this); } }
export class KeyVersionDestroyScheduled extends KeyVersionNotUsable { static { reason(this); } }
export class KeyVersionDestroyed extends KeyVersionNotUsable { static { reason(this); } }
export class KeyVersionBelowMinimum extends KeyVersionNotUsable { static { reason(this); } }
/** The key's purpose is not the operation's: data keys need ENCRYPT_DECRYPT, pseudonymize PSEUDONYMIZE. */
export class WrongKeyPurpose extends FailedPrecondition { static { reason(this); } }
/**
 * The data subject was erased: its data keys no longer open and none is issued. The message
 * names the erasure by the subject's keyed digest (kms erase status lists it).
 */
export class SubjectErased extends FailedPrecondition { static { reason(this); } }
/** The key has a retentionPeriod: its data keys are never re-wrapped onto newer versions. */
export class RewrapDefeatsRetention extends FailedPrecondition { static { reason(this); } }
/** The service records a usable version but its HSM has no master key object for it. */
export class KeyMaterialMissing extends FailedPrecondition { static { reason(this); } }
export class InvalidStateTransition extends FailedPrecondition { static { reason(this); } }
/** A version's stored wrapped key does not verify (swapped, altered, or its root key gone). */
export class KeyMaterialCorrupt extends FailedPrecondition { static { reason(this); } }
/** The service could not verify a key's metadata against its integrity records. */
export class KeyMetadataUnverified extends FailedPrecondition { static { reason(this); } }
export class VersionStillInUse extends FailedPrecondition { static { reason(this); } }
/** A version has wrapped as many data keys as one AES-GCM key may; rotate the key. */
export class WrapLimitReached extends FailedPrecondition { static { reason(this); } }

// RESOURCE_EXHAUSTED
export class RateLimited extends ResourceExhausted { static { reason(this); } }
export class TooManyStreams extends ResourceExhausted { static { reason(this); } }

// UNAVAILABLE
export class HsmUnavailable extends Unavailable { static { reason(this); } }
export class HsmOperationFailed extends Unavailable { static { reason(this); } }
export class DatabaseUnavailable extends Unavailable { static { reason(this); } }
export class AuditUnavailable extends Unavailable { static { reason(this); } }
export class AuditTampered extends Unavailable { static { reason(this); } }
export class LedgerTampered extends Unavailable { static { reason(this); } }
export class MetadataIntegrityLost extends Unavailable { static { reason(this); } }
/** The HSM object a key version names does not prove it is a master key the service generated. */
export class MasterKeyUntrusted extends Unavailable { static { reason(this); } }
/** No HSM object labelled as the root key proves it is a sound wrap-only key. */
export class RootKeyUntrusted extends Unavailable { static { reason(this); } }
/** The service's audit seal key is in doubt: nothing is sealed or checked until an operator has looked. */
export class SealKeyUntrusted extends Unavailable { static { reason(this); } }
export class ConcurrentCreation extends Unavailable { static { reason(this); } }

// CANCELLED
/** The service cancelled a stream that made no progress for too long. */
export class StreamIdle extends Cancelled { static { reason(this); } }

// -- from a status to an error ----------------------------------------------------------------

/** The error for a status: the reason's class when it agrees with the code, else the code's. */
export function errorFor(code: status, message: string, options: KmsErrorOptions = {}): KmsError {
  let cls = options.reason === undefined ? undefined : byReason.get(options.reason);
  if (cls === undefined || cls.grpcCode !== code) {
    cls = byCode.get(code);
  }
  if (cls === undefined) {
    // A status this SDK has no class for (UNKNOWN, ABORTED, ...): the base, with that code.
    const error = new KmsError(message, options);
    Object.defineProperty(error, "code", { value: code, enumerable: true });
    return error;
  }
  return new cls(message, options);
}

interface StatusLike {
  code?: unknown;
  details?: unknown;
  message?: unknown;
  metadata?: unknown;
}

/** The typed error for a grpc-js call error (a `ServiceError`, or a status object). */
export function fromServiceError(error: unknown): KmsError {
  if (error instanceof KmsError) {
    return error;
  }
  const raw = (typeof error === "object" && error !== null ? error : {}) as StatusLike;
  const code = typeof raw.code === "number" && status[raw.code] !== undefined ? (raw.code as status) : status.UNKNOWN;
  const details = typeof raw.details === "string" && raw.details !== "" ? raw.details : undefined;
  const message = details ?? (typeof raw.message === "string" && raw.message !== "" ? raw.message : status[code]!);
  let reasonValue: string | undefined;
  let retryAfterMs: number | undefined;
  // Duck-typed: an application may hold another copy of grpc-js than this SDK's.
  const metadata = raw.metadata as Metadata | undefined;
  if (typeof metadata?.get === "function") {
    const [reasonEntry] = metadata.get(REASON_KEY);
    if (typeof reasonEntry === "string") {
      reasonValue = reasonEntry;
    }
    const [retryEntry] = metadata.get(RETRY_AFTER_KEY);
    if (typeof retryEntry === "string" && /^\d{1,9}$/.test(retryEntry)) {
      retryAfterMs = Number(retryEntry);
    }
  }
  return errorFor(code, message, { reason: reasonValue, retryAfterMs, cause: error });
}

/**
 * Every registered reason with the name of its status code, e.g. `{KeyNotFound: "NOT_FOUND"}`:
 * for the parity test against the service's conditions.
 */
export function registeredReasons(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, cls] of [...byReason].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    out[name] = status[cls.grpcCode]!;
  }
  return out;
}
