// Mutual TLS against a real server (KMS_TLS_TARGET): the client certificate names the caller,
// the bootstrap admin (KMS_TLS_CERT/KEY) may do anything, an identity without grants
// (KMS_TLS_APP_CERT/KEY) may do nothing, and neither TLS nor the server's identity is optional.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";

import * as grpc from "@grpc/grpc-js";
import { EncryptionContextMismatch, KmsClient, PermissionDenied, RetryPolicy, Unavailable, tlsCredentials } from "kms-client";

import { readPem, serverEnv, through, uniqueKeyId } from "./support/helpers.mjs";

const { env, skip } = serverEnv("KMS_TLS_TARGET", "KMS_TLS_CA", "KMS_TLS_CERT", "KMS_TLS_KEY", "KMS_TLS_APP_CERT", "KMS_TLS_APP_KEY");
const CONTEXT = { tenant: "acme" };
const ONCE = new RetryPolicy({ maxAttempts: 1 });

function connect(t, options) {
  const client = new KmsClient(env.KMS_TLS_TARGET, { timeoutMs: 15_000, retry: ONCE, ...options });
  t.after(() => client.close());
  return client;
}

const admin = (t) => connect(t, { tls: { ca: env.KMS_TLS_CA, cert: env.KMS_TLS_CERT, key: env.KMS_TLS_KEY } });
const app = (t) => connect(t, { tls: { ca: env.KMS_TLS_CA, cert: env.KMS_TLS_APP_CERT, key: env.KMS_TLS_APP_KEY } });

describe("mutual TLS", { skip }, () => {
  test("a client certificate given as file paths gets in, and round trips work", async (t) => {
    const client = admin(t);
    const keyId = uniqueKeyId();
    await client.createKey(keyId);
    const plaintext = randomBytes(200_000);
    const ciphertext = await client.encrypt(plaintext, { keyId, context: CONTEXT, frameSize: 4096 });
    assert.deepEqual(await client.decrypt(ciphertext, { context: CONTEXT }), plaintext);
    const streamed = (await through(plaintext, client.encryptStream({ keyId, context: CONTEXT }), { chunkSize: 10_000 })).data;
    assert.deepEqual((await through(streamed, client.decryptStream({ context: CONTEXT }))).data, plaintext);
    await assert.rejects(client.decrypt(ciphertext, { context: {} }), EncryptionContextMismatch);
  });

  test("PEM Buffers and ready-made credentials work as well as paths", async (t) => {
    const fromBuffers = connect(t, { tls: { ca: readPem(env.KMS_TLS_CA), cert: readPem(env.KMS_TLS_CERT), key: readPem(env.KMS_TLS_KEY) } });
    const keyId = uniqueKeyId();
    await fromBuffers.createKey(keyId);
    const withCredentials = connect(t, { credentials: tlsCredentials({ ca: env.KMS_TLS_CA, cert: env.KMS_TLS_CERT, key: env.KMS_TLS_KEY }) });
    assert.equal((await withCredentials.getKey(keyId)).keyId, keyId);
  });

  test("an identity without grants is denied, by key operations and by decrypt alike", async (t) => {
    const keyId = uniqueKeyId();
    const owner = admin(t);
    await owner.createKey(keyId);
    const ciphertext = await owner.encrypt(Buffer.from("an order"), { keyId, context: CONTEXT });
    const stranger = app(t);
    await assert.rejects(stranger.encrypt(Buffer.from("x"), { keyId, context: CONTEXT }), (error) => error instanceof PermissionDenied && error.reason === "PermissionDenied");
    await assert.rejects(stranger.decrypt(ciphertext, { context: CONTEXT }), PermissionDenied);
    await assert.rejects(through(ciphertext, stranger.decryptStream({ context: CONTEXT })), PermissionDenied);
    await assert.rejects(stranger.rewrap(ciphertext, { context: CONTEXT }), PermissionDenied);
    await assert.rejects(stranger.createKey(uniqueKeyId()), PermissionDenied);
  });

  test("no client certificate, or a server the client does not trust, is refused at the handshake", async (t) => {
    await assert.rejects(connect(t, { tls: { ca: env.KMS_TLS_CA } }).getKey("orders"), Unavailable);
    const strangerCa = connect(t, { credentials: grpc.credentials.createSsl(null, readPem(env.KMS_TLS_KEY), readPem(env.KMS_TLS_CERT)) });
    await assert.rejects(strangerCa.getKey("orders"), Unavailable); // system roots do not know the dev CA
  });

  test("a plaintext client cannot talk to a TLS server", async (t) => {
    await assert.rejects(connect(t, {}).getKey("orders"), Unavailable);
  });
});
