// encryptStream -> decryptStream runs in constant memory: a 512 MiB stream peaks no more than
// 64 MiB above a 16 MiB one (a stream that buffered would grow by 512 MiB or more; what growth
// there is comes from V8 and its garbage collector sizing their heaps, not from the streams).
// Each size runs in a process of its own, since peak RSS is per process and never goes down.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

import { KmsClient } from "kms-client";

import { PACKAGE_DIR, serverEnv, uniqueKeyId } from "./support/helpers.mjs";

const { env, skip } = serverEnv("KMS_TARGET");
const PROGRAM = join(PACKAGE_DIR, "test", "programs", "stream-pipe.mjs");
const MiB = 1024 * 1024;
const BOUND_KIB = 64 * 1024;

async function run(keyId, size) {
  const { stdout } = await promisify(execFile)(process.execPath, [PROGRAM, env.KMS_TARGET, keyId, String(size)], { timeout: 600_000 });
  return JSON.parse(stdout);
}

test("peak memory does not grow with the stream", { skip, timeout: 900_000 }, async () => {
  const keyId = uniqueKeyId("memory");
  const client = new KmsClient(env.KMS_TARGET);
  try {
    await client.createKey(keyId);
  } finally {
    client.close();
  }
  const small = await run(keyId, 16 * MiB);
  const large = await run(keyId, 512 * MiB);
  for (const [result, size] of [[small, 16 * MiB], [large, 512 * MiB]]) {
    assert.equal(result.bytes, size);
    assert.equal(result.outputSha256, result.inputSha256);
  }
  const growth = large.maxRssKiB - small.maxRssKiB;
  assert.ok(growth < BOUND_KIB, `peak RSS grew by ${growth} KiB from 16 MiB to 512 MiB (bound ${BOUND_KIB} KiB)`);
});
