// The envelope format without the service: a fixed data key, every tamper and truncation case,
// the header parser, the context encoding, and the stream Transforms' chunking and release rules.

import assert from "node:assert/strict";
import { createHmac, randomBytes, randomInt } from "node:crypto";
import { describe, test } from "node:test";
import { inspect } from "node:util";

import { InvalidArgument, InvalidCiphertext, InvalidEncryptionContext, TruncatedCiphertext, parseHeader } from "kms-client";
import * as envelope from "kms-client/envelope";
import * as streaming from "kms-client/streaming";

import { decodeContext, encodeContext } from "../dist/context.js";
import { Collect, DATA_KEY, OTHER_DATA_KEY, WRAPPED, exactly, framesOf, open, openStream, seal, through } from "./support/helpers.mjs";

const F = 16;

function sealer(frameSize = F, context = {}) {
  return envelope.sealHeader(DATA_KEY, { keyId: "orders", encodedContext: encodeContext(context), wrappedKey: WRAPPED, frameSize, salt: randomBytes(32) });
}

describe("round trips", () => {
  for (const size of [0, 1, F - 1, F, F + 1, 2 * F, 7 * F + 5]) {
    test(`${size} bytes in memory and as streams`, async () => {
      const plaintext = randomBytes(size);
      const ciphertext = seal(plaintext, { frameSize: F });
      const header = parseHeader(ciphertext);
      assert.equal(ciphertext.length, header.length + envelope.bodyLength(size, F));
      assert.equal(framesOf(ciphertext).frames.length, Math.floor(size / F) + 1);
      assert.deepEqual(open(ciphertext), plaintext);
      for (const chunkSize of [1, 5, F, F + 16, 1 << 16]) {
        assert.deepEqual(await openStream(ciphertext, { chunkSize }), plaintext);
        const { header: sealed, sealer: frames } = sealer();
        const sink = await through(plaintext, new streaming.SealStream(() => ({ header: sealed, sealer: frames })), { chunkSize });
        assert.deepEqual(open(sink.data), plaintext);
      }
    });
  }

  test("the final frame is shorter than a frame, so an exact multiple ends with an empty one", () => {
    const { frames } = framesOf(seal(Buffer.alloc(2 * F), { frameSize: F }));
    assert.deepEqual(frames.map((frame) => frame.length), [F + 16, F + 16, 16]);
    assert.deepEqual(envelope.frameNonce(2, true), Buffer.concat([Buffer.alloc(10), Buffer.from([2, 1])]));
  });

  test("a stream fed every chunking of every size gives the same ciphertext layout and plaintext", async () => {
    for (let trial = 0; trial < 40; trial++) {
      const frameSize = randomInt(1, 40);
      const plaintext = randomBytes(randomInt(0, 300));
      const chunkSize = randomInt(1, 70);
      const { header, sealer: frames } = sealer(frameSize, { a: "1" });
      const sink = await through(plaintext, new streaming.SealStream(() => ({ header, sealer: frames })), { chunkSize });
      assert.equal(sink.data.length, header.length + envelope.bodyLength(plaintext.length, frameSize));
      assert.deepEqual(await openStream(sink.data, { chunkSize: randomInt(1, 90) }), plaintext);
    }
  });
});

describe("tampering", () => {
  test("every bit flip in the authenticated header, its tag or the body fails", async () => {
    // The wrapped key is not authenticated here: the service refuses an altered one (see
    // client.test.mjs) and the commitment refuses any other data key.
    const ciphertext = seal(Buffer.alloc(40, "x"), { frameSize: F });
    const header = parseHeader(ciphertext);
    const positions = [...Array(header.wrappedKeyOffset).keys(), ...Array.from({ length: ciphertext.length - header.length }, (_, i) => header.length + i)];
    let checked = 0;
    for (const index of positions) {
      for (let bit = 0; bit < 8; bit++) {
        const altered = Buffer.from(ciphertext);
        altered[index] ^= 1 << bit;
        assert.throws(() => open(altered), InvalidCiphertext, `byte ${index} bit ${bit}`);
        checked += 1;
      }
    }
    assert.equal(checked, 8 * (header.wrappedKeyOffset + ciphertext.length - header.length));
    // and through the stream, one bit per byte
    for (const index of positions) {
      const altered = Buffer.from(ciphertext);
      altered[index] ^= 0x10;
      await assert.rejects(openStream(altered, { chunkSize: 9 }), InvalidCiphertext, `stream, byte ${index}`);
    }
  });

  test("a flipped bit in the wrapped key changes nothing the format checks (the service does)", () => {
    const ciphertext = seal(Buffer.from("body"), { frameSize: F });
    const header = parseHeader(ciphertext);
    const altered = Buffer.from(ciphertext);
    altered[header.wrappedKeyOffset + 2] ^= 1;
    assert.deepEqual(open(altered), Buffer.from("body"));
  });

  test("truncation at every frame boundary is reported as truncation", async () => {
    const ciphertext = seal(randomBytes(5 * F + 3), { frameSize: F });
    const { header, frames } = framesOf(ciphertext);
    for (let kept = 0; kept < frames.length; kept++) {
      const cut = Buffer.concat([header, ...frames.slice(0, kept)]);
      assert.throws(() => open(cut), exactly(TruncatedCiphertext));
      await assert.rejects(openStream(cut), exactly(TruncatedCiphertext));
    }
  });

  test("a cut at every length fails, as truncation exactly when the reader cannot tell a final frame", async () => {
    const ciphertext = seal(randomBytes(3 * F + 3), { frameSize: F });
    const headerLength = parseHeader(ciphertext).length;
    const step = F + 16;
    for (let length = 0; length < ciphertext.length; length++) {
      const cut = ciphertext.subarray(0, length);
      const rest = (length - headerLength) % step;
      // Inside the header, on a frame boundary or within 16 bytes after one: truncated. Any
      // other cut leaves a remainder that is opened as the final frame and fails its tag.
      const expected = length < headerLength || rest < 16 ? TruncatedCiphertext : InvalidCiphertext;
      assert.throws(() => open(cut), exactly(expected), `length ${length}`);
      await assert.rejects(openStream(cut, { chunkSize: 11 }), exactly(expected), `stream, length ${length}`);
    }
  });

  test("reordered, duplicated, dropped or trailing frames fail, in memory and as a stream alike", async () => {
    const { header, frames } = framesOf(seal(randomBytes(4 * F + 1), { frameSize: F }));
    const bodies = [
      [frames[1], frames[0], ...frames.slice(2)],
      [frames[0], frames[0], ...frames.slice(1)],
      [frames[0], ...frames.slice(2)],
      [...frames.slice(0, -2), frames.at(-1)],
      [...frames, frames.at(-1)],
      [...frames.slice(0, -1), frames.at(-2).subarray(0, frames.at(-1).length)],
    ];
    bodies.push([...frames, Buffer.from([0])]);
    for (const body of bodies) {
      // Frames open in order, so a bad frame is found before the remainder is looked at: the
      // copied final frame (2 bytes past a full-length frame) is invalid, not truncated.
      const ciphertext = Buffer.concat([header, ...body]);
      assert.throws(() => open(ciphertext), exactly(InvalidCiphertext));
      await assert.rejects(openStream(ciphertext, { chunkSize: 3 }), exactly(InvalidCiphertext));
    }
  });

  test("frames spliced from another message under the same data key fail", () => {
    // A cached data key encrypts many messages: their frames are still not interchangeable,
    // because each message's frame key comes from its own salt.
    const first = framesOf(seal(randomBytes(3 * F), { frameSize: F }));
    const second = framesOf(seal(randomBytes(3 * F), { frameSize: F }));
    assert.throws(() => open(Buffer.concat([first.header, first.frames[0], second.frames[1], first.frames[2], first.frames[3]])), InvalidCiphertext);
    assert.throws(() => open(Buffer.concat([first.header, ...second.frames])), InvalidCiphertext);
  });

  test("the same salt and data key with another header still fails", () => {
    const salt = randomBytes(32);
    const one = framesOf(seal(Buffer.alloc(20, "a"), { frameSize: F, salt, context: { tenant: "acme" } }));
    const two = framesOf(seal(Buffer.alloc(20, "a"), { frameSize: F, salt, context: { tenant: "evil" } }));
    assert.throws(() => open(Buffer.concat([two.header, ...one.frames])), InvalidCiphertext);
  });

  test("another data key fails the commitment before any frame", () => {
    const header = parseHeader(seal(Buffer.from("secret"), { frameSize: F }));
    assert.throws(() => envelope.openHeader(OTHER_DATA_KEY, header), exactly(InvalidCiphertext));
  });

  test("a commitment that does not follow from the data key fails, even under a valid header tag", () => {
    // Whoever holds the data key can re-tag an altered header: only the commitment check
    // catches a commitment that the key derivation does not give.
    const ciphertext = seal(Buffer.from("committed"), { frameSize: F });
    const header = parseHeader(ciphertext);
    const keys = envelope.deriveMessageKeysForTesting(DATA_KEY, header.salt);
    const commitment = Buffer.from(keys.commitment, "hex");
    commitment[0] ^= 1;
    const altered = new envelope.Header({ ...header, commitment });
    const tag = createHmac("sha256", Buffer.from(keys.headerKey, "hex")).update(altered.authenticatedBytes()).digest();
    const forged = Buffer.concat([new envelope.Header({ ...altered, headerTag: tag }).encode(), ciphertext.subarray(header.length)]);
    assert.throws(() => envelope.openHeader(DATA_KEY, parseHeader(forged)), exactly(InvalidCiphertext));
  });

  test("the wrapped key is outside the authenticated header", () => {
    const ciphertext = seal(Buffer.from("body"), { frameSize: F });
    const header = parseHeader(ciphertext);
    const replaced = header.withWrappedKey(Buffer.concat([Buffer.from([1]), Buffer.alloc(80, "Z")]));
    assert.deepEqual(replaced.authenticatedBytes(), header.authenticatedBytes());
    assert.deepEqual(replaced.headerTag, header.headerTag);
    assert.deepEqual(open(Buffer.concat([replaced.encode(), ciphertext.subarray(header.length)])), Buffer.from("body"));
    assert.deepEqual(envelope.replaceWrappedKey(ciphertext, replaced.wrappedKey), Buffer.concat([replaced.encode(), ciphertext.subarray(header.length)]));
  });

  test("a failed frame releases nothing, and later frames are never opened", () => {
    const ciphertext = seal(Buffer.concat([Buffer.alloc(F, "p"), Buffer.from("q")]), { frameSize: F });
    const header = parseHeader(ciphertext);
    const opener = envelope.openHeader(DATA_KEY, header);
    const sealed = Buffer.from(ciphertext.subarray(header.length, header.length + F + 16));
    sealed[0] ^= 1;
    assert.throws(() => opener.open([sealed], false), exactly(InvalidCiphertext));
  });

  test("a decrypting stream pushes only whole authenticated frames", async () => {
    const plaintext = randomBytes(40 * F);
    const { header, frames } = framesOf(seal(plaintext, { frameSize: F }));
    const bad = Buffer.from(frames[30]);
    bad[3] ^= 1;
    const sink = new Collect();
    await assert.rejects(openStream(Buffer.concat([header, ...frames.slice(0, 30), bad, ...frames.slice(31)]), { sink, chunkSize: 7 }), exactly(InvalidCiphertext));
    const written = sink.data;
    assert.equal(written.length % F, 0);
    assert.ok(written.length <= 30 * F);
    assert.deepEqual(written, plaintext.subarray(0, written.length));
  });
});

describe("the header", () => {
  test("frame counter limit and nonce layout", () => {
    assert.deepEqual(envelope.frameNonce(0, false), Buffer.alloc(12));
    assert.deepEqual(envelope.frameNonce(2 ** 32 - 1, true), Buffer.concat([Buffer.alloc(7), Buffer.from([0xff, 0xff, 0xff, 0xff, 1])]));
    assert.throws(() => envelope.frameNonce(2 ** 32, false), InvalidCiphertext);
  });

  for (const frameSize of [0, -1, 1.5, envelope.MAX_FRAME_SIZE + 1]) {
    test(`frame size ${frameSize} is refused on encrypt`, () => {
      assert.throws(() => sealer(frameSize), exactly(InvalidArgument));
    });
  }

  test("a hostile frame size is refused before any allocation", () => {
    const ciphertext = seal(Buffer.alloc(0), { frameSize: F });
    ciphertext.writeUInt32BE(2 ** 32 - 1, 7);
    assert.throws(() => parseHeader(ciphertext), (error) => error instanceof InvalidCiphertext && /frame size/.test(error.message));
  });

  for (const [offset, value, message] of [
    [0, Buffer.from("XMSE"), /magic/],
    [4, Buffer.from([2]), /version/],
    [5, Buffer.from([0, 2]), /suite/],
    [43, Buffer.from([0]), /key id/],
  ]) {
    test(`an unknown ${message.source} is refused`, () => {
      const ciphertext = seal(Buffer.alloc(0), { frameSize: F });
      value.copy(ciphertext, offset);
      assert.throws(() => parseHeader(ciphertext), (error) => error.constructor === InvalidCiphertext && message.test(error.message));
    });
  }

  test("a header prints no secret and no wrapped key", () => {
    const header = parseHeader(seal(Buffer.from("x"), { context: { tenant: "acme" } }));
    const text = `${JSON.stringify(header)} ${String(header)}`;
    const inspected = inspect(header, { depth: 5, showHidden: true });
    for (const secret of [header.salt, header.wrappedKey, header.commitment, header.headerTag]) {
      assert.ok(!inspected.includes(secret.toString("hex")) && !text.includes(secret.toString("hex")));
      assert.ok(!text.includes(secret.toString("base64")));
    }
    assert.match(inspected, /keyId: 'orders'/);
    assert.match(inspected, /tenant: 'acme'/);
  });

  test("the parser refuses arbitrary bytes with InvalidCiphertext and nothing else", () => {
    for (let trial = 0; trial < 2000; trial++) {
      const data = randomBytes(randomInt(0, 400));
      if (trial % 2 === 0) {
        seal(Buffer.alloc(0)).copy(data, 0, 0, Math.min(data.length, 44)); // past the magic
      }
      try {
        parseHeader(data);
      } catch (error) {
        assert.ok(error instanceof InvalidCiphertext, `${error}`);
      }
    }
  });

  test("random mutations only open when the authenticated bytes are intact", () => {
    const original = seal(Buffer.from("abc"), { frameSize: F, context: { a: "1", b: "2" } });
    const originalHeader = parseHeader(original);
    for (let trial = 0; trial < 1500; trial++) {
      const mutated = Buffer.from(original);
      for (let n = randomInt(1, 5); n > 0; n--) {
        mutated[randomInt(0, mutated.length)] = randomInt(0, 256);
      }
      const cut = mutated.subarray(0, randomInt(0, mutated.length + 1));
      let opened;
      try {
        opened = open(cut);
      } catch (error) {
        assert.ok(error instanceof InvalidCiphertext, `${error}`);
        continue;
      }
      // It opened: only the unauthenticated wrapped key can have changed.
      const header = parseHeader(cut);
      assert.deepEqual(opened, Buffer.from("abc"));
      assert.deepEqual(cut.subarray(0, header.wrappedKeyOffset), original.subarray(0, originalHeader.wrappedKeyOffset));
      assert.deepEqual(cut.subarray(header.length), original.subarray(originalHeader.length));
    }
  });
});

describe("the encryption context encoding", () => {
  test("the documented example", () => {
    assert.equal(encodeContext({ tenant: "acme", a: "" }).toString("hex"), "0002000161000000067465" + "6e616e740004" + "61636d65");
    assert.equal(encodeContext(new Map([["a", ""], ["tenant", "acme"]])).toString("hex"), "00020001610000000674656e616e74000461636d65");
    assert.equal(encodeContext(undefined).toString("hex"), "0000");
  });

  test("keys sort by their UTF-8 bytes, not by UTF-16 code units", () => {
    // In UTF-8, U+FF5E (EF BD 9E) comes before U+1F511 (F0 9F 94 91); in UTF-16, which is what
    // JavaScript compares, the surrogate pair of U+1F511 (D83D DD11) comes before FF5E.
    const encoded = encodeContext({ "\u{1F511}": "1", "\uFF5E": "2" });
    assert.deepEqual(Object.keys(decodeContext(encoded)), ["\uFF5E", "\u{1F511}"]);
  });

  test("limits and invalid Unicode are refused without echoing the context", () => {
    const cases = [
      { "": "x" },
      { ["k".repeat(129)]: "v" },
      { k: "v".repeat(1025) },
      Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, ""])),
      Object.fromEntries(Array.from({ length: 8 }, (_, i) => [`k${i}`, "v".repeat(1024)])),
      { secret: "\uD800" },
      { k: 1 },
    ];
    for (const context of cases) {
      assert.throws(() => encodeContext(context), (error) => error.constructor === InvalidEncryptionContext && !error.message.includes("secret"));
    }
  });

  test("only canonical encodings decode", () => {
    const bad = [
      "00", // too short
      "0001", // one entry announced, none there
      "000100016100", // value length cut
      "0002000162000000016100", // keys not ascending
      "00020001610000000161" + "0000", // duplicate key
      "0001000161000000", // a byte left over
      "00010001ff0000", // not UTF-8
      "0041", // 65 entries
    ];
    for (const text of bad) {
      assert.throws(() => decodeContext(Buffer.from(text, "hex")), exactly(InvalidCiphertext), text);
    }
  });

  test("a leading byte order mark is data, kept both ways", () => {
    const context = { "\uFEFFkey": "\uFEFFvalue" };
    assert.deepEqual({ ...decodeContext(encodeContext(context)) }, context);
  });

  test("round trips of random contexts, including __proto__", () => {
    for (let trial = 0; trial < 200; trial++) {
      const context = Object.create(null);
      for (let n = randomInt(0, 5); n > 0; n--) {
        context[randomBytes(randomInt(1, 6)).toString("base64")] = randomBytes(randomInt(0, 6)).toString("latin1");
      }
      if (trial % 10 === 0) {
        context["__proto__"] = "polluted?";
      }
      const decoded = decodeContext(encodeContext(context));
      assert.deepEqual({ ...decoded }, { ...context });
      assert.equal(Object.getPrototypeOf(decoded), null);
      assert.equal({}.polluted, undefined);
    }
  });
});
