// The previous DSU's README example, run as integrations copied it: spawn `dsu-demucs --worker`, send
// `separate` on the first stdout data (DSU's `{"status": "loading"}`, before `ready`: the command waits
// in stdin until the worker reads it), parse whatever lines arrive, `exit` at the end. No client library.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

import { writeSong } from "./song.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const TMP = mkdtempSync(join(tmpdir(), "dsu-seed-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

function dsuDemucs() {
  if (process.env.DSU_WORKER) return [process.env.DSU_WORKER, []];
  const python = process.env.DSU_PYTHON ?? join(REPO, ".venv", "bin", "python");
  return [python, ["-c", "import sys; from dsu.cli import demucs_worker; sys.exit(demucs_worker())"]];
}

test("the previous DSU's Node example separates a file", { timeout: 120_000 }, async () => {
  const song = writeSong(join(TMP, "song.wav"), 2);
  const [command, prefix] = dsuDemucs();
  const worker = spawn(command, [...prefix, "--worker", "--threads", "1"], {
    cwd: TMP, stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, OMP_NUM_THREADS: "1" },
  });
  let stderr = "";
  worker.stderr.on("data", (data) => { stderr += data; });
  const closed = new Promise((done) => worker.on("close", (code) => done(code)));

  // ---- the example, as written (the model and paths are this test's) ----
  function sendCommand(cmd) {
    worker.stdin.write(JSON.stringify(cmd) + "\n");
  }
  const responses = [];
  const notJson = [];
  const finished = new Promise((done) => {
    worker.stdout.on("data", (data) => {
      const lines = data.toString().trim().split("\n");
      for (const line of lines) {
        try {
          const response = JSON.parse(line);
          responses.push(response);
          if (response.status === "done" || response.status === "error") done(response);
        } catch (e) {
          notJson.push(line);
        }
      }
    });
  });
  let firstData = null;
  worker.stdout.once("data", (data) => {
    firstData = data.toString();
    sendCommand({ cmd: "separate", input: song, output: join(TMP, "output") + "/", model: "dsp" });
  });
  // ---- end of the example ----

  const answer = await Promise.race([finished, closed.then((code) => ({ status: "closed", code }))]);
  sendCommand({ cmd: "exit" });
  const code = await closed;
  assert.equal(answer.status, "done", `${JSON.stringify(answer)}\n${stderr}`);
  assert.deepEqual(JSON.parse(firstData.trim().split("\n")[0]), { status: "loading" }); // sent before `ready`
  assert.deepEqual(notJson, []);
  const statuses = responses.map((r) => r.status);
  assert.ok(statuses.indexOf("ready") < statuses.indexOf("separating"), String(statuses));
  assert.deepEqual([...answer.stems].sort(), ["bass", "drums", "other", "vocals"]);
  for (const path of answer.paths) assert.ok(path.startsWith(join(TMP, "output")) && existsSync(path), path);
  assert.equal(statuses.at(-1), "exiting");
  assert.equal(code, 0);
});
