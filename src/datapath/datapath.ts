/**
 * The agent-facing datapath of one node: compiles and loads the programs, pins their maps under
 * the node's pin dir (sized at load, migrated when a pinned map has another size), sets up the
 * VXLAN device, attaches programs, and writes the maps as deltas (see {@link Datapath}).
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { BPF_PIN_ROOT } from '../defaults.js';
import { ip } from '../util/exec.js';
import { ValidationError } from '../util/errors.js';
import { ROOT } from '../util/self.js';
import { BpfMap, BpfObject, RingBuffer, attachTc, ensureBpffs, ifindexOf, queryTc, type TcDirection } from './addon.js';
import {
  ConfigFlags,
  Direction,
  MapNames,
  ProgramNames,
  RoutingMode,
  backendInfoCodec,
  backendKeyCodec,
  configCodec,
  endpointInfoCodec,
  endpointKeyCodec,
  flowEventCodec,
  ipcacheInfoCodec,
  ipcacheKeyCodec,
  IPCACHE_PREFIX_BASE,
  LAYOUT_VERSION,
  metricsKeyCodec,
  nodeInfoCodec,
  nodeKeyCodec,
  policyEntryCodec,
  revNatInfoCodec,
  revNatKeyCodec,
  serviceInfoCodec,
  serviceKeyCodec,
  sumPerCpuMetrics,
  type EndpointInfo,
  type FlowEvent,
  type IpcacheInfo,
  type MapName,
  type MeshConfig,
  type NodeInfo,
  type ServiceKey,
} from './codecs.js';
import { compileBpf } from './compile.js';
import { bytesOf, latin1, layoutEncoder, parseIpv4, prefixKeyEncoder, prefixKeyNumber, putLatin1, structEncoder, type Encoder } from './encoders.js';
import { BpfError } from './errors.js';
import { policyEntries, type PolicyRule } from './policy-keys.js';

export type { PolicyRule } from './policy-keys.js';

export const VXLAN_DEVICE = 'mesh_vxlan';
export const VXLAN_PORT = 8472;

/** Where a node's maps are pinned. */
export function nodePinDir(lab: string, cluster: string, node: string): string {
  return join(BPF_PIN_ROOT, lab, cluster, node);
}

/**
 * Who wants an entry: the node's own cluster (`local`) or one remote cluster (`remote:<name>`).
 * One owner's changes never touch another's entries.
 */
/**
 * Who wants an entry: `local` (this cluster's own state), `remote:<cluster>` (one peer each), or
 * `cidr` (the CIDR identities policy asks for: a prefix that is also a pod's or node's address
 * never hides that address's own identity).
 */
export type Owner = 'local' | 'cidr' | `remote:${string}`;

/** An entry found in the pinned maps at open and not claimed since, as pruneAdopted's hold callback sees it. */
export type AdoptedEntry =
  | { readonly map: typeof MapNames.ipcache; readonly prefix: string; readonly info: IpcacheInfo }
  | { readonly map: typeof MapNames.nodes; readonly ip: string; readonly info: NodeInfo };

function adoptedEntry(map: MapName, key: Buffer, value: string): AdoptedEntry {
  if (map === MapNames.nodes) return { map, ip: nodeKeyCodec.decode(key).ip, info: nodeInfoCodec.decode(buf(value)) };
  const k = ipcacheKeyCodec.decode(key);
  return { map: MapNames.ipcache, prefix: `${k.ip}/${k.prefixLen}`, info: ipcacheInfoCodec.decode(buf(value)) };
}

/** max_entries of each sized map, set at load. */
export interface MapSizes {
  readonly endpoints: number;
  readonly ipcache: number;
  readonly nodes: number;
  readonly policy: number;
  readonly services: number;
  readonly backends: number;
  readonly revnat: number;
  readonly conntrack: number;
}

/**
 * Default map sizes. ipcache: every pod of 255 clusters at a few thousand pods each (LPM trie,
 * not preallocated, so an empty slot costs nothing); backends: a 70,000-backend global service
 * plus the rest (hash, preallocated: about 64 B per slot).
 */
export const DEFAULT_MAP_SIZES: Readonly<MapSizes> = {
  endpoints: 4096,
  ipcache: 524_288,
  nodes: 16_384,
  policy: 65_536,
  services: 8192,
  backends: 131_072,
  revnat: 8192,
  conntrack: 131_072,
};

const SIZED_MAPS: ReadonlyArray<[keyof MapSizes, MapName]> = [
  ['endpoints', MapNames.endpoints],
  ['ipcache', MapNames.ipcache],
  ['nodes', MapNames.nodes],
  ['policy', MapNames.policy],
  ['services', MapNames.services],
  ['backends', MapNames.backends],
  ['revnat', MapNames.revnat],
  ['conntrack', MapNames.conntrack],
];

/** One kernel map write, as the trace hook sees it. */
export interface MapWrite {
  readonly op: 'update' | 'delete';
  readonly map: MapName;
  readonly key: Buffer;
}

export interface DatapathOptions {
  /** bpffs directory for this node's maps (see nodePinDir). */
  readonly pinDir: string;
  readonly nodeIp: string;
  readonly nodeId: number;
  readonly clusterId: number;
  readonly routing: 'tunnel' | 'native' | 'hybrid';
  /** Underlay device; default eth0. */
  readonly netdev?: string;
  /** Compiled-object cache; default <repo>/dist/bpf-cache. */
  readonly cacheDir?: string;
  /**
   * Config flags (ConfigFlags); default ConfigFlags.noFlows: no flow events until someone
   * subscribes (setFlowEvents), since a consumer of an event per packet costs real throughput.
   */
  readonly configFlags?: number;
  /** Map sizes; each missing one from {@link DEFAULT_MAP_SIZES}. */
  readonly sizes?: Partial<MapSizes>;
  /**
   * Called for every kernel map write of the managed maps, in the order written (after the
   * syscall for batched writes). For tests and debugging; default none.
   */
  readonly trace?: (write: MapWrite) => void;
}

export interface WriteError {
  readonly map: MapName;
  readonly op: 'update' | 'delete';
  readonly key: Buffer;
  readonly error: Error;
}

export interface SyncResult {
  /** Entries created or replaced. */
  readonly updated: number;
  /** Entries removed. */
  readonly deleted: number;
  /** Writes that failed; absent when every write succeeded. Each stays pending and is retried by the next flush. */
  readonly errors?: readonly WriteError[];
}

/** A pinned map that open() replaced because its size (or type, key or value) changed. */
export interface MapMigration {
  readonly map: MapName;
  readonly fromMaxEntries: number;
  readonly toMaxEntries: number;
  /** Entries copied into the new map (0 when the layouts differ: the owners state them again). */
  readonly copied: number;
  /** Devices whose programs were replaced so that they use the new map. */
  readonly reattached: readonly string[];
}

export interface ServiceBackend {
  readonly ip: string;
  readonly port: number;
  readonly clusterId?: number;
}

const SOURCES = ['from-container', 'to-container', 'from-overlay', 'from-netdev'] as const;
type Source = (typeof SOURCES)[number];

/** Compile every program (cached by content hash); returns object paths by source name. */
export async function compilePrograms(cacheDir = join(ROOT, 'dist', 'bpf-cache')): Promise<Record<Source, string>> {
  const out = {} as Record<Source, string>;
  for (const s of SOURCES) {
    out[s] = await compileBpf({ source: join(ROOT, 'bpf', `${s}.c`), cacheDir, includeDirs: [join(ROOT, 'bpf')] });
  }
  return out;
}

/** Upserts go in this order (what an entry refers to is written before it); deletes in the reverse. */
const WRITE_ORDER: readonly MapName[] = [
  MapNames.backends,
  MapNames.revnat,
  MapNames.policy,
  MapNames.nodes,
  MapNames.ipcache,
  MapNames.endpoints,
  MapNames.services,
];

/** Below this many writes to one map in one flush, single syscalls; from it on, one batch call. */
const BATCH_MIN = 8;

const OWNER_RE = /^(cidr|remote:[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?)$/;

/** 'local' first, then remote owners by name, then 'cidr'. */
function ownerBefore(a: Owner, b: Owner): boolean {
  if (a === b) return false;
  if (a === 'local') return true;
  if (b === 'local') return false;
  if (a === 'cidr') return false;
  if (b === 'cidr') return true;
  return a < b;
}

// Keys and values are kept as latin1 strings of their bytes: one compact string per entry instead
// of a Buffer object, compared with ===, and written into packed batch buffers without copies.
const str = latin1;
const buf = bytesOf;

/**
 * A key as the shadow holds it: the latin1 string of its bytes, or, in the ipcache, a number for
 * the usual form (see {@link ipcacheKeys}), which costs less to make, hash and keep.
 */
type Key = string | number;

/** How a map's keys are held: written into a buffer, as bytes, and read back from a dump. */
interface KeyForm {
  put(key: Key, b: Buffer, offset: number): void;
  bytes(key: Key): Buffer;
  from(b: Buffer, offset: number, size: number): Key;
}

const latin1Keys: KeyForm = {
  put: (k, b, o) => putLatin1(k as string, b, o),
  bytes: (k) => buf(k as string),
  from: (b, o, size) => b.toString('latin1', o, o + size),
};

/** One key of one map: what the kernel holds and who wants what. */
class Entry {
  /** What the kernel holds (adopting dump, then our writes); undefined = absent. */
  realized: string | undefined = undefined;
  /** The first claim in precedence: the value the kernel should hold. */
  owner: Owner | undefined = undefined;
  value: string | undefined = undefined;
  /** Further claims, in precedence order. */
  rest: Array<{ owner: Owner; value: string }> | undefined = undefined;
  /** Queued for the next flush. */
  pending = false;
  /** Found at open and not claimed since: kept until pruneAdopted(). */
  adopted = false;
  /** Repair generation that last saw it in the kernel. */
  seen = 0;
  constructor(readonly key: Key) {}
}

/**
 * One managed map: an Entry per key (realized value and owners' claims) and the entries whose
 * wanted value may differ from the realized one. Remote owners also keep an index of their keys,
 * so clearing one costs its own entries; `local` is found by scanning (it is never cleared in
 * normal operation).
 */
class MapState {
  entries = new Map<Key, Entry>();
  pending: Entry[] = [];
  readonly remoteKeys = new Map<Owner, Set<Key>>();
  private deadCount = 0;
  /** Entries the kernel holds (per the shadow). */
  held = 0;
  readonly keySize: number;

  constructor(
    readonly name: MapName,
    readonly map: BpfMap,
    /** Whether two values are the same for writing purposes (policy: counters ignored). */
    readonly same: (a: string, b: string) => boolean = (a, b) => a === b,
    readonly keys: KeyForm = latin1Keys,
  ) {
    this.keySize = map.info().keySize;
  }

  mark(e: Entry): void {
    if (e.pending) return;
    e.pending = true;
    this.pending.push(e);
  }

  want(owner: Owner, key: Key, value: string): void {
    let e = this.entries.get(key);
    if (e === undefined) {
      e = new Entry(key);
      this.entries.set(key, e);
    }
    if (e.owner === owner) {
      if (e.value === value) return;
      e.value = value;
    } else if (e.owner === undefined) {
      e.owner = owner;
      e.value = value;
      e.adopted = false;
      if (owner !== 'local') this.index(owner, key);
    } else {
      const i = e.rest ? e.rest.findIndex((c) => c.owner === owner) : -1;
      if (i >= 0) {
        // A lower claim changed: the kernel's value does not.
        e.rest![i].value = value;
        return;
      }
      if (owner !== 'local') this.index(owner, key);
      e.rest ??= [];
      if (ownerBefore(owner, e.owner)) {
        e.rest.unshift({ owner: e.owner, value: e.value! });
        e.owner = owner;
        e.value = value;
      } else {
        let j = 0;
        while (j < e.rest.length && ownerBefore(e.rest[j].owner, owner)) j++;
        e.rest.splice(j, 0, { owner, value });
        return;
      }
    }
    this.mark(e);
  }

  unwant(owner: Owner, key: Key): void {
    const e = this.entries.get(key);
    if (e !== undefined) this.release(e, owner);
  }

  private release(e: Entry, owner: Owner): void {
    if (e.owner === owner) {
      const next = e.rest?.shift();
      if (next) {
        e.owner = next.owner;
        e.value = next.value;
        if (e.rest!.length === 0) e.rest = undefined;
      } else {
        e.owner = undefined;
        e.value = undefined;
      }
      if (owner !== 'local') this.remoteKeys.get(owner)?.delete(e.key);
      this.mark(e);
    } else if (e.rest) {
      const i = e.rest.findIndex((c) => c.owner === owner);
      if (i < 0) return;
      e.rest.splice(i, 1);
      if (e.rest.length === 0) e.rest = undefined;
      if (owner !== 'local') this.remoteKeys.get(owner)?.delete(e.key);
    } else if (e.owner === undefined && e.adopted) {
      // Found at open and never claimed: an owner says it is gone, so it goes.
      e.adopted = false;
      this.mark(e);
    }
  }

  /**
   * An entry nobody wants and the kernel does not hold stays in `entries` until the end of the
   * flush (a key that comes back reuses it); then, once such entries outnumber the live ones, the
   * map is rebuilt from the live ones in one pass instead of shrinking entry by entry.
   */
  dead(): void {
    this.deadCount++;
  }

  sweep(): void {
    if (this.deadCount < 4096 || this.deadCount * 2 < this.entries.size) return;
    const live = new Map<Key, Entry>();
    for (const [k, e] of this.entries) if (e.owner !== undefined || e.realized !== undefined || e.pending || e.adopted) live.set(k, e);
    this.entries = live;
    this.deadCount = 0;
  }

  private index(owner: Owner, key: Key): void {
    let set = this.remoteKeys.get(owner);
    if (!set) {
      set = new Set();
      this.remoteKeys.set(owner, set);
    }
    set.add(key);
  }

  /** Keys that `owner` claims. */
  keysOf(owner: Owner): Key[] {
    if (owner !== 'local') return [...(this.remoteKeys.get(owner) ?? [])];
    const out: Key[] = [];
    for (const e of this.entries.values()) if (e.owner === 'local' || e.rest?.some((c) => c.owner === 'local')) out.push(e.key);
    return out;
  }

  clearOwner(owner: Owner): void {
    if (owner === 'local') {
      for (const e of this.entries.values()) if (e.owner === 'local' || e.rest !== undefined) this.release(e, owner);
    } else {
      for (const k of this.keysOf(owner)) this.unwant(owner, k);
    }
    this.remoteKeys.delete(owner);
  }

  /** Entries that differ from what the kernel should hold, taking them off the queue. */
  takeDeltas(): { ups: Entry[]; dels: Entry[] } {
    const list = this.pending;
    this.pending = [];
    const ups: Entry[] = [];
    const dels: Entry[] = [];
    for (const e of list) {
      e.pending = false;
      const want = e.value;
      const have = e.realized;
      if (want === undefined) {
        if (have !== undefined) dels.push(e);
        else if (!e.adopted) this.dead();
      } else if (have === undefined || (want !== have && !this.same(want, have))) {
        ups.push(e);
      }
    }
    return { ups, dels };
  }
}

/** Policy values carry counters the datapath bumps: compare them with every u64 (bigint) field zeroed. */
function samePolicyValue(a: string, b: string): boolean {
  if (a === b) return true;
  const norm = (s: string): Buffer => {
    const v = policyEntryCodec.decode(buf(s)) as unknown as Record<string, unknown>;
    for (const k of Object.keys(v)) if (typeof v[k] === 'bigint') v[k] = 0n;
    return policyEntryCodec.encode(v as never);
  };
  return norm(a).equals(norm(b));
}

interface ServiceState {
  readonly id: number;
  /** Backend value (latin1) of slot i + 1. */
  slots: string[];
}

/**
 * The datapath of one node and the only writer of its maps.
 *
 * **Desired state in layers.** Callers state what they want with the upsert and delete calls;
 * nothing reaches the kernel until {@link flush}. ipcache and node entries belong to an
 * {@link Owner}: each owner has a layer of its own, so a remote cluster's entries never replace or
 * remove local ones. When several owners want the same key the kernel gets the value of the first
 * in precedence (`local`, then remote owners by name); when that owner lets go, the next owner's
 * value is written. Endpoints, policy and services are `local`. {@link clearOwner} forgets an
 * owner's whole layer (a disconnected peer) and touches no other layer.
 *
 * **Realized shadow and deltas.** open() dumps every managed map once into a shadow of what the
 * kernel holds; afterwards the shadow follows our own writes and flush() never reads a map. A
 * flush costs work proportional to the keys changed since the last flush, not to map sizes: a
 * restarted agent that states the same wanted state writes 0 entries ({@link writes} counts).
 * Entries adopted at open that nobody claims stay until {@link pruneAdopted}, so a restarting
 * agent can state its owners one after another without traffic gaps.
 *
 * **Order.** One flush writes upserts first, in dependency order: backends, rev-NAT, policy rules,
 * nodes, ipcache, endpoints (whose flags turn policy on, after their rules), services (the count
 * after its slots); then deletes in the reverse order (services first, backends last), so a
 * shrinking service publishes its smaller count before its last slots go. A policy rule whose
 * value differs only in its counters is not rewritten. Large deltas use batch syscalls.
 *
 * **Errors.** A write that fails is reported in {@link SyncResult.errors}, stays pending and is
 * retried by the next flush; the other writes go on (one full map does not stop the rest). A
 * failed policy rule fails closed: its endpoint denies what that rule would have allowed.
 *
 * **Drift.** Only {@link repair} reads the maps again: a full dump compared with the shadow,
 * rewriting what differs. Call it rarely (minutes).
 *
 * **Sizes.** Maps get {@link MapSizes} at load. A pinned map of another size (or type, key or
 * value size) is migrated: the old pin is removed while its fd is held, the new map is created
 * and pinned, entries are copied when the layouts match, and every device running our programs on
 * the old map gets the new programs (atomic replace). What the old programs write between the
 * copy and the swap (new conntrack entries, counters) is not carried over. See {@link migrations}.
 *
 * Needs root (CAP_BPF, CAP_NET_ADMIN) in the node's network namespace; bpffs is mounted when
 * missing. Call close() to release fds: attached programs and pinned maps stay, so traffic keeps
 * flowing while the agent is away.
 */
export class Datapath {
  private readonly maps = new Map<string, BpfMap>();
  private readonly states = new Map<MapName, MapState>();
  private readonly objects: BpfObject[] = [];
  private readonly rings: RingBuffer[] = [];
  private readonly attachedLxc = new Map<string, number>();
  /** Desired services by latin1 service key. */
  private readonly services_ = new Map<string, ServiceState>();
  /** Rev-NAT ids the desired services hold, and those the realized services map holds. */
  private readonly desiredIds = new Map<number, string>();
  private readonly realizedIds = new Map<number, string>();
  /** Slot layouts found at open, so a service stated again keeps its slots. */
  private readonly slotHints = new Map<string, string[]>();
  private nextIdHint = 1;
  /** Policy keys by endpoint id and direction. */
  private readonly policyKeys = new Map<number, Map<number, Set<string>>>();
  private readonly oldMaps: BpfMap[] = [];
  private config: MeshConfig | null = null;
  /** Adopted entries pruneAdopted() kept, by tag, until releaseAdopted(tag). */
  private readonly held = new Map<string, Array<[MapState, Entry]>>();
  /** Until pruneAdopted(): entries found in the maps and not claimed are kept. */
  private adopting = true;
  private repairs = 0;
  private _migrations: MapMigration[] = [];

  /** Cumulative kernel map writes by this instance (managed maps only). */
  readonly writes = { updates: 0, deletes: 0 };
  /** Full reads of maps: dumps done (open and repair) and the entries they returned. */
  readonly reads = { dumps: 0, entries: 0 };
  /** The sizes the maps were loaded with. */
  readonly sizes: Readonly<MapSizes>;

  private constructor(readonly opts: DatapathOptions) {
    this.sizes = resolveSizes(opts.sizes);
  }

  /** Pinned maps that open() replaced (another size, type, key or value size), with what it copied. */
  get migrations(): readonly MapMigration[] {
    return this._migrations;
  }

  /**
   * Compile, load (reusing pinned maps, migrating those of another size), set up the VXLAN device,
   * attach the node-level programs, and dump every managed map once into the realized shadow.
   */
  static async open(opts: DatapathOptions): Promise<Datapath> {
    await ensureBpffs();
    const dp = new Datapath(opts);
    try {
      const objs = await compilePrograms(opts.cacheDir);
      dropPinsOfOtherLayout(opts.pinDir);
      const old = await dp.loadObjects(objs);
      mkdirSync(layoutMarker(opts.pinDir), { recursive: true });
      for (const name of Object.values(MapNames)) dp.maps.set(name, BpfMap.openPinned(join(opts.pinDir, name)));
      const copied = dp.copyMigrated(old);
      await dp.setupDevices();
      if (old.length > 0) {
        const reattached = dp.reattachAfterMigration();
        dp._migrations = old.map((o, i) => ({ map: o.name, fromMaxEntries: o.maxEntries, toMaxEntries: dp.map(o.name).info().maxEntries, copied: copied[i], reattached }));
        for (const m of dp.oldMaps.splice(0)) m.close();
      }
      for (const name of WRITE_ORDER) {
        const st = new MapState(name, dp.map(name), name === MapNames.policy ? samePolicyValue : undefined, name === MapNames.ipcache ? ipcacheKeys : undefined);
        dp.states.set(name, st);
        dp.adopt(st);
      }
      dp.adoptServices();
    } catch (err) {
      dp.close();
      throw err;
    }
    return dp;
  }

  /**
   * Loads the four objects with the configured sizes. A pinned map libbpf cannot reuse (another
   * size, type, key or value) is unpinned while we keep its fd and its entries, and the load is
   * retried; returns those old maps for copying.
   */
  private async loadObjects(objs: Record<Source, string>): Promise<Array<{ name: MapName; map: BpfMap; maxEntries: number }>> {
    const maxEntries: Record<string, number> = {};
    for (const [k, name] of SIZED_MAPS) maxEntries[name] = this.sizes[k];
    const old: Array<{ name: MapName; map: BpfMap; maxEntries: number }> = [];
    for (const s of SOURCES) {
      for (let attempt = 0; ; attempt++) {
        try {
          this.objects.push(await BpfObject.load(objs[s], { pinRoot: this.opts.pinDir, maxEntries }));
          break;
        } catch (err) {
          // Only a pinned map that libbpf refused to reuse is migrated; any other failure stands.
          const refused = err instanceof BpfError && err.op === 'load' && (err.libbpfLog ?? '').includes("couldn't reuse pinned map");
          const name = refused ? ((err as BpfError).map as MapName | undefined) : undefined;
          if (!name || attempt > Object.keys(MapNames).length || old.some((o) => o.name === name)) throw err;
          const pin = join(this.opts.pinDir, name);
          let m: BpfMap;
          try {
            m = BpfMap.openPinned(pin);
          } catch {
            throw err; // nothing pinned there: a real creation failure
          }
          this.oldMaps.push(m);
          old.push({ name, map: m, maxEntries: m.info().maxEntries });
          rmSync(pin, { force: true });
        }
      }
    }
    return old;
  }

  /** Copies each migrated map's entries into its successor when type, key and value sizes match. */
  private copyMigrated(old: ReadonlyArray<{ name: MapName; map: BpfMap }>): number[] {
    return old.map(({ name, map }) => {
      const from = map.info();
      const to = this.map(name).info();
      // Keyless maps (the flow ring buffer) have nothing to copy.
      if (from.keySize === 0 || from.typeId !== to.typeId || from.keySize !== to.keySize || from.userValueSize !== to.userValueSize) return 0;
      try {
        const d = map.dump();
        if (d.count === 0) return 0;
        return to.maxEntries >= d.count ? this.map(name).updateBatch(d.keys, d.values, d.count).count : this.copyWhatFits(name, d);
      } catch (err) {
        return err instanceof BpfError && err.count !== undefined ? err.count : 0;
      }
    });
  }

  private copyWhatFits(name: MapName, d: { keys: Buffer; values: Buffer; count: number }): number {
    const m = this.map(name);
    const info = m.info();
    const n = Math.min(d.count, info.maxEntries);
    return m.updateBatch(d.keys.subarray(0, n * info.keySize), d.values.subarray(0, n * info.userValueSize), n).count;
  }

  /** Devices other than the node-level ones that still run the old from-/to-container programs get the new ones. */
  private reattachAfterMigration(): string[] {
    const netdev = this.opts.netdev ?? 'eth0';
    const out: string[] = [];
    let devices: string[] = [];
    try {
      // procfs answers for the caller's network namespace; /sys/class/net for the one sysfs was mounted in.
      devices = readFileSync('/proc/self/net/dev', 'utf8')
        .split('\n')
        .slice(2)
        .map((l) => l.split(':')[0].trim())
        .filter((d) => d !== '');
    } catch {
      return out;
    }
    const hooks: Array<[TcDirection, Source]> = [
      ['ingress', 'from-container'],
      ['egress', 'to-container'],
    ];
    for (const dev of devices.sort()) {
      if (dev === netdev || dev === VXLAN_DEVICE || dev === 'lo') continue;
      let replaced = false;
      for (const [direction, src] of hooks) {
        let ifindex: number;
        try {
          ifindex = ifindexOf(dev);
          const cur = queryTc({ ifindex, direction });
          if (!cur || cur.programName !== ProgramNames[src].slice(0, 15)) continue;
          if (cur.programId === this.object(src).program(ProgramNames[src]).id) continue;
          attachTc({ ifindex, direction, program: { object: this.object(src), name: ProgramNames[src] } });
          replaced = true;
        } catch {
          // the device went away meanwhile
        }
      }
      if (replaced) out.push(dev);
    }
    return out;
  }

  /** The adopting dump: the shadow starts as what the kernel holds. */
  private adopt(st: MapState): void {
    const d = st.map.dump();
    this.reads.dumps++;
    this.reads.entries += d.count;
    const ks = d.keys.length / Math.max(d.count, 1);
    const vs = d.values.length / Math.max(d.count, 1);
    for (let i = 0; i < d.count; i++) {
      const e = new Entry(st.keys.from(d.keys, i * ks, ks));
      e.realized = d.values.toString('latin1', i * vs, (i + 1) * vs);
      st.held++;
      e.adopted = true;
      st.entries.set(e.key, e);
    }
  }

  /** Keep the rev-NAT ids and slot layouts services already have in the pinned maps (conntrack refers to the ids). */
  private adoptServices(): void {
    const backends = this.state(MapNames.backends).entries;
    for (const e of this.state(MapNames.services).entries.values()) {
      if (e.realized === undefined) continue;
      const info = serviceInfoCodec.decode(buf(e.realized));
      this.realizedIds.set(info.revNatId, e.key as string);
      const slots: string[] = [];
      for (let slot = 1; slot <= info.count; slot++) slots.push(backends.get(enc.backendKey({ revNatId: info.revNatId, slot }))?.realized ?? '');
      this.slotHints.set(e.key as string, slots);
    }
  }

  private object(source: Source): BpfObject {
    return this.objects[SOURCES.indexOf(source)];
  }

  private async setupDevices(): Promise<void> {
    const netdev = this.opts.netdev ?? 'eth0';
    const have = await ip(['link', 'show', 'dev', VXLAN_DEVICE], undefined, false);
    if (have.exitCode !== 0) {
      await ip(['link', 'add', VXLAN_DEVICE, 'type', 'vxlan', 'external', 'dstport', String(VXLAN_PORT)]);
    }
    await ip(['link', 'set', VXLAN_DEVICE, 'up']);
    const vxlanIfindex = ifindexOf(VXLAN_DEVICE);
    const netdevIfindex = ifindexOf(netdev);
    const cfg: MeshConfig = {
      nodeIp: this.opts.nodeIp,
      nodeId: this.opts.nodeId,
      vxlanIfindex,
      clusterId: this.opts.clusterId,
      routingMode: this.opts.routing === 'native' ? RoutingMode.Native : this.opts.routing === 'hybrid' ? RoutingMode.Hybrid : RoutingMode.Tunnel,
      flags: this.opts.configFlags ?? ConfigFlags.noFlows,
      netdevIfindex,
    };
    this.config = cfg;
    this.map(MapNames.config).update(Buffer.alloc(4), configCodec.encode(cfg));
    attachTc({ ifindex: vxlanIfindex, direction: 'ingress', program: { object: this.object('from-overlay'), name: ProgramNames['from-overlay'] } });
    attachTc({ ifindex: netdevIfindex, direction: 'ingress', program: { object: this.object('from-netdev'), name: ProgramNames['from-netdev'] } });
  }

  private map(name: string): BpfMap {
    const m = this.maps.get(name);
    if (!m) throw new Error(`map ${name} is not open`);
    return m;
  }

  private state(name: MapName): MapState {
    return this.states.get(name)!;
  }

  /** Attach from-container (ingress) and to-container (egress) to a pod's lxc device (atomic replace). */
  attachEndpoint(lxc: string): number {
    const ifindex = ifindexOf(lxc);
    const progs: Array<[TcDirection, Source]> = [
      ['ingress', 'from-container'],
      ['egress', 'to-container'],
    ];
    for (const [direction, src] of progs) {
      attachTc({ ifindex, direction, program: { object: this.object(src), name: ProgramNames[src] } });
    }
    this.attachedLxc.set(lxc, ifindex);
    return ifindex;
  }

  upsertEndpoint(ipAddr: string, info: EndpointInfo): void {
    this.state(MapNames.endpoints).want('local', enc.endpointKey({ ip: ipAddr, clusterId: 0 }), enc.endpointInfo(info));
  }

  deleteEndpoint(ipAddr: string): void {
    this.state(MapNames.endpoints).unwant('local', enc.endpointKey({ ip: ipAddr, clusterId: 0 }));
  }

  /** `prefix` as a.b.c.d/n (or a bare address for /32), host bits zero. */
  upsertIpcache(prefix: string, info: IpcacheInfo, owner: Owner = 'local'): void {
    this.state(MapNames.ipcache).want(checkOwner(owner), ipcacheKey(prefix), enc.ipcacheInfo(info));
  }

  deleteIpcache(prefix: string, owner: Owner = 'local'): void {
    this.state(MapNames.ipcache).unwant(checkOwner(owner), ipcacheKey(prefix));
  }

  upsertNode(nodeIp: string, info: NodeInfo, owner: Owner = 'local'): void {
    this.state(MapNames.nodes).want(checkOwner(owner), enc.nodeKey({ ip: nodeIp }), enc.nodeInfo(info));
  }

  deleteNode(nodeIp: string, owner: Owner = 'local'): void {
    this.state(MapNames.nodes).unwant(checkOwner(owner), enc.nodeKey({ ip: nodeIp }));
  }

  /** Replace an endpoint's rules in one direction (entries from policyEntries()). */
  setPolicy(endpointId: number, direction: Direction.Ingress | Direction.Egress, rules: readonly PolicyRule[]): void {
    const st = this.state(MapNames.policy);
    let byDir = this.policyKeys.get(endpointId);
    if (!byDir) {
      byDir = new Map();
      this.policyKeys.set(endpointId, byDir);
    }
    const before = byDir.get(direction) ?? new Set<string>();
    const after = new Set<string>();
    for (const e of policyEntries(endpointId, direction, rules)) {
      const k = str(e.key);
      after.add(k);
      st.want('local', k, str(e.value));
    }
    for (const k of before) if (!after.has(k)) st.unwant('local', k);
    if (after.size > 0) byDir.set(direction, after);
    else byDir.delete(direction);
    if (byDir.size === 0) this.policyKeys.delete(endpointId);
  }

  /** Drop every rule of an endpoint (both directions). */
  deletePolicy(endpointId: number): void {
    const st = this.state(MapNames.policy);
    for (const keys of this.policyKeys.get(endpointId)?.values() ?? []) for (const k of keys) st.unwant('local', k);
    this.policyKeys.delete(endpointId);
  }

  /**
   * A ClusterIP frontend and its backends (replaces any earlier backends). Backends keep their
   * slots across calls: a change writes the slots that changed, and a removed backend's slot is
   * filled from the end, so the service's count only shrinks by the number removed.
   */
  upsertService(key: ServiceKey, backends: readonly ServiceBackend[], flags = 0): void {
    const sk = enc.serviceKey(key);
    const values = backends.map((b) => enc.backendInfo({ ip: b.ip, port: b.port, proto: key.proto, flags: 0, clusterId: b.clusterId ?? this.opts.clusterId }));
    let svc = this.services_.get(sk);
    if (!svc) {
      const id = this.serviceId(sk);
      svc = { id, slots: this.slotHints.get(sk) ?? [] };
      this.slotHints.delete(sk);
      this.services_.set(sk, svc);
      this.desiredIds.set(id, sk);
    }
    const before = svc.slots;
    const after = assignSlots(before, values);
    const be = this.state(MapNames.backends);
    for (let i = 0; i < after.length; i++) {
      const k = enc.backendKey({ revNatId: svc.id, slot: i + 1 });
      be.want('local', k, after[i]);
    }
    for (let i = after.length; i < before.length; i++) be.unwant('local', enc.backendKey({ revNatId: svc.id, slot: i + 1 }));
    svc.slots = after;
    this.state(MapNames.services).want('local', sk, enc.serviceInfo({ count: after.length, revNatId: svc.id, flags }));
    this.state(MapNames.revnat).want('local', enc.revNatKey({ revNatId: svc.id }), enc.revNatInfo({ vip: key.vip, port: key.dport }));
  }

  deleteService(key: ServiceKey): void {
    this.dropService(enc.serviceKey(key));
  }

  private dropService(sk: string): void {
    const svc = this.services_.get(sk);
    this.state(MapNames.services).unwant('local', sk);
    if (!svc) {
      // Only found at open: its slots and rev-NAT entry go with it.
      const realized = this.state(MapNames.services).entries.get(sk)?.realized;
      if (realized === undefined) return;
      const info = serviceInfoCodec.decode(buf(realized));
      for (let slot = 1; slot <= info.count; slot++) this.state(MapNames.backends).unwant('local', enc.backendKey({ revNatId: info.revNatId, slot }));
      this.state(MapNames.revnat).unwant('local', enc.revNatKey({ revNatId: info.revNatId }));
      this.slotHints.delete(sk);
      return;
    }
    const be = this.state(MapNames.backends);
    for (let i = 0; i < svc.slots.length; i++) be.unwant('local', enc.backendKey({ revNatId: svc.id, slot: i + 1 }));
    this.state(MapNames.revnat).unwant('local', enc.revNatKey({ revNatId: svc.id }));
    this.services_.delete(sk);
    this.desiredIds.delete(svc.id);
  }

  /** The rev-NAT id of a service: the one the pinned map holds for it, else the lowest id nobody holds. */
  private serviceId(sk: string): number {
    const realized = this.state(MapNames.services).entries.get(sk)?.realized;
    if (realized !== undefined) {
      const id = serviceInfoCodec.decode(buf(realized)).revNatId;
      if (!this.desiredIds.has(id)) return id;
    }
    const max = this.sizes.revnat;
    for (let n = 0, id = this.nextIdHint; n < 0xffff; n++, id = (id % 0xffff) + 1) {
      if (!this.desiredIds.has(id) && !this.realizedIds.has(id)) {
        this.nextIdHint = (id % 0xffff) + 1;
        return id;
      }
    }
    throw new ValidationError('services', 'rev-NAT ids', `services: all 65535 rev-NAT ids are in use (revnat map holds ${max})`);
  }

  /**
   * Forget everything `owner` wants, in every map; the next flush removes those entries (or
   * writes the next owner's value where another owner wants the same key). Other owners' entries
   * are not touched. For 'local' this includes endpoints, policy and services.
   */
  clearOwner(owner: Owner): void {
    checkOwner(owner);
    if (owner === 'local') {
      for (const sk of [...this.services_.keys()]) this.dropService(sk);
      for (const id of [...this.policyKeys.keys()]) this.deletePolicy(id);
    }
    for (const st of this.states.values()) st.clearOwner(owner);
  }

  /**
   * Entries found in the pinned maps at open that no owner has stated since are deleted at the
   * next flush. Call once every owner has stated its initial state (the agent: at its first
   * full sync); until then such entries stay, so traffic keeps flowing during a restart.
   */
  /**
   * With `hold`: adopted ipcache and node entries for which it returns a tag stay until
   * releaseAdopted(tag) (a remote peer's entries until that peer has resynced).
   */
  pruneAdopted(hold?: (entry: AdoptedEntry) => string | undefined): void {
    this.adopting = false;
    for (const st of this.states.values()) {
      const holdable = hold !== undefined && (st.name === MapNames.ipcache || st.name === MapNames.nodes);
      for (const e of st.entries.values()) {
        if (!e.adopted) continue;
        if (holdable && e.owner === undefined && e.realized !== undefined) {
          const tag = hold(adoptedEntry(st.name, st.keys.bytes(e.key), e.realized));
          if (tag !== undefined) {
            let list = this.held.get(tag);
            if (!list) this.held.set(tag, (list = []));
            list.push([st, e]);
            continue;
          }
        }
        e.adopted = false;
        if (e.owner === undefined) st.mark(e);
      }
    }
  }

  /**
   * The entries pruneAdopted() held under `tag` (a remote peer: until its first sync) that no
   * owner has claimed since are deleted at the next flush; returns how many.
   */
  releaseAdopted(tag: string): number {
    const list = this.held.get(tag);
    this.held.delete(tag);
    let n = 0;
    for (const [st, e] of list ?? []) {
      if (!e.adopted) continue;
      e.adopted = false;
      if (e.owner === undefined) {
        st.mark(e);
        n++;
      }
    }
    return n;
  }

  /** Endpoint addresses currently wanted. */
  endpointIps(): string[] {
    return this.state(MapNames.endpoints).keysOf('local').map((k) => endpointKeyCodec.decode(buf(k as string)).ip);
  }

  /** Endpoint ids that have wanted policy entries. */
  policyEndpointIds(): number[] {
    return [...this.policyKeys.keys()];
  }

  /** Service keys currently wanted. */
  services(): ServiceKey[] {
    return [...this.services_.keys()].map((k) => serviceKeyCodec.decode(buf(k)));
  }

  /** Prefixes `owner` wants in the ipcache, as a.b.c.d/n. */
  ipcachePrefixes(owner: Owner = 'local'): string[] {
    const st = this.state(MapNames.ipcache);
    return st.keysOf(checkOwner(owner)).map((k) => {
      const key = ipcacheKeyCodec.decode(st.keys.bytes(k));
      return `${key.ip}/${key.prefixLen}`;
    });
  }

  /**
   * Ipcache entries as the kernel holds them (the shadow: the adopting dump plus our writes) whose
   * value passes `filter`, as a.b.c.d/n → value. A walk of the whole shadow: for start-up only.
   */
  realizedIpcache(filter: (info: IpcacheInfo) => boolean): Map<string, IpcacheInfo> {
    const out = new Map<string, IpcacheInfo>();
    const st = this.state(MapNames.ipcache);
    for (const e of st.entries.values()) {
      if (e.realized === undefined) continue;
      const info = ipcacheInfoCodec.decode(buf(e.realized));
      if (!filter(info)) continue;
      const key = ipcacheKeyCodec.decode(st.keys.bytes(e.key));
      out.set(`${key.ip}/${key.prefixLen}`, info);
    }
    return out;
  }

  /** Node addresses `owner` wants in the node map. */
  nodeIps(owner: Owner = 'local'): string[] {
    return this.state(MapNames.nodes).keysOf(checkOwner(owner)).map((k) => nodeKeyCodec.decode(buf(k as string)).ip);
  }

  /** Write only the pending deltas, in dependency order (see the class comment). Never reads a map. */
  flush(): SyncResult {
    const deltas = new Map<MapName, { ups: Entry[]; dels: Entry[] }>();
    for (const name of WRITE_ORDER) deltas.set(name, this.state(name).takeDeltas());
    const errors: WriteError[] = [];
    let updated = 0;
    let deleted = 0;
    for (const name of WRITE_ORDER) {
      const { ups } = deltas.get(name)!;
      if (ups.length > 0) updated += this.writeUpserts(this.state(name), ups, errors);
    }
    for (const name of [...WRITE_ORDER].reverse()) {
      const { dels } = deltas.get(name)!;
      if (dels.length > 0) deleted += this.writeDeletes(this.state(name), dels, errors);
    }
    for (const st of this.states.values()) st.sweep();
    return errors.length > 0 ? { updated, deleted, errors } : { updated, deleted };
  }

  /** Same as {@link flush}; kept for callers of the earlier API. */
  sync(): SyncResult {
    return this.flush();
  }

  /**
   * Slow drift repair: dump every managed map, take what differs from the shadow as the kernel's
   * truth, and flush, which rewrites entries changed or removed behind our back and deletes
   * entries nobody wants. Costs a full read of every map.
   */
  repair(): SyncResult {
    const gen = ++this.repairs;
    for (const st of this.states.values()) {
      const d = st.map.dump();
      this.reads.dumps++;
      this.reads.entries += d.count;
      const ks = d.keys.length / Math.max(d.count, 1);
      const vs = d.values.length / Math.max(d.count, 1);
      for (let i = 0; i < d.count; i++) {
        const k = st.keys.from(d.keys, i * ks, ks);
        const v = d.values.toString('latin1', i * vs, (i + 1) * vs);
        let e = st.entries.get(k);
        if (e === undefined) {
          e = new Entry(k);
          st.entries.set(k, e);
          // Written behind our back while a restart is still adopting: treat it as adopted.
          if (this.adopting) e.adopted = true;
        }
        e.seen = gen;
        const have = e.realized;
        if (have !== undefined && (have === v || st.same(have, v))) continue;
        if (have === undefined) st.held++;
        e.realized = v;
        if (!e.adopted) st.mark(e);
      }
      for (const e of st.entries.values()) {
        if (e.seen === gen || e.realized === undefined) continue;
        e.realized = undefined;
        st.held--;
        e.adopted = false;
        st.mark(e);
      }
      if (st.name === MapNames.services) this.rebuildRealizedIds();
    }
    return this.flush();
  }

  private rebuildRealizedIds(): void {
    this.realizedIds.clear();
    for (const e of this.state(MapNames.services).entries.values()) {
      if (e.realized !== undefined) this.realizedIds.set(serviceInfoCodec.decode(buf(e.realized)).revNatId, e.key as string);
    }
  }

  private writeUpserts(st: MapState, ups: Entry[], errors: WriteError[]): number {
    let done = 0;
    if (ups.length >= BATCH_MIN) {
      const ks = st.keySize;
      const vs = ups[0].value!.length;
      const kb = Buffer.allocUnsafe(ups.length * ks);
      const vb = Buffer.allocUnsafe(ups.length * vs);
      const keys = st.keys;
      for (let i = 0; i < ups.length; i++) {
        const e = ups[i];
        keys.put(e.key, kb, i * ks);
        putLatin1(e.value!, vb, i * vs);
      }
      try {
        done = st.map.updateBatch(kb, vb, ups.length).count;
      } catch (err) {
        done = err instanceof BpfError && err.count !== undefined ? err.count : 0;
      }
      if (st.name !== MapNames.services && this.opts.trace === undefined) {
        // The bulk case (a full ipcache) without the per-entry bookkeeping of services and tracing.
        let added = 0;
        for (let i = 0; i < done; i++) {
          const e = ups[i];
          if (e.realized === undefined) added++;
          e.realized = e.value;
        }
        st.held += added;
        this.writes.updates += done;
      } else {
        for (let i = 0; i < done; i++) this.realizeUpdate(st, ups[i]);
      }
    }
    let n = done;
    for (let i = done; i < ups.length; i++) {
      const e = ups[i];
      try {
        st.map.update(st.keys.bytes(e.key), buf(e.value!));
      } catch (err) {
        errors.push({ map: st.name, op: 'update', key: st.keys.bytes(e.key), error: err as Error });
        st.mark(e);
        continue;
      }
      this.realizeUpdate(st, e);
      n++;
    }
    return n;
  }

  private writeDeletes(st: MapState, dels: Entry[], errors: WriteError[]): number {
    if (dels.length >= BATCH_MIN) {
      const ks = st.keySize;
      const kb = Buffer.allocUnsafe(dels.length * ks);
      for (let i = 0; i < dels.length; i++) st.keys.put(dels[i].key, kb, i * ks);
      try {
        st.map.deleteBatch(kb, dels.length);
        for (const e of dels) this.realizeDelete(st, e);
        return dels.length;
      } catch {
        // one by one, so each failure is reported with its key (keys already gone are fine)
      }
    }
    let n = 0;
    for (const e of dels) {
      try {
        st.map.delete(st.keys.bytes(e.key));
      } catch (err) {
        errors.push({ map: st.name, op: 'delete', key: st.keys.bytes(e.key), error: err as Error });
        st.mark(e);
        continue;
      }
      this.realizeDelete(st, e);
      n++;
    }
    return n;
  }

  private realizeUpdate(st: MapState, e: Entry): void {
    if (st.name === MapNames.services) {
      if (e.realized !== undefined) this.realizedIds.delete(serviceInfoCodec.decode(buf(e.realized)).revNatId);
      this.realizedIds.set(serviceInfoCodec.decode(buf(e.value!)).revNatId, e.key as string);
    }
    if (e.realized === undefined) st.held++;
    e.realized = e.value;
    this.writes.updates++;
    this.opts.trace?.({ op: 'update', map: st.name, key: st.keys.bytes(e.key) });
  }

  private realizeDelete(st: MapState, e: Entry): void {
    if (st.name === MapNames.services && e.realized !== undefined) this.realizedIds.delete(serviceInfoCodec.decode(buf(e.realized)).revNatId);
    if (e.realized !== undefined) st.held--;
    e.realized = undefined;
    if (e.owner === undefined && !e.pending) st.dead();
    this.writes.deletes++;
    this.opts.trace?.({ op: 'delete', map: st.name, key: st.keys.bytes(e.key) });
  }

  /** Turn the datapath's flow events on or off (counters are always kept). */
  setFlowEvents(on: boolean): void {
    if (!this.config) return;
    const flags = on ? this.config.flags & ~ConfigFlags.noFlows : this.config.flags | ConfigFlags.noFlows;
    if (flags === this.config.flags) return;
    this.config = { ...this.config, flags };
    this.map(MapNames.config).update(Buffer.alloc(4), configCodec.encode(this.config));
  }

  /** Consume flow events; close the returned ring buffer to stop. */
  flows(onEvent: (ev: FlowEvent) => void): RingBuffer {
    const ring = RingBuffer.open(this.map(MapNames.flows), (rec) => onEvent(flowEventCodec.decode(rec)));
    this.rings.push(ring);
    return ring;
  }

  /** Forward/drop counters summed over CPUs. */
  metrics(): Array<{ reason: number; direction: number; packets: bigint; bytes: bigint }> {
    return this.map(MapNames.metrics)
      .entries()
      .map(([k, v]) => ({ ...metricsKeyCodec.decode(k), ...sumPerCpuMetrics(v) }))
      .sort((a, b) => a.direction - b.direction || a.reason - b.reason);
  }

  /** Entry counts of the maps the agent programs, from the realized shadow (no map reads). */
  mapFill(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, st] of this.states) out[name] = st.held;
    return out;
  }

  /** Direct access for benchmarks and tests. */
  rawMap(name: string): BpfMap {
    return this.map(name);
  }

  /** Close fds and consumers. Attached programs and pinned maps stay: traffic keeps flowing. */
  close(): void {
    for (const r of this.rings.splice(0)) if (!r.closed) r.close();
    for (const m of this.maps.values()) m.close();
    this.maps.clear();
    for (const m of this.oldMaps.splice(0)) m.close();
    for (const o of this.objects.splice(0)) o.close();
  }
}

/**
 * New slot layout for a service: backends still wanted keep their slots, new ones fill the holes
 * of removed ones, then the end; leftover holes are filled by moving backends from the end.
 */
function assignSlots(before: readonly string[], wanted: readonly string[]): string[] {
  const want = new Map<string, number>();
  for (const v of wanted) want.set(v, (want.get(v) ?? 0) + 1);
  const slots: Array<string | null> = before.map((v) => {
    const n = want.get(v);
    if (!n) return null;
    if (n === 1) want.delete(v);
    else want.set(v, n - 1);
    return v;
  });
  const add: string[] = [];
  for (const [v, n] of want) for (let i = 0; i < n; i++) add.push(v);
  let a = 0;
  for (let i = 0; i < slots.length && a < add.length; i++) if (slots[i] === null) slots[i] = add[a++];
  while (a < add.length) slots.push(add[a++]);
  for (let i = 0; i < slots.length; i++) {
    if (slots[i] !== null) continue;
    while (slots.length > i && slots[slots.length - 1] === null) slots.pop();
    if (slots.length <= i) break;
    slots[i] = slots.pop()!;
  }
  return slots as string[];
}

function resolveSizes(given: Partial<MapSizes> | undefined): MapSizes {
  const out = { ...DEFAULT_MAP_SIZES, ...given };
  for (const [k] of SIZED_MAPS) {
    const v = out[k];
    if (!Number.isInteger(v) || v < 1 || v > 0x7fffffff) {
      throw new ValidationError(`sizes.${k}`, 'positive integer', `map size sizes.${k}=${String(v)}: must be a positive integer below 2^31`);
    }
  }
  return out;
}

const checkedOwners = new Set<string>(['local']);

/** A directory in the pin dir naming the struct layout its maps were made with. */
function layoutMarker(pinDir: string): string {
  return join(pinDir, `layout-v${LAYOUT_VERSION}`);
}

/**
 * libbpf reuses a pinned map whose type and sizes match even when the layout of its values
 * changed, which would be read wrongly: pins made with another layout (no marker of this one) are
 * removed before loading, so the maps are made anew and the agent states everything again.
 */
function dropPinsOfOtherLayout(pinDir: string): void {
  if (!existsSync(pinDir) || existsSync(layoutMarker(pinDir))) return;
  for (const f of readdirSync(pinDir)) rmSync(join(pinDir, f), { recursive: true, force: true });
}

function checkOwner(owner: Owner): Owner {
  if (checkedOwners.has(owner)) return owner;
  if (typeof owner !== 'string' || !OWNER_RE.test(owner)) {
    throw new ValidationError('owner', "'local', 'cidr' or 'remote:<cluster>'", `owner ${JSON.stringify(owner)}: must be 'local', 'cidr' or 'remote:<cluster name>' (a DNS label of 1-32 characters)`);
  }
  checkedOwners.add(owner);
  return owner;
}

/** Encoders for every key and value the writer makes (see encoders.ts). */
const enc = {
  endpointKey: structEncoder(endpointKeyCodec),
  endpointInfo: structEncoder(endpointInfoCodec),
  ipcacheInfo: structEncoder(ipcacheInfoCodec),
  nodeKey: structEncoder(nodeKeyCodec),
  nodeInfo: structEncoder(nodeInfoCodec),
  serviceKey: structEncoder(serviceKeyCodec),
  serviceInfo: structEncoder(serviceInfoCodec),
  backendKey: structEncoder(backendKeyCodec),
  backendInfo: structEncoder(backendInfoCodec),
  revNatKey: structEncoder(revNatKeyCodec),
  revNatInfo: structEncoder(revNatInfoCodec),
};

interface RawIpcacheKey {
  prefixlen: number;
  clusterId: number;
  ip: string;
}

/** The ipcache key codec adds IPCACHE_PREFIX_BASE to the length; its layout holds the raw field. */
const ipcacheKeyEncoder: Encoder<RawIpcacheKey> = layoutEncoder<RawIpcacheKey>(
  ipcacheKeyCodec.layout,
  (k) => ipcacheKeyCodec.encode({ prefixLen: k.prefixlen - IPCACHE_PREFIX_BASE, clusterId: k.clusterId, ip: k.ip }),
  (k) => str(ipcacheKeyCodec.encode({ prefixLen: k.prefixlen - IPCACHE_PREFIX_BASE, clusterId: k.clusterId, ip: k.ip })),
  { prefixlen: IPCACHE_PREFIX_BASE + 24, clusterId: 7, ip: '10.1.2.0' },
);

/** The hot path's form of it (cluster id 0, address read in place); null when the layout is not that shape. */
const ipcacheKeyFast = prefixKeyEncoder(ipcacheKeyCodec.layout, 'prefixlen', 'ip', (raw, ip) =>
  ipcacheKeyCodec.encode({ prefixLen: raw - IPCACHE_PREFIX_BASE, clusterId: 0, ip }),
);

/** Ipcache keys of the form the writer makes (cluster id 0) as numbers; any other bytes (an adopted oddity) as latin1 strings. */
const ipcacheNum = prefixKeyNumber(ipcacheKeyCodec.layout, 'prefixlen', 'ip', (raw, ip) => ipcacheKeyCodec.encode({ prefixLen: raw - IPCACHE_PREFIX_BASE, clusterId: 0, ip }));

const ipcacheKeys: KeyForm =
  ipcacheNum === null
    ? latin1Keys
    : {
        put: (k, b, o) => (typeof k === 'number' ? ipcacheNum.put(k, b, o) : putLatin1(k, b, o)),
        bytes: (k) => {
          if (typeof k === 'string') return buf(k);
          const b = Buffer.alloc(ipcacheKeyCodec.layout.size);
          ipcacheNum.put(k, b, 0);
          return b;
        },
        from: (b, o, size) => ipcacheNum.from(b, o) ?? b.toString('latin1', o, o + size),
      };

function ipcacheKey(prefix: string): Key {
  const slash = prefix.indexOf('/');
  const end = slash < 0 ? prefix.length : slash;
  let len = 32;
  if (slash >= 0) {
    const digits = prefix.length - slash - 1;
    const d0 = prefix.charCodeAt(slash + 1) - 48;
    const d1 = digits === 2 ? prefix.charCodeAt(slash + 2) - 48 : 0;
    len = digits === 1 ? d0 : d0 * 10 + d1;
    if (digits < 1 || digits > 2 || d0 < 0 || d0 > 9 || d1 < 0 || d1 > 9 || len > 32) {
      throw new ValidationError('prefix', 'a.b.c.d/0-32', `ipcache prefix ${JSON.stringify(prefix)}: the length must be 0..32`);
    }
  }
  if (len < 32) {
    const n = parseIpv4(prefix, 0, end);
    const host = len === 0 ? 0xffffffff : 0xffffffff >>> len;
    if ((n & host) >>> 0 !== 0) throw new ValidationError('prefix', 'host bits zero', `ipcache prefix ${JSON.stringify(prefix)}: host bits must be zero`);
  }
  if (ipcacheNum !== null) return ipcacheNum.encode(len + IPCACHE_PREFIX_BASE, prefix, 0, end);
  if (ipcacheKeyFast !== null) return ipcacheKeyFast(len + IPCACHE_PREFIX_BASE, prefix, 0, end);
  return ipcacheKeyEncoder({ prefixlen: len + IPCACHE_PREFIX_BASE, clusterId: 0, ip: prefix.slice(0, end) });
}
