// Streams SIZE bytes through KmsClient.encryptStream -> decryptStream in one pipeline, against
// the server at TARGET, and prints JSON: the bytes that came out, SHA-256 of what went in and of
// what came out, and this process's peak resident set size (KiB). Run in a process of its own,
// since peak RSS is per process and never goes down.
//
//     node stream-pipe.mjs TARGET KEY_ID SIZE

import { createHash, randomBytes } from "node:crypto";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";

import { KmsClient } from "kms-client";

const [target, keyId, sizeText] = process.argv.slice(2);
const size = Number(sizeText);
const CHUNK = 64 * 1024;
const pool = randomBytes(1024 * 1024 + 17); // an odd length: chunks do not repeat in step with frames
const input = createHash("sha256");
const output = createHash("sha256");
let produced = 0;
let consumed = 0;

const source = new Readable({
  read() {
    if (produced >= size) {
      this.push(null);
      return;
    }
    const length = Math.min(CHUNK, size - produced);
    const start = produced % (pool.length - CHUNK);
    const chunk = pool.subarray(start, start + length);
    produced += length;
    input.update(chunk);
    this.push(chunk);
  },
});

const sink = new Writable({
  write(chunk, _encoding, callback) {
    consumed += chunk.length;
    output.update(chunk);
    callback();
  },
});

const client = new KmsClient(target, { timeoutMs: 60_000 });
const context = { purpose: "memory-test" };
await pipeline(source, client.encryptStream({ keyId, context }), client.decryptStream({ context }), sink);
client.close();
console.log(JSON.stringify({
  bytes: consumed,
  inputSha256: input.digest("hex"),
  outputSha256: output.digest("hex"),
  maxRssKiB: process.resourceUsage().maxRSS,
}));
