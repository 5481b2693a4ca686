/**
 * The service contract, loaded at run time from the package's copy of proto/kms/v1/kms.proto
 * (made by the build from the repository's, never edited here), and the shapes of the messages
 * this SDK sends and receives as @grpc/proto-loader decodes them with the options below:
 * camelCase fields, enums as names, 64-bit integers as numbers, bytes as Buffers, every field
 * present with its default.
 */

import { join } from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export const PROTO_FILE = join(__dirname, "..", "proto", "kms", "v1", "kms.proto");

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
};

export interface Timestamp {
  seconds: number;
  nanos: number;
}
export type Duration = Timestamp;

export interface KeyVersion {
  version: number;
  state: string;
  createTime: Timestamp | null;
  destroyTime: Timestamp | null;
  hsmLabel: string;
  hsmObjectId: string;
  dataKeysIssued: number;
  decrypts: number;
  lastUsedTime: Timestamp | null;
}

export interface Key {
  keyId: string;
  description: string;
  primaryVersion: number;
  versions: KeyVersion[];
  rotationPeriod: Duration | null;
  nextRotationTime: Timestamp | null;
  createTime: Timestamp | null;
  updateTime: Timestamp | null;
  minDecryptionVersion: number;
  purpose: string;
  subjectField: string;
  retentionPeriod: Duration | null;
  erasureFinality: Duration | null;
}

export interface Erasure {
  keyId: string;
  subjectDigest: string;
  eraseTime: Timestamp | null;
  erasedBy: string;
  subjectKnown: boolean;
  finalAfterVersion: number;
  final: boolean;
  finalTime: Timestamp | null;
  auditSeq: number;
}

export interface ListErasuresResponse {
  erasures: Erasure[];
  nextPageToken: string;
}

export interface ListKeysResponse {
  keys: Key[];
  nextPageToken: string;
}

// The *_crc32c fields are proto3 `optional`: absent (undefined) when the service sent none.
export interface GenerateDataKeyResponse {
  keyId: string;
  keyVersion: number;
  plaintext: Buffer;
  wrappedKey: Buffer;
  plaintextCrc32c?: number;
  wrappedKeyCrc32c?: number;
}

export interface DecryptResponse {
  keyId: string;
  keyVersion: number;
  plaintext: Buffer;
  plaintextCrc32c?: number;
  verifiedWrappedKeyCrc32c: boolean;
}

export interface ReWrapResponse {
  keyId: string;
  keyVersion: number;
  sourceKeyVersion: number;
  wrappedKey: Buffer;
  sourceKeyId: string;
  wrappedKeyCrc32c?: number;
  verifiedWrappedKeyCrc32c: boolean;
}

export interface PseudonymizeResult {
  outcome?: "token" | "error";
  token?: string;
  error?: ItemError | null;
  tokenCrc32c?: number;
  verifiedValueCrc32c: boolean;
}

export interface PseudonymizeResponse {
  keyId: string;
  keyVersion: number;
  results: PseudonymizeResult[];
}

export interface ItemError {
  code: number;
  message: string;
  reason: string;
}

export interface ReWrapResult {
  outcome?: "rewrapped" | "error";
  rewrapped?: ReWrapResponse | null;
  error?: ItemError | null;
}

export interface BatchReWrapResponse {
  results: ReWrapResult[];
}

export type ServiceClientConstructor = grpc.ServiceClientConstructor;

let loaded: ServiceClientConstructor | undefined;

/** The KeyManagementService client class (loaded once per process). */
export function keyManagementService(): ServiceClientConstructor {
  if (loaded === undefined) {
    const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    const kms = grpc.loadPackageDefinition(definition) as unknown as { kms: { v1: { KeyManagementService: ServiceClientConstructor } } };
    loaded = kms.kms.v1.KeyManagementService;
  }
  return loaded;
}
