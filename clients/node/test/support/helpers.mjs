// Helpers of the SDK's tests: local envelope messages under a fixed data key (no service), the
// servers the suite runs against (from the environment), and gRPC interceptors that count or
// fail calls.

import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";

import { InterceptingCall, Metadata, status } from "@grpc/grpc-js";
import { KmsClient, RetryPolicy } from "kms-client";
import * as envelope from "kms-client/envelope";
import * as streaming from "kms-client/streaming";

import { encodeContext } from "../../dist/context.js";

export const PACKAGE_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const REPOSITORY = join(PACKAGE_DIR, "..", "..");

export const DATA_KEY = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
export const OTHER_DATA_KEY = Buffer.from(Array.from({ length: 32 }, (_, i) => 100 + i));
export const WRAPPED = Buffer.concat([Buffer.from([1]), Buffer.alloc(69, "W")]);

/** A local envelope message: `plaintext` sealed under `dataKey` (no service). */
export function seal(plaintext, { frameSize = 16, context = { tenant: "acme" }, dataKey = DATA_KEY, wrappedKey = WRAPPED, keyId = "orders", salt = randomBytes(32) } = {}) {
  const { header, sealer } = envelope.sealHeader(dataKey, { keyId, encodedContext: encodeContext(context), wrappedKey, frameSize, salt });
  return envelope.sealFrames(sealer, plaintext, header.encode());
}

/** The plaintext of a whole local message, in memory. */
export function open(ciphertext, dataKey = DATA_KEY) {
  const header = envelope.parseHeader(ciphertext);
  const opener = envelope.openHeader(dataKey, header);
  return envelope.openFrames(opener, ciphertext.subarray(header.length));
}

/** A sink that keeps what it is given, in order. */
export class Collect extends Writable {
  chunks = [];
  _write(chunk, _encoding, callback) {
    this.chunks.push(Buffer.from(chunk));
    callback();
  }
  get data() {
    return Buffer.concat(this.chunks);
  }
}

/** Chunks of `data`, `size` bytes each (the last one shorter). */
export function chunksOf(data, size) {
  const chunks = [];
  for (let offset = 0; offset < data.length; offset += size) {
    chunks.push(data.subarray(offset, offset + size));
  }
  return chunks.length > 0 ? chunks : [];
}

/**
 * Runs `streams` (a Transform, or several) over `input` given as `chunks`, into `sink`
 * (default: a Collect). Resolves with the sink; rejects with the pipeline's error.
 */
export async function through(input, streams, { chunkSize = 1 << 16, sink = new Collect() } = {}) {
  await pipeline(Readable.from(chunksOf(input, chunkSize), { objectMode: false }), ...[streams].flat(), sink);
  return sink;
}

/** The plaintext of a local message opened through an OpenStream (`sink` keeps what came out). */
export async function openStream(ciphertext, { dataKey = DATA_KEY, chunkSize = 1 << 16, sink = new Collect() } = {}) {
  const stream = new streaming.OpenStream((header) => envelope.openHeader(dataKey, header));
  await through(ciphertext, stream, { chunkSize, sink });
  return sink.data;
}

/** The header and the frames of a message, as Buffers. */
export function framesOf(ciphertext) {
  const header = envelope.parseHeader(ciphertext);
  const body = ciphertext.subarray(header.length);
  const step = header.frameSize + envelope.FRAME_TAG_BYTES;
  return { header: ciphertext.subarray(0, header.length), frames: chunksOf(body, step) };
}

/** Whether `promise` rejects with exactly `cls` (not a subclass); for assert.rejects. */
export function exactly(cls) {
  return (error) => {
    if (error?.constructor !== cls) {
      throw new Error(`expected ${cls.name}, got ${error?.constructor?.name}: ${error?.message}`);
    }
    return true;
  };
}

// -- servers ----------------------------------------------------------------------------------

const REQUIRED = process.env.KMS_TEST_REQUIRE_SERVER === "1";

/**
 * The environment variables a group of tests needs, or a reason to skip it. With
 * KMS_TEST_REQUIRE_SERVER=1 (as tests/e2e/test_node_sdk.py runs the suite) a missing variable
 * fails the run instead: nothing is skipped silently.
 */
export function serverEnv(...names) {
  const missing = names.filter((name) => !process.env[name]);
  if (missing.length === 0) {
    return { env: Object.fromEntries(names.map((name) => [name, process.env[name]])), skip: false };
  }
  if (REQUIRED) {
    throw new Error(`KMS_TEST_REQUIRE_SERVER=1 but ${missing.join(", ")} is not set`);
  }
  return { env: {}, skip: `needs ${missing.join(", ")} (a running server)` };
}

/** A key id no other test uses. */
export function uniqueKeyId(prefix = "k") {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

/** Counts the unary calls a client makes, by method name ("GenerateDataKey", ...). */
export function callCounter() {
  const calls = new Map();
  const interceptor = (options, nextCall) => {
    const name = options.method_definition.path.split("/").pop();
    calls.set(name, (calls.get(name) ?? 0) + 1);
    return new InterceptingCall(nextCall(options));
  };
  return {
    interceptor,
    get: (name) => calls.get(name) ?? 0,
    total: () => [...calls.values()].reduce((a, b) => a + b, 0),
    clear: () => calls.clear(),
    snapshot: () => Object.fromEntries(calls),
  };
}

/**
 * Makes the first `failures` calls of `method` (all methods when undefined) look UNAVAILABLE
 * to the client after the server has handled them: a response lost on the way back.
 */
export function loseResponses(failures, method) {
  let left = failures;
  return (options, nextCall) => {
    const name = options.method_definition.path.split("/").pop();
    if (left <= 0 || (method !== undefined && name !== method)) {
      return new InterceptingCall(nextCall(options));
    }
    left -= 1;
    return new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        // The response message goes through (grpc-js holds the status until it has), but the
        // status the client sees is UNAVAILABLE, so the response is discarded.
        next(metadata, {
          onReceiveMetadata: (received, forward) => forward(received),
          onReceiveMessage: (message, forward) => forward(message),
          onReceiveStatus: (_status, forward) => forward({ code: status.UNAVAILABLE, details: "injected: response lost", metadata: new Metadata() }),
        });
      },
    });
  };
}

export const FAST_RETRY = new RetryPolicy({ maxAttempts: 5, initialBackoffMs: 1, maxBackoffMs: 10 });

/** A plaintext client of the KMS_TARGET server, closed by `t.after`. */
export function plainClient(t, target, options = {}) {
  const client = new KmsClient(target, { timeoutMs: 30_000, ...options });
  t.after(() => client.close());
  return client;
}

export function readPem(path) {
  return readFileSync(path);
}
