#!/usr/bin/env node
/**
 * `kms-client encrypt|decrypt`: standard input to standard output through the SDK's streams, in
 * constant memory; the ciphertexts are those of every other SDK (docs/envelope-format.md).
 *
 *     kms-client encrypt --key-id orders -c tenant=acme < plain > sealed
 *     kms-client decrypt -c tenant=acme < sealed > plain
 *
 * The service is --target (or KMS_TARGET); --ca, --cert and --key (or KMS_TLS_CA, KMS_TLS_CERT,
 * KMS_TLS_KEY) turn on TLS and mutual TLS. A failed decrypt exits with status 1 after having
 * written the frames it authenticated before the failure: discard the output unless the exit
 * status is 0. Errors are printed as their class and message, never with key material.
 */

import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";

import { KmsClient, type KmsClientOptions } from "./client";
import { DEFAULT_FRAME_SIZE } from "./envelope";
import { KmsError } from "./errors";

const USAGE = `usage: kms-client encrypt --key-id ID [-c KEY=VALUE]... [--frame-size BYTES] [connection] < in > out
       kms-client decrypt [-c KEY=VALUE]... [connection] < in > out
connection: --target HOST:PORT (KMS_TARGET), --ca FILE (KMS_TLS_CA), --cert FILE (KMS_TLS_CERT),
            --key FILE (KMS_TLS_KEY), --insecure (plaintext to a target that is not loopback),
            --timeout-ms MS`;

class UsageError extends Error {}

function contextOf(pairs: string[] | undefined): Record<string, string> {
  const context: Record<string, string> = Object.create(null);
  for (const pair of pairs ?? []) {
    const at = pair.indexOf("=");
    if (at <= 0) {
      throw new UsageError(`a context entry is KEY=VALUE, got ${JSON.stringify(pair)}`);
    }
    context[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return context;
}

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      "key-id": { type: "string" },
      context: { type: "string", short: "c", multiple: true },
      "frame-size": { type: "string" },
      target: { type: "string" },
      ca: { type: "string" },
      cert: { type: "string" },
      key: { type: "string" },
      insecure: { type: "boolean" },
      "timeout-ms": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const [command, ...extra] = positionals;
  if ((command !== "encrypt" && command !== "decrypt") || extra.length > 0) {
    throw new UsageError(USAGE);
  }
  const target = values.target ?? process.env.KMS_TARGET;
  if (!target) {
    throw new UsageError("give --target HOST:PORT (or set KMS_TARGET)");
  }
  const ca = values.ca ?? process.env.KMS_TLS_CA;
  const cert = values.cert ?? process.env.KMS_TLS_CERT;
  const key = values.key ?? process.env.KMS_TLS_KEY;
  const options: KmsClientOptions = {};
  if (ca !== undefined || cert !== undefined || key !== undefined) {
    options.tls = { ca, cert, key };
  }
  if (values.insecure) {
    options.insecure = true;
  }
  if (values["timeout-ms"] !== undefined) {
    options.timeoutMs = Number(values["timeout-ms"]);
  }
  const context = contextOf(values.context);
  const client = new KmsClient(target, options);
  try {
    if (command === "encrypt") {
      const keyId = values["key-id"];
      if (!keyId) {
        throw new UsageError("encrypt needs --key-id");
      }
      const frameSize = values["frame-size"] === undefined ? DEFAULT_FRAME_SIZE : Number(values["frame-size"]);
      await pipeline(process.stdin, client.encryptStream({ keyId, context, frameSize }), process.stdout);
    } else {
      await pipeline(process.stdin, client.decryptStream({ context }), process.stdout);
    }
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then(
  () => undefined,
  (error: unknown) => {
    if (error instanceof UsageError) {
      process.stderr.write(`${error.message}\n`);
      process.exitCode = 2;
    } else if (error instanceof KmsError) {
      process.stderr.write(`kms-client: ${error.name}: ${error.message}\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(`kms-client: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    }
  },
);
