// In-memory encrypt or decrypt with KmsClient, for the interoperability tests of
// tests/e2e/test_node_sdk.py (the CLI, dist/cli.js, covers the stream forms):
//
//     node interop.mjs encrypt TARGET KEY_ID CONTEXT_JSON FRAME_SIZE < plaintext > ciphertext
//     node interop.mjs decrypt TARGET CONTEXT_JSON < ciphertext > plaintext

import { buffer } from "node:stream/consumers";

import { KmsClient } from "kms-client";

const [command, target, ...rest] = process.argv.slice(2);
const client = new KmsClient(target);
try {
  const input = await buffer(process.stdin);
  if (command === "encrypt") {
    const [keyId, context, frameSize] = rest;
    process.stdout.write(await client.encrypt(input, { keyId, context: JSON.parse(context), frameSize: Number(frameSize) }));
  } else if (command === "decrypt") {
    process.stdout.write(await client.decrypt(input, { context: JSON.parse(rest[0]) }));
  } else {
    throw new Error(`unknown command ${command}`);
  }
} catch (error) {
  process.stderr.write(`${error.name}: ${error.message}\n`);
  process.exitCode = 1;
} finally {
  client.close();
}
