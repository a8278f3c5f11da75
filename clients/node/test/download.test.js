// downloadModel against a real worker and a real HTTP server on 127.0.0.1 serving a tiny MSST model.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

import { DSUError, DSUWorker } from "../src/index.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const FIXTURE = join(REPO, "tests", "fixtures", "msst", "mel_band_roformer");
const TMP = mkdtempSync(join(tmpdir(), "dsu-node-download-"));
after(() => rmSync(TMP, { recursive: true, force: true }));

function workerOptions(args) {
  const env = { ...process.env, OMP_NUM_THREADS: "1" };
  if (process.env.DSU_WORKER) return { command: process.env.DSU_WORKER, args: ["--threads", "1", ...args], env };
  const python = process.env.DSU_PYTHON ?? join(REPO, ".venv", "bin", "python");
  return { command: python, args: ["-m", "dsu.worker", "--threads", "1", ...args], env };
}

test("downloadModel installs a catalog model with byte progress; a 404 is download_failed", { timeout: 120_000 }, async () => {
  const files = { "tiny.ckpt": readFileSync(join(FIXTURE, "model.ckpt")), "tiny.yaml": readFileSync(join(FIXTURE, "config.yaml")) };
  const server = createServer((req, res) => {
    const body = files[req.url.slice(1)];
    if (!body) { res.writeHead(404).end(); return; }
    res.writeHead(200, { "Content-Length": body.length }).end(body);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const base = `http://127.0.0.1:${server.address().port}`;
  const entry = (name, ckpt) => ({
    name, type: "mel_band_roformer", stems: ["vocals", "other"], checkpoint: "tiny.ckpt", config: "tiny.yaml",
    files: [{ path: "tiny.ckpt", url: `${base}/${ckpt}`, size: files["tiny.ckpt"].length, sha256: null },
            { path: "tiny.yaml", url: `${base}/tiny.yaml`, size: null, sha256: null }],
  });
  const catalog = join(TMP, "catalog.json");
  writeFileSync(catalog, JSON.stringify({ version: 1, models: [entry("tiny_vocals", "tiny.ckpt"), entry("gone", "nothing.ckpt")] }));
  const models = join(TMP, "models");
  const worker = new DSUWorker(workerOptions(["--models-dir", models]));
  try {
    await worker.start();
    const progress = [];
    const done = await worker.downloadModel("tiny_vocals", { catalog }, { onProgress: (p, m) => progress.push(m) });
    assert.equal(done.status, "model_downloaded");
    assert.deepEqual(done.paths, [join(models, "tiny.ckpt"), join(models, "tiny.yaml")]);
    assert.deepEqual(readFileSync(done.paths[0]), files["tiny.ckpt"]);
    assert.deepEqual(done.pinned, ["tiny.ckpt", "tiny.yaml"]);
    const last = progress.filter((m) => m.file === "tiny.ckpt").at(-1);
    assert.equal(last.bytes_done, files["tiny.ckpt"].length);
    assert.equal(last.bytes_total, files["tiny.ckpt"].length);
    await assert.rejects(worker.downloadModel("gone", { catalog, models_dir: join(TMP, "other") }),
      (e) => e instanceof DSUError && e.code === "download_failed" && /HTTP 404/.test(e.message));
  } finally {
    await worker.close();
    server.close();
  }
});
