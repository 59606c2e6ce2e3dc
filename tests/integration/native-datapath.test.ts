// The libbpf addon against the real kernel: a fixture tc program on the ingress of a veth in one
// of two network namespaces made for this run, real pings between them, and the maps, ring
// buffer and tc filter checked from JS. Needs root; fails (never skips) without it.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

import {
  BpfMap,
  BpfObject,
  MapUpdateFlags,
  RingBuffer,
  attachTc,
  destroyTcHook,
  detachTc,
  ensureBpffs,
  ifindexOf,
  isBpffs,
  queryTc,
} from '../../src/datapath/addon.js';
import { compileBpf } from '../../src/datapath/compile.js';
import { BpfError } from '../../src/datapath/errors.js';

const execFileAsync = promisify(execFile);

const PREFIX = 'meshtest-native-';
const BPFFS = '/sys/fs/bpf';
const suffix = randomBytes(3).toString('hex');
const NS_A = `${PREFIX}${suffix}-a`;
const NS_B = `${PREFIX}${suffix}-b`;
const PIN_ROOT = join(BPFFS, `${PREFIX}${suffix}`);
const IP_A = [10, 250, 0, 1];
const IP_B = [10, 250, 0, 2];
const IDENTITY_A = 4242;

const here = dirname(fileURLToPath(import.meta.url));

function repoRoot(): string {
  let dir = here;
  while (!existsSync(join(dir, 'tests', 'bpf-fixtures'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the repository root');
    dir = parent;
  }
  return dir;
}

const FIXTURES = join(repoRoot(), 'tests', 'bpf-fixtures');
/** The compiled addon wrapper, for the child process that attaches and exits. */
const ADDON_MODULE = join(here, '..', '..', 'src', 'datapath', 'addon.js');

async function run(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(cmd, args, { maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}

async function listTestNamespaces(): Promise<string[]> {
  const out = await run('ip', ['netns', 'list']);
  return out
    .split('\n')
    .map((line) => line.split(' ')[0] ?? '')
    .filter((name) => name.startsWith(PREFIX));
}

/** Removes what this suite (this run or a crashed earlier one) may have left. */
async function cleanupLeftovers(): Promise<void> {
  for (const ns of await listTestNamespaces()) {
    await run('ip', ['netns', 'delete', ns]).catch(() => undefined);
  }
  if (existsSync(BPFFS)) {
    for (const entry of readdirSync(BPFFS)) {
      if (entry.startsWith(PREFIX)) rmSync(join(BPFFS, entry), { recursive: true, force: true });
    }
  }
  for (const entry of readdirSync(tmpdir())) {
    if (entry.startsWith(PREFIX)) rmSync(join(tmpdir(), entry), { recursive: true, force: true });
  }
}

interface PingResult {
  transmitted: number;
  received: number;
}

async function ping(count: number, intervalS: number): Promise<PingResult> {
  const out = await run('ip', ['netns', 'exec', NS_A, 'ping', '-n', '-q', '-c', String(count), '-i', String(intervalS), '-W', '1', IP_B.join('.')]);
  const m = /(\d+) packets transmitted, (\d+) received/.exec(out);
  if (m === null) throw new Error(`cannot parse ping output: ${out}`);
  return { transmitted: Number(m[1]), received: Number(m[2]) };
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

/** Sum of a per-CPU u64 counter value. */
function perCpuSum(value: Buffer | null): number {
  if (value === null) return 0;
  let sum = 0n;
  for (let off = 0; off + 8 <= value.length; off += 8) sum += value.readBigUInt64LE(off);
  return Number(sum);
}

function lpmKey(prefixlen: number, addr: number[]): Buffer {
  return Buffer.concat([u32(prefixlen), Buffer.from(addr)]);
}

async function waitFor(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface FixtureEvent {
  tag: number;
  ifindex: number;
  len: number;
  saddr: number[];
  daddr: number[];
  identity: number;
  ethProto: number;
}

function decodeEvent(b: Buffer): FixtureEvent {
  return {
    tag: b.readUInt32LE(0),
    ifindex: b.readUInt32LE(4),
    len: b.readUInt32LE(8),
    saddr: [...b.subarray(12, 16)],
    daddr: [...b.subarray(16, 20)],
    identity: b.readUInt16LE(20),
    ethProto: b.readUInt16BE(22),
  };
}

describe('native addon datapath (root, network namespaces, real packets)', () => {
  let workDir: string;
  let counterObjectPath: string;
  let badObjectPath: string;
  let obj: BpfObject | undefined;
  let count: BpfMap;
  let bySrc: BpfMap;
  let ipcache: BpfMap;
  let ring: RingBuffer | undefined;
  const events: FixtureEvent[] = [];
  const opened: Array<{ close(): void }> = [];
  const vb = { netns: NS_B, ifname: 'vb', direction: 'ingress' as const };

  function slot(n: number): number {
    return perCpuSum(count.lookup(u32(n)));
  }

  beforeAll(async () => {
    if (process.getuid?.() !== 0) {
      throw new Error('needs root: these tests create network namespaces, mount bpffs and load BPF programs (run as root)');
    }
    await cleanupLeftovers();
    await ensureBpffs();
    expect(isBpffs(BPFFS)).toBe(true);
    workDir = mkdtempSync(join(tmpdir(), PREFIX));
    const includeDirs = [join(FIXTURES, 'include')];
    counterObjectPath = await compileBpf({ source: join(FIXTURES, 'counter.bpf.c'), includeDirs, cacheDir: workDir });
    badObjectPath = await compileBpf({ source: join(FIXTURES, 'bad-oob.bpf.c'), includeDirs, cacheDir: workDir });

    await run('ip', ['netns', 'add', NS_A]);
    await run('ip', ['netns', 'add', NS_B]);
    // Made inside the namespaces: the veth never exists in the host's namespace.
    await run('ip', ['-n', NS_A, 'link', 'add', 'va', 'type', 'veth', 'peer', 'name', 'vb', 'netns', NS_B]);
    await run('ip', ['-n', NS_A, 'addr', 'add', `${IP_A.join('.')}/24`, 'dev', 'va']);
    await run('ip', ['-n', NS_B, 'addr', 'add', `${IP_B.join('.')}/24`, 'dev', 'vb']);
    for (const [ns, dev] of [[NS_A, 'va'], [NS_B, 'vb'], [NS_A, 'lo'], [NS_B, 'lo']] as const) {
      await run('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    }
  });

  afterAll(async () => {
    if (process.getuid?.() !== 0) return; // nothing was made
    ring?.close();
    for (const handle of opened) handle.close();
    obj?.close();
    await cleanupLeftovers();
  });

  test('loads the object with its pinned maps under pinRoot', async () => {
    obj = await BpfObject.load(counterObjectPath, { pinRoot: PIN_ROOT });
    expect(obj.programs().map((p) => p.name)).toEqual(['fixture_count_a', 'fixture_count_b']);
    expect(obj.program('fixture_count_a')).toMatchObject({ section: 'tc', type: 'sched_cls' });
    expect(obj.maps().map((m) => [m.name, m.pinPath])).toEqual([
      ['fixture_count', join(PIN_ROOT, 'fixture_count')],
      ['fixture_by_src', join(PIN_ROOT, 'fixture_by_src')],
      ['fixture_ipcache', join(PIN_ROOT, 'fixture_ipcache')],
      ['fixture_events', null],
    ]);
    for (const name of ['fixture_count', 'fixture_by_src', 'fixture_ipcache']) {
      expect(existsSync(join(PIN_ROOT, name))).toBe(true);
    }
    count = obj.map('fixture_count');
    bySrc = obj.map('fixture_by_src');
    ipcache = obj.map('fixture_ipcache');
    opened.push(count, bySrc, ipcache);
    expect(count.info()).toMatchObject({ type: 'percpu_array', keySize: 4, valueSize: 8, maxEntries: 4 });
    expect(ipcache.info()).toMatchObject({ type: 'lpm_trie', keySize: 8, valueSize: 4, maxEntries: 1024 });
    expect(() => obj!.program('nope')).toThrow('program nope: no such program in counter');
  });

  test('counts pings on the veth ingress and reports each packet on the ring buffer', async () => {
    ipcache.update(lpmKey(24, [10, 250, 0, 0]), u32(IDENTITY_A));
    const events0 = obj!.map('fixture_events');
    opened.push(events0);
    ring = RingBuffer.open(events0, (record) => events.push(decodeEvent(record)));

    const attached = attachTc({ ...vb, program: { object: obj!, name: 'fixture_count_a' } });
    expect(attached).toMatchObject({ direction: 'ingress', priority: 1, handle: 1, programId: obj!.program('fixture_count_a').id });
    expect(queryTc(vb)?.programId).toBe(obj!.program('fixture_count_a').id);

    const result = await ping(5, 0.1);
    expect(result).toEqual({ transmitted: 5, received: 5 });
    const fromA = (): FixtureEvent[] => events.filter((e) => e.saddr.join('.') === IP_A.join('.'));
    await waitFor('5 ring buffer records from A', () => fromA().length >= 5);
    const vbIndex = ifindexOf('vb', NS_B);
    for (const e of fromA()) {
      expect(e).toMatchObject({ tag: 0, ifindex: vbIndex, daddr: IP_B, identity: IDENTITY_A, ethProto: 0x0800 });
    }
    expect(slot(0)).toBeGreaterThanOrEqual(5);
    await waitFor('one record per counted packet', () => slot(0) === events.length);
    expect(slot(1)).toBe(0);
    expect(perCpuSum(bySrc.lookup(Buffer.from(IP_A)))).toBeGreaterThanOrEqual(5);
    expect(ring.records).toBe(events.length);
  });

  test('map lookup, update, delete and iteration round-trip', () => {
    const keys = [[192, 0, 2, 1], [192, 0, 2, 2], [192, 0, 2, 3]].map((a) => Buffer.from(a));
    keys.forEach((k, i) => bySrc.update(k, u64(100 + i), MapUpdateFlags.NOEXIST));
    keys.forEach((k, i) => expect(bySrc.lookup(k)).toEqual(u64(100 + i)));
    const all = bySrc.keys().map((k) => k.toString('hex'));
    for (const k of keys) expect(all).toContain(k.toString('hex'));
    expect(all).toContain(Buffer.from(IP_A).toString('hex'));
    const entries = new Map(bySrc.entries().map(([k, v]) => [k.toString('hex'), v.readBigUInt64LE()]));
    expect(entries.get(keys[1]!.toString('hex'))).toBe(101n);

    expect(() => bySrc.update(keys[0]!, u64(1), MapUpdateFlags.NOEXIST)).toThrow('map_update fixture_by_src: File exists');
    try {
      bySrc.update(Buffer.from([192, 0, 2, 99]), u64(1), MapUpdateFlags.EXIST);
      throw new Error('update with EXIST on a missing key succeeded');
    } catch (err) {
      expect(err).toBeInstanceOf(BpfError);
      expect(err).toMatchObject({ op: 'map_update', errno: 2, code: 'ENOENT', message: 'map_update fixture_by_src: No such file or directory' });
    }

    expect(bySrc.delete(keys[0]!)).toBe(true);
    expect(bySrc.delete(keys[0]!)).toBe(false);
    expect(bySrc.lookup(keys[0]!)).toBeNull();
    expect(bySrc.nextKey(null)).not.toBeNull();

    expect(() => bySrc.lookup(Buffer.alloc(3))).toThrow(new RangeError('map_lookup fixture_by_src: key is 3 bytes, map key size is 4'));
    expect(() => bySrc.update(keys[1]!, Buffer.alloc(4))).toThrow(new RangeError('map_update fixture_by_src: value is 4 bytes, map value size is 8'));
    // Per-CPU values are one 8-byte-aligned slot per possible CPU.
    const cpus = count.info().possibleCpus;
    expect(count.info().userValueSize).toBe(8 * cpus);
    expect(() => count.update(u32(3), u64(1))).toThrow(`map_update fixture_count: value is 8 bytes, map value size is ${8 * cpus}`);

    const lpm = lpmKey(16, [172, 16, 0, 0]);
    ipcache.update(lpm, u32(7));
    expect(ipcache.lookup(lpmKey(16, [172, 16, 0, 0]))).toEqual(u32(7));
    expect(ipcache.delete(lpm)).toBe(true);
  });

  test('updateBatch: one batch call where the map type has it, a per-element loop otherwise', async () => {
    const n = 500;
    const keys = Buffer.alloc(4 * n);
    const values = Buffer.alloc(8 * n);
    for (let i = 0; i < n; i++) {
      keys.writeUInt32BE(0xc6120000 + i, 4 * i); // 198.18.x.y
      values.writeBigUInt64LE(BigInt(i * 3), 8 * i);
    }
    expect(bySrc.updateBatch(keys, values, n)).toEqual({ count: n, batched: true });
    for (const i of [0, 1, 250, n - 1]) {
      expect(bySrc.lookup(keys.subarray(4 * i, 4 * i + 4))?.readBigUInt64LE()).toBe(BigInt(i * 3));
    }

    const m = 200;
    const lpmKeys = Buffer.alloc(8 * m);
    const lpmValues = Buffer.alloc(4 * m);
    for (let i = 0; i < m; i++) {
      lpmKeys.writeUInt32LE(32, 8 * i);
      lpmKeys.writeUInt32BE(0xac100000 + i, 8 * i + 4); // 172.16.x.y/32
      lpmValues.writeUInt32LE(1000 + i, 4 * i);
    }
    // Whether LPM tries have a batch op depends on the kernel; either way every element lands.
    expect(ipcache.updateBatch(lpmKeys, lpmValues, m).count).toBe(m);
    expect(ipcache.lookup(lpmKeys.subarray(8 * 199, 8 * 200))).toEqual(u32(1199));
    for (let i = 0; i < m; i++) lpmValues.writeUInt32LE(2000 + i, 4 * i);
    expect(ipcache.updateBatch(lpmKeys, lpmValues, m, { method: 'loop' })).toEqual({ count: m, batched: false });
    expect(ipcache.lookup(lpmKeys.subarray(0, 8))).toEqual(u32(2000));

    // A map type without a batch op (devmap) falls back to the loop by itself.
    const devmapPath = join(PIN_ROOT, 'fixture_devmap');
    await run('bpftool', ['map', 'create', devmapPath, 'type', 'devmap', 'key', '4', 'value', '4', 'entries', '8', 'name', 'fixture_devmap']);
    const devmap = BpfMap.openPinned(devmapPath);
    opened.push(devmap);
    const loIndex = ifindexOf('lo');
    expect(devmap.updateBatch(Buffer.concat([u32(0), u32(1)]), Buffer.concat([u32(loIndex), u32(loIndex)]), 2)).toEqual({ count: 2, batched: false });
    expect(devmap.lookup(u32(1))).toEqual(u32(loIndex));

    expect(() => bySrc.updateBatch(keys, values, n + 1)).toThrow(
      new RangeError(`map_update_batch fixture_by_src: keys is ${4 * n} bytes, map keys size is ${4 * (n + 1)}`),
    );
    // Partial failure reports how far it got: NOEXIST on keys that all exist fails at the first.
    try {
      bySrc.updateBatch(keys.subarray(0, 8), values.subarray(0, 16), 2, { flags: MapUpdateFlags.NOEXIST });
      throw new Error('batch NOEXIST on existing keys succeeded');
    } catch (err) {
      expect(err).toMatchObject({ op: 'map_update_batch', code: 'EEXIST', count: 0 });
    }
  });

  test('dump and deleteBatch: every element in one call, absent keys skipped', () => {
    // bySrc (hash) and ipcache (LPM trie) hold what the updateBatch test wrote.
    const hash = bySrc.dump();
    expect(hash.keys).toHaveLength(4 * hash.count);
    expect(hash.values).toHaveLength(8 * hash.count);
    const byKey = new Map<string, bigint>();
    for (let i = 0; i < hash.count; i++) byKey.set(hash.keys.subarray(4 * i, 4 * i + 4).toString('hex'), hash.values.readBigUInt64LE(8 * i));
    expect(byKey.size).toBe(bySrc.keys().length);
    expect(byKey.get(Buffer.from([198, 18, 0, 7]).toString('hex'))).toBe(21n);
    const trie = ipcache.dump();
    expect(trie.count).toBe(ipcache.keys().length);
    expect(trie.count).toBeGreaterThanOrEqual(200);

    // Delete 198.18.0.0..9 plus one key that is not there.
    const del = Buffer.alloc(4 * 11);
    for (let i = 0; i < 10; i++) del.writeUInt32BE(0xc6120000 + i, 4 * i);
    del.writeUInt32BE(0xc612ffff, 40);
    const r = bySrc.deleteBatch(del, 11);
    expect(r.count).toBe(10);
    expect(bySrc.lookup(Buffer.from([198, 18, 0, 3]))).toBeNull();
    expect(bySrc.lookup(Buffer.from([198, 18, 0, 10]))?.readBigUInt64LE()).toBe(30n);
    expect(bySrc.deleteBatch(del, 11, { method: 'loop' })).toEqual({ count: 0, batched: false });
    expect(() => bySrc.deleteBatch(del, 12)).toThrow(new RangeError('map_delete_batch fixture_by_src: keys is 44 bytes, map keys size is 48'));

    const lpmDel = Buffer.alloc(8 * 3);
    for (let i = 0; i < 3; i++) {
      lpmDel.writeUInt32LE(32, 8 * i);
      lpmDel.writeUInt32BE(0xac100000 + i, 8 * i + 4);
    }
    expect(ipcache.deleteBatch(lpmDel, 3).count).toBe(3);
    expect(ipcache.dump().count).toBe(trie.count - 3);
  });

  test('maxEntries sets map sizes at load; a pinned map of another size then fails the load naming it', async () => {
    const sizedRoot = `${PIN_ROOT}-sized`;
    const sized = await BpfObject.load(counterObjectPath, { pinRoot: sizedRoot, maxEntries: { fixture_ipcache: 4096, not_in_this_object: 7 } });
    const m = sized.map('fixture_ipcache');
    expect(m.info().maxEntries).toBe(4096);
    m.close();
    sized.close();
    const err = await BpfObject.load(counterObjectPath, { pinRoot: sizedRoot, maxEntries: { fixture_ipcache: 8192 } }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ op: 'load', code: 'EINVAL', map: 'fixture_ipcache' });
    await expect(BpfObject.load(counterObjectPath, { pinRoot: sizedRoot, maxEntries: { fixture_ipcache: 0 } })).rejects.toThrow(
      new RangeError('maxEntries.fixture_ipcache: 0 is not a positive 32-bit integer'),
    );
    rmSync(sizedRoot, { recursive: true, force: true });
  });

  test('queryTc names the attached program', () => {
    expect(queryTc(vb)).toMatchObject({ programId: obj!.program('fixture_count_a').id, programName: 'fixture_count_a' });
  });

  test('replacing the attached program is atomic: no ping lost, one filter, new program counts', async () => {
    const a0 = slot(0);
    const b0 = slot(1);
    const pinging = ping(100, 0.02);
    await new Promise((r) => setTimeout(r, 700));
    const replaced = attachTc({ ...vb, program: obj!.program('fixture_count_b') });
    expect(replaced.programId).toBe(obj!.program('fixture_count_b').id);
    const result = await pinging;
    expect(result).toEqual({ transmitted: 100, received: 100 });
    const a = slot(0) - a0;
    const b = slot(1) - b0;
    expect(a).toBeGreaterThan(0);
    expect(b).toBeGreaterThan(0);
    expect(a + b).toBeGreaterThanOrEqual(100); // every echo request went through one program
    expect(queryTc(vb)?.programId).toBe(obj!.program('fixture_count_b').id);
    const filters = await run('ip', ['netns', 'exec', NS_B, 'tc', 'filter', 'show', 'dev', 'vb', 'ingress']);
    expect(filters.match(/handle 0x/g)?.length).toBe(1);
    expect(() => attachTc({ ...vb, program: obj!.program('fixture_count_a'), replace: false })).toThrow(
      `tc_attach ingress of vb in netns ${NS_B}: File exists (kernel: Filter already exists)`,
    );
  });

  test('reloading the object reuses the pinned maps with their values', async () => {
    count.update(u32(3), Buffer.concat(Array.from({ length: count.info().possibleCpus }, (_, i) => u64(7000 + i))));
    const ids = { count: count.info().id, bySrc: bySrc.info().id, ipcache: ipcache.info().id };
    ring?.close();
    ring = undefined;
    obj!.close();
    expect(obj!.closed).toBe(true);
    // Our map handles hold their own fds: still usable after the object is gone.
    const cpus = count.info().possibleCpus;
    expect(slot(3)).toBe(Array.from({ length: cpus }, (_, i) => 7000 + i).reduce((x, y) => x + y, 0));

    // The attached program (held by the tc filter) keeps counting without any object open.
    const b0 = slot(1);
    await ping(3, 0.05);
    expect(slot(1) - b0).toBeGreaterThanOrEqual(3);

    obj = await BpfObject.load(counterObjectPath, { pinRoot: PIN_ROOT });
    const again = obj.map('fixture_count');
    opened.push(again);
    expect(again.info().id).toBe(ids.count);
    expect(again.lookup(u32(3))).toEqual(count.lookup(u32(3)));
    const bySrcAgain = obj.map('fixture_by_src');
    const ipcacheAgain = obj.map('fixture_ipcache');
    opened.push(bySrcAgain, ipcacheAgain);
    expect(bySrcAgain.info().id).toBe(ids.bySrc);
    expect(ipcacheAgain.info().id).toBe(ids.ipcache);
    expect(ipcacheAgain.lookup(lpmKey(24, [10, 250, 0, 0]))).toEqual(u32(IDENTITY_A));
    // A second handle by pinned path sees the same map.
    const pinned = BpfMap.openPinned(join(PIN_ROOT, 'fixture_count'));
    opened.push(pinned);
    expect(pinned.info().id).toBe(ids.count);
  });

  test('a tc filter outlives the process that attached it', async () => {
    const script = `
      import { BpfObject, attachTc } from ${JSON.stringify(pathToFileURL(ADDON_MODULE).href)};
      const obj = await BpfObject.load(${JSON.stringify(counterObjectPath)}, { pinRoot: ${JSON.stringify(PIN_ROOT)} });
      const a = attachTc({ netns: ${JSON.stringify(NS_B)}, ifname: 'vb', direction: 'ingress', program: obj.program('fixture_count_a') });
      console.log(JSON.stringify(a));
      // exits without close(): the addon's cleanup hook releases the fds
    `;
    const out = await run(process.execPath, ['--input-type=module', '-e', script]);
    const attached = JSON.parse(out) as { programId: number };
    expect(queryTc(vb)?.programId).toBe(attached.programId);
    const a0 = slot(0);
    await ping(3, 0.05);
    expect(slot(0) - a0).toBeGreaterThanOrEqual(3);
  });

  test('closing the ring buffer stops its callbacks', async () => {
    // Attach this object's program A so packets go to a ring we consume.
    const events1 = obj!.map('fixture_events');
    opened.push(events1);
    let seen = 0;
    ring = RingBuffer.open(events1, () => seen++);
    attachTc({ ...vb, program: obj!.program('fixture_count_a') });
    await ping(2, 0.05);
    await waitFor('records on the new ring', () => seen >= 2);
    ring.close();
    expect(ring.closed).toBe(true);
    const after = seen;
    await ping(2, 0.05);
    await new Promise((r) => setTimeout(r, 200));
    expect(seen).toBe(after);
    ring.close(); // idempotent

    // close() from inside the callback: records already queued are dropped, not delivered.
    let calls = 0;
    const self: { ring?: RingBuffer } = {};
    self.ring = RingBuffer.open(events1, () => {
      calls++;
      self.ring?.close();
    });
    ring = self.ring;
    await ping(3, 0.01);
    await waitFor('the closing callback', () => calls > 0);
    await new Promise((r) => setTimeout(r, 200));
    expect(calls).toBe(1);
    expect(ring.closed).toBe(true);
  });

  test('detach stops counting', async () => {
    expect(detachTc(vb)).toBe(true);
    expect(queryTc(vb)).toBeNull();
    const a0 = slot(0);
    const b0 = slot(1);
    expect(await ping(3, 0.05)).toEqual({ transmitted: 3, received: 3 });
    expect(slot(0)).toBe(a0);
    expect(slot(1)).toBe(b0);
    expect(detachTc(vb)).toBe(false);
    expect(destroyTcHook({ netns: NS_B, ifname: 'vb' })).toBe(true);
  });

  test('handles left open are released at exit, in a process and in a worker thread', async () => {
    const openEverything = `
      const obj = await BpfObject.load(${JSON.stringify(counterObjectPath)}, { pinRoot: ${JSON.stringify(PIN_ROOT)} });
      const map = obj.map('fixture_count');
      const ring = RingBuffer.open(obj.map('fixture_events'), () => {});
    `;
    const importLine = `import { BpfObject, RingBuffer } from ${JSON.stringify(pathToFileURL(ADDON_MODULE).href)};`;
    // A process that never calls close(): unref() lets it exit, the cleanup hook joins the thread.
    const script = `${importLine}\n${openEverything}\nring.unref(); console.log('opened');`;
    const started = Date.now();
    expect((await run(process.execPath, ['--input-type=module', '-e', script])).trim()).toBe('opened');
    expect(Date.now() - started).toBeLessThan(10_000);

    // A worker thread terminated with a ring buffer consumer running and handles open.
    const workerScript = `
      import { parentPort } from 'node:worker_threads';
      ${importLine}
      ${openEverything}
      parentPort.postMessage('opened');
    `;
    // Run as an ESM data: URL (eval'd worker code would be CommonJS).
    const workerUrl = `data:text/javascript,${encodeURIComponent(workerScript)}`;
    const workerMain = `
      import { Worker } from 'node:worker_threads';
      const w = new Worker(new URL(${JSON.stringify(workerUrl)}));
      w.on('error', (e) => { console.log('worker error ' + e.message); process.exit(1); });
      w.once('message', async () => { console.log('terminated ' + (await w.terminate())); });
    `;
    expect((await run(process.execPath, ['--input-type=module', '-e', workerMain])).trim()).toBe('terminated 1');
  });

  test('ensureBpffs mounts bpffs where it is missing (in a private mount namespace)', async () => {
    const mountPoint = join(workDir, 'bpffs');
    const script = `
      import { ensureBpffs, isBpffs } from ${JSON.stringify(pathToFileURL(ADDON_MODULE).href)};
      const before = isBpffs(${JSON.stringify(mountPoint)});
      const first = await ensureBpffs(${JSON.stringify(mountPoint)});
      const second = await ensureBpffs(${JSON.stringify(mountPoint)});
      console.log(JSON.stringify([before, first, second, isBpffs(${JSON.stringify(mountPoint)})]));
    `;
    const out = await run('unshare', ['--mount', '--propagation', 'private', process.execPath, '--input-type=module', '-e', script]);
    expect(JSON.parse(out)).toEqual([false, true, false, true]);
    expect(isBpffs(mountPoint)).toBe(false); // the mount lived and died with that namespace
  });

  test('a verifier rejection is a BpfError with the verifier log', async () => {
    const err = await BpfObject.load(badObjectPath).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BpfError);
    const be = err as BpfError;
    expect(be).toMatchObject({ op: 'load', errno: 13, code: 'EACCES', program: 'fixture_oob' });
    expect(be.reason).toBe(`load ${badObjectPath} (program fixture_oob): Permission denied`);
    expect(be.verifierLog).toContain('invalid access to packet');
    expect(be.message).toContain('verifier log (last ');
    expect(be.message).toContain('invalid access to packet');
    expect(be.verifierLogTail(2).split('\n')).toHaveLength(2);
  });

  test('a pinned map with another layout fails the load and names the map', async () => {
    const otherRoot = `${PIN_ROOT}-mismatch`;
    await run('mkdir', ['-p', otherRoot]);
    await run('bpftool', ['map', 'create', join(otherRoot, 'fixture_count'), 'type', 'percpu_array', 'key', '4', 'value', '8', 'entries', '8', 'name', 'fixture_count']);
    const err = await BpfObject.load(counterObjectPath, { pinRoot: otherRoot }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(BpfError);
    const be = err as BpfError;
    expect(be).toMatchObject({ op: 'load', code: 'EINVAL', map: 'fixture_count', verifierLog: undefined });
    expect(be.reason).toBe(`load ${counterObjectPath} (map fixture_count): Invalid argument`);
    expect(be.libbpfLog).toContain(`couldn't reuse pinned map at '${join(otherRoot, 'fixture_count')}': parameter mismatch`);
    expect(be.message).toContain('libbpf log (last ');
  });

  test('a missing pinned path is ENOENT', () => {
    const path = join(PIN_ROOT, 'no_such_map');
    try {
      BpfMap.openPinned(path);
      throw new Error('openPinned of a missing path succeeded');
    } catch (err) {
      expect(err).toBeInstanceOf(BpfError);
      expect(err).toMatchObject({ op: 'obj_get', errno: 2, code: 'ENOENT', message: `obj_get ${path}: No such file or directory` });
    }
  });
});
