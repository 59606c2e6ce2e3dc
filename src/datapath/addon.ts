/**
 * Typed API over the meshctl_bpf native addon (native/, libbpf through N-API).
 *
 * Ownership: every BpfObject, BpfMap and RingBuffer holds a kernel handle until its `close()`.
 * Handles still open when the Node environment shuts down are closed by the addon's cleanup
 * hook, so a forgotten close() leaks until exit, not beyond. tc attachments are different: they
 * live in the kernel and stay until detached (or their device goes away), also after this
 * process exits; that is what keeps traffic flowing while an agent restarts.
 *
 * Kernel: BPF ring buffers need Linux 5.8+, map batch ops 5.6+, tc via libbpf's netlink 4.1+.
 * Everything here needs CAP_BPF and CAP_NET_ADMIN (in practice: root).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statfsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { BpfError, NotSupportedError, toBpfError } from './errors.js';

const execFileAsync = promisify(execFile);

/** Where `make native` puts the addon, relative to the repository root. */
export const ADDON_RELATIVE_PATH = 'native/build/Release/meshctl_bpf.node';

/** Default bpffs mount point. */
export const BPFFS_MOUNT_POINT = '/sys/fs/bpf';

const BPF_FS_MAGIC = 0xcafe4a11;

// ---------------------------------------------------------------------------------------------
// Native surface (kept private: callers use the wrappers below).

interface NativeProgramInfo {
  name: string;
  section: string;
  type: string;
  fd: number;
  id?: number;
  tag?: string;
}

interface NativeBpfObject {
  readonly name: string;
  readonly closed: boolean;
  programs(): NativeProgramInfo[];
  program(name: string): NativeProgramInfo;
  maps(): ObjectMapEntry[];
  map(name: string): NativeBpfMap;
  close(): void;
}

interface NativeBpfMap {
  readonly fd: number;
  readonly name: string;
  readonly closed: boolean;
  info(): MapInfo;
  lookup(key: Buffer): Buffer | null;
  update(key: Buffer, value: Buffer, flags?: number): void;
  delete(key: Buffer): boolean;
  nextKey(key: Buffer | null): Buffer | null;
  keys(): Buffer[];
  updateBatch(keys: Buffer, values: Buffer, count: number, flags: number, method: 'auto' | 'loop'): BatchUpdateResult;
  deleteBatch(keys: Buffer, count: number, method: 'auto' | 'loop'): BatchUpdateResult;
  dump(): MapDump;
  pin(path: string): void;
  close(): void;
}

interface NativeRingBuffer {
  readonly closed: boolean;
  readonly records: number;
  close(): void;
  ref(): void;
  unref(): void;
}

interface NativeTcTarget {
  ifindex?: number;
  ifname?: string;
  netns?: string;
  direction?: string;
  priority?: number;
  handle?: number;
}

interface NativeLoadOptions {
  name?: string;
  pinRoot?: string;
  logSize?: number;
  logLevel?: number;
  maxEntries?: Record<string, number>;
}

interface NativeAddon {
  readonly libbpfVersion: string;
  readonly possibleCpus: number;
  BpfObject: { load(path: string, options: NativeLoadOptions): Promise<NativeBpfObject> };
  BpfMap: { openPinned(path: string): NativeBpfMap };
  RingBuffer: new (mapFd: number, onRecord: (record: Buffer) => void) => NativeRingBuffer;
  attachTc(options: NativeTcTarget & { programFd: number; replace?: boolean }): TcAttachment;
  detachTc(options: NativeTcTarget): boolean;
  queryTc(options: NativeTcTarget): TcAttachment | null;
  destroyTcHook(options: NativeTcTarget): boolean;
  ifindex(ifname: string, netns?: string): number;
}

/** Walks up from this compiled file (dist/src/datapath/ or src/datapath/) to the repo root. */
function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && existsSync(join(dir, 'native'))) {
      try {
        if ((JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'meshctl') return dir;
      } catch {
        // not ours; keep walking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) throw new NotSupportedError('the meshctl_bpf addon', 'cannot find the meshctl repository root to load it from');
    dir = parent;
  }
}

let addon: NativeAddon | undefined;

/**
 * Path of the addon that {@link loadAddon} loads: `$MESHCTL_BPF_ADDON` when set, else
 * `native/build/Release/meshctl_bpf.node` under the repository root.
 */
export function addonPath(): string {
  return process.env.MESHCTL_BPF_ADDON ?? join(findRepoRoot(), ADDON_RELATIVE_PATH);
}

/** Loads the addon once. Throws NotSupportedError when it is not built or not on Linux. */
function loadAddon(): NativeAddon {
  if (addon !== undefined) return addon;
  if (process.platform !== 'linux') {
    throw new NotSupportedError('the eBPF datapath', 'needs Linux');
  }
  const path = addonPath();
  if (!existsSync(path)) {
    throw new NotSupportedError('the meshctl_bpf addon', `not built at ${path}: run \`make native\``);
  }
  const require = createRequire(import.meta.url);
  try {
    addon = require(path) as NativeAddon;
  } catch (err) {
    throw new NotSupportedError('the meshctl_bpf addon', `cannot load ${path}: ${(err as Error).message}`, { cause: err });
  }
  return addon;
}

/** Runs a native call, turning its errors into BpfError (argument errors pass through). */
function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toBpfError(err);
  }
}

/** libbpf version the addon runs with, e.g. 'v1.1'. */
export function libbpfVersion(): string {
  return loadAddon().libbpfVersion;
}

/** Possible CPUs: per-CPU map values hold this many slots of round_up(valueSize, 8) bytes. */
export function possibleCpus(): number {
  return loadAddon().possibleCpus;
}

// ---------------------------------------------------------------------------------------------
// Objects and programs.

export interface LoadOptions {
  /**
   * Object name (libbpf prefixes the names of .data/.rodata/.bss maps with it). Default: the
   * file's base name up to its first dot.
   */
  readonly name?: string;
  /**
   * bpffs directory for maps declared with `__uint(pinning, LIBBPF_PIN_BY_NAME)`: a map already
   * pinned there (same type, key, value, size and flags) is reused with its contents; otherwise
   * it is created and pinned there. Created (mkdir -p) when missing. Default: libbpf's
   * `/sys/fs/bpf`.
   */
  readonly pinRoot?: string;
  /** Verifier log buffer, bytes. Default 4 MiB. */
  readonly logSize?: number;
  /** Verifier log level; 0 (default) asks for a log only after a failure. */
  readonly logLevel?: number;
  /**
   * Map sizes set before load (bpf_map__set_max_entries), by map name; maps the object does not
   * declare are ignored, so one table can serve several objects. A map pinned under `pinRoot`
   * with another size cannot be reused: the load then fails with BpfError EINVAL (op 'load',
   * `map` set) and the caller migrates it (see Datapath.open). Default: the sizes in the ELF.
   */
  readonly maxEntries?: Readonly<Record<string, number>>;
}

export interface ProgramInfo {
  readonly name: string;
  readonly section: string;
  /** libbpf's name of the program type, e.g. 'sched_cls'. */
  readonly type: string;
  /** Owned by its BpfObject: valid until that object is closed. */
  readonly fd: number;
  /** Kernel program id (what queryTc reports as programId). */
  readonly id?: number;
  readonly tag?: string;
}

export interface ObjectMapEntry {
  readonly name: string;
  /** .data/.rodata/.bss maps that libbpf makes for globals. */
  readonly internal: boolean;
  /** Where the map is pinned, or null when it is not. */
  readonly pinPath: string | null;
}

/**
 * A loaded ELF object: its programs are verified and loaded, its maps created or reused.
 * Call close() or the programs and maps stay referenced by this process until exit (programs
 * attached with attachTc stay loaded after close(); the kernel holds them).
 */
export class BpfObject {
  readonly #native: NativeBpfObject;
  /** The ELF file this object was loaded from. */
  readonly path: string;

  private constructor(native: NativeBpfObject, path: string) {
    this.#native = native;
    this.path = path;
  }

  /**
   * Opens and loads `path` on a worker thread. Rejects with BpfError: op 'open' when the file
   * cannot be parsed, op 'load' when a map cannot be created or reused or the verifier rejects
   * a program; then `verifierLog` holds the kernel's log and `program` the rejected program.
   */
  static async load(path: string, options: LoadOptions = {}): Promise<BpfObject> {
    const native = loadAddon();
    if (options.pinRoot !== undefined) mkdirSync(options.pinRoot, { recursive: true });
    const nativeOptions: NativeLoadOptions = {};
    if (options.name !== undefined) nativeOptions.name = options.name;
    if (options.pinRoot !== undefined) nativeOptions.pinRoot = options.pinRoot;
    if (options.logSize !== undefined) nativeOptions.logSize = options.logSize;
    if (options.logLevel !== undefined) nativeOptions.logLevel = options.logLevel;
    if (options.maxEntries !== undefined) {
      for (const [map, n] of Object.entries(options.maxEntries)) {
        if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) throw new RangeError(`maxEntries.${map}: ${n} is not a positive 32-bit integer`);
      }
      nativeOptions.maxEntries = { ...options.maxEntries };
    }
    try {
      return new BpfObject(await native.BpfObject.load(path, nativeOptions), path);
    } catch (err) {
      throw toBpfError(err);
    }
  }

  /** Object name ({@link LoadOptions.name}). */
  get name(): string {
    return this.#native.name;
  }

  get closed(): boolean {
    return this.#native.closed;
  }

  programs(): ProgramInfo[] {
    return call(() => this.#native.programs());
  }

  /** The named program; BpfError ENOENT (op 'program') when the object has none by that name. */
  program(name: string): ProgramInfo {
    return call(() => this.#native.program(name));
  }

  maps(): ObjectMapEntry[] {
    return call(() => this.#native.maps());
  }

  /**
   * A new handle on the named map (a duplicated fd): it stays valid after this object is
   * closed and must be closed on its own.
   */
  map(name: string): BpfMap {
    return new BpfMap(call(() => this.#native.map(name)));
  }

  /** Releases the object's programs and maps (idempotent). Pinned maps stay in bpffs. */
  close(): void {
    this.#native.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Maps.

export interface MapInfo {
  readonly id: number;
  /** libbpf's name of the map type, e.g. 'hash', 'lpm_trie', 'percpu_array'. */
  readonly type: string;
  readonly typeId: number;
  readonly name: string;
  readonly keySize: number;
  /** Kernel value size of one element (per CPU for per-CPU maps). */
  readonly valueSize: number;
  /** Bytes of a value Buffer in lookup/update: valueSize, or round_up(valueSize, 8) × possibleCpus for per-CPU maps. */
  readonly userValueSize: number;
  readonly possibleCpus: number;
  readonly maxEntries: number;
  readonly flags: number;
}

/** Flags for update() and updateBatch(). */
export const MapUpdateFlags = {
  /** Create or replace. */
  ANY: 0,
  /** Create only; EEXIST when present. */
  NOEXIST: 1,
  /** Replace only; ENOENT when absent. */
  EXIST: 2,
  /** Update under the value's bpf_spin_lock. */
  LOCK: 4,
} as const;

export interface UpdateBatchOptions {
  /** Per-element {@link MapUpdateFlags}. Default ANY. */
  readonly flags?: number;
  /** 'auto' (default): one batch syscall where the map type has it; 'loop': one syscall per element, in native code. */
  readonly method?: 'auto' | 'loop';
}

export interface BatchUpdateResult {
  /** Elements written. */
  readonly count: number;
  /**
   * True when one BPF_MAP_UPDATE_BATCH call did it; false when elements were written one by one
   * (method 'loop', or a map type without a batch op: LPM tries before Linux 6.x, …).
   */
  readonly batched: boolean;
}

/** Every element of a map, packed as {@link BpfMap.updateBatch} takes them. */
export interface MapDump {
  /** count × keySize bytes. */
  readonly keys: Buffer;
  /** count × userValueSize bytes. */
  readonly values: Buffer;
  readonly count: number;
  /** True when BPF_MAP_LOOKUP_BATCH did it; false for the native next_key + lookup loop. */
  readonly batched: boolean;
}

/**
 * One BPF map fd. Operations are synchronous single syscalls. Key and value Buffers must match
 * the map's sizes exactly (see {@link MapInfo.userValueSize} for per-CPU maps) or a RangeError
 * is thrown. Call close() or the fd stays open until the process exits.
 */
export class BpfMap {
  readonly #native: NativeBpfMap;

  /** @internal Use {@link BpfMap.openPinned} or {@link BpfObject.map}. */
  constructor(native: NativeBpfMap) {
    this.#native = native;
  }

  /** Opens a map pinned in bpffs. BpfError ENOENT (op 'obj_get') when nothing is pinned there, EINVAL when it is not a map. */
  static openPinned(path: string): BpfMap {
    return new BpfMap(call(() => loadAddon().BpfMap.openPinned(path)));
  }

  /** The fd (owned by this handle). */
  get fd(): number {
    return this.#native.fd;
  }

  get name(): string {
    return this.#native.name;
  }

  get closed(): boolean {
    return this.#native.closed;
  }

  info(): MapInfo {
    return this.#native.info();
  }

  /** The value for key, or null when absent. */
  lookup(key: Buffer): Buffer | null {
    return call(() => this.#native.lookup(key));
  }

  /** Writes key → value. `flags`: {@link MapUpdateFlags}, default ANY. */
  update(key: Buffer, value: Buffer, flags: number = MapUpdateFlags.ANY): void {
    call(() => this.#native.update(key, value, flags));
  }

  /** Deletes key; false when it was absent. */
  delete(key: Buffer): boolean {
    return call(() => this.#native.delete(key));
  }

  /** The key after `key` (the first key for null), or null at the end. */
  nextKey(key: Buffer | null): Buffer | null {
    return call(() => this.#native.nextKey(key));
  }

  /**
   * All keys, in the kernel's iteration order. A concurrent delete can make a hash map restart
   * its iteration, so the walk is bounded by 2 × maxEntries steps and may then repeat keys.
   */
  keys(): Buffer[] {
    return call(() => this.#native.keys());
  }

  /** [key, value] pairs; keys deleted between the walk and the lookup are left out. */
  entries(): Array<[Buffer, Buffer]> {
    const out: Array<[Buffer, Buffer]> = [];
    for (const key of this.keys()) {
      const value = this.lookup(key);
      if (value !== null) out.push([key, value]);
    }
    return out;
  }

  /**
   * Writes `count` elements: `keys` holds count × keySize bytes, `values` count × userValueSize
   * bytes, both packed. Uses BPF_MAP_UPDATE_BATCH (kernel 5.6+; the map type must implement it)
   * and falls back to one update syscall per element otherwise. Not atomic: on failure the
   * BpfError's `count` says how many elements were written before it.
   */
  updateBatch(keys: Buffer, values: Buffer, count: number, options: UpdateBatchOptions = {}): BatchUpdateResult {
    return call(() =>
      this.#native.updateBatch(keys, values, count, options.flags ?? MapUpdateFlags.ANY, options.method ?? 'auto'),
    );
  }

  /**
   * Deletes `count` keys (`keys` holds count × keySize bytes, packed) with BPF_MAP_DELETE_BATCH
   * where the map type has it, else one delete syscall per key in native code. Absent keys are
   * skipped; `count` in the result says how many were deleted. Not atomic: on failure the
   * BpfError's `count` says how many were deleted before it.
   */
  deleteBatch(keys: Buffer, count: number, options: { readonly method?: 'auto' | 'loop' } = {}): BatchUpdateResult {
    return call(() => this.#native.deleteBatch(keys, count, options.method ?? 'auto'));
  }

  /**
   * Every element in one native call: BPF_MAP_LOOKUP_BATCH where the map type has it (hash maps
   * 5.6+, LPM tries in newer kernels), else a next_key + lookup loop without JS in between.
   * Not a snapshot: concurrent writers may or may not be seen.
   */
  dump(): MapDump {
    return call(() => this.#native.dump());
  }

  /** Pins the map at `path` in bpffs (the parent directory must exist). */
  pin(path: string): void {
    call(() => this.#native.pin(path));
  }

  /** Closes the fd (idempotent). The map lives on while pinned or used by a program. */
  close(): void {
    this.#native.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Ring buffers.

/**
 * Consumer of a BPF_MAP_TYPE_RINGBUF map (kernel 5.8+): a native thread waits for records and
 * `onRecord` is called on the JS thread with a copy of each, in order. While open it keeps the
 * event loop alive (see unref()). A throwing `onRecord` becomes an uncaught exception. Call
 * close() to stop the thread; records still in the ring then stay unread.
 */
export class RingBuffer {
  readonly #native: NativeRingBuffer;

  private constructor(native: NativeRingBuffer) {
    this.#native = native;
  }

  /** Starts consuming `map` (a BpfMap or a raw map fd; the fd is duplicated, the caller keeps its own). */
  static open(map: BpfMap | number, onRecord: (record: Buffer) => void): RingBuffer {
    const native = loadAddon();
    const fd = typeof map === 'number' ? map : map.fd;
    return new RingBuffer(call(() => new native.RingBuffer(fd, onRecord)));
  }

  /** Records handed to JS so far. */
  get records(): number {
    return this.#native.records;
  }

  get closed(): boolean {
    return this.#native.closed;
  }

  /** Let the process exit while this consumer is open. */
  unref(): this {
    this.#native.unref();
    return this;
  }

  ref(): this {
    this.#native.ref();
    return this;
  }

  /** Stops and joins the consumer thread and releases the ring (idempotent). */
  close(): void {
    this.#native.close();
  }
}

// ---------------------------------------------------------------------------------------------
// tc (clsact) attachment.

export type TcDirection = 'ingress' | 'egress';

/** Which device: by index or name, optionally inside another network namespace. */
export interface TcDeviceOptions {
  /** Interface index in `netns` (or the caller's namespace). One of ifindex and ifname is required. */
  readonly ifindex?: number;
  readonly ifname?: string;
  /**
   * Network namespace: a name under /run/netns (as `ip netns` makes) or a path such as
   * /proc/<pid>/ns/net. The calling thread enters it for the duration of the call. Default: the
   * caller's namespace.
   */
  readonly netns?: string;
}

export interface TcFilterOptions extends TcDeviceOptions {
  readonly direction: TcDirection;
  /** tc filter priority, 1..65535. Default 1. */
  readonly priority?: number;
  /** tc filter handle, non-zero. Default 1. */
  readonly handle?: number;
}

export interface AttachTcOptions extends TcFilterOptions {
  /** A program fd, a ProgramInfo, or an object and the name of one of its programs. */
  readonly program: number | ProgramInfo | { readonly object: BpfObject; readonly name: string };
  /** Replace a filter at the same priority/handle atomically (BPF_TC_F_REPLACE). Default true; false fails with EEXIST instead. */
  readonly replace?: boolean;
}

export interface TcAttachment {
  readonly ifindex: number;
  readonly direction: TcDirection;
  readonly priority: number;
  readonly handle: number;
  /** Kernel id of the attached program. */
  readonly programId: number;
  /** The kernel's name of that program: its first 15 characters (absent when it cannot be read). */
  readonly programName?: string;
}

function programFd(program: AttachTcOptions['program']): number {
  if (typeof program === 'number') return program;
  if ('fd' in program) return program.fd;
  return program.object.program(program.name).fd;
}

function nativeTarget(options: TcDeviceOptions & { direction?: string; priority?: number; handle?: number }): NativeTcTarget {
  const target: NativeTcTarget = {};
  if (options.ifindex !== undefined) target.ifindex = options.ifindex;
  if (options.ifname !== undefined) target.ifname = options.ifname;
  if (options.netns !== undefined) target.netns = options.netns;
  if (options.direction !== undefined) target.direction = options.direction;
  if (options.priority !== undefined) target.priority = options.priority;
  if (options.handle !== undefined) target.handle = options.handle;
  return target;
}

/**
 * Attaches a sched_cls program as a direct-action tc filter on the device's clsact hook
 * (created when missing). With `replace` (default) a program already at this priority/handle is
 * swapped atomically: every packet sees either the old or the new program. The filter stays
 * after this process exits: call detachTc() (or delete the device) to remove it.
 */
export function attachTc(options: AttachTcOptions): TcAttachment {
  const fd = programFd(options.program);
  return call(() =>
    loadAddon().attachTc({ ...nativeTarget(options), programFd: fd, replace: options.replace ?? true }),
  );
}

/** Removes the filter at priority/handle; false when none was attached. */
export function detachTc(options: TcFilterOptions): boolean {
  return call(() => loadAddon().detachTc(nativeTarget(options)));
}

/** What is attached at priority/handle, or null. */
export function queryTc(options: TcFilterOptions): TcAttachment | null {
  return call(() => loadAddon().queryTc(nativeTarget(options)));
}

/**
 * Removes the clsact hook of one direction, or with 'both' (default) the clsact qdisc with
 * every filter on it. False when there was none.
 */
export function destroyTcHook(options: TcDeviceOptions & { readonly direction?: TcDirection | 'both' }): boolean {
  return call(() => loadAddon().destroyTcHook(nativeTarget(options)));
}

/** Interface index of `ifname` in `netns` (default: the caller's namespace). BpfError ENODEV when absent. */
export function ifindexOf(ifname: string, netns?: string): number {
  return call(() => loadAddon().ifindex(ifname, netns));
}

// ---------------------------------------------------------------------------------------------
// bpffs.

/** True when `path` is the root or inside of a mounted bpffs. */
export function isBpffs(path: string = BPFFS_MOUNT_POINT): boolean {
  try {
    return statfsSync(path).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/**
 * Mounts bpffs at `mountPoint` (default /sys/fs/bpf) unless one is mounted there already.
 * Returns whether it mounted. Needs root (CAP_SYS_ADMIN); BpfError EPERM (op 'mount_bpffs')
 * otherwise.
 */
export async function ensureBpffs(mountPoint: string = BPFFS_MOUNT_POINT): Promise<boolean> {
  const target = resolve(mountPoint);
  if (isBpffs(target)) return false;
  if (process.getuid?.() !== 0) {
    throw new BpfError({ op: 'mount_bpffs', errno: 1, message: `mount_bpffs ${target}: Operation not permitted (needs root)` });
  }
  mkdirSync(target, { recursive: true });
  try {
    await execFileAsync('mount', ['-t', 'bpf', 'bpf', target]);
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
    throw new BpfError({ op: 'mount_bpffs', errno: 5, message: `mount_bpffs ${target}: ${stderr}`, cause: err });
  }
  if (!isBpffs(target)) {
    throw new BpfError({ op: 'mount_bpffs', errno: 5, message: `mount_bpffs ${target}: mounted, but statfs does not report bpffs` });
  }
  return true;
}
