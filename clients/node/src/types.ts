/**
 * Plain data returned by the client. A plaintext data key never appears in `inspect`,
 * `JSON.stringify` or `toString` output.
 */

import { inspect } from "node:util";

import type * as wire from "./proto";

export type KeyVersionState = "ENABLED" | "DISABLED" | "DESTROY_SCHEDULED" | "DESTROYED" | "STATE_UNSPECIFIED";

export interface KeyVersion {
  readonly version: number;
  readonly state: KeyVersionState;
  readonly createTime: Date | undefined;
  /** For DESTROY_SCHEDULED, when destruction is due; for DESTROYED, when it happened. */
  readonly destroyTime: Date | undefined;
  readonly hsmLabel: string;
  readonly hsmObjectId: string;
  /** Usage counted by the service (lower bounds: written in batches every few seconds). */
  readonly dataKeysIssued: number;
  readonly decrypts: number;
  readonly lastUsedTime: Date | undefined;
}

export interface Key {
  readonly keyId: string;
  readonly description: string;
  /** The version that wraps new data keys. */
  readonly primaryVersion: number;
  /** All versions, oldest first, destroyed ones included. */
  readonly versions: readonly KeyVersion[];
  /** Undefined when the key is rotated only on demand. */
  readonly rotationPeriodMs: number | undefined;
  readonly nextRotationTime: Date | undefined;
  readonly createTime: Date | undefined;
  readonly updateTime: Date | undefined;
  readonly minDecryptionVersion: number;
  /** "ENCRYPT_DECRYPT" (data keys) or "PSEUDONYMIZE" (tokens, `pseudonymize`). */
  readonly purpose: string;
  /** The encryption-context entry naming the data subject ("" for none): docs/privacy.md. */
  readonly subjectField: string;
  /** Versions superseded longer ago than this are destroyed by the scheduler (undefined: none). */
  readonly retentionPeriodMs: number | undefined;
  /** For a key with a subjectField: the bound on an erasure being final in backups. */
  readonly erasureFinalityMs: number | undefined;
}

/**
 * The receipt of one erasure: which key, a keyed digest of the subject (never the subject), who
 * asked and when, and when it is final in database backups: once every master key version up to
 * `finalAfterVersion` is destroyed (`finalTime`: when that was, or is expected).
 */
export interface Erasure {
  readonly keyId: string;
  readonly subjectDigest: string;
  readonly eraseTime: Date | undefined;
  readonly erasedBy: string;
  /** False when no data key had been issued for the subject (none will be). */
  readonly subjectKnown: boolean;
  readonly finalAfterVersion: number;
  readonly final: boolean;
  readonly finalTime: Date | undefined;
  /** The audit record holding the receipt (0 until it is chained). */
  readonly auditSeq: number;
}

/**
 * A data key as the service issued or unwrapped it: the key and version that wrap it, the
 * wrapped form to store beside the ciphertext, and (from GenerateDataKey and Decrypt) the 32
 * plaintext bytes. Store only the wrapped form; call `destroy()` once done with the plaintext.
 */
export class DataKey {
  readonly keyId: string;
  readonly keyVersion: number;
  readonly wrappedKey: Buffer;
  #plaintext: Buffer | undefined;

  constructor(keyId: string, keyVersion: number, wrappedKey: Uint8Array, plaintext?: Uint8Array) {
    this.keyId = keyId;
    this.keyVersion = keyVersion;
    this.wrappedKey = Buffer.from(wrappedKey);
    // Buffer.alloc, not a pooled allocation: zeroing it touches nothing else.
    this.#plaintext = plaintext === undefined ? undefined : Buffer.alloc(plaintext.length);
    if (plaintext !== undefined) {
      this.#plaintext!.set(plaintext);
    }
  }

  /** The plaintext data key (undefined without one, or once destroyed). Never store it. */
  get plaintext(): Buffer | undefined {
    return this.#plaintext;
  }

  /** Another DataKey with its own copy of the plaintext. */
  copy(): DataKey {
    return new DataKey(this.keyId, this.keyVersion, this.wrappedKey, this.#plaintext);
  }

  /** Zeroes the plaintext and forgets it. Idempotent. */
  destroy(): void {
    this.#plaintext?.fill(0);
    this.#plaintext = undefined;
  }

  toJSON(): object {
    return { keyId: this.keyId, keyVersion: this.keyVersion, wrappedKey: this.wrappedKey.toString("base64") };
  }

  toString(): string {
    return `DataKey(${this.keyId} v${this.keyVersion})`;
  }

  [inspect.custom](): string {
    return `DataKey { keyId: ${JSON.stringify(this.keyId)}, keyVersion: ${this.keyVersion}, plaintext: ${this.#plaintext === undefined ? "none" : "<hidden>"} }`;
  }
}

/** The outcome of re-wrapping one wrapped key. */
export interface Rewrapped {
  /** The key and version now wrapping the data key. */
  readonly keyId: string;
  readonly keyVersion: number;
  /** The key and version that wrapped it before. */
  readonly sourceKeyId: string;
  readonly sourceKeyVersion: number;
  readonly wrappedKey: Buffer;
  /** False when the wrapped key was already under the primary version (returned as is). */
  readonly changed: boolean;
}

function timeOf(value: wire.Timestamp | null | undefined): Date | undefined {
  if (value === null || value === undefined) {
    return undefined;
  }
  return new Date(Number(value.seconds) * 1000 + Math.floor(Number(value.nanos) / 1e6));
}

function durationMs(value: wire.Duration | null | undefined): number | undefined {
  if (value === null || value === undefined) {
    return undefined;
  }
  return Number(value.seconds) * 1000 + Math.floor(Number(value.nanos) / 1e6);
}

export function keyFromWire(message: wire.Key): Key {
  return Object.freeze({
    keyId: message.keyId,
    description: message.description,
    primaryVersion: message.primaryVersion,
    versions: Object.freeze(
      message.versions.map((v) =>
        Object.freeze({
          version: v.version,
          state: v.state as KeyVersionState,
          createTime: timeOf(v.createTime),
          destroyTime: timeOf(v.destroyTime),
          hsmLabel: v.hsmLabel,
          hsmObjectId: v.hsmObjectId,
          dataKeysIssued: Number(v.dataKeysIssued),
          decrypts: Number(v.decrypts),
          lastUsedTime: timeOf(v.lastUsedTime),
        }),
      ),
    ),
    rotationPeriodMs: durationMs(message.rotationPeriod),
    nextRotationTime: timeOf(message.nextRotationTime),
    createTime: timeOf(message.createTime),
    updateTime: timeOf(message.updateTime),
    minDecryptionVersion: message.minDecryptionVersion,
    purpose: message.purpose,
    subjectField: message.subjectField,
    retentionPeriodMs: durationMs(message.retentionPeriod),
    erasureFinalityMs: durationMs(message.erasureFinality),
  });
}

export function erasureFromWire(message: wire.Erasure): Erasure {
  return Object.freeze({
    keyId: message.keyId,
    subjectDigest: message.subjectDigest,
    eraseTime: timeOf(message.eraseTime),
    erasedBy: message.erasedBy,
    subjectKnown: message.subjectKnown,
    finalAfterVersion: message.finalAfterVersion,
    final: message.final,
    finalTime: timeOf(message.finalTime),
    auditSeq: Number(message.auditSeq),
  });
}

export function rewrappedFromWire(message: wire.ReWrapResponse): Rewrapped {
  return Object.freeze({
    keyId: message.keyId,
    keyVersion: message.keyVersion,
    sourceKeyId: message.sourceKeyId,
    sourceKeyVersion: message.sourceKeyVersion,
    wrappedKey: Buffer.from(message.wrappedKey),
    changed: message.keyId !== message.sourceKeyId || message.keyVersion !== message.sourceKeyVersion,
  });
}
