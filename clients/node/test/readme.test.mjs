// The README's examples run: every ```js block of README.md is a whole program, executed as
// written (only the "kms-client" import is pointed at this build) in a scratch directory,
// against the servers of the environment.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";

import { PACKAGE_DIR, serverEnv } from "./support/helpers.mjs";

const README = readFileSync(join(PACKAGE_DIR, "README.md"), "utf8");
const BLOCKS = [...README.matchAll(/^```js\n([\s\S]*?)^```$/gm)].map((match) => match[1]);
const ENTRY = pathToFileURL(join(PACKAGE_DIR, "dist", "index.js")).href;
const { env, skip } = serverEnv("KMS_TARGET", "KMS_TLS_TARGET", "KMS_TLS_CA", "KMS_TLS_CERT", "KMS_TLS_KEY");

// What each example prints, in the order they appear.
const EXPECTED = [/^4111 1111 1111 1111\n$/, /^tls-example-\d+ version 1\n$/, /^restored\n$/];

test("the README's runnable examples are the ones this test knows", () => {
  assert.equal(BLOCKS.length, EXPECTED.length);
  for (const block of BLOCKS) {
    assert.match(block, /from "kms-client";/);
  }
});

BLOCKS.forEach((block, index) => {
  test(`README example ${index + 1} runs as written`, { skip }, async (t) => {
    const scratch = mkdtempSync(join(tmpdir(), "kms-readme-"));
    t.after(() => rmSync(scratch, { recursive: true, force: true }));
    const program = join(scratch, `example-${index + 1}.mjs`);
    writeFileSync(program, block.replaceAll('from "kms-client";', `from ${JSON.stringify(ENTRY)};`));
    const { stdout } = await promisify(execFile)(process.execPath, [program], { cwd: scratch, env: { ...process.env, ...env }, timeout: 60_000 });
    assert.match(stdout, EXPECTED[index]);
    if (/restored/.test(stdout)) {
      assert.deepEqual(readFileSync(join(scratch, "dump.sql.restored")), readFileSync(join(scratch, "dump.sql")));
    }
  });
});
