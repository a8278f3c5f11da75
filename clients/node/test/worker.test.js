// Drives a real DSU worker: `.venv/bin/python -m dsu.worker` from this checkout by default,
// another Python with DSU_PYTHON=/path/to/python, or a frozen executable with DSU_WORKER=dist/dsu/dsu-demucs.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { DSUError, DSUWorker } from "../src/index.js";
import { FINAL_STATUSES } from "../src/protocol.js";
import { writeSong } from "./song.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const TMP = mkdtempSync(join(tmpdir(), "dsu-node-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

function workerOptions(options = {}) {
  const env = { ...process.env, OMP_NUM_THREADS: "1" };
  const args = ["--threads", "1"];
  if (process.env.DSU_WORKER) return { command: process.env.DSU_WORKER, args, env, ...options };
  const python = process.env.DSU_PYTHON ?? join(REPO, ".venv", "bin", "python");
  return { command: python, args: ["-m", "dsu.worker", ...args], env, ...options };
}

// a hung worker fails its test instead of the whole run
const LIMIT = { timeout: 60_000 };

const SHORT = writeSong(join(TMP, "short.wav"), 3);
const LONG = writeSong(join(TMP, "long.wav"), 15);
// short chunks: the first progress, and a cancel's next chunk, come soon
const CHUNKED = { model: "dsp", segment: 2 };

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof DSUError, `expected a DSUError, got ${error}`);
    assert.equal(error.code, code, error.message);
    assert.ok(error.message.length > 10);
    return true;
  });
}

describe("one warm worker", LIMIT, () => {
  let worker;
  before(async () => {
    worker = new DSUWorker(workerOptions());
    await worker.start();
  });
  after(() => worker.close());

  test("announces ready and answers ping", LIMIT, async () => {
    assert.equal(worker.info.status, "ready");
    assert.equal(worker.info.protocol, 1);
    const pong = await worker.ping({ timeoutMs: 10_000 });
    assert.equal(pong.status, "pong");
    assert.ok("model_loaded" in pong);
  });

  test("separates with the dsp model, reporting progress", LIMIT, async () => {
    const progress = [];
    const seen = [];
    const out = join(TMP, "out-dsp");
    const done = await worker.separate({ input: SHORT, output_dir: out, model: "dsp" },
      { onProgress: (p) => progress.push(p), onMessage: (m) => seen.push(m.status) });
    assert.equal(done.status, "done");
    assert.deepEqual([...done.stems].sort(), ["bass", "drums", "other", "vocals"]);
    assert.equal(done.paths.length, 4);
    // output_dir is the folder holding `files`, as integrations join them
    assert.deepEqual(done.files.map((f) => join(done.output_dir, f)), done.paths);
    for (const path of done.paths) {
      assert.ok(path.startsWith(out), path);
      assert.equal(readFileSync(path).subarray(0, 4).toString(), "RIFF");
    }
    assert.ok(seen.includes("separating"));
    assert.ok(progress.length >= 1);
    assert.ok(progress.every((p, i) => p >= 0 && p <= 1 && (i === 0 || p >= progress[i - 1])), String(progress));
  });

  test("ensembles two members, naming the member in progress", LIMIT, async () => {
    const members = [];
    const out = join(TMP, "out-ensemble");
    const done = await worker.ensemble({ input: SHORT, output_dir: out, algorithm: "avg_fft", weights: [1, 2],
      models: [{ model: "dsp" }, { model: "dsp", segment: 2 }], stems: ["vocals"] },
    { onMessage: (m) => { if (m.status === "progress") members.push(m.member); } });
    assert.deepEqual(done.stems, ["vocals"]);
    assert.ok(members.length > 0 && members.every((m) => m === "dsp"), String(members));
    assert.equal(done.members.length, 2);
    assert.ok(done.paths[0].startsWith(out) && existsSync(done.paths[0]));
    await rejectsWith(worker.ensemble({ input: SHORT, output_dir: out, models: [{ model: "dsp" }] }), "bad_value");
  });

  test("cancels a running job at its next chunk", LIMIT, async () => {
    const out = join(TMP, "out-cancel");
    const job = worker.separate({ input: LONG, output_dir: out, ...CHUNKED },
      { onProgress: () => job.cancel() });
    await rejectsWith(job, "cancelled");
    const left = existsSync(out) ? readdirSync(out, { recursive: true }).filter((f) => statSync(join(out, f)).isFile()) : [];
    assert.deepEqual(left, [], "a cancelled job leaves no file behind");
    assert.equal((await worker.ping()).status, "pong");
  });

  test("an AbortSignal cancels too", LIMIT, async () => {
    const controller = new AbortController();
    const job = worker.separate({ input: LONG, output_dir: join(TMP, "out-abort"), ...CHUNKED },
      { signal: controller.signal, onProgress: () => controller.abort() });
    await rejectsWith(job, "cancelled");
  });

  test("a timed-out job is rejected and cancelled in the worker", LIMIT, async () => {
    const started = Date.now();
    await rejectsWith(worker.separate({ input: LONG, output_dir: join(TMP, "out-timeout"), ...CHUNKED },
      { timeoutMs: 300 }), "timeout");
    assert.ok(Date.now() - started < 5000);
    // the worker dropped the job: the next one is answered without waiting for the long file
    const done = await worker.separate({ input: SHORT, output_dir: join(TMP, "out-after"), model: "dsp" },
      { timeoutMs: 60_000 });
    assert.equal(done.status, "done");
  });

  test("bad requests are errors with codes, and the worker stays up", LIMIT, async () => {
    await rejectsWith(worker.separate({ input: join(TMP, "missing.wav"), output_dir: TMP, model: "dsp" }),
      "input_not_found");
    await rejectsWith(worker.separate({ output_dir: TMP, model: "dsp" }), "missing_field");
    await rejectsWith(worker.separate({ input: SHORT, output_dir: TMP, model: "no-such-model" }), "model_not_found");
    await rejectsWith(worker.request("frobnicate"), "unknown_command");
    const notAudio = join(TMP, "not-audio.wav");
    writeFileSync(notAudio, "this is not audio");
    await rejectsWith(worker.separate({ input: notAudio, output_dir: TMP, model: "dsp" }), "unsupported_audio");
    assert.equal((await worker.ping()).status, "pong");
  });

  test("each query command ends with the status the generated protocol table names", LIMIT, async () => {
    for (const cmd of ["get_status", "list_models", "list_cached"]) {
      const reply = await worker.request(cmd, {}, { timeoutMs: 10_000 });
      assert.deepEqual([reply.status], FINAL_STATUSES[cmd]);
    }
    const models = await worker.request("list_models");
    assert.ok(models.models.includes("dsp"), JSON.stringify(models.models));
  });

  test("ids are echoed, including the caller's own", LIMIT, async () => {
    const pong = await worker.ping().then(() => worker.request("ping", { id: "mine-1" }));
    assert.equal(pong.id, "mine-1");
  });
});

test("a crashed worker rejects its pending requests and is restarted", LIMIT, async () => {
  const worker = new DSUWorker(workerOptions());
  try {
    await worker.start();
    const firstPid = worker.pid;
    const restarted = new Promise((resolve) => worker.once("restart", resolve));
    let killed = false;
    const job = worker.separate({ input: LONG, output_dir: join(TMP, "out-crash"), ...CHUNKED }, {
      onProgress: () => {
        if (!killed) process.kill(firstPid, "SIGKILL");
        killed = true;
      },
    });
    await rejectsWith(job, "worker_exited");
    const ready = await restarted;
    assert.equal(ready.status, "ready");
    assert.notEqual(worker.pid, firstPid);
    assert.equal((await worker.ping({ timeoutMs: 10_000 })).status, "pong");
  } finally {
    await worker.close();
  }
});

test("close sends exit, the worker says exiting and ends with code 0", LIMIT, async () => {
  const worker = new DSUWorker(workerOptions());
  await worker.start();
  const messages = [];
  worker.on("message", (m) => messages.push(m.status));
  const ended = await worker.close();
  assert.deepEqual(ended, { code: 0, signal: null });
  assert.ok(messages.includes("exiting"), String(messages));
  await rejectsWith(worker.ping(), "closed");
});

test("a worker that cannot start is a start_failed error", LIMIT, async () => {
  const worker = new DSUWorker({ command: join(TMP, "no-such-executable") });
  await rejectsWith(worker.start(), "start_failed");
  const crashing = new DSUWorker({ command: process.execPath, args: ["-e", "console.error('boom'); process.exit(3)"] });
  await assert.rejects(crashing.start(), (e) => e.code === "start_failed" && /code 3/.test(e.message) && /boom/.test(e.message));
});
