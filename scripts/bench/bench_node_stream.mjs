#!/usr/bin/env node
// Streaming throughput of the TypeScript SDK's envelope streams against bare node:crypto
// AES-256-GCM doing the same I/O. A measurement, not a test: it prints a table.
//
//     node scripts/bench/bench_node_stream.mjs [--size-mib 256] [--repeat 3] [--chunk-kib 64]
//
// Needs the built SDK (scripts/setup.sh, or `npm --prefix clients/node run build`).
//
// Both sides read the same in-memory source through a Readable that hands out views of one
// pre-generated random pool, in chunks of --chunk-kib (64 KiB, as fs.createReadStream does), and
// write into the same sink, a Writable that counts bytes and keeps nothing; both run through
// stream.pipeline. The SDK side is the format layer with a local data key (kms-client/envelope
// and kms-client/streaming: SealStream and OpenStream, 64 KiB frames), so the service is not
// involved: KmsClient.encryptStream/decryptStream add one service call per stream to exactly
// this. The baseline seals every 64 KiB of plaintext as one AES-256-GCM message with a counter
// nonce (createCipheriv, update, final, getAuthTag) and opens the same records back, gathering
// records that straddle chunk boundaries without copying them, as the SDK does. Decryption reads
// a ciphertext made beforehand by each side, chunked the same way. Runs alternate
// (baseline, SDK, baseline, SDK...) so that both see the same machine; the best run of each is
// reported, with the ratio SDK / baseline (target: 80% or more), and the range of the ratio
// between the runs of each round (neighbours in time, so less exposed to a noisy machine).

import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { Readable, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const require = createRequire(join(root, "clients", "node", "package.json"));
let envelope, streaming;
try {
  envelope = require("kms-client/envelope");
  streaming = require("kms-client/streaming");
} catch (error) {
  console.error(`bench: the SDK is not built (${error.code ?? error.message}); run scripts/setup.sh`);
  process.exit(1);
}

const { values: args } = parseArgs({
  options: {
    "size-mib": { type: "string", default: "256" },
    repeat: { type: "string", default: "3" },
    "chunk-kib": { type: "string", default: "64" },
  },
});
const MiB = 1024 * 1024;
const SIZE = Number(args["size-mib"]) * MiB;
const REPEAT = Number(args.repeat);
const CHUNK = Number(args["chunk-kib"]) * 1024;
const FRAME = 64 * 1024;
const TAG = 16;
const POOL = randomBytes(8 * MiB);

/** `size` bytes of `data` (cycled) as chunks of `chunk` bytes, views only. */
function source(data, size, chunk) {
  let offset = 0;
  return new Readable({
    highWaterMark: chunk,
    read() {
      if (offset >= size) {
        this.push(null);
        return;
      }
      const length = Math.min(chunk, size - offset);
      const start = offset % data.length;
      const end = start + length;
      this.push(end <= data.length ? data.subarray(start, end) : Buffer.concat([data.subarray(start), data.subarray(0, end - data.length)]));
      offset += length;
    },
  });
}

class Sink extends Writable {
  count = 0;
  keep;
  constructor(keep = false) {
    super({ highWaterMark: CHUNK });
    this.keep = keep ? [] : undefined;
  }
  _write(chunk, _encoding, callback) {
    this.count += chunk.length;
    this.keep?.push(chunk);
    callback();
  }
  _writev(chunks, callback) {
    for (const { chunk } of chunks) {
      this.count += chunk.length;
      this.keep?.push(chunk);
    }
    callback();
  }
}

// -- the baseline: bare AES-256-GCM per 64 KiB record --------------------------------------------

function nonceOf(index) {
  const nonce = Buffer.alloc(12);
  nonce.writeUInt32BE(index, 8);
  return nonce;
}

class BareSeal extends Transform {
  #key;
  #index = 0;
  #pending = [];
  #pendingBytes = 0;
  constructor(key) {
    super();
    this.#key = key;
  }
  #seal(parts) {
    const cipher = createCipheriv("aes-256-gcm", this.#key, nonceOf(this.#index++));
    for (const part of parts) this.push(cipher.update(part));
    cipher.final();
    this.push(cipher.getAuthTag());
  }
  _transform(chunk, _encoding, callback) {
    let data = chunk;
    while (data.length > 0) {
      const need = FRAME - this.#pendingBytes;
      if (data.length < need) {
        this.#pending.push(data);
        this.#pendingBytes += data.length;
        break;
      }
      this.#seal([...this.#pending, data.subarray(0, need)]);
      this.#pending = [];
      this.#pendingBytes = 0;
      data = data.subarray(need);
    }
    callback();
  }
  _flush(callback) {
    this.#seal(this.#pending);
    callback();
  }
}

class BareOpen extends Transform {
  #key;
  #index = 0;
  #pending = [];
  #pendingBytes = 0;
  constructor(key) {
    super();
    this.#key = key;
  }
  #open(parts, length) {
    const decipher = createDecipheriv("aes-256-gcm", this.#key, nonceOf(this.#index++));
    const out = [];
    const tag = Buffer.alloc(TAG);
    let remaining = length - TAG;
    let filled = 0;
    for (const part of parts) {
      const body = Math.min(part.length, remaining);
      if (body > 0) {
        out.push(decipher.update(part.subarray(0, body)));
        remaining -= body;
      }
      if (body < part.length) {
        filled += part.copy(tag, filled, body);
      }
    }
    decipher.setAuthTag(tag);
    decipher.final(); // only then is the record's plaintext released
    for (const piece of out) this.push(piece);
  }
  _transform(chunk, _encoding, callback) {
    let data = chunk;
    while (data.length > 0) {
      const need = FRAME + TAG - this.#pendingBytes;
      if (data.length < need) {
        this.#pending.push(data);
        this.#pendingBytes += data.length;
        break;
      }
      this.#open([...this.#pending, data.subarray(0, need)], FRAME + TAG);
      this.#pending = [];
      this.#pendingBytes = 0;
      data = data.subarray(need);
    }
    callback();
  }
  _flush(callback) {
    this.#open(this.#pending, this.#pendingBytes);
    callback();
  }
}

// -- the SDK: format layer, local data key -------------------------------------------------------

const DATA_KEY = randomBytes(32);
const WRAPPED = Buffer.concat([Buffer.from([1]), randomBytes(69)]); // opaque to the format layer

function sdkSeal() {
  return new streaming.SealStream(() =>
    envelope.sealHeader(DATA_KEY, {
      keyId: "bench",
      encodedContext: Buffer.from([0, 1, 0, 7, ...Buffer.from("purpose"), 0, 9, ...Buffer.from("benchmark")]),
      wrappedKey: WRAPPED,
      frameSize: FRAME,
      salt: randomBytes(32),
    }),
  );
}

function sdkOpen() {
  return new streaming.OpenStream((header) => envelope.openHeader(DATA_KEY, header));
}

// -- runs ------------------------------------------------------------------------------------------

async function timed(make) {
  const sink = new Sink();
  const start = process.hrtime.bigint();
  await pipeline(...make(), sink);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { seconds, count: sink.count };
}

async function keep(streams) {
  const sink = new Sink(true);
  await pipeline(...streams, sink);
  return Buffer.concat(sink.keep, sink.count);
}

const BARE_KEY = randomBytes(32);
const sides = {
  "bare AES-256-GCM": {
    seal: () => [source(POOL, SIZE, CHUNK), new BareSeal(BARE_KEY)],
    sealed: null,
    open: (ciphertext) => [source(ciphertext, ciphertext.length, CHUNK), new BareOpen(BARE_KEY)],
  },
  "kms-client streams": {
    seal: () => [source(POOL, SIZE, CHUNK), sdkSeal()],
    sealed: null,
    open: (ciphertext) => [source(ciphertext, ciphertext.length, CHUNK), sdkOpen()],
  },
};

console.log(`node ${process.version}, ${SIZE / MiB} MiB per run, ${CHUNK / 1024} KiB chunks, 64 KiB frames, best of ${REPEAT}`);
console.log("SDK side: the format layer (SealStream/OpenStream) with a local data key; the service is not involved.");
for (const side of Object.values(sides)) {
  side.sealed = await keep(side.seal());
}
const check = Buffer.concat([await keep(sides["kms-client streams"].open(sides["kms-client streams"].sealed))]);
if (check.length !== SIZE || !check.subarray(0, POOL.length).equals(POOL.subarray(0, Math.min(POOL.length, SIZE)))) {
  console.error("bench: the SDK's round trip does not give the source back");
  process.exit(1);
}

const best = {};
const ratios = { encrypt: [], decrypt: [] }; // SDK / bare, per round: neighbours in time
for (let round = 0; round < REPEAT; round++) {
  const rates = {};
  for (const [name, side] of Object.entries(sides)) {
    for (const [direction, make] of [["encrypt", side.seal], ["decrypt", () => side.open(side.sealed)]]) {
      const { seconds } = await timed(make);
      const rate = SIZE / MiB / seconds;
      const key = `${direction}|${name}`;
      rates[key] = rate;
      best[key] = Math.max(best[key] ?? 0, rate);
    }
  }
  for (const direction of ["encrypt", "decrypt"]) {
    ratios[direction].push(rates[`${direction}|kms-client streams`] / rates[`${direction}|bare AES-256-GCM`]);
  }
}

const percent = (value) => `${(value * 100).toFixed(1)}%`;
const rows = [];
for (const direction of ["encrypt", "decrypt"]) {
  const bare = best[`${direction}|bare AES-256-GCM`];
  const sdk = best[`${direction}|kms-client streams`];
  const range = `${percent(Math.min(...ratios[direction]))}-${percent(Math.max(...ratios[direction]))}`;
  rows.push([direction, "bare AES-256-GCM", bare.toFixed(0), "", ""]);
  rows.push([direction, "kms-client streams", sdk.toFixed(0), percent(sdk / bare), range]);
}
const headers = ["direction", "implementation", "MiB/s", "vs bare", "per-round range"];
const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => row[i].length)));
const line = (cells) => cells.map((cell, i) => (i >= 2 ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))).join("  ");
console.log(line(headers));
console.log(widths.map((width) => "-".repeat(width)).join("  "));
for (const row of rows) {
  console.log(line(row));
}
const worst = Math.min(...["encrypt", "decrypt"].map((d) => best[`${d}|kms-client streams`] / best[`${d}|bare AES-256-GCM`]));
console.log(`target: the SDK at 80% or more of bare AES-256-GCM in both directions (best runs): ${worst >= 0.8 ? "met" : "missed"} (worst ${percent(worst)})`);
