/**
 * The TypeScript/Node.js SDK of the key management service: envelope encryption under data keys
 * the service issues and wraps with master keys that never leave its HSM.
 *
 * The public surface, name by name. The format layer (local data keys, no service) is the
 * subpath "kms-client/envelope"; the stream Transforms are "kms-client/streaming".
 */

export { KmsClient, DEFAULT_TIMEOUT_MS, isLocalTarget, tlsCredentials } from "./client";
export type {
  CallOptions,
  CreateKeyOptions,
  KmsClientOptions,
  ListErasuresOptions,
  ListKeysOptions,
  PemSource,
  PseudonymizeOptions,
  RewrapDataKeyOptions,
  TlsOptions,
} from "./client";
export { crc32c } from "./crc32c";
export type { DecryptOptions, EncryptOptions, RewrapItem } from "./encryption";
export type { EncryptionContext } from "./context";
export { DataKeyCaching, MAX_AGE_CEILING_MS, MAX_BYTES_CEILING, MAX_MESSAGES_CEILING } from "./caching";
export type { DataKeyCachingOptions } from "./caching";
export { NO_RETRY, RetryPolicy } from "./retry";
export type { RetryEnvironment, RetryPolicyOptions } from "./retry";
export { DEFAULT_FRAME_SIZE, Header, MAX_FRAME_SIZE, parseHeader } from "./envelope";
export { OpenStream, RewrapStream, SealStream } from "./streaming";
export { DataKey } from "./types";
export type { Erasure, Key, KeyVersion, KeyVersionState, Rewrapped } from "./types";
export {
  AlreadyExists,
  AuditTampered,
  AuditUnavailable,
  BatchTooLarge,
  Cancelled,
  ChecksumMismatch,
  ConcurrentCreation,
  DatabaseUnavailable,
  DeadlineExceeded,
  EncryptionContextMismatch,
  FailedPrecondition,
  GrantNotFound,
  HsmOperationFailed,
  HsmUnavailable,
  Internal,
  InvalidArgument,
  InvalidCiphertext,
  InvalidEncryptionContext,
  InvalidKeyId,
  InvalidPageToken,
  InvalidPrivacySetting,
  InvalidRotationPeriod,
  InvalidStateTransition,
  KeyAlreadyExists,
  KeyMaterialMissing,
  KeyMaterialCorrupt,
  KeyMetadataUnverified,
  KeyNotFound,
  KeyVersionBelowMinimum,
  KeyVersionDestroyScheduled,
  KeyVersionDestroyed,
  KeyVersionDisabled,
  KeyVersionNotFound,
  KeyVersionNotUsable,
  KmsError,
  LedgerTampered,
  MalformedRequest,
  MasterKeyUntrusted,
  MetadataIntegrityLost,
  RootKeyUntrusted,
  NotFound,
  PermissionDenied,
  RateLimited,
  ResourceExhausted,
  ResponseChecksumMismatch,
  RewrapDefeatsRetention,
  SealKeyUntrusted,
  StreamIdle,
  SubjectErased,
  SubjectMissing,
  TooManyStreams,
  TruncatedCiphertext,
  Unauthenticated,
  Unavailable,
  ValueTooLong,
  VersionStillInUse,
  WrapLimitReached,
  WrongKeyPurpose,
  errorFor,
  fromServiceError,
  registeredReasons,
} from "./errors";
export type { KmsErrorOptions } from "./errors";
