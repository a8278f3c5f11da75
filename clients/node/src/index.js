// DSU worker client: one persistent worker process (a venv console script, `python -m dsu.worker`
// or a frozen executable), JSON lines both ways, replies matched to requests by `id`.
// Zero dependencies; the protocol itself is documented in docs/protocol.md.
import { spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import { createInterface } from "node:readline";

import { FINAL_STATUSES, QUEUED, TIMEOUT_KINDS } from "./protocol.js";

/**
 * Milliseconds without an answer after which a worker is taken for stuck, by the kind of command
 * (TIMEOUT_KINDS): `quick` ones are answered at once, `load` ones may take minutes without a word,
 * a `job` sends progress, so its limit is the silence between messages. Queued requests count from
 * their turn. Past a limit the worker is killed, its requests reject with `timeout`, and the next
 * request starts a new one. Override per client (`timeouts`) or per request (`idleTimeoutMs`); 0: none.
 */
export const DEFAULT_TIMEOUTS = Object.freeze({ quick: 15_000, load: 300_000, job: 600_000 });
const WATCH_INTERVAL_MS = 100;

/**
 * A failed request. `code` is one of the worker's error codes (`input_not_found`, `cancelled`, ...,
 * see docs/protocol.md) or one of the client's own: `timeout` (no answer in time), `worker_exited`
 * (the worker died with the request pending), `closed` (the client was closed), `start_failed`
 * (the worker did not become ready).
 */
export class DSUError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{reply?: object, request?: object}} [details]
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = "DSUError";
    this.code = code;
    this.reply = details.reply;
    this.request = details.request;
  }
}

/**
 * One request in flight: await it (it is a thenable resolving to the final reply), read its `id`,
 * or `cancel()` it.
 * @template T
 */
export class Request {
  /** @param {DSUWorker} worker @param {any} id @param {object} message @param {Promise<T>} promise */
  constructor(worker, id, message, promise) {
    this.worker = worker;
    this.id = id;
    this.message = message;
    this.promise = promise;
  }
  then(onFulfilled, onRejected) { return this.promise.then(onFulfilled, onRejected); }
  catch(onRejected) { return this.promise.catch(onRejected); }
  finally(onFinally) { return this.promise.finally(onFinally); }
  /** Ask the worker to abort this request; it then rejects with code `cancelled`. */
  cancel() { this.worker.cancel(this.id); }
}

const STDERR_LINES_KEPT = 40;

/**
 * A persistent DSU worker. Events: `loading`, `ready` (the ready message), `message` (every message),
 * `progress` (progress messages), `stderr` (a line), `exit` ({code, signal, expected}),
 * `crash` (DSUError), `restart` (the new ready message), `warning` (a non-protocol stdout line),
 * `stuck` (DSUError `timeout`: a worker that stopped answering was killed).
 */
export class DSUWorker extends EventEmitter {
  /**
   * @param {object} options
   * @param {string} options.command executable: `dsu-demucs`, a python, `dist/dsu/dsu-demucs`, ...
   * @param {string[]} [options.args] its arguments (`["-m", "dsu.worker", "--models-dir", dir]`)
   * @param {string} [options.cwd]
   * @param {NodeJS.ProcessEnv} [options.env]
   * @param {"pipe"|"inherit"|"ignore"} [options.stderr] "pipe" (default) emits `stderr` lines and
   *   keeps the last ones for crash reports
   * @param {number} [options.readyTimeoutMs] how long a start may take (default 120000)
   * @param {number} [options.timeoutMs] default per-request deadline, 0 = none (default): past it the
   *   request rejects with `timeout` and a job is cancelled, the worker goes on
   * @param {{quick?: number, load?: number, job?: number}} [options.timeouts] silence limits per command
   *   kind (see DEFAULT_TIMEOUTS): past one the worker is killed and replaced
   * @param {boolean} [options.restart] start again at once after a crash (default true; else the next request starts it)
   * @param {number} [options.maxRestarts] crashes tolerated per minute before giving up (default 3)
   * @param {number} [options.graceMs] how long `close()` waits after `exit` and after SIGTERM (default 5000)
   */
  constructor(options) {
    super();
    if (!options || !options.command) throw new TypeError("DSUWorker needs options.command");
    this.options = {
      args: [], stderr: "pipe", readyTimeoutMs: 120_000, timeoutMs: 0, restart: true, maxRestarts: 3,
      graceMs: 5000, ...options,
    };
    this.options.timeouts = { ...DEFAULT_TIMEOUTS, ...(options.timeouts ?? {}) };
    this._inflight = new Map(); // JSON key of id -> entry, sent to the running child and not answered, in order
    this._watch = null;
    this._head = null;
    /** @type {import("node:child_process").ChildProcess | null} */
    this.child = null;
    /** the ready message of the running worker */
    this.info = null;
    this.state = "idle"; // idle | starting | ready | closing | closed | failed
    this._pending = new Map(); // JSON key of id -> {id, message, resolve, reject, timer, onProgress, onMessage}
    this._nextId = 1;
    this._starting = null;
    this._crashes = [];
    this._stderrTail = [];
  }

  /** A worker run by a Python interpreter: `python -m dsu.worker ...args`. */
  static python(python, args = [], options = {}) {
    return new DSUWorker({ ...options, command: python, args: ["-m", "dsu.worker", ...args] });
  }

  get pid() { return this.child?.pid; }

  /** Start the worker (if not already) and resolve with its ready message. */
  start() {
    if (this.state === "closing" || this.state === "closed") {
      return Promise.reject(new DSUError("closed", "the worker was closed; create a new DSUWorker"));
    }
    if (!this._starting) {
      this._starting = this._spawn();
      this._starting.catch(() => { this._starting = null; });
    }
    return this._starting;
  }

  _spawn() {
    this.state = "starting";
    this._stderrTail = [];
    const { command, args, cwd, env, stderr, readyTimeoutMs } = this.options;
    const child = spawn(command, args, { cwd, env, stdio: ["pipe", "pipe", stderr] });
    this.child = child;
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (this.state !== "closing") this.state = "failed";
        reject(error);
      };
      const timer = readyTimeoutMs > 0 ? setTimeout(() => {
        fail(new DSUError("start_failed", `the worker was not ready within ${readyTimeoutMs} ms${this._tail()}`));
        child.kill("SIGKILL");
      }, readyTimeoutMs) : null;
      child.on("error", (error) => fail(new DSUError("start_failed", `cannot start ${command}: ${error.message}`)));
      child.stdin.on("error", () => {}); // a dead worker's pipe: reported through `exit`
      if (child.stderr) {
        createInterface({ input: child.stderr }).on("line", (line) => {
          this._stderrTail.push(line);
          if (this._stderrTail.length > STDERR_LINES_KEPT) this._stderrTail.shift();
          this.emit("stderr", line);
        });
      }
      createInterface({ input: child.stdout }).on("line", (line) => {
        const message = this._parse(line);
        if (!message) return;
        if (!settled && message.status === "loading") this.emit("loading", message);
        if (!settled && message.status === "ready") {
          settled = true;
          clearTimeout(timer);
          this.state = "ready";
          this.info = message;
          this.emit("ready", message);
          resolve(message);
          return;
        }
        this._dispatch(message);
      });
      // "close", not "exit": every line the worker wrote before it died is read first
      child.on("close", (code, signal) => {
        const wasReady = settled;
        fail(new DSUError("start_failed", `the worker exited (${describeExit(code, signal)}) before it was ready${this._tail()}`));
        this._exited(child, code, signal, wasReady);
      });
    });
  }

  _parse(line) {
    if (!line.trim()) return null;
    try {
      const message = JSON.parse(line);
      if (message && typeof message === "object" && !Array.isArray(message)) return message;
    } catch { /* reported below */ }
    this.emit("warning", `not a protocol message on the worker's stdout: ${line.slice(0, 200)}`);
    return null;
  }

  _dispatch(message) {
    this.emit("message", message);
    if (message.status === "progress") this.emit("progress", message);
    if (!("id" in message)) return;
    const inflight = this._inflight.get(keyOf(message.id));
    if (inflight) { // heard from, even when its caller gave up on it
      inflight.heardAt = Date.now();
      if (message.status === "error" || isFinal(inflight.message.cmd, message.status)) {
        this._inflight.delete(keyOf(message.id));
      }
    }
    const entry = this._pending.get(keyOf(message.id));
    if (!entry) return; // an answer to a request that already timed out, or to someone else's cancel
    if (message.status === "error") {
      this._settle(entry, new DSUError(message.code || "internal", message.message || "worker error",
                                       { reply: message, request: entry.message }));
    } else if (isFinal(entry.message.cmd, message.status)) {
      this._settle(entry, null, message);
    } else {
      if (message.status === "progress" && entry.onProgress) entry.onProgress(message.progress, message);
      if (entry.onMessage) entry.onMessage(message);
    }
  }

  _settle(entry, error, value) {
    this._pending.delete(keyOf(entry.id));
    clearTimeout(entry.timer);
    entry.abortCleanup?.();
    if (error) entry.reject(error); else entry.resolve(value);
  }

  _exited(child, code, signal, wasReady) {
    for (const [key, entry] of this._inflight) if (entry.child === child) this._inflight.delete(key);
    if (child !== this.child) return; // a stuck worker this client stopped: already reported
    this.child = null;
    this._starting = null;
    const expected = this.state === "closing" || this.state === "closed";
    this.emit("exit", { code, signal, expected });
    // nothing was sent to a worker that never got ready: its requests fail with the start error
    if (!wasReady) {
      if (expected) this.state = "closed";
      return;
    }
    const now = Date.now();
    if (!expected) this._crashes = this._crashes.filter((t) => now - t < 60_000).concat(now);
    const restart = !expected && this.options.restart && this._crashes.length <= this.options.maxRestarts;
    const error = expected
      ? new DSUError("closed", "the worker was closed before it answered")
      : new DSUError("worker_exited", `the worker exited (${describeExit(code, signal)}) before it answered; `
                     + (restart ? "it is being restarted, send the request again" : "the next request starts a new one")
                     + this._tail());
    for (const entry of [...this._pending.values()]) this._settle(entry, error);
    if (expected) {
      this.state = "closed";
      return;
    }
    this.state = "failed";
    this.emit("crash", error);
    if (restart) this.start().then((ready) => this.emit("restart", ready), (e) => this.emit("crash", e));
  }

  _tail() {
    return this._stderrTail.length ? `; worker stderr ends with:\n${this._stderrTail.slice(-10).join("\n")}` : "";
  }

  /**
   * Send a command and resolve with its final reply (`pong`, `done`, ...) or reject with a DSUError.
   * @param {string} cmd
   * @param {object} [fields] the command's fields; an `id` here is used instead of a generated one
   * @param {RequestOptions} [options]
   * @returns {Request<object>}
   */
  request(cmd, fields = {}, options = {}) {
    const id = "id" in fields ? fields.id : this._nextId++;
    const message = { ...fields, cmd, id };
    let entry;
    const promise = new Promise((resolve, reject) => {
      entry = { id, message, resolve, reject, onProgress: options.onProgress, onMessage: options.onMessage };
    });
    if (this._pending.has(keyOf(id))) {
      entry.reject(new DSUError("bad_value", `a request with id ${JSON.stringify(id)} is already pending`));
      return new Request(this, id, message, promise);
    }
    this._pending.set(keyOf(id), entry);
    const kind = TIMEOUT_KINDS[cmd] ?? "load";
    entry.kind = kind;
    entry.idleTimeoutMs = options.idleTimeoutMs ?? this.options.timeouts[kind] ?? 0;
    const timeoutMs = options.timeoutMs ?? this.options.timeoutMs;
    if (timeoutMs > 0) {
      entry.timer = setTimeout(() => {
        this._settle(entry, new DSUError("timeout", `no answer to ${cmd} (id ${JSON.stringify(id)}) within ${timeoutMs} ms`,
                                         { request: message }));
        if (QUEUED.has(cmd)) this._send({ cmd: "cancel", id });
      }, timeoutMs);
    }
    if (options.signal) {
      const onAbort = () => this.cancel(id);
      if (options.signal.aborted) queueMicrotask(onAbort);
      else options.signal.addEventListener("abort", onAbort, { once: true });
      entry.abortCleanup = () => options.signal.removeEventListener("abort", onAbort);
    }
    this.start().then(() => {
      if (this._pending.get(keyOf(id)) !== entry) return; // settled (cancelled, timed out) before it was sent
      entry.sent = true;
      if (this._send(message)) {
        entry.child = this.child;
        entry.heardAt = Date.now();
        this._inflight.set(keyOf(id), entry);
        this._watchStuck();
      }
    }, (error) => {
      if (this._pending.get(keyOf(id)) === entry) this._settle(entry, error);
    });
    return new Request(this, id, message, promise);
  }

  _watchStuck() {
    if (this._watch) return;
    this._watch = setInterval(() => {
      const now = Date.now();
      const inflight = [...this._inflight.values()].filter((e) => e.child === this.child);
      if (!inflight.length) {
        clearInterval(this._watch);
        this._watch = null;
        this._head = null;
        return;
      }
      const queued = inflight.filter((e) => e.kind !== "quick");
      if (queued.length && queued[0] !== this._head) { // the worker runs queued requests in order: a turn starts
        this._head = queued[0];
        this._head.heardAt = Math.max(this._head.heardAt, now);
      }
      const waiting = [...inflight.filter((e) => e.kind === "quick"), ...queued.slice(0, 1)];
      const stuck = waiting.find((e) => e.idleTimeoutMs > 0 && now - e.heardAt > e.idleTimeoutMs);
      if (stuck) this._stuck(stuck);
    }, WATCH_INTERVAL_MS);
    this._watch.unref?.();
  }

  /** Kill a worker that stayed silent past `culprit`'s limit; its requests reject with `timeout`. */
  _stuck(culprit) {
    const child = culprit.child;
    const error = new DSUError("timeout", `the worker did not answer ${culprit.message.cmd} (id `
      + `${JSON.stringify(culprit.id)}) for ${culprit.idleTimeoutMs} ms; it was stopped and the next request `
      + `starts a new one${this._tail()}`, { request: culprit.message });
    const failed = [...this._inflight.values()].filter((e) => e.child === child);
    for (const entry of failed) {
      this._inflight.delete(keyOf(entry.id));
      if (this._pending.get(keyOf(entry.id)) === entry) this._settle(entry, error);
    }
    if (this.child === child) { // forget it now: the next request must not be sent to it
      this.child = null;
      this._starting = null;
      this.state = "failed";
    }
    child.kill("SIGKILL");
    this.emit("stuck", error);
  }

  _send(message) {
    if (!this.child || this.state !== "ready") return false;
    this.child.stdin.write(`${JSON.stringify(message)}\n`);
    return true;
  }

  /** Abort request `id`: a queued or running job stops at its next chunk and rejects with `cancelled`. */
  cancel(id) {
    const entry = this._pending.get(keyOf(id));
    if (entry && !entry.sent) {
      this._settle(entry, new DSUError("cancelled", "cancelled before it was sent", { request: entry.message }));
      return;
    }
    this._send({ cmd: "cancel", id });
  }

  /** @param {RequestOptions} [options] */
  ping(options) { return this.request("ping", {}, options); }

  /**
   * Separate one file. Resolves with the `done` message (`files`, `paths`, `stems`, `elapsed`, ...).
   * @param {SeparateFields} fields
   * @param {RequestOptions} [options]
   */
  separate(fields, options) { return this.request("separate", fields, options); }

  /** Install a catalog model (`fields`: models_dir, catalog, read_timeout, retries); resolves with
   * `model_downloaded`. Its `progress` messages carry file, bytes_done, bytes_total and speed. */
  downloadModel(model, fields = {}, options) { return this.request("download_model", { ...fields, model }, options); }

  /**
   * Separate one file with several models and blend their stems (`models`, `algorithm`, `weights`),
   * or blend stem `files` into `output`. Resolves with the `done` message (`files`, `members`, `elapsed`).
   * @param {EnsembleFields} fields
   * @param {RequestOptions} [options]
   */
  ensemble(fields, options) { return this.request("ensemble", fields, options); }

  /**
   * Stop the worker: `exit`, then SIGTERM after `graceMs`, then SIGKILL after `graceMs` more.
   * Pending requests reject with code `closed`. Resolves with how the process ended.
   * @returns {Promise<{code: number|null, signal: string|null}>}
   */
  async close({ graceMs = this.options.graceMs } = {}) {
    if (this.state === "closed") return { code: null, signal: null };
    const child = this.child;
    this.state = "closing";
    if (!child) {
      this.state = "closed";
      return { code: null, signal: null };
    }
    const exited = new Promise((resolve) => {
      if (this.child !== child) resolve({ code: child.exitCode, signal: child.signalCode });
      else child.once("close", (code, signal) => resolve({ code, signal }));
    });
    if (child.stdin.writable) {
      child.stdin.write(`${JSON.stringify({ cmd: "exit" })}\n`);
      child.stdin.end();
    }
    const within = (ms) => Promise.race([exited, new Promise((r) => setTimeout(r, ms).unref())]);
    let result = await within(graceMs);
    if (!result) {
      child.kill("SIGTERM");
      result = await within(graceMs);
    }
    if (!result) {
      child.kill("SIGKILL");
      result = await exited;
    }
    return result;
  }
}

/**
 * @typedef {object} RequestOptions
 * @property {number} [timeoutMs] reject with code `timeout` after this long (a job is also cancelled)
 * @property {number} [idleTimeoutMs] the silence after which the worker is taken for stuck (killed, its
 *   requests rejected with `timeout`); default: `timeouts[kind]` of the client, 0: none
 * @property {(progress: number, message: object) => void} [onProgress] progress 0..1 of a job
 * @property {(message: object) => void} [onMessage] every interim message (`separating`, `progress`, ...)
 * @property {AbortSignal} [signal] aborting it cancels the request
 */

/**
 * @typedef {object} SeparateFields
 * @property {string} input
 * @property {string} [output_dir]
 * @property {string} [model]
 * @property {string} [model_path]
 * @property {string} [config_path]
 * @property {"wav"|"flac"|"mp3"} [format]
 * @property {16|24|32} [bit_depth]
 * @property {string[]} [stems]
 * @property {string} [two_stems]
 * @property {any} [id]
 */

/**
 * @typedef {object} EnsembleFields
 * @property {string} [input]
 * @property {string} [output_dir]
 * @property {Array<object|string>} [models] members: {model} or {model_path, config_path}, options, stem_map
 * @property {string} [preset]
 * @property {string[]} [files] stem files to blend into `output` instead
 * @property {string} [output]
 * @property {string} [algorithm]
 * @property {number[]} [weights]
 * @property {string|string[]} [stems]
 * @property {string} [name]
 * @property {any} [id]
 */

function keyOf(id) { return JSON.stringify(id); }

function isFinal(cmd, status) {
  const finals = FINAL_STATUSES[cmd];
  return finals ? finals.includes(status) : true;
}

function describeExit(code, signal) {
  return signal ? `signal ${signal}` : `code ${code}`;
}
