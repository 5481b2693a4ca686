/**
 * Envelope messages as Node streams, in constant memory: Transforms that seal plaintext into
 * frames, open frames back into plaintext, and replace a message's wrapped key while copying
 * its body. They know the format (through ./envelope) but not the service: the data key comes
 * from a function the caller gives (KmsClient's, or a local key for tests and benchmarks).
 *
 * Memory is bounded by the frame size, whatever the length of the stream: a Transform holds at
 * most one frame of input (as views of the chunks it was given, small chunks copied into one
 * scratch buffer) plus what the stream machinery buffers under its high-water marks. Chunks
 * whose boundaries fall on frame boundaries are sealed or opened in place, without a copy.
 *
 * A frame's plaintext is pushed only after its tag has verified. Frames before a failure have
 * been pushed by then: a consumer must treat the output as incomplete until the stream ends
 * without an error (TruncatedCiphertext says the input ended early).
 */

import { Transform, type TransformCallback, type TransformOptions } from "node:stream";

import { TruncatedCiphertext } from "./errors";
import { FRAME_TAG_BYTES, FrameOpener, FrameSealer, Header, MAX_HEADER_BYTES, parseHeader } from "./envelope";

/** Pieces smaller than this are copied into the scratch buffer rather than kept as views. */
const SMALL_PIECE = 4096;

/**
 * The bytes of one frame as they arrive: views of the input chunks, small pieces copied into a
 * scratch buffer of one frame's size (so a stream of tiny chunks costs copies, not a list of
 * thousands of views). Everything gathered is consumed before the next frame starts.
 */
class Gather {
  readonly capacity: number;
  parts: Buffer[] = [];
  bytes = 0;
  #scratch: Buffer | undefined;
  #scratchUsed = 0;

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  /** Adds `piece`; the caller keeps `bytes + piece.length` below `capacity`. */
  add(piece: Buffer): void {
    if (piece.length >= SMALL_PIECE) {
      this.parts.push(piece);
    } else {
      this.#scratch ??= Buffer.alloc(this.capacity);
      const start = this.#scratchUsed;
      this.#scratchUsed += piece.copy(this.#scratch, start);
      const last = this.parts[this.parts.length - 1];
      if (last !== undefined && last.buffer === this.#scratch.buffer && last.byteOffset + last.length === this.#scratch.byteOffset + start) {
        this.parts[this.parts.length - 1] = this.#scratch.subarray(last.byteOffset - this.#scratch.byteOffset, this.#scratchUsed);
      } else {
        this.parts.push(this.#scratch.subarray(start, this.#scratchUsed));
      }
    }
    this.bytes += piece.length;
  }

  /** The gathered parts followed by `tail`, and a fresh start. */
  drain(tail?: Buffer): Buffer[] {
    const parts = this.parts;
    if (tail !== undefined && tail.length > 0) {
      parts.push(tail);
    }
    this.parts = [];
    this.bytes = 0;
    this.#scratchUsed = 0;
    return parts;
  }

  /** Zeroes the scratch buffer (it may have held plaintext). */
  wipe(): void {
    this.#scratch?.fill(0);
    this.parts = [];
    this.bytes = 0;
    this.#scratchUsed = 0;
  }
}

/**
 * Feeds `data` frame by frame: each time `gather` plus the front of `data` make a whole unit of
 * `gather.capacity` bytes, calls `whole(parts)`; keeps the remainder gathered.
 */
function feed(gather: Gather, data: Buffer, whole: (parts: Buffer[]) => void): void {
  while (data.length > 0) {
    const need = gather.capacity - gather.bytes;
    if (data.length < need) {
      gather.add(data);
      return;
    }
    whole(gather.drain(data.subarray(0, need)));
    data = data.subarray(need);
  }
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) {
    return chunk;
  }
  if (chunk instanceof Uint8Array) {
    return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
  throw new TypeError("envelope streams carry bytes (Buffer or Uint8Array chunks)");
}

/** Where a sealing stream gets its header and sealer: once, before the first byte. */
export type SealSource = () => Promise<{ header: Header; sealer: FrameSealer }> | { header: Header; sealer: FrameSealer };

/**
 * Plaintext in, envelope ciphertext out: the header (as soon as `source` has given it), then
 * every `frameSize` bytes as a non-final frame, and at the end the final frame with the rest.
 */
export class SealStream extends Transform {
  readonly #source: SealSource;
  #sealer: FrameSealer | undefined;
  #gather: Gather | undefined;
  #plaintextBytes = 0;

  constructor(source: SealSource, options: TransformOptions = {}) {
    super({ ...options, objectMode: false, readableObjectMode: false, writableObjectMode: false });
    this.#source = source;
  }

  /** Plaintext bytes sealed so far. */
  get plaintextBytes(): number {
    return this.#plaintextBytes;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    Promise.resolve()
      .then(this.#source)
      .then(({ header, sealer }) => {
        if (this.destroyed) {
          sealer.destroy(); // destroyed while the data key was on its way
          callback();
          return;
        }
        this.#sealer = sealer;
        this.#gather = new Gather(sealer.frameSize);
        this.push(header.encode());
        callback();
      }, callback);
  }

  override _transform(chunk: unknown, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      const data = toBuffer(chunk);
      this.#plaintextBytes += data.length;
      feed(this.#gather!, data, (parts) => this.#pushAll(this.#sealer!.seal(parts, false)));
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.#pushAll(this.#sealer!.seal(this.#gather!.drain(), true));
      this.#release();
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#release();
    callback(error);
  }

  #pushAll(pieces: Buffer[]): void {
    for (const piece of pieces) {
      this.push(piece);
    }
  }

  #release(): void {
    this.#gather?.wipe();
    this.#sealer?.destroy();
  }
}

/**
 * The common part of the streams that read a ciphertext: collects the header (at most
 * MAX_HEADER_BYTES), hands it to `onHeader` (which may call the service), then gives every
 * later byte to `onBody`. Ending inside the header is TruncatedCiphertext.
 */
abstract class CiphertextStream extends Transform {
  #collected: Buffer[] | undefined = [];
  #collectedBytes = 0;

  constructor(options: TransformOptions) {
    super({ ...options, objectMode: false, readableObjectMode: false, writableObjectMode: false });
  }

  /** Called once with the parsed header; rejects to fail the stream. */
  protected abstract onHeader(header: Header): Promise<void>;
  /** Called with the bytes after the header, in order. */
  protected abstract onBody(data: Buffer): void;
  /** Called at the end of the input, after the header was read. */
  protected abstract onEnd(): void;

  override _transform(chunk: unknown, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      const data = toBuffer(chunk);
      if (this.#collected === undefined) {
        this.onBody(data);
        callback();
        return;
      }
      this.#collected.push(data);
      this.#collectedBytes += data.length;
      const bytes = this.#collected.length === 1 ? data : Buffer.concat(this.#collected, this.#collectedBytes);
      let header: Header;
      try {
        header = parseHeader(bytes);
      } catch (error) {
        if (error instanceof TruncatedCiphertext && this.#collectedBytes < MAX_HEADER_BYTES) {
          this.#collected = [bytes]; // wait for more (the header may be up to 9392 bytes)
          callback();
          return;
        }
        throw error;
      }
      this.#collected = undefined;
      const rest = bytes.subarray(header.length);
      this.onHeader(header).then(() => {
        if (this.destroyed) {
          return;
        }
        try {
          this.onBody(rest);
          callback();
        } catch (error) {
          callback(error as Error);
        }
      }, callback);
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      if (this.#collected !== undefined) {
        throw new TruncatedCiphertext("ciphertext ends inside its header");
      }
      this.onEnd();
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }
}

/**
 * Where an opening stream gets the opener for a header: KmsClient checks the context, asks the
 * service (or its cache) for the data key, compares key ids and opens the header.
 */
export type OpenSource = (header: Header) => Promise<FrameOpener> | FrameOpener;

/**
 * Envelope ciphertext in, plaintext out. A frame read in full (frameSize + 16 bytes) opens as
 * non-final; at the end of the input the remainder opens as the final frame, and fewer than 16
 * bytes there (none included) is TruncatedCiphertext.
 */
export class OpenStream extends CiphertextStream {
  readonly #source: OpenSource;
  #opener: FrameOpener | undefined;
  #gather: Gather | undefined;
  #header: Header | undefined;
  #plaintextBytes = 0;

  constructor(source: OpenSource, options: TransformOptions = {}) {
    super(options);
    this.#source = source;
  }

  /** The header, once read (before its data key is known to be right). */
  get header(): Header | undefined {
    return this.#header;
  }

  /** Plaintext bytes pushed so far (every one of them authenticated). */
  get plaintextBytes(): number {
    return this.#plaintextBytes;
  }

  protected override async onHeader(header: Header): Promise<void> {
    this.#header = header;
    const opener = await this.#source(header);
    if (this.destroyed) {
      opener.destroy(); // destroyed while the data key was on its way
      return;
    }
    this.#opener = opener;
    this.#gather = new Gather(opener.frameSize + FRAME_TAG_BYTES);
  }

  protected override onBody(data: Buffer): void {
    feed(this.#gather!, data, (parts) => this.#pushAll(this.#opener!.open(parts, false)));
  }

  protected override onEnd(): void {
    const parts = this.#gather!.drain();
    this.#pushAll(this.#opener!.open(parts, true)); // throws TruncatedCiphertext under 16 bytes
    this.#opener!.destroy();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#opener?.destroy();
    this.#gather?.wipe();
    callback(error);
  }

  #pushAll(pieces: Buffer[]): void {
    for (const piece of pieces) {
      this.#plaintextBytes += piece.length;
      this.push(piece);
    }
  }
}

/** Where a re-wrapping stream gets the new header for the old one (the service's ReWrap). */
export type RewrapSource = (header: Header) => Promise<Header>;

/** Envelope ciphertext in, the same with its wrapped key replaced out; the body is copied. */
export class RewrapStream extends CiphertextStream {
  readonly #source: RewrapSource;
  #bodyBytes = 0;

  constructor(source: RewrapSource, options: TransformOptions = {}) {
    super(options);
    this.#source = source;
  }

  /** Body bytes copied so far. */
  get bodyBytes(): number {
    return this.#bodyBytes;
  }

  protected override async onHeader(header: Header): Promise<void> {
    this.push((await this.#source(header)).encode());
  }

  protected override onBody(data: Buffer): void {
    if (data.length > 0) {
      this.#bodyBytes += data.length;
      this.push(data);
    }
  }

  protected override onEnd(): void {}
}
