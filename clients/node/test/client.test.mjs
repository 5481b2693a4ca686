// encrypt/decrypt/streams/rewrap through a real server (KMS_TARGET: plaintext on loopback,
// SoftHSM token, SQLite; every caller is the superuser).

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { describe, test } from "node:test";

import {
  DataKeyCaching,
  EncryptionContextMismatch,
  InvalidCiphertext,
  InvalidEncryptionContext,
  KeyNotFound,
  KeyVersionDisabled,
  KeyVersionNotUsable,
  KmsClient,
  KmsError,
  RetryPolicy,
  TruncatedCiphertext,
  Unavailable,
  parseHeader,
} from "kms-client";

import { Collect, FAST_RETRY, callCounter, chunksOf, exactly, framesOf, loseResponses, seal, serverEnv, through, uniqueKeyId } from "./support/helpers.mjs";

const { env, skip } = serverEnv("KMS_TARGET");
const CONTEXT = { tenant: "acme", purpose: "orders" };
const F = 64;

/** A client of the server whose calls `counter` counts; closed after the test. */
function connect(t, options = {}) {
  const counter = callCounter();
  const client = new KmsClient(env.KMS_TARGET, { timeoutMs: 30_000, ...options, interceptors: [counter.interceptor, ...(options.interceptors ?? [])] });
  t.after(() => client.close());
  return { client, counter };
}

async function withKey(t, prefix = "orders") {
  const { client, counter } = connect(t);
  const keyId = uniqueKeyId(prefix);
  await client.createKey(keyId);
  counter.clear();
  return { client, counter, keyId };
}

/** `ciphertext` with its wrapped key rewritten to name `keyId` and `version` (docs/wrapped-key-format.md). */
function naming(ciphertext, keyId, version) {
  const header = parseHeader(ciphertext);
  const wrapped = header.wrappedKey;
  const rest = wrapped.subarray(2 + wrapped[1] + 4);
  const version32 = Buffer.alloc(4);
  version32.writeUInt32BE(version);
  const renamed = Buffer.concat([Buffer.from([wrapped[0], keyId.length]), Buffer.from(keyId), version32, rest]);
  return Buffer.concat([header.withWrappedKey(renamed).encode(), ciphertext.subarray(header.length)]);
}

describe("through the service", { skip }, () => {
  for (const size of [0, 1, F - 1, F, F + 1, 9 * F + 17]) {
    test(`round trip of ${size} bytes in memory and as streams`, async (t) => {
      const { client, keyId } = await withKey(t);
      const plaintext = randomBytes(size);
      const ciphertext = await client.encrypt(plaintext, { keyId, context: CONTEXT, frameSize: F });
      assert.deepEqual(await client.decrypt(ciphertext, { context: CONTEXT }), plaintext);
      const encrypting = client.encryptStream({ keyId, context: CONTEXT, frameSize: F });
      const streamed = (await through(plaintext, encrypting, { chunkSize: 7 })).data;
      assert.equal(encrypting.plaintextBytes, size);
      const decrypting = client.decryptStream({ context: CONTEXT });
      assert.deepEqual((await through(streamed, decrypting, { chunkSize: 11 })).data, plaintext);
      assert.equal(decrypting.plaintextBytes, size);
      assert.deepEqual(await client.decrypt(streamed, { context: CONTEXT }), plaintext);
    });
  }

  test("default frame size and a multi-frame message", async (t) => {
    const { client, keyId } = await withKey(t);
    const plaintext = randomBytes(3 * 65536 + 5);
    const ciphertext = await client.encrypt(plaintext, { keyId });
    const header = parseHeader(ciphertext);
    assert.deepEqual([header.keyId, { ...header.context }, header.frameSize], [keyId, {}, 65536]);
    assert.equal(ciphertext.length, header.length + plaintext.length + 4 * 16);
    assert.deepEqual(await client.decrypt(ciphertext), plaintext);
  });

  test("async iterables in, async iterables out, and a multi-frame stream of 3 MiB", async (t) => {
    const { client, keyId } = await withKey(t);
    const plaintext = randomBytes(3 * 1024 * 1024 + 3);
    async function* slowly(chunks) {
      for (const chunk of chunks) {
        await new Promise((resolve) => setImmediate(resolve));
        yield chunk;
      }
    }
    const sealed = [];
    for await (const piece of client.encryptIterable(slowly(chunksOf(plaintext, 100_000)), { keyId, context: CONTEXT })) {
      sealed.push(piece);
    }
    const ciphertext = Buffer.concat(sealed);
    const opened = [];
    for await (const piece of client.decryptIterable(chunksOf(ciphertext, 65536), { context: CONTEXT })) {
      opened.push(piece);
    }
    assert.deepEqual(Buffer.concat(opened), plaintext);
    await assert.rejects(
      (async () => {
        for await (const _ of client.decryptIterable([ciphertext.subarray(0, ciphertext.length - 100)], { context: CONTEXT })) {
          // drained
        }
      })(),
      InvalidCiphertext,
    );
  });

  test("a wrong context is refused before the service is asked", async (t) => {
    const { client, counter, keyId } = await withKey(t);
    const ciphertext = await client.encrypt(Buffer.from("x"), { keyId, context: CONTEXT });
    const before = counter.total();
    for (const wrong of [{}, { tenant: "other", purpose: "orders" }, { ...CONTEXT, extra: "" }]) {
      await assert.rejects(client.decrypt(ciphertext, { context: wrong }), exactly(EncryptionContextMismatch));
      await assert.rejects(through(ciphertext, client.decryptStream({ context: wrong })), exactly(EncryptionContextMismatch));
      await assert.rejects(client.rewrap(ciphertext, { context: wrong }), exactly(EncryptionContextMismatch));
    }
    assert.equal(counter.total(), before);
  });

  test("a header rewritten to another context is refused as invalid, not as a mismatch", async (t) => {
    const { client, keyId } = await withKey(t);
    const ciphertext = await client.encrypt(Buffer.from("x"), { keyId, context: { tenant: "acme" } });
    const at = ciphertext.indexOf("acme");
    const forged = Buffer.from(ciphertext);
    forged.write("evil", at);
    await assert.rejects(client.decrypt(forged, { context: { tenant: "evil" } }), exactly(InvalidCiphertext));
  });

  test("a wrapped key swapped from another message fails the commitment", async (t) => {
    // The service opens the swapped wrapped key (same key, same context): only the key
    // commitment in the header stands between it and a decryption under the wrong data key.
    const { client, keyId } = await withKey(t);
    const first = await client.encrypt(Buffer.from("first message"), { keyId, context: CONTEXT });
    const second = await client.encrypt(Buffer.from("second message"), { keyId, context: CONTEXT });
    const swapped = parseHeader(first).withWrappedKey(parseHeader(second).wrappedKey);
    const forged = Buffer.concat([swapped.encode(), first.subarray(parseHeader(first).length)]);
    await assert.rejects(client.decrypt(forged, { context: CONTEXT }), exactly(InvalidCiphertext));
    await assert.rejects(through(forged, client.decryptStream({ context: CONTEXT })), exactly(InvalidCiphertext));
  });

  test("a wrapped key of another key, or altered in any byte, is refused", async (t) => {
    const { client, keyId } = await withKey(t);
    const other = uniqueKeyId("invoices");
    await client.createKey(other);
    const mine = await client.encrypt(Buffer.from("mine"), { keyId, context: CONTEXT });
    const theirs = await client.encrypt(Buffer.from("theirs"), { keyId: other, context: CONTEXT });
    const header = parseHeader(mine);
    const foreign = Buffer.concat([header.withWrappedKey(parseHeader(theirs).wrappedKey).encode(), mine.subarray(header.length)]);
    await assert.rejects(client.decrypt(foreign, { context: CONTEXT }), InvalidCiphertext);
    for (let index = header.wrappedKeyOffset; index < header.length; index++) {
      const altered = Buffer.from(mine);
      altered[index] ^= 0x04;
      await assert.rejects(client.decrypt(altered, { context: CONTEXT }), InvalidCiphertext, `byte ${index}`);
    }
  });

  test("a wrapped key naming a disabled version gives KeyVersionDisabled, not an integrity verdict", async (t) => {
    const { client, keyId } = await withKey(t);
    const old = await client.encrypt(Buffer.from("under version 1"), { keyId, context: CONTEXT });
    await client.rotateKey(keyId);
    const current = await client.encrypt(Buffer.from("under version 2"), { keyId, context: CONTEXT });
    await client.disableKeyVersion(keyId, 1);
    for (const ciphertext of [old, naming(current, keyId, 1)]) {
      await assert.rejects(client.decrypt(ciphertext, { context: CONTEXT }), (error) => error instanceof KeyVersionDisabled && error instanceof KeyVersionNotUsable && !(error instanceof InvalidCiphertext));
      await assert.rejects(client.rewrap(ciphertext, { context: CONTEXT }), KeyVersionDisabled);
    }
    await assert.rejects(client.decrypt(naming(current, keyId, 3), { context: CONTEXT }), exactly(InvalidCiphertext)); // no version 3
    assert.deepEqual(await client.decrypt(current, { context: CONTEXT }), Buffer.from("under version 2"));
    await client.enableKeyVersion(keyId, 1);
    assert.deepEqual(await client.decrypt(old, { context: CONTEXT }), Buffer.from("under version 1"));
  });

  test("a stream truncated at each frame boundary says so, after releasing exactly the frames before", async (t) => {
    const { client, keyId } = await withKey(t);
    const plaintext = randomBytes(4 * F + 1);
    const ciphertext = await client.encrypt(plaintext, { keyId, context: CONTEXT, frameSize: F });
    const { header, frames } = framesOf(ciphertext);
    for (let kept = 0; kept < frames.length; kept++) {
      const sink = new Collect();
      await assert.rejects(through(Buffer.concat([header, ...frames.slice(0, kept)]), client.decryptStream({ context: CONTEXT }), { sink }), exactly(TruncatedCiphertext));
      assert.deepEqual(sink.data, plaintext.subarray(0, kept * F));
    }
    await assert.rejects(through(ciphertext.subarray(0, header.length - 3), client.decryptStream({ context: CONTEXT })), exactly(TruncatedCiphertext));
  });

  test("rewrap after a rotation changes only the wrapped key, and never sees the data key", async (t) => {
    const { client, counter, keyId } = await withKey(t);
    const plaintext = randomBytes(5 * F + 3);
    const ciphertext = await client.encrypt(plaintext, { keyId, context: CONTEXT, frameSize: F });
    assert.deepEqual(await client.rewrap(ciphertext, { context: CONTEXT }), ciphertext); // already current
    await client.rotateKey(keyId);
    counter.clear();
    const rewrapped = await client.rewrap(ciphertext, { context: CONTEXT });
    assert.deepEqual(counter.snapshot(), { ReWrap: 1 });
    const before = parseHeader(ciphertext);
    const after = parseHeader(rewrapped);
    assert.notDeepEqual(after.wrappedKey, before.wrappedKey);
    assert.deepEqual(rewrapped.subarray(0, after.wrappedKeyOffset), ciphertext.subarray(0, before.wrappedKeyOffset));
    assert.deepEqual(rewrapped.subarray(after.length), ciphertext.subarray(before.length));
    const dataKey = await client.decryptDataKey(after.wrappedKey, CONTEXT);
    assert.equal(dataKey.keyVersion, 2);
    dataKey.destroy();
    assert.deepEqual(await client.decrypt(rewrapped, { context: CONTEXT }), plaintext);
    assert.deepEqual(await client.decrypt(ciphertext, { context: CONTEXT }), plaintext); // version 1 still usable
  });

  test("rewrap refuses a header naming another key than the one the service re-wrapped", async (t) => {
    const { client, keyId } = await withKey(t);
    const payroll = uniqueKeyId("payroll");
    await client.createKey(payroll);
    const dataKey = await client.generateDataKey(keyId, CONTEXT);
    const forged = seal(Buffer.from("pay everyone twice"), { context: CONTEXT, dataKey: dataKey.plaintext, wrappedKey: dataKey.wrappedKey, keyId: payroll });
    dataKey.destroy();
    await client.rotateKey(keyId);
    await assert.rejects(client.rewrap(forged, { context: CONTEXT }), exactly(InvalidCiphertext));
    await assert.rejects(through(forged, client.rewrapStream({ context: CONTEXT })), exactly(InvalidCiphertext));
  });

  test("rewrapStream copies the body unchanged", async (t) => {
    const { client, keyId } = await withKey(t);
    const plaintext = randomBytes(10 * F);
    const source = (await through(plaintext, client.encryptStream({ keyId, context: CONTEXT, frameSize: F }))).data;
    await client.rotateKey(keyId);
    const stream = client.rewrapStream({ context: CONTEXT });
    const out = (await through(source, stream, { chunkSize: 50 })).data;
    const before = parseHeader(source);
    const after = parseHeader(out);
    assert.equal((await client.decryptDataKey(after.wrappedKey, CONTEXT)).keyVersion, 2);
    assert.deepEqual(out.subarray(after.length), source.subarray(before.length));
    assert.equal(stream.bodyBytes, source.length - before.length);
    assert.deepEqual(await client.decrypt(out, { context: CONTEXT }), plaintext);
  });

  test("rewrapMany reports each item on its own", async (t) => {
    const { client, keyId } = await withKey(t);
    const good = [];
    for (let i = 0; i < 5; i++) {
      good.push(await client.encrypt(Buffer.alloc(10, i), { keyId, context: { row: String(i) } }));
    }
    await client.rotateKey(keyId);
    const items = good.map((ciphertext, i) => ({ ciphertext, context: { row: String(i) } }));
    items.push({ ciphertext: good[0], context: { row: "wrong" } });
    items.push({ ciphertext: Buffer.from("not a ciphertext"), context: {} });
    const results = await client.rewrapMany(items);
    for (let i = 0; i < 5; i++) {
      assert.ok(Buffer.isBuffer(results[i]));
      assert.deepEqual(await client.decrypt(results[i], { context: { row: String(i) } }), Buffer.alloc(10, i));
      assert.equal((await client.decryptDataKey(parseHeader(results[i]).wrappedKey, { row: String(i) })).keyVersion, 2);
    }
    assert.ok(results[5] instanceof EncryptionContextMismatch);
    assert.ok(results[6] instanceof InvalidCiphertext);
  });

  for (const forgedFirst of [false, true]) {
    test(`rewrapMany checks each item against the key id its own header names (${forgedFirst ? "forged" : "genuine"} first)`, async (t) => {
      // Two items sharing a wrapped key cost one BatchReWrap item, but a header naming `payroll`
      // around the `orders` wrapped key is a forgery, whichever of the two comes first.
      const { client, counter, keyId } = await withKey(t);
      const payroll = uniqueKeyId("payroll");
      await client.createKey(payroll);
      const dataKey = await client.generateDataKey(keyId, CONTEXT);
      const genuine = seal(Buffer.from("an order"), { context: CONTEXT, dataKey: dataKey.plaintext, wrappedKey: dataKey.wrappedKey, keyId });
      const forged = seal(Buffer.from("pay everyone twice"), { context: CONTEXT, dataKey: dataKey.plaintext, wrappedKey: dataKey.wrappedKey, keyId: payroll });
      await client.rotateKey(keyId);
      counter.clear();
      const order = forgedFirst ? ["forged", "genuine"] : ["genuine", "forged"];
      const items = { genuine: { ciphertext: genuine, context: CONTEXT }, forged: { ciphertext: forged, context: CONTEXT } };
      const answers = await client.rewrapMany(order.map((name) => items[name]));
      const results = Object.fromEntries(order.map((name, i) => [name, answers[i]]));
      assert.deepEqual(counter.snapshot(), { BatchReWrap: 1 });
      assert.equal(results.forged.constructor, InvalidCiphertext);
      assert.ok(Buffer.isBuffer(results.genuine));
      assert.notDeepEqual(parseHeader(results.genuine).wrappedKey, dataKey.wrappedKey);
      assert.deepEqual(await client.decrypt(results.genuine, { context: CONTEXT }), Buffer.from("an order"));
    });
  }

  test("errors are typed", async (t) => {
    const { client, keyId } = await withKey(t);
    await assert.rejects(client.encrypt(Buffer.from("x"), { keyId: "missing" }), exactly(KeyNotFound));
    await assert.rejects(through(Buffer.from("x"), client.encryptStream({ keyId: "missing" })), exactly(KeyNotFound));
    await assert.rejects(client.getKey("missing"), (error) => error instanceof KeyNotFound && error.reason === "KeyNotFound" && error.codeName === "NOT_FOUND");
    assert.throws(() => client.encryptStream({ keyId, context: { "": "empty key" } }), exactly(InvalidEncryptionContext));
    await assert.rejects(client.encrypt(Buffer.from("x"), { keyId, context: { "": "empty key" } }), exactly(InvalidEncryptionContext));
    await assert.rejects(client.decrypt(Buffer.alloc(0)), exactly(TruncatedCiphertext));
    await assert.rejects(client.decrypt(Buffer.from("not a ciphertext at all")), exactly(InvalidCiphertext));
    await assert.rejects(client.decrypt(Buffer.from("KMSE\x01", "latin1")), exactly(TruncatedCiphertext));
  });

  test("UNAVAILABLE is retried with backoff, other codes are not", async (t) => {
    const { client: admin, keyId } = await withKey(t);
    const { client: flaky, counter } = connect(t, { retry: FAST_RETRY, interceptors: [loseResponses(2, "GenerateDataKey")] });
    const ciphertext = await flaky.encrypt(Buffer.from("retried"), { keyId });
    assert.equal(counter.get("GenerateDataKey"), 3);
    assert.deepEqual(await flaky.decrypt(ciphertext), Buffer.from("retried"));
    counter.clear();
    await assert.rejects(flaky.encrypt(Buffer.from("x"), { keyId: "missing" }), KeyNotFound);
    assert.equal(counter.get("GenerateDataKey"), 1);
    assert.ok(admin);
  });

  test("RotateKey is never retried: a lost response does not rotate twice", async (t) => {
    const { client, keyId } = await withKey(t);
    const { client: flaky, counter } = connect(t, { retry: FAST_RETRY, interceptors: [loseResponses(1, "RotateKey")] });
    await assert.rejects(flaky.rotateKey(keyId), Unavailable);
    assert.equal(counter.get("RotateKey"), 1);
    const key = await client.getKey(keyId);
    assert.equal(key.primaryVersion, 2);
    assert.deepEqual(key.versions.map((v) => v.version), [1, 2]);
  });

  test("an unreachable service gives Unavailable within the deadline, not a grpc-js error", async () => {
    const client = new KmsClient("127.0.0.1:1", { timeoutMs: 3000, retry: new RetryPolicy({ maxAttempts: 2, initialBackoffMs: 10 }) });
    try {
      await assert.rejects(client.encrypt(Buffer.from("x"), { keyId: "orders" }), (error) => error instanceof Unavailable && error instanceof KmsError);
      await assert.rejects(through(Buffer.from("x"), client.encryptStream({ keyId: "orders" })), Unavailable);
    } finally {
      client.close();
    }
  });

  test("a pipeline from a source to a sink, with the stream in the middle", async (t) => {
    const { client, keyId } = await withKey(t);
    const plaintext = randomBytes(200_000);
    const ciphertext = new Collect();
    await pipeline(Readable.from(chunksOf(plaintext, 4096)), client.encryptStream({ keyId, frameSize: 1000 }), ciphertext);
    const out = new Collect();
    await pipeline(Readable.from(chunksOf(ciphertext.data, 3000)), client.decryptStream(), out);
    assert.deepEqual(out.data, plaintext);
  });
});

describe("data key caching through the service", { skip }, () => {
  function fakeClock() {
    const clock = () => clock.now;
    clock.now = 1_000_000;
    return clock;
  }

  function wrappedKeysOf(ciphertexts) {
    const counts = new Map();
    for (const ciphertext of ciphertexts) {
      const wrapped = parseHeader(ciphertext).wrappedKey.toString("hex");
      counts.set(wrapped, (counts.get(wrapped) ?? 0) + 1);
    }
    return [...counts.values()];
  }

  test("ten thousand small records take a handful of calls, each with its own salt", async (t) => {
    const { keyId } = await withKey(t);
    const { client, counter } = connect(t, { dataKeyCaching: {} });
    const records = Array.from({ length: 10_000 }, (_, i) => Buffer.from(`order ${i}: 3 x widget`));
    const ciphertexts = [];
    for (const record of records) {
      ciphertexts.push(await client.encrypt(record, { keyId, context: { tenant: "acme" } }));
    }
    assert.ok(counter.get("GenerateDataKey") <= 5 && counter.total() <= 5, JSON.stringify(counter.snapshot()));
    assert.equal(new Set(ciphertexts.map((c) => parseHeader(c).salt.toString("hex"))).size, records.length);
    const before = counter.total();
    for (let i = 0; i < records.length; i++) {
      assert.deepEqual(await client.decrypt(ciphertexts[i], { context: { tenant: "acme" } }), records[i]);
    }
    assert.ok(counter.get("Decrypt") <= 5 && counter.total() - before <= 5);
  });

  test("without caching every message asks the service", async (t) => {
    const { keyId } = await withKey(t);
    const { client, counter } = connect(t);
    const ciphertexts = [];
    for (let i = 0; i < 20; i++) {
      ciphertexts.push(await client.encrypt(Buffer.from("r"), { keyId }));
    }
    for (const ciphertext of ciphertexts) {
      await client.decrypt(ciphertext);
    }
    assert.deepEqual([counter.get("GenerateDataKey"), counter.get("Decrypt")], [20, 20]);
  });

  test("encrypt-side limits on age, messages and bytes", async (t) => {
    const { keyId } = await withKey(t);
    const clock = fakeClock();
    const { client, counter } = connect(t, { dataKeyCaching: new DataKeyCaching({ maxAgeMs: 60_000, maxMessages: 3, maxBytes: 100, clock }) });
    const seven = [];
    for (let i = 0; i < 7; i++) {
      seven.push(await client.encrypt(Buffer.from("m"), { keyId }));
    }
    assert.deepEqual(wrappedKeysOf(seven), [3, 3, 1]);
    counter.clear();
    await client.encrypt(Buffer.from("m"), { keyId });
    clock.now += 60_000;
    await client.encrypt(Buffer.from("m"), { keyId });
    assert.equal(counter.get("GenerateDataKey"), 1); // the third key still had room, but was too old
    counter.clear();
    await client.encrypt(Buffer.alloc(60, "x"), { keyId });
    await client.encrypt(Buffer.alloc(60, "x"), { keyId }); // 1 + 60 + 60 > 100 bytes
    await client.encrypt(Buffer.alloc(101, "x"), { keyId }); // never cached: alone larger than maxBytes
    await client.encrypt(Buffer.alloc(101, "x"), { keyId });
    assert.equal(counter.get("GenerateDataKey"), 3);
  });

  test("cache entries are per key id and context", async (t) => {
    const { client: admin, keyId } = await withKey(t);
    const other = uniqueKeyId("invoices");
    await admin.createKey(other);
    const { client, counter } = connect(t, { dataKeyCaching: {} });
    for (let round = 0; round < 3; round++) {
      for (const id of [keyId, other]) {
        for (const tenant of ["acme", "umbrella"]) {
          await client.encrypt(Buffer.from("r"), { keyId: id, context: { tenant } });
        }
      }
    }
    assert.equal(counter.get("GenerateDataKey"), 4);
  });

  test("decrypt-side cache expires and keys on the context", async (t) => {
    const { keyId } = await withKey(t);
    const clock = fakeClock();
    const { client, counter } = connect(t, { dataKeyCaching: { decryptMaxAgeMs: 30_000, clock } });
    const ciphertext = await client.encrypt(Buffer.from("secret"), { keyId, context: { tenant: "acme" } });
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await client.decrypt(ciphertext, { context: { tenant: "acme" } }), Buffer.from("secret"));
    }
    assert.equal(counter.get("Decrypt"), 1);
    await assert.rejects(client.decrypt(ciphertext, { context: { tenant: "other" } }), EncryptionContextMismatch);
    clock.now += 30_000;
    await client.decrypt(ciphertext, { context: { tenant: "acme" } });
    assert.equal(counter.get("Decrypt"), 2);
    client.clearDataKeyCache();
    await client.decrypt(ciphertext, { context: { tenant: "acme" } });
    assert.equal(counter.get("Decrypt"), 3);
  });

  test("a cached data key opens only headers that name the key it belongs to", async (t) => {
    // Whoever holds a data key of `orders` can seal a message whose header names `payroll` but
    // carries the `orders` wrapped key: the service opens that wrapped key and says `orders`.
    const { client: admin, keyId } = await withKey(t);
    const payroll = uniqueKeyId("payroll");
    await admin.createKey(payroll);
    const context = { tenant: "acme" };
    const dataKey = await admin.generateDataKey(keyId, context);
    const genuine = seal(Buffer.from("an order"), { context, dataKey: dataKey.plaintext, wrappedKey: dataKey.wrappedKey, keyId });
    const forged = seal(Buffer.from("pay everyone twice"), { context, dataKey: dataKey.plaintext, wrappedKey: dataKey.wrappedKey, keyId: payroll });
    const { client: victim, counter } = connect(t, { dataKeyCaching: {} });
    assert.deepEqual(await victim.decrypt(genuine, { context }), Buffer.from("an order")); // its data key is now cached
    await assert.rejects(victim.decrypt(forged, { context }), exactly(InvalidCiphertext));
    await assert.rejects(through(forged, victim.decryptStream({ context })), exactly(InvalidCiphertext));
    assert.deepEqual(await victim.decrypt(genuine, { context }), Buffer.from("an order"));
    assert.equal(counter.get("Decrypt"), 1, "the forged headers were refused from the cache");
  });

  test("streams never reuse a data key", async (t) => {
    const { keyId } = await withKey(t);
    const { client, counter } = connect(t, { dataKeyCaching: {} });
    for (let i = 0; i < 2; i++) {
      await through(Buffer.from("big"), client.encryptStream({ keyId }));
    }
    assert.equal(counter.get("GenerateDataKey"), 2);
  });

  test("concurrent encrypts never exceed the message limit", async (t) => {
    const { keyId } = await withKey(t);
    const { client } = connect(t, { dataKeyCaching: { maxMessages: 50 } });
    const results = await Promise.all(Array.from({ length: 800 }, () => client.encrypt(Buffer.from("row"), { keyId })));
    const counts = wrappedKeysOf(results);
    assert.equal(counts.reduce((a, b) => a + b, 0), 800);
    assert.ok(Math.max(...counts) <= 50, `${Math.max(...counts)}`);
  });
});
