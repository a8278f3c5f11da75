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
// The worker: $DSU_WORKER (e.g. /Applications/DSU/dsu-demucs), else `dsu-demucs` in $DSU_DIR (the DSU
// folder), else the frozen build of this checkout (dist/dsu/dsu-demucs), else `dsu-demucs` on the PATH.
// When none is there it says so and how to set the folder (exit 1 outside Max). $DSU_MODELS_DIR is
// passed as --models-dir.
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { DSUWorker } from "../src/index.js";

const Max = await import("max-api").then((m) => m.default ?? m, () => null);
const here = dirname(fileURLToPath(import.meta.url));

const outlet = (...args) => (Max ? Max.outlet(...args) : console.log(args.join(" ")));
const post = (text) => (Max ? Max.post(text) : console.error(text));

const EXECUTABLE = process.platform === "win32" ? "dsu-demucs.exe" : "dsu-demucs";
const HOW_TO_SET =
  `set DSU_DIR to the DSU folder (the one holding ${EXECUTABLE}), e.g. ` +
  `DSU_DIR=/Applications/DSU node max-separate.js song.wav (for Max, in the environment Max starts from), ` +
  `or DSU_WORKER to the executable itself`;

/** The worker executable, or null with the reason when there is none to run. */
function workerCommand() {
  if (process.env.DSU_WORKER) {
    return existsSync(process.env.DSU_WORKER)
      ? { command: process.env.DSU_WORKER }
      : { missing: `DSU_WORKER=${process.env.DSU_WORKER} does not exist` };
  }
  if (process.env.DSU_DIR) {
    const inDir = join(process.env.DSU_DIR, EXECUTABLE);
    return existsSync(inDir) ? { command: inDir } : { missing: `${EXECUTABLE} is not in DSU_DIR=${process.env.DSU_DIR}` };
  }
  const frozen = resolve(here, "../../../dist/dsu", EXECUTABLE);
  if (existsSync(frozen)) return { command: frozen };
  const onPath = (process.env.PATH ?? "").split(delimiter).filter(Boolean).map((d) => join(d, EXECUTABLE));
  const found = onPath.find((p) => existsSync(p));
  return found ? { command: found } : { missing: `${EXECUTABLE} is not on the PATH` };
}

/** Max gives mac paths as `Macintosh HD:/Users/...`; the worker wants a POSIX path. */
function nativePath(maxPath) {
  const path = String(maxPath);
  return process.platform === "darwin" ? path.replace(/^[^/:]+:(\/.*)$/, "$1") : path;
}

const settings = { model: "dsp", format: "wav", output: null };
let current = null;

const found = workerCommand();
if (found.missing) {
  const message = `DSU worker not found: ${found.missing}. To fix it, ${HOW_TO_SET}.`;
  if (Max) {
    Max.post(message, Max.POST_LEVELS?.ERROR);
    Max.outlet("error", "worker_not_found", message);
  } else {
    console.error(message);
  }
  process.exit(1);
}

const worker = new DSUWorker({
  command: found.command,
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
    process.exitCode = 1;
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
