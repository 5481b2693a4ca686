// Builds the package: dist/ from src/ (TypeScript to CommonJS plus .d.ts), and proto/ as a copy
// of the repository's contract (proto/kms/v1/kms.proto), so that the package is self-contained.
// The copy is generated: edit the repository's proto/, never this package's. Quiet on success.
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const contract = resolve(root, "..", "..", "proto", "kms", "v1", "kms.proto");
const copy = join(root, "proto", "kms", "v1", "kms.proto");

if (existsSync(contract)) {
  mkdirSync(dirname(copy), { recursive: true });
  copyFileSync(contract, copy);
} else if (!existsSync(copy)) {
  // Outside the repository (an unpacked tarball) the copy made at packing time is the contract.
  console.error(`build: ${contract} not found and no copy in ${copy}`);
  process.exit(1);
}

rmSync(join(root, "dist"), { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
const compiled = spawnSync(process.execPath, [tsc, "-p", join(root, "tsconfig.json")], { stdio: "inherit" });
if (compiled.status !== 0) {
  process.exit(compiled.status ?? 1);
}
chmodSync(join(root, "dist", "cli.js"), 0o755);
