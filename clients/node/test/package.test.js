// The package as users get it: installed by `npm install <path>` into a scratch project and imported by
// its name, as the README does; and the Max example's answer when no worker executable is there.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const SCRATCH = mkdtempSync(join(tmpdir(), "dsu-client-install-"));
after(() => rmSync(SCRATCH, { recursive: true, force: true }));

test("npm install <path> makes `dsu-client` importable by name", { timeout: 180_000 }, () => {
  writeFileSync(join(SCRATCH, "package.json"), JSON.stringify({ name: "scratch", private: true, type: "module" }));
  // --install-links copies the files as a published tarball would, instead of linking the folder
  execFileSync("npm", ["install", "--install-links", "--no-audit", "--no-fund", "--prefer-offline", PACKAGE],
    { cwd: SCRATCH, stdio: "pipe" });
  writeFileSync(join(SCRATCH, "use.mjs"), [
    'import { DSUWorker, DSUError } from "dsu-client";',
    'import { FINAL_STATUSES } from "dsu-client/protocol";',
    'import { createRequire } from "node:module";',
    'const pkg = createRequire(import.meta.url)("dsu-client/package.json");',
    "console.log(JSON.stringify({ worker: typeof DSUWorker, error: typeof DSUError,",
    "  separate: FINAL_STATUSES.separate, name: pkg.name }));",
  ].join("\n"));
  const out = JSON.parse(execFileSync(process.execPath, ["use.mjs"], { cwd: SCRATCH, encoding: "utf8" }));
  assert.deepEqual(out, { worker: "function", error: "function", separate: ["done"], name: "dsu-client" });
});

test("the Max example exits 1 and says how to set the DSU folder when the worker is missing", () => {
  const run = spawnSync(process.execPath, [join(PACKAGE, "examples", "max-separate.js"), "song.wav"], {
    env: { ...process.env, DSU_WORKER: "", DSU_DIR: join(SCRATCH, "no-dsu-here") },
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.equal(run.status, 1, run.stderr);
  assert.match(run.stderr, /DSU worker not found: dsu-demucs(\.exe)? is not in DSU_DIR=/);
  assert.match(run.stderr, /set DSU_DIR to the DSU folder/);
});
