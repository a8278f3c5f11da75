// Types of the DSU worker client (src/index.js). Message and field types come from protocol.d.ts,
// which is generated from the worker's own table (dsu.protocol).
import { EventEmitter } from "node:events";
import type { ChildProcess } from "node:child_process";

import type { Command, CommandFields, ErrorCode, FinalMessage, Message, ReadyMessage } from "./protocol.js";

export * from "./protocol.js";

/** Codes the client itself gives: no answer in time, worker died, client closed, worker never ready. */
export type ClientErrorCode = "timeout" | "worker_exited" | "closed" | "start_failed";

export class DSUError extends Error {
  constructor(code: ErrorCode | ClientErrorCode, message: string, details?: { reply?: Message; request?: object });
  code: ErrorCode | ClientErrorCode;
  /** the worker's error message, when the worker answered */
  reply?: Message;
  /** what was sent */
  request?: object;
}

export interface RequestOptions {
  /** reject with code `timeout` after this long; a job is also cancelled in the worker */
  timeoutMs?: number;
  /** silence after which the worker is taken for stuck: killed, its requests rejected with `timeout`
   * (default: the client's `timeouts` for the command's kind; 0: none) */
  idleTimeoutMs?: number;
  /** progress 0..1 of a job */
  onProgress?: (progress: number, message: Message) => void;
  /** every interim message (`separating`, `progress`, `loading_model`, ...) */
  onMessage?: (message: Message) => void;
  /** aborting it cancels the request */
  signal?: AbortSignal;
}

/** A request in flight: await it for the final reply, or cancel it. */
export class Request<T = Message> implements PromiseLike<T> {
  readonly worker: DSUWorker;
  readonly id: unknown;
  readonly message: object;
  readonly promise: Promise<T>;
  then<R1 = T, R2 = never>(onFulfilled?: ((value: T) => R1 | PromiseLike<R1>) | null,
                           onRejected?: ((reason: any) => R2 | PromiseLike<R2>) | null): Promise<R1 | R2>;
  catch<R = never>(onRejected?: ((reason: any) => R | PromiseLike<R>) | null): Promise<T | R>;
  finally(onFinally?: (() => void) | null): Promise<T>;
  cancel(): void;
}

export interface DSUWorkerOptions {
  /** executable: `dsu-demucs`, a python, `dist/dsu/dsu-demucs`, ... */
  command: string;
  /** its arguments, e.g. `["-m", "dsu.worker", "--models-dir", dir]` */
  args?: string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** "pipe" (default) emits `stderr` lines and keeps the last ones for crash reports */
  stderr?: "pipe" | "inherit" | "ignore";
  /** how long a start may take, default 120000 */
  readyTimeoutMs?: number;
  /** default per-request deadline, 0 (default) = none */
  timeoutMs?: number;
  /** silence limits per command kind in ms (DEFAULT_TIMEOUTS: quick 15000, load 300000, job 600000) */
  timeouts?: Partial<TimeoutLimits>;
  /** start again at once after a crash, default true (else the next request starts it) */
  restart?: boolean;
  /** crashes tolerated per minute before giving up, default 3 */
  maxRestarts?: number;
  /** how long `close()` waits after `exit` and again after SIGTERM, default 5000 */
  graceMs?: number;
}

export interface TimeoutLimits {
  /** commands answered at once (ping, get_status, ...) */
  quick: number;
  /** queued commands without progress (load_model, ...), from their turn */
  load: number;
  /** jobs (separate, apollo): the silence between two of their messages */
  job: number;
}

export declare const DEFAULT_TIMEOUTS: Readonly<TimeoutLimits>;

export type WorkerState = "idle" | "starting" | "ready" | "closing" | "closed" | "failed";

export class DSUWorker extends EventEmitter {
  constructor(options: DSUWorkerOptions);
  /** `python -m dsu.worker ...args` */
  static python(python: string, args?: string[], options?: Partial<DSUWorkerOptions>): DSUWorker;
  readonly options: Required<Omit<DSUWorkerOptions, "cwd" | "env">> & Pick<DSUWorkerOptions, "cwd" | "env">;
  readonly child: ChildProcess | null;
  /** the ready message of the running worker */
  readonly info: ReadyMessage | null;
  readonly state: WorkerState;
  readonly pid: number | undefined;
  start(): Promise<ReadyMessage>;
  request<C extends Command>(cmd: C, fields?: CommandFields[C] & { id?: unknown },
                             options?: RequestOptions): Request<FinalMessage<C>>;
  request(cmd: string, fields?: Record<string, unknown>, options?: RequestOptions): Request<Message>;
  cancel(id: unknown): void;
  ping(options?: RequestOptions): Request<FinalMessage<"ping">>;
  separate(fields: CommandFields["separate"] & { id?: unknown }, options?: RequestOptions): Request<FinalMessage<"separate">>;
  close(options?: { graceMs?: number }): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  on(event: "loading", listener: (message: Message) => void): this;
  on(event: "ready" | "restart", listener: (message: ReadyMessage) => void): this;
  on(event: "message" | "progress", listener: (message: Message) => void): this;
  on(event: "stderr" | "warning", listener: (line: string) => void): this;
  on(event: "exit", listener: (exit: { code: number | null; signal: NodeJS.Signals | null; expected: boolean }) => void): this;
  on(event: "crash", listener: (error: DSUError) => void): this;
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}
