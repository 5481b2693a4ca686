// Erasure per data subject and retention through a real server (KMS_TARGET), from the Node SDK
// (docs/privacy.md): keys with a subjectField, eraseSubject and its receipt, SubjectErased
// distinct from a tampered input, the client's cache forgetting the subject, and ReWrap refused
// for a key with a retentionPeriod.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { InvalidCiphertext, KmsClient, RewrapDefeatsRetention, SubjectErased, SubjectMissing } from "kms-client";

import { callCounter, serverEnv, uniqueKeyId } from "./support/helpers.mjs";

const { env, skip } = serverEnv("KMS_TARGET");
const DAY_MS = 86_400_000;

function connect(t, options = {}) {
  const client = new KmsClient(env.KMS_TARGET, { timeoutMs: 30_000, retry: { maxAttempts: 1 }, ...options });
  t.after(() => client.close());
  return client;
}

describe("erasure per data subject through the service", { skip }, () => {
  test("a subject's data keys stop opening at its erasure, and only its own", async (t) => {
    const client = connect(t);
    const keyId = uniqueKeyId("people");
    const key = await client.createKey(keyId, { subjectField: "user_id" });
    assert.equal(key.subjectField, "user_id");
    assert.equal(key.erasureFinalityMs, 30 * DAY_MS);
    const alice = { user_id: "alice", table: "orders" };
    const bob = { user_id: "bob", table: "orders" };
    const forAlice = await client.generateDataKey(keyId, alice);
    const forBob = await client.generateDataKey(keyId, bob);
    await assert.rejects(client.generateDataKey(keyId, { table: "orders" }), SubjectMissing);

    const receipt = await client.eraseSubject(keyId, "alice");
    assert.equal(receipt.keyId, keyId);
    assert.match(receipt.subjectDigest, /^[0-9a-f]{64}$/);
    assert.equal(receipt.subjectKnown, true);
    assert.equal(receipt.finalAfterVersion, 1);
    assert.equal(receipt.final, false);
    assert.ok(receipt.finalTime instanceof Date);

    await assert.rejects(client.decryptDataKey(forAlice.wrappedKey, alice), (error) => {
      assert.ok(error instanceof SubjectErased);
      assert.ok(error.message.includes(receipt.subjectDigest) && !error.message.includes("alice"));
      return true;
    });
    const tampered = Buffer.from(forBob.wrappedKey);
    tampered[tampered.length - 1] ^= 1;
    await assert.rejects(client.decryptDataKey(tampered, bob), InvalidCiphertext); // not an erasure
    assert.deepEqual((await client.decryptDataKey(forBob.wrappedKey, bob)).plaintext, forBob.plaintext);

    const again = await client.eraseSubject(keyId, "alice"); // the receipt recorded the first time
    assert.equal(again.eraseTime.getTime(), receipt.eraseTime.getTime());
    const { erasures, nextPageToken } = await client.listErasures(keyId);
    assert.deepEqual(erasures.map((e) => e.subjectDigest), [receipt.subjectDigest]);
    assert.equal(nextPageToken, "");
  });

  test("erasing drops the subject's cached data keys in this client", async (t) => {
    const counter = callCounter();
    const client = connect(t, { dataKeyCaching: {}, interceptors: [counter.interceptor] });
    const keyId = uniqueKeyId("people");
    await client.createKey(keyId, { subjectField: "user_id" });
    const alice = { user_id: "alice" };
    await client.encrypt(Buffer.from("1"), { keyId, context: alice });
    await client.encrypt(Buffer.from("2"), { keyId, context: alice }); // from the cache
    assert.equal(counter.get("GenerateDataKey"), 1);
    await client.eraseSubject(keyId, "alice");
    await assert.rejects(client.encrypt(Buffer.from("3"), { keyId, context: alice }), SubjectErased);
  });

  test("a key with a retentionPeriod is never re-wrapped", async (t) => {
    const client = connect(t);
    const keyId = uniqueKeyId("daily");
    const key = await client.createKey(keyId, { retentionPeriodMs: 90 * DAY_MS });
    assert.equal(key.retentionPeriodMs, 90 * DAY_MS);
    const issued = await client.generateDataKey(keyId, { day: "1" });
    await client.rotateKey(keyId);
    await assert.rejects(client.rewrapDataKey(issued.wrappedKey, { day: "1" }), (error) => {
      assert.ok(error instanceof RewrapDefeatsRetention);
      assert.match(error.message, /retention_period/);
      return true;
    });
  });
});
