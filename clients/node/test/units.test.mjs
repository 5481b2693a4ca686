// Units that need no server: the error registry, the retry policy (with an injected clock,
// sleep and randomness), the data key cache (with an injected clock), plaintext refusal, and
// what secrets never show up in.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, test } from "node:test";
import { inspect } from "node:util";

import * as grpc from "@grpc/grpc-js";
import { Metadata, status } from "@grpc/grpc-js";
import {
  Cancelled,
  DataKey,
  DataKeyCaching,
  EncryptionContextMismatch,
  FailedPrecondition,
  Internal,
  InvalidArgument,
  InvalidCiphertext,
  KeyNotFound,
  KeyVersionDisabled,
  KeyVersionNotUsable,
  KmsClient,
  KmsError,
  NO_RETRY,
  NotFound,
  PermissionDenied,
  RateLimited,
  ResourceExhausted,
  RetryPolicy,
  TruncatedCiphertext,
  Unavailable,
  errorFor,
  fromServiceError,
  isLocalTarget,
  registeredReasons,
} from "kms-client";

import { DataKeyCache } from "../dist/caching.js";
import { reason } from "../dist/errors.js";

describe("errors", () => {
  test("a reason whose class agrees with the code gives that class", () => {
    const error = errorFor(status.FAILED_PRECONDITION, "key 'k' version 1 is DISABLED", { reason: "KeyVersionDisabled" });
    assert.ok(error instanceof KeyVersionDisabled && error instanceof KeyVersionNotUsable && error instanceof FailedPrecondition && error instanceof KmsError);
    assert.equal(error.code, status.FAILED_PRECONDITION);
    assert.equal(error.codeName, "FAILED_PRECONDITION");
    assert.equal(error.reason, "KeyVersionDisabled");
    assert.equal(error.name, "KeyVersionDisabled");
    assert.equal(error.message, "key 'k' version 1 is DISABLED");
  });

  test("an unknown reason, or one that disagrees with the code, falls back to the code's class", () => {
    const unknown = errorFor(status.NOT_FOUND, "gone", { reason: "SomethingNew" });
    assert.equal(unknown.constructor, NotFound);
    assert.equal(unknown.reason, "SomethingNew");
    const disagreeing = errorFor(status.PERMISSION_DENIED, "no", { reason: "KeyNotFound" });
    assert.equal(disagreeing.constructor, PermissionDenied);
    const none = errorFor(status.UNAVAILABLE, "down");
    assert.equal(none.constructor, Unavailable);
    assert.equal(none.reason, "Unavailable");
    const odd = errorFor(status.ABORTED, "aborted");
    assert.equal(odd.constructor, KmsError);
    assert.equal(odd.code, status.ABORTED);
  });

  test("SDK-side conditions are classes under InvalidCiphertext", () => {
    assert.equal(errorFor(status.INVALID_ARGUMENT, "x", { reason: "TruncatedCiphertext" }).constructor, TruncatedCiphertext);
    assert.ok(new EncryptionContextMismatch("m") instanceof InvalidCiphertext);
    assert.ok(new TruncatedCiphertext("m") instanceof InvalidArgument);
    assert.equal(new TruncatedCiphertext("m").code, status.INVALID_ARGUMENT);
  });

  test("Internal answers to the service's name and to the older one", () => {
    assert.equal(errorFor(status.INTERNAL, "bug", { reason: "Internal" }).constructor, Internal);
    assert.equal(errorFor(status.INTERNAL, "bug", { reason: "InternalError" }).constructor, Internal);
    assert.equal(new Internal("x").reason, "Internal");
  });

  test("a grpc-js error becomes a typed error with its trailers", () => {
    const metadata = new Metadata();
    metadata.set("kms-error-reason", "RateLimited");
    metadata.set("retry-after-ms", "250");
    const raw = Object.assign(new Error("8 RESOURCE_EXHAUSTED: slow down"), { code: status.RESOURCE_EXHAUSTED, details: "slow down", metadata });
    const error = fromServiceError(raw);
    assert.ok(error instanceof RateLimited && error instanceof ResourceExhausted);
    assert.equal(error.retryAfterMs, 250);
    assert.equal(error.message, "slow down");
    assert.equal(error.cause, raw);
    const junk = new Metadata();
    junk.set("retry-after-ms", "soon");
    assert.equal(fromServiceError({ code: status.RESOURCE_EXHAUSTED, details: "x", metadata: junk }).retryAfterMs, undefined);
    assert.equal(fromServiceError(new Error("boom")).constructor, KmsError);
  });

  test("adding a reason is one registration; registering a name twice is refused", () => {
    class BrandNewCondition extends NotFound {
      static {
        reason(this);
      }
    }
    assert.equal(errorFor(status.NOT_FOUND, "x", { reason: "BrandNewCondition" }).constructor, BrandNewCondition);
    assert.equal(registeredReasons().BrandNewCondition, "NOT_FOUND");
    assert.throws(() => reason(class Impostor extends NotFound {}, "KeyNotFound"), /registered twice/);
  });

  test("every registered reason maps to a class of its code", () => {
    const reasons = registeredReasons();
    for (const [name, code] of Object.entries(reasons)) {
      const error = errorFor(status[code], "m", { reason: name });
      assert.equal(error.reason, name);
      assert.equal(error.codeName, code);
      assert.ok(name === "InternalError" || error.constructor.name === name, name);
    }
    for (const name of ["KeyNotFound", "KeyVersionDisabled", "PermissionDenied", "InvalidCiphertext", "WrapLimitReached", "Cancelled"]) {
      assert.ok(name in reasons, name);
    }
  });
});

describe("retries", () => {
  /** A fake world: a clock that sleeps advance, and fixed randomness. */
  function world(random = 0.5) {
    const env = { time: 0, sleeps: [], now: () => env.time, random: () => random, sleep: async (ms) => { env.sleeps.push(ms); env.time += ms; } };
    return env;
  }

  function failing(errors, result = "ok") {
    const attempts = [];
    return {
      attempts,
      attempt: async (deadline) => {
        attempts.push(deadline);
        if (attempts.length <= errors.length) {
          throw errors[attempts.length - 1];
        }
        return result;
      },
    };
  }

  test("UNAVAILABLE is retried with exponential backoff and full jitter, up to maxAttempts", async () => {
    const env = world(0.5);
    const policy = new RetryPolicy({ maxAttempts: 5, initialBackoffMs: 100, maxBackoffMs: 300, multiplier: 2 });
    const { attempt, attempts } = failing([new Unavailable("a"), new Unavailable("b"), new Unavailable("c")]);
    assert.equal(await policy.run(attempt, undefined, env), "ok");
    assert.equal(attempts.length, 4);
    assert.deepEqual(env.sleeps, [50, 100, 150]); // half of 100, 200, then the 300 cap
  });

  test("the jitter is uniform over [0, backoff)", async () => {
    for (const random of [0, 0.999]) {
      const env = world(random);
      await new RetryPolicy({ initialBackoffMs: 100 }).run(failing([new Unavailable("a")]).attempt, undefined, env);
      assert.ok(env.sleeps[0] >= 0 && env.sleeps[0] < 100);
    }
  });

  test("the last error is rejected with once the attempts run out", async () => {
    const env = world();
    const errors = [1, 2, 3].map((n) => new Unavailable(`down ${n}`));
    await assert.rejects(new RetryPolicy({ maxAttempts: 3 }).run(failing(errors).attempt, undefined, env), errors[2]);
  });

  test("no wait reaches past the deadline", async () => {
    const env = world(0.9);
    const { attempt, attempts } = failing(Array.from({ length: 10 }, () => new Unavailable("down")));
    const policy = new RetryPolicy({ maxAttempts: 10, initialBackoffMs: 100, maxBackoffMs: 100 });
    await assert.rejects(policy.run(attempt, 200, env), Unavailable);
    assert.ok(env.time < 200);
    assert.deepEqual(attempts, Array(attempts.length).fill(200)); // every attempt gets the same deadline
    assert.equal(attempts.length, 3); // 0, 90, 180: the next wait would end at 270
  });

  test("other codes are never retried", async () => {
    for (const error of [new KeyNotFound("x"), new PermissionDenied("x"), new InvalidCiphertext("x"), new Cancelled("x"), new Error("not a KmsError")]) {
      const env = world();
      const { attempt, attempts } = failing([error]);
      await assert.rejects(new RetryPolicy().run(attempt, undefined, env), error);
      assert.equal(attempts.length, 1);
    }
  });

  test("RESOURCE_EXHAUSTED is retried only when the service said when, and not sooner", async () => {
    const env = world(0.1);
    const { attempt, attempts } = failing([new ResourceExhausted("slow", { retryAfterMs: 400 })]);
    assert.equal(await new RetryPolicy({ initialBackoffMs: 50 }).run(attempt, undefined, env), "ok");
    assert.deepEqual(env.sleeps, [400]);
    assert.equal(attempts.length, 2);
    const bare = failing([new ResourceExhausted("slow")]);
    await assert.rejects(new RetryPolicy().run(bare.attempt, undefined, world()), ResourceExhausted);
    assert.equal(bare.attempts.length, 1);
    const late = failing([new RateLimited("slow", { retryAfterMs: 5000 })]);
    await assert.rejects(new RetryPolicy().run(late.attempt, 1000, world()), RateLimited);
    assert.equal(late.attempts.length, 1);
  });

  test("NO_RETRY makes one attempt; bad policies are refused", async () => {
    const { attempt, attempts } = failing([new Unavailable("down")]);
    await assert.rejects(NO_RETRY.run(attempt, undefined, world()), Unavailable);
    assert.equal(attempts.length, 1);
    assert.throws(() => new RetryPolicy({ maxAttempts: 0 }), RangeError);
    assert.throws(() => new RetryPolicy({ multiplier: 0.5 }), RangeError);
    assert.throws(() => new RetryPolicy({ initialBackoffMs: -1 }), RangeError);
  });
});

describe("data key cache", () => {
  function clock() {
    const fake = () => fake.now;
    fake.now = 1000;
    return fake;
  }

  function keys(count) {
    return Array.from({ length: count }, (_, i) => new DataKey("k", 1, Buffer.alloc(70, i), Buffer.alloc(32, 200 + i)));
  }

  const ctx = (n) => Buffer.from([0, n]);
  const peek = (dataKey) => Buffer.from(dataKey.plaintext);

  test("the defaults and ceilings are the Python SDK's", () => {
    const policy = new DataKeyCaching();
    assert.deepEqual(
      [policy.maxAgeMs, policy.maxMessages, policy.maxBytes, policy.maxEntries, policy.decryptMaxAgeMs, policy.decryptMaxEntries],
      [300_000, 2 ** 16, 2 ** 32, 256, 300_000, 1024],
    );
    for (const limits of [
      { maxAgeMs: 0 }, { maxAgeMs: 86_400_001 }, { maxMessages: 0 }, { maxMessages: 2 ** 32 + 1 }, { maxBytes: 0 },
      { maxBytes: 2 ** 40 + 1 }, { maxEntries: -1 }, { maxEntries: 1.5 }, { decryptMaxAgeMs: -1 }, { decryptMaxEntries: -1 },
    ]) {
      assert.throws(() => new DataKeyCaching(limits), RangeError, JSON.stringify(limits));
    }
    new DataKeyCaching({ maxAgeMs: 86_400_000, maxMessages: 2 ** 32, maxBytes: 2 ** 40, maxEntries: 0, decryptMaxEntries: 0 });
  });

  test("bounded, least recently used first, and evicted keys are zeroed", () => {
    const cache = new DataKeyCache(new DataKeyCaching({ maxEntries: 2, decryptMaxEntries: 2, clock: clock() }));
    const all = keys(3);
    all.forEach((key, i) => {
      cache.storeForEncrypt("k", ctx(i), key, 1);
      cache.storeForDecrypt(key.wrappedKey, ctx(9), key);
    });
    const held = [];
    assert.deepEqual(cache.useForEncrypt("k", ctx(0), 1, peek), { hit: false });
    assert.deepEqual(cache.useForEncrypt("k", ctx(2), 1, (key) => (held.push(key.plaintext), peek(key))), { hit: true, value: all[2].plaintext });
    assert.deepEqual(cache.useForDecrypt(all[0].wrappedKey, ctx(9), peek), { hit: false });
    assert.deepEqual(cache.useForDecrypt(all[1].wrappedKey, ctx(9), peek).value, all[1].plaintext);
    // The cache holds copies: the caller's own keys are untouched, the evicted copies zeroed.
    assert.deepEqual(all[0].plaintext, Buffer.alloc(32, 200));
    cache.storeForEncrypt("k", ctx(5), all[0], 1);
    cache.storeForEncrypt("k", ctx(6), all[0], 1); // evicts ctx(2), whose copy we peeked at
    assert.deepEqual(held[0], Buffer.alloc(32));
  });

  test("close-time clearing zeroes every cached copy", () => {
    const cache = new DataKeyCache(new DataKeyCaching({ clock: clock() }));
    const [key] = keys(1);
    cache.storeForEncrypt("k", ctx(0), key, 1);
    cache.storeForDecrypt(key.wrappedKey, ctx(0), key);
    const held = [];
    cache.useForEncrypt("k", ctx(0), 1, (dataKey) => held.push(dataKey.plaintext));
    cache.useForDecrypt(key.wrappedKey, ctx(0), (dataKey) => held.push(dataKey.plaintext));
    cache.clear();
    assert.deepEqual(held, [Buffer.alloc(32), Buffer.alloc(32)]);
    assert.deepEqual(cache.useForDecrypt(key.wrappedKey, ctx(0), peek), { hit: false });
  });

  test("limits on age, messages and bytes; a used-up key is zeroed right after its last use", () => {
    const now = clock();
    const cache = new DataKeyCache(new DataKeyCaching({ maxAgeMs: 60_000, maxMessages: 3, maxBytes: 100, clock: now }));
    const [key] = keys(1);
    cache.storeForEncrypt("k", ctx(0), key, 1); // message 1
    const seen = [];
    const during = [];
    for (let i = 0; i < 3; i++) {
      seen.push(cache.useForEncrypt("k", ctx(0), 1, (dataKey) => (during.push(peek(dataKey)), dataKey.plaintext)));
    }
    assert.deepEqual(seen.map((result) => result.hit), [true, true, false]); // messages 2 and 3, then none
    assert.deepEqual(during[1], key.plaintext, "the last use still sees the key");
    assert.deepEqual(seen[1].value, Buffer.alloc(32), "zeroed once its last message was sealed");
    cache.storeForEncrypt("k", ctx(1), key, 1);
    now.now += 60_000;
    assert.equal(cache.useForEncrypt("k", ctx(1), 1, peek).hit, false, "too old");
    cache.storeForEncrypt("k", ctx(2), key, 60);
    assert.equal(cache.useForEncrypt("k", ctx(2), 60, peek).hit, false, "60 + 60 > 100 bytes");
    cache.storeForEncrypt("k", ctx(3), key, 100);
    assert.equal(cache.useForEncrypt("k", ctx(3), 0, peek).hit, false, "a message of max_bytes alone uses the key up");
  });

  test("expired entries are swept, and zeroed, at the next operation on the cache", () => {
    const now = clock();
    const cache = new DataKeyCache(new DataKeyCaching({ decryptMaxAgeMs: 30_000, clock: now }));
    const [a, b] = keys(2);
    const held = [];
    cache.storeForDecrypt(a.wrappedKey, ctx(0), a);
    cache.useForDecrypt(a.wrappedKey, ctx(0), (dataKey) => held.push(dataKey.plaintext));
    now.now += 30_000;
    cache.storeForDecrypt(b.wrappedKey, ctx(0), b); // another slot: the sweep still zeroes a
    assert.deepEqual(held[0], Buffer.alloc(32));
  });

  test("zero entries turn a side off", () => {
    const cache = new DataKeyCache(new DataKeyCaching({ maxEntries: 0, decryptMaxEntries: 0 }));
    const [key] = keys(1);
    cache.storeForEncrypt("k", ctx(0), key, 1);
    cache.storeForDecrypt(key.wrappedKey, ctx(0), key);
    assert.equal(cache.useForEncrypt("k", ctx(0), 1, peek).hit, false);
    assert.equal(cache.useForDecrypt(key.wrappedKey, ctx(0), peek).hit, false);
  });

  test("keys never show in inspect, JSON or strings", () => {
    const cache = new DataKeyCache(new DataKeyCaching());
    const all = keys(2).map((key, i) => new DataKey(key.keyId, 1, key.wrappedKey, randomBytes(32 + i - i)));
    all.forEach((key, i) => cache.storeForDecrypt(key.wrappedKey, ctx(i), key));
    const text = [
      inspect(cache, { showHidden: true, depth: 10 }),
      JSON.stringify(cache),
      String(cache),
      ...all.flatMap((key) => [inspect(key, { showHidden: true, depth: 10 }), JSON.stringify(key), String(key), `${key}`]),
      inspect(new DataKeyCaching(), { showHidden: true }),
    ].join("\n");
    for (const key of all) {
      for (const encoding of ["hex", "base64", "latin1"]) {
        assert.ok(!text.includes(key.plaintext.toString(encoding)), encoding);
      }
    }
    assert.match(text, /plaintext: <hidden>/);
  });

  test("a DataKey can be destroyed, and copies are independent", () => {
    const [key] = keys(1);
    const copy = key.copy();
    const buffer = key.plaintext;
    key.destroy();
    assert.equal(key.plaintext, undefined);
    assert.deepEqual(buffer, Buffer.alloc(32));
    assert.deepEqual(copy.plaintext, Buffer.alloc(32, 200));
  });
});

describe("connections", () => {
  test("loopback and Unix socket targets are local; anything else is not", () => {
    for (const target of ["127.0.0.1:50051", "127.1.2.3:1", "localhost:50051", "[::1]:50051", "dns:///localhost:50051", "dns:localhost:1",
      "ipv4:127.0.0.1:1,127.0.0.2:2", "ipv6:[::1]:1", "unix:/run/kms.sock", "unix:///run/kms.sock", "localhost"]) {
      assert.ok(isLocalTarget(target), target);
    }
    for (const target of ["10.0.0.1:50051", "kms.example.com:443", "dns:///kms.example.com:443", "ipv4:127.0.0.1:1,10.0.0.1:1",
      "[2001:db8::1]:443", "0.0.0.0:50051", "localhost.example.com:1", "evil.localhost:1"]) {
      assert.ok(!isLocalTarget(target), target);
    }
  });

  test("plaintext to a remote target is refused unless insecure is explicit", () => {
    assert.throws(() => new KmsClient("kms.example.com:443"), /refusing a plaintext connection to kms\.example\.com:443/);
    assert.throws(() => new KmsClient("kms.example.com:443", { credentials: grpc.credentials.createInsecure() }), /refusing a plaintext connection/);
    new KmsClient("kms.example.com:443", { insecure: true }).close();
    new KmsClient("127.0.0.1:1").close();
    assert.throws(() => new KmsClient("127.0.0.1:1", { insecure: true, tls: {} }), /at most one/);
    assert.throws(() => new KmsClient("127.0.0.1:1", { timeoutMs: -1 }), RangeError);
    assert.throws(() => new KmsClient("127.0.0.1:1", { dataKeyCaching: { maxMessages: 0 } }), RangeError);
    assert.throws(() => new KmsClient("kms.example.com:443", { tls: { cert: Buffer.from("x") } }), /private key/);
    assert.throws(() => new KmsClient("kms.example.com:443", { tls: { ca: "/nonexistent/ca.crt" } }), /cannot read the TLS CA from \/nonexistent\/ca\.crt/);
  });

  test("a closed client rejects calls with Cancelled, and prints no secret", async () => {
    const client = new KmsClient("127.0.0.1:1", { dataKeyCaching: {} });
    client.close();
    await assert.rejects(client.getKey("k"), Cancelled);
    await assert.rejects(client.encrypt(Buffer.from("x"), { keyId: "k" }), Cancelled);
    assert.equal(inspect(client), 'KmsClient { target: "127.0.0.1:1", caching: true, closed: true }');
  });
});
