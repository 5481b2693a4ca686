/**
 * Integrity in transit (docs/api.md): what each response must show. Requests carry the CRC32C
 * of the bytes they send; the service refuses a mismatch (ChecksumMismatch) and says in
 * `verified*` that it checked. Responses carry the CRC32C of each byte field they return, which
 * these functions compare with what arrived, throwing ResponseChecksumMismatch.
 */

import { crc32c } from "./crc32c";
import { ResponseChecksumMismatch } from "./errors";
import type * as wire from "./proto";

function field(checksum: number | undefined | null, data: Uint8Array, name: string): void {
  if (checksum === undefined || checksum === null) {
    throw new ResponseChecksumMismatch(`the response carries no ${name}: the service does not send checksums`);
  }
  if (crc32c(data) !== checksum) {
    throw new ResponseChecksumMismatch(`the response's ${name} does not match: it was altered in transit`);
  }
}

function verified(flag: boolean | undefined, name: string): void {
  if (flag !== true) {
    throw new ResponseChecksumMismatch(`the service did not verify the request's checksum (${name} is false)`);
  }
}

export function checkDataKey(response: wire.GenerateDataKeyResponse): void {
  field(response.plaintextCrc32c, response.plaintext, "plaintext_crc32c");
  field(response.wrappedKeyCrc32c, response.wrappedKey, "wrapped_key_crc32c");
}

export function checkWrappedOnly(response: wire.GenerateDataKeyResponse): void {
  field(response.wrappedKeyCrc32c, response.wrappedKey, "wrapped_key_crc32c");
}

export function checkDecrypted(response: wire.DecryptResponse): void {
  verified(response.verifiedWrappedKeyCrc32c, "verified_wrapped_key_crc32c");
  field(response.plaintextCrc32c, response.plaintext, "plaintext_crc32c");
}

export function checkRewrapped(response: wire.ReWrapResponse): void {
  verified(response.verifiedWrappedKeyCrc32c, "verified_wrapped_key_crc32c");
  field(response.wrappedKeyCrc32c, response.wrappedKey, "wrapped_key_crc32c");
}

export function checkToken(result: wire.PseudonymizeResult): void {
  verified(result.verifiedValueCrc32c, "verified_value_crc32c");
  field(result.tokenCrc32c, Buffer.from(result.token ?? "", "utf8"), "token_crc32c");
}
