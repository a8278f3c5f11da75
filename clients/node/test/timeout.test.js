// Timeouts of the client: a worker that stops answering is killed and replaced, and limits count
// from a request's turn. A tiny real process plays the stuck worker; a real DSU worker the healthy one.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

import { DEFAULT_TIMEOUTS, DSUError, DSUWorker } from "../src/index.js";
import { writeSong } from "./song.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.DSU_PYTHON ?? join(REPO, ".venv", "bin", "python");
const TMP = mkdtempSync(join(tmpdir(), "dsu-node-timeout-"));
after(() => rmSync(TMP, { recursive: true, force: true }));
const LIMIT = { timeout: 90_000 };

// says ready, then answers nothing but `exit`; a `separate` gets one `separating`, then silence
const STUCK = join(REPO, "tests", "fixtures", "stuck_worker.py");

async function rejectsWith(promise, code, pattern) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof DSUError, `expected a DSUError, got ${error}`);
    assert.equal(error.code, code, error.message);
    if (pattern) assert.match(error.message, pattern);
    return true;
  });
}

test("default limits by command kind", () => {
  assert.ok(DEFAULT_TIMEOUTS.quick <= 30_000 && DEFAULT_TIMEOUTS.load >= 60_000 && DEFAULT_TIMEOUTS.job >= 60_000);
  const worker = new DSUWorker({ command: PYTHON, timeouts: { job: 5 } });
  assert.deepEqual(worker.options.timeouts, { ...DEFAULT_TIMEOUTS, job: 5 });
});

test("a worker that stops answering is killed, its requests time out, the next request gets a new one", LIMIT, async () => {
  const worker = new DSUWorker({ command: PYTHON, args: [STUCK], timeouts: { quick: 1000, job: 1500 } });
  try {
    await worker.start();
    const first = worker.pid;
    const stuck = [];
    worker.on("stuck", (e) => stuck.push(e));
    const started = Date.now();
    const job = worker.separate({ input: join(TMP, "x.wav"), output_dir: TMP });
    const ping = worker.ping();
    await rejectsWith(ping, "timeout", /did not answer ping/);
    await rejectsWith(job, "timeout", /did not answer ping/); // the same stuck worker: it fails too
    assert.ok(Date.now() - started >= 1000 && Date.now() - started < 10_000);
    assert.equal(stuck.length, 1);
    const seen = [];
    const second = worker.separate({ input: join(TMP, "x.wav"), output_dir: TMP }, { onMessage: (m) => seen.push(m.status) });
    await rejectsWith(second, "timeout", /did not answer separate/);
    assert.deepEqual(seen, ["separating"]);
    assert.notEqual(worker.pid, first);
    await rejectsWith(worker.ping({ idleTimeoutMs: 300 }), "timeout", /300 ms/); // a limit per request
    assert.equal(stuck.length, 3);
  } finally {
    await worker.close({ graceMs: 2000 });
  }
});

test("limits count from a request's turn, and progress keeps a job alive (real worker)", LIMIT, async () => {
  const song = join(TMP, "song.wav");
  writeSong(song, 20);
  const worker = new DSUWorker({ command: PYTHON, args: ["-m", "dsu.worker", "--threads", "1"],
    env: { ...process.env, OMP_NUM_THREADS: "1" }, timeouts: { quick: 5000, load: 1000, job: 1000 } });
  try {
    await worker.start();
    const started = Date.now();
    const job = worker.separate({ input: song, output_dir: join(TMP, "out"), model: "dsp", segment: 0.5 });
    const load = worker.request("load_model", { model: "dsp" });
    assert.equal((await worker.ping()).status, "pong");
    assert.equal((await job).status, "done");
    assert.equal((await load).status, "model_loaded");
    assert.ok(Date.now() - started > 1000, "the job outlasted the limits");
  } finally {
    await worker.close();
  }
});
