// Pseudonymization and integrity in transit (docs/pseudonymization.md, docs/api.md): CRC32C
// against the RFC 3720 vectors (no server), then through a real server (KMS_TARGET): tokens
// deterministic, unlinkable across contexts and pinned to a version; keys used only for their
// purpose; checksums sent and checked, with bytes altered in transit sent once more.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { InterceptingCall } from "@grpc/grpc-js";
import { ChecksumMismatch, KmsClient, ResponseChecksumMismatch, ValueTooLong, WrongKeyPurpose, crc32c } from "kms-client";

import { serverEnv, uniqueKeyId } from "./support/helpers.mjs";

describe("crc32c", () => {
  // RFC 3720 (iSCSI), appendix B.4, and the CRC catalogue's check value.
  for (const [name, data, expected] of [
    ["123456789", Buffer.from("123456789"), 0xe3069283],
    ["32 zeros", Buffer.alloc(32), 0x8a9136aa],
    ["32 0xff", Buffer.alloc(32, 0xff), 0x62a8ab43],
    ["0..31", Buffer.from(Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e],
    ["31..0", Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c],
    ["empty", Buffer.alloc(0), 0],
  ]) {
    test(name, () => assert.equal(crc32c(data), expected));
  }
});

const { env, skip } = serverEnv("KMS_TARGET");
const ANALYTICS = { purpose: "analytics" };

/**
 * Alters the next `times` messages of `method` with `change` (in place): the request on its way
 * out (`request: true`) or the response on its way in. `sent` keeps every request sent.
 */
function alter(method, change, { times = 1, request = false } = {}) {
  const state = { left: times, sent: [], calls: 0 };
  state.interceptor = (options, nextCall) => {
    const name = options.method_definition.path.split("/").pop();
    if (name !== method) {
      return new InterceptingCall(nextCall(options));
    }
    state.calls += 1;
    return new InterceptingCall(nextCall(options), {
      sendMessage(message, next) {
        const copy = structuredClone(message);
        state.sent.push(copy);
        if (request && state.left > 0) {
          state.left -= 1;
          change(copy);
        }
        next(copy);
      },
      start(metadata, listener, next) {
        next(metadata, {
          onReceiveMessage: (message, forward) => {
            if (!request && state.left > 0) {
              state.left -= 1;
              change(message);
            }
            forward(message);
          },
        });
      },
    });
  };
  return state;
}

function flip(buffer) {
  const altered = Buffer.from(buffer);
  altered[altered.length - 1] ^= 1;
  return altered;
}

function connect(t, interceptors = [], options = {}) {
  const client = new KmsClient(env.KMS_TARGET, { timeoutMs: 30_000, interceptors, retry: { maxAttempts: 1 }, ...options });
  t.after(() => client.close());
  return client;
}

describe("pseudonymize through the service", { skip }, () => {
  test("tokens are deterministic, unlinkable across contexts and pinned to a version", async (t) => {
    const client = connect(t);
    const keyId = uniqueKeyId("emails");
    const key = await client.createKey(keyId, { purpose: "PSEUDONYMIZE" });
    assert.equal(key.purpose, "PSEUDONYMIZE");
    const values = ["ada@example.com", "bob@example.com", Buffer.from("ada@example.com")];
    const tokens = await client.pseudonymize(values, { keyId, context: ANALYTICS });
    assert.equal(tokens[0], tokens[2]);
    assert.notEqual(tokens[0], tokens[1]);
    assert.match(tokens[0], /^kps1\.1\.[A-Za-z0-9_-]{43}$/);
    const support = await client.pseudonymize(values, { keyId, context: { purpose: "support" } });
    assert.equal(support.filter((token) => tokens.includes(token)).length, 0);
    await client.rotateKey(keyId);
    const rotated = await client.pseudonymize(values, { keyId, context: ANALYTICS });
    assert.ok(rotated.every((token) => token.startsWith("kps1.2.")));
    assert.deepEqual(await client.pseudonymize(values, { keyId, context: ANALYTICS, keyVersion: 1 }), tokens);
    const many = await client.pseudonymize(Array.from({ length: 1500 }, (_, i) => `u${i}`), { keyId });
    assert.equal(new Set(many).size, 1500);
    const results = await client.pseudonymizeResults(["ok", "x".repeat(4097)], { keyId });
    assert.ok(results[1] instanceof ValueTooLong);
    await assert.rejects(client.pseudonymize(["x".repeat(4097)], { keyId }), ValueTooLong);
  });

  test("a key is used only for its purpose", async (t) => {
    const client = connect(t);
    const emails = uniqueKeyId("emails");
    const orders = uniqueKeyId("orders");
    await client.createKey(emails, { purpose: "PSEUDONYMIZE" });
    await client.createKey(orders);
    await assert.rejects(client.pseudonymize(["a"], { keyId: orders }), WrongKeyPurpose);
    await assert.rejects(client.generateDataKey(emails), WrongKeyPurpose);
  });
});

describe("integrity in transit", { skip }, () => {
  test("a response altered once is asked for again; altered twice, refused", async (t) => {
    const keyId = uniqueKeyId("orders");
    await connect(t).createKey(keyId);
    const wrapped = (await connect(t).generateDataKey(keyId)).wrappedKey;
    for (const [method, field, call] of [
      ["GenerateDataKey", "plaintext", (c) => c.generateDataKey(keyId)],
      ["GenerateDataKey", "wrappedKey", (c) => c.generateDataKey(keyId)],
      ["Decrypt", "plaintext", (c) => c.decryptDataKey(wrapped)],
      ["ReWrap", "wrappedKey", (c) => c.rewrapDataKey(wrapped)],
    ]) {
      const once = alter(method, (message) => (message[field] = flip(message[field])));
      await call(connect(t, [once.interceptor]));
      assert.equal(once.calls, 2, `${method} ${field}`);
      const twice = alter(method, (message) => (message[field] = flip(message[field])), { times: 2 });
      await assert.rejects(call(connect(t, [twice.interceptor])), ResponseChecksumMismatch);
      assert.equal(twice.calls, 2);
    }
  });

  test("a request altered in transit is refused by the service and sent once more", async (t) => {
    const keyId = uniqueKeyId("orders");
    const plain = connect(t);
    await plain.createKey(keyId);
    const issued = await plain.generateDataKey(keyId);
    const once = alter("Decrypt", (message) => (message.wrappedKey = flip(message.wrappedKey)), { request: true });
    const opened = await connect(t, [once.interceptor]).decryptDataKey(issued.wrappedKey);
    assert.equal(once.calls, 2);
    assert.equal(once.sent[0].wrappedKeyCrc32c, crc32c(issued.wrappedKey));
    assert.ok(opened.plaintext.equals(issued.plaintext));
    const always = alter("Decrypt", (message) => (message.wrappedKey = flip(message.wrappedKey)), { request: true, times: 2 });
    await assert.rejects(connect(t, [always.interceptor]).decryptDataKey(issued.wrappedKey), (error) => {
      assert.ok(error instanceof ChecksumMismatch && !(error instanceof ResponseChecksumMismatch));
      assert.equal(error.reason, "ChecksumMismatch");
      return true;
    });
  });

  test("batch items and tokens altered in transit go again alone", async (t) => {
    const plain = connect(t);
    const keyId = uniqueKeyId("orders");
    const emails = uniqueKeyId("emails");
    await plain.createKey(keyId);
    await plain.createKey(emails, { purpose: "PSEUDONYMIZE" });
    const items = [];
    for (let i = 0; i < 4; i++) {
      items.push({ wrappedKey: (await plain.generateDataKey(keyId)).wrappedKey });
    }
    const batch = alter("BatchReWrap", (message) => (message.results[2].rewrapped.wrappedKey = flip(message.results[2].rewrapped.wrappedKey)));
    const rewrapped = await connect(t, [batch.interceptor]).rewrapDataKeys(items);
    assert.ok(rewrapped.every((result) => !(result instanceof Error)));
    assert.deepEqual(batch.sent.map((request) => request.requests.length), [4, 1]);
    const expected = await plain.pseudonymize(["a", "b", "c"], { keyId: emails });
    const tokens = alter("Pseudonymize", (message) => (message.results[1].token = `${message.results[1].token.slice(0, -1)}${message.results[1].token.endsWith("A") ? "B" : "A"}`));
    assert.deepEqual(await connect(t, [tokens.interceptor]).pseudonymize(["a", "b", "c"], { keyId: emails }), expected);
    assert.deepEqual(tokens.sent.map((request) => request.values.length), [3, 1]);
    assert.ok(tokens.sent.every((request) => request.valuesCrc32c.length === request.values.length));
  });

  test("checks can be turned off for a service that predates them", async (t) => {
    const keyId = uniqueKeyId("orders");
    const plain = connect(t);
    await plain.createKey(keyId);
    const strip = alter("GenerateDataKey", (message) => delete message.plaintextCrc32c, { times: 2 });
    await assert.rejects(connect(t, [strip.interceptor]).generateDataKey(keyId), /carries no plaintext_crc32c/);
    const quiet = alter("Decrypt", () => undefined);
    const unchecked = connect(t, [quiet.interceptor], { verifyChecksums: false });
    const issued = await unchecked.generateDataKey(keyId);
    await unchecked.decryptDataKey(issued.wrappedKey);
    assert.equal(quiet.sent[0].wrappedKeyCrc32c, undefined);
  });
});
