/**
 * Typed errors of the datapath layer. Callers branch on the type and its fields (`op`, `errno`,
 * `code`), never on message text.
 */
import { constants as osConstants } from 'node:os';

/** Lines of the verifier log that a BpfError's message shows; `verifierLog` holds all of it. */
export const VERIFIER_LOG_TAIL_LINES = 20;

/** Fields of a {@link BpfError}. `errno` is positive; `code` defaults to its name ('ENOENT'). */
export interface BpfErrorInit {
  /** The failed operation: 'open', 'load', 'map_update', 'tc_attach', 'obj_get', … */
  readonly op: string;
  readonly errno: number;
  readonly code?: string;
  /** One-line message without the verifier log, e.g. `map_update mesh_ipcache: File exists`. */
  readonly message: string;
  /** The kernel verifier log (or libbpf's explanation when the kernel gave none). */
  readonly verifierLog?: string;
  /** Everything libbpf printed during the operation. */
  readonly libbpfLog?: string;
  /** Program the kernel rejected, when a load failed in one. */
  readonly program?: string;
  /** Map that could not be created or reused, when a load failed in one. */
  readonly map?: string;
  /** File or pin path the operation was about. */
  readonly path?: string;
  /** Elements a batch operation completed before it failed. */
  readonly count?: number;
  readonly cause?: unknown;
}

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(osConstants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** 'ENOENT' for 2, …; 'ENOTSUPP' for the kernel-internal 524; 'E<n>' when unknown. */
export function errnoName(errno: number): string {
  if (errno === 524) return 'ENOTSUPP';
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** Last `lines` lines of a log, without trailing blank lines. */
export function logTail(log: string, lines: number): string {
  const all = log.replace(/\s+$/, '').split('\n');
  return all.slice(Math.max(0, all.length - lines)).join('\n');
}

/**
 * A kernel or libbpf operation failed. `message` is the one-line reason followed, for load
 * failures, by the last {@link VERIFIER_LOG_TAIL_LINES} lines of the verifier log (or, when the
 * kernel gave none, e.g. for a pinned map that cannot be reused, of libbpf's output);
 * `verifierLog` and `libbpfLog` hold them whole (show them with `-v`).
 */
export class BpfError extends Error {
  readonly op: string;
  readonly errno: number;
  readonly code: string;
  readonly verifierLog?: string;
  readonly libbpfLog?: string;
  readonly program?: string;
  readonly map?: string;
  readonly path?: string;
  readonly count?: number;
  /** The one-line reason, without any log. */
  readonly reason: string;

  constructor(init: BpfErrorInit) {
    const log = init.verifierLog && init.verifierLog.trim() !== '' ? init.verifierLog : undefined;
    const libbpfLog = init.libbpfLog && init.libbpfLog.trim() !== '' ? init.libbpfLog : undefined;
    let message = init.message;
    const shownLog = log ?? libbpfLog;
    if (shownLog !== undefined) {
      const total = shownLog.replace(/\s+$/, '').split('\n').length;
      const shown = Math.min(total, VERIFIER_LOG_TAIL_LINES);
      const label = log !== undefined ? 'verifier log' : 'libbpf log';
      message += `\n${label} (last ${shown} of ${total} lines):\n${logTail(shownLog, VERIFIER_LOG_TAIL_LINES)}`;
    }
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'BpfError';
    this.op = init.op;
    this.errno = init.errno;
    this.code = init.code ?? errnoName(init.errno);
    this.reason = init.message;
    if (log !== undefined) this.verifierLog = log;
    if (libbpfLog !== undefined) this.libbpfLog = libbpfLog;
    if (init.program !== undefined) this.program = init.program;
    if (init.map !== undefined) this.map = init.map;
    if (init.path !== undefined) this.path = init.path;
    if (init.count !== undefined) this.count = init.count;
  }

  /** The last `lines` lines of the verifier log ('' when there is none). */
  verifierLogTail(lines: number = VERIFIER_LOG_TAIL_LINES): string {
    return this.verifierLog === undefined ? '' : logTail(this.verifierLog, lines);
  }
}

/** clang is missing or rejected a BPF C source; `stderr` is clang's complete output. */
export class CompileError extends Error {
  constructor(
    readonly file: string,
    readonly stderr: string,
    message: string,
  ) {
    super(message);
    this.name = 'CompileError';
  }
}

/**
 * This machine or kernel lacks what the operation needs; `requirement` says what would
 * provide it (a kernel version, a build step, a privilege).
 */
export class NotSupportedError extends Error {
  constructor(
    readonly feature: string,
    readonly requirement: string,
    options?: { cause?: unknown },
  ) {
    super(`${feature} is not supported here: ${requirement}`, options);
    this.name = 'NotSupportedError';
  }
}

interface NativeErrorShape {
  message: string;
  op: string;
  errno: number;
  code?: string;
  verifierLog?: string;
  libbpfLog?: string;
  program?: string;
  map?: string;
  path?: string;
  count?: number;
}

// Duck-typed, not `instanceof Error`: the addon creates its errors in the main realm, which is
// not the realm of code running in a vm context (Jest tests).
function isNativeError(err: unknown): err is Error & NativeErrorShape {
  return (
    typeof err === 'object' &&
    err !== null &&
    typeof (err as Partial<NativeErrorShape>).message === 'string' &&
    typeof (err as Partial<NativeErrorShape>).op === 'string' &&
    typeof (err as Partial<NativeErrorShape>).errno === 'number'
  );
}

/**
 * Turns an error thrown by the native addon (an Error with `op` and `errno`) into a
 * {@link BpfError}; anything else (TypeError, RangeError for bad arguments) is returned as is.
 */
export function toBpfError(err: unknown): unknown {
  if (err instanceof BpfError || !isNativeError(err)) return err;
  return new BpfError({
    op: err.op,
    errno: err.errno,
    code: err.code,
    message: err.message,
    verifierLog: err.verifierLog,
    libbpfLog: err.libbpfLog,
    program: err.program,
    map: err.map,
    path: err.path,
    count: err.count,
  });
}
