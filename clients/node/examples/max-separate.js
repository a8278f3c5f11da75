// Node for Max: separate a dropped file with a warm DSU worker and report progress to Max.
//
// In a Max patch:
//   [dropfile] -> [prepend separate] -> [node.script max-separate.js @autostart 1]
//   [node.script] -> [route status progress stem done error]
//   progress (0..1) can drive a [slider] or [live.slider]; each `stem <name> <path>` can load a [buffer~].
// Messages it understands: separate <path> [model], model <name>, format wav|flac|mp3, output <dir>,
// cancel, stop.
// Outside Max it runs from a shell (`node max-separate.js song.wav [model]`), printing what Max would get.
//
// The worker: $DSU_WORKER (e.g. /Applications/DSU/dsu-demucs), else the frozen build of this checkout
// (dist/dsu/dsu-demucs), else `dsu-demucs` on the PATH. $DSU_MODELS_DIR is passed as --models-dir.
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { DSUWorker } from "../src/index.js";

const Max = await import("max-api").then((m) => m.default ?? m, () => null);
const here = dirname(fileURLToPath(import.meta.url));

const outlet = (...args) => (Max ? Max.outlet(...args) : console.log(args.join(" ")));
const post = (text) => (Max ? Max.post(text) : console.error(text));

function workerCommand() {
  if (process.env.DSU_WORKER) return process.env.DSU_WORKER;
  const frozen = resolve(here, "../../../dist/dsu/dsu-demucs");
  return existsSync(frozen) ? frozen : "dsu-demucs";
}

/** Max gives mac paths as `Macintosh HD:/Users/...`; the worker wants a POSIX path. */
function nativePath(maxPath) {
  const path = String(maxPath);
  return process.platform === "darwin" ? path.replace(/^[^/:]+:(\/.*)$/, "$1") : path;
}

const settings = { model: "dsp", format: "wav", output: null };
let current = null;

const worker = new DSUWorker({
  command: workerCommand(),
  args: process.env.DSU_MODELS_DIR ? ["--models-dir", process.env.DSU_MODELS_DIR] : [],
});
worker.on("loading", () => outlet("status", "loading"));
worker.on("ready", (info) => outlet("status", "ready", info.device));
worker.on("crash", (error) => post(`DSU worker crashed: ${error.message}`));
worker.on("stderr", (line) => post(line));

async function separate(file, model = settings.model) {
  if (current) {
    outlet("error", "busy", "a separation is running; send cancel first");
    return;
  }
  const input = nativePath(file);
  const outputDir = settings.output ? nativePath(settings.output) : join(dirname(input), "separated");
  outlet("status", "separating", basename(input));
  outlet("progress", 0);
  current = worker.separate({ input, output_dir: outputDir, model, format: settings.format },
    { onProgress: (p) => outlet("progress", p) });
  try {
    const done = await current;
    done.stems.forEach((stem, i) => outlet("stem", stem, done.paths[i]));
    outlet("progress", 1);
    outlet("done", done.output_dir);
  } catch (error) {
    outlet("error", error.code, error.message);
  } finally {
    outlet("status", worker.state === "ready" ? "ready" : "stopped");
    current = null;
  }
}

const handlers = {
  separate,
  model: (name) => { settings.model = String(name); },
  format: (format) => { settings.format = String(format); },
  output: (dir) => { settings.output = String(dir); },
  cancel: () => current?.cancel(),
  stop: () => worker.close(),
};

if (Max) {
  Max.addHandlers(handlers);
  worker.start().catch((error) => outlet("error", error.code, error.message));
} else {
  const [file, model] = process.argv.slice(2);
  if (!file) {
    console.error("usage: node max-separate.js AUDIO_FILE [MODEL]");
    process.exit(2);
  }
  settings.output = join(tmpdir(), "dsu-max-example");
  await separate(file, model);
  await worker.close();
}
