// The golden vectors of docs/envelope-format.md (docs/vectors/envelope-v1.json), written by the
// Python SDK's generator: every valid one decrypts with this SDK (in memory, as a stream with
// every chunking, and through the decrypt recipe with a stand-in service that unwraps with the
// vector's master key as docs/wrapped-key-format.md says), every byte of the valid ones is
// reproduced, and every refused one is refused with exactly the class its reason names.

import assert from "node:assert/strict";
import { createDecipheriv } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";

import { DataKey, EncryptionContextMismatch, InvalidCiphertext, TruncatedCiphertext, parseHeader } from "kms-client";
import * as envelope from "kms-client/envelope";

import { encodeContext } from "../dist/context.js";
import { EnvelopeEncryption } from "../dist/encryption.js";
import { REPOSITORY, exactly, openStream, through } from "./support/helpers.mjs";

const VECTORS = JSON.parse(readFileSync(join(REPOSITORY, "docs", "vectors", "envelope-v1.json"), "utf8"));
const BY_ID = new Map(VECTORS.vectors.map((vector) => [vector.id, vector]));
const VALID = VECTORS.vectors.filter((vector) => vector.result === "valid");
const REFUSED = VECTORS.vectors.filter((vector) => vector.result !== "valid");
const OUTCOMES = { truncated: TruncatedCiphertext, context_mismatch: EncryptionContextMismatch, invalid: InvalidCiphertext };

const hex = (text) => Buffer.from(text, "hex");

/** docs/wrapped-key-format.md: AES-256-GCM(master key, iv, data key, header || context). */
function unwrap(wrappedKey, wrapping, context) {
  const keyIdLength = wrappedKey[1];
  const header = wrappedKey.subarray(0, 6 + keyIdLength);
  const iv = wrappedKey.subarray(6 + keyIdLength, 18 + keyIdLength);
  assert.equal(iv.toString("hex"), wrapping.iv);
  const sealed = wrappedKey.subarray(18 + keyIdLength);
  const decipher = createDecipheriv("aes-256-gcm", hex(wrapping.master_key), iv);
  decipher.setAAD(Buffer.concat([header, encodeContext(context)]));
  decipher.setAuthTag(sealed.subarray(sealed.length - 16));
  return Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - 16)), decipher.final()]);
}

/** Unwraps with the vector's own wrapping inputs, or those of the vector it is based on. */
function dataKeyFor(vector) {
  const base = BY_ID.get(vector.based_on) ?? vector;
  const wrapping = vector.wrapping ?? base.wrapping;
  return (wrappedKey) => unwrap(wrappedKey, wrapping, base.encryption_context);
}

/** A stand-in for the service: Decrypt by the vector's master key, naming the wrapped key's key id. */
function serviceFor(vector) {
  const unwrapWith = dataKeyFor(vector);
  const calls = [];
  return {
    calls,
    async decryptDataKey(wrappedKey) {
      calls.push("Decrypt");
      let plaintext;
      try {
        plaintext = unwrapWith(wrappedKey);
      } catch {
        throw new InvalidCiphertext("wrapped key is invalid or does not match the encryption context");
      }
      const keyId = wrappedKey.subarray(2, 2 + wrappedKey[1]).toString("latin1");
      return new DataKey(keyId, wrappedKey.readUInt32BE(2 + wrappedKey[1]), wrappedKey, plaintext);
    },
  };
}

test("the file names its format and holds each kind of case", () => {
  assert.deepEqual([VECTORS.format_version, VECTORS.algorithm_suite], [1, 1]);
  assert.deepEqual(new Set(VECTORS.vectors.map((vector) => vector.result)), new Set(["valid", "truncated", "invalid", "context_mismatch"]));
  assert.ok(VALID.length >= 6 && REFUSED.length >= 10);
});

describe("valid vectors decrypt", () => {
  for (const vector of VALID) {
    test(`vector ${vector.id}: ${vector.comment}`, async () => {
      const ciphertext = hex(vector.ciphertext);
      const dataKey = hex(vector.data_key);
      const plaintext = hex(vector.plaintext);
      assert.deepEqual(unwrap(hex(vector.wrapped_key), vector.wrapping, vector.encryption_context), dataKey);
      const header = parseHeader(ciphertext);
      assert.deepEqual({ ...header.context }, vector.encryption_context);
      assert.deepEqual(envelope.openFrames(envelope.openHeader(dataKey, header), ciphertext.subarray(header.length)), plaintext);
      for (const chunkSize of [1, 7, 64, 1 << 16]) {
        assert.deepEqual(await openStream(ciphertext, { dataKey, chunkSize }), plaintext, `chunks of ${chunkSize}`);
      }
      const service = serviceFor(vector);
      const recipe = new EnvelopeEncryption(service, undefined);
      assert.deepEqual(await recipe.decrypt(ciphertext, { context: vector.encryption_context }), plaintext);
      const sink = await through(ciphertext, recipe.decryptStream({ context: vector.encryption_context }), { chunkSize: 5 });
      assert.deepEqual(sink.data, plaintext);
      assert.deepEqual(service.calls, ["Decrypt", "Decrypt"]);
    });
  }
});

describe("the SDK reproduces every byte of a valid vector", () => {
  for (const vector of VALID.filter((v) => v.salt !== undefined)) {
    test(`vector ${vector.id}`, () => {
      const dataKey = hex(vector.data_key);
      const salt = hex(vector.salt);
      assert.deepEqual(envelope.deriveMessageKeysForTesting(dataKey, salt), {
        frameKey: vector.frame_key,
        headerKey: vector.header_key,
        commitment: vector.commitment,
      });
      const encodedContext = encodeContext(vector.encryption_context);
      assert.equal(encodedContext.toString("hex"), vector.encoded_context);
      const { header, sealer } = envelope.sealHeader(dataKey, {
        keyId: vector.key_id,
        encodedContext,
        wrappedKey: hex(vector.wrapped_key),
        frameSize: vector.frame_size,
        salt,
      });
      assert.equal(header.authenticatedBytes().toString("hex"), vector.authenticated_header);
      assert.equal(header.headerTag.toString("hex"), vector.header_tag);
      assert.equal(header.encode().toString("hex"), vector.header);
      const body = envelope.sealFrames(sealer, hex(vector.plaintext));
      assert.equal(body.toString("hex"), vector.frames.map((frame) => frame.sealed).join(""));
      assert.equal(Buffer.concat([header.encode(), body]).toString("hex"), vector.ciphertext);
      const nonces = vector.frames.map((_, i) => envelope.frameNonce(i, i === vector.frames.length - 1).toString("hex"));
      assert.deepEqual(nonces, vector.frames.map((frame) => frame.nonce));
    });
  }
});

test("the re-wrapped vector differs from its original only in the wrapped key", () => {
  const rewrapped = VECTORS.vectors.find((vector) => vector.comment.startsWith("vector 3 re-wrapped"));
  const original = BY_ID.get(rewrapped.based_on);
  const before = hex(original.ciphertext);
  const after = hex(rewrapped.ciphertext);
  const oldHeader = parseHeader(before);
  const newHeader = parseHeader(after);
  assert.deepEqual(before.subarray(0, oldHeader.wrappedKeyOffset), after.subarray(0, newHeader.wrappedKeyOffset));
  assert.deepEqual(before.subarray(oldHeader.length), after.subarray(newHeader.length));
  assert.notDeepEqual(oldHeader.wrappedKey, newHeader.wrappedKey);
  assert.deepEqual(envelope.replaceWrappedKey(before, newHeader.wrappedKey), after);
});

describe("refused vectors are refused for their stated reason", () => {
  for (const vector of REFUSED) {
    test(`vector ${vector.id} (${vector.result}): ${vector.comment}`, async () => {
      const ciphertext = hex(vector.ciphertext);
      const expected = OUTCOMES[vector.result];
      const lookup = dataKeyFor(vector);
      // The format layer, the reader's steps in order (the context check is step 2).
      assert.throws(() => {
        const header = parseHeader(ciphertext);
        if (!encodeContext(vector.decrypt_context).equals(header.encodedContext)) {
          throw new EncryptionContextMismatch("context");
        }
        const opener = envelope.openHeader(lookup(header.wrappedKey), header);
        envelope.openFrames(opener, ciphertext.subarray(header.length));
      }, exactly(expected));
      // The decrypt recipe, in memory and as a stream, with a stand-in service.
      const service = serviceFor(vector);
      const recipe = new EnvelopeEncryption(service, undefined);
      await assert.rejects(recipe.decrypt(ciphertext, { context: vector.decrypt_context }), exactly(expected));
      for (const chunkSize of [1, 13, 1 << 16]) {
        await assert.rejects(through(ciphertext, recipe.decryptStream({ context: vector.decrypt_context }), { chunkSize }), exactly(expected));
      }
      if (vector.result === "context_mismatch") {
        assert.deepEqual(service.calls, [], "a context mismatch is found before any service call");
      }
    });
  }
});
