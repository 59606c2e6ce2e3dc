/**
 * Map programming benchmark: how long writing ipcache entries takes, by batch (one
 * BPF_MAP_UPDATE_BATCH, or the addon's native fallback loop where the map type has no batch
 * op) and by single updates from JS (one N-API call and one syscall each), against a plain
 * hash map of the same key, value and size measured in the same run, plus the JS-only cost of
 * encoding the entries with the codecs.
 *
 * Maps:
 *   mesh_ipcache   the real one: from-container.o from the compile cache, loaded with a pin
 *                  root in a temporary bpffs directory; holds MESH_MAX_IPCACHE (65536) at most,
 *                  so it is filled to capacity
 *   bench_ipcache  bench/bpf/maps.c: mesh_ipcache's key, value and flags, sized for 100k
 *   bench_hash     bench/bpf/maps.c: plain hash, same key, value and size (the baseline)
 *
 * Every write starts from an empty map (cleared with single deletes, untimed). Rounds alternate
 * the map order (ABC, CBA, …); figures are medians over rounds.
 *
 * Run as root: node dist/bench/maps.js [--entries 100000] [--rounds 5]
 * Table on stderr, JSON on stdout.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { BPFFS_MOUNT_POINT, BpfMap, BpfObject, ensureBpffs, type BatchUpdateResult } from '../src/datapath/addon.js';
import { IpcacheFlags, MapNames, ipcacheInfoCodec, ipcacheKeyCodec } from '../src/datapath/codecs.js';
import { compileBpf } from '../src/datapath/compile.js';
import { compilePrograms } from '../src/datapath/datapath.js';
import { pidAlive } from '../src/util/exec.js';
import { ROOT } from '../src/util/self.js';
import { fmt, hostInfo, markdownTable, median, note, requireRoot, revision, round, runBounded } from './common.js';

const PIN_PARENT = join(BPFFS_MOUNT_POINT, 'meshctl-bench');
const PIN_PREFIX = 'maps-';
const BATCH_TARGET_MS = 250;
const TARGET_ENTRIES = 100_000;
const BUDGET_S = 240;

interface Options {
  readonly entries: number;
  readonly rounds: number;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({ args: argv, options: { entries: { type: 'string', default: String(TARGET_ENTRIES) }, rounds: { type: 'string', default: '5' } } });
  const entries = Number(values.entries);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(entries) || entries < 1 || entries > 131_072) throw new Error(`--entries ${values.entries}: must be 1..131072 (the bench maps' size)`);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error(`--rounds ${values.rounds}: must be 1..20`);
  return { entries, rounds };
}

/** Entries as the agent would have them: pod /32s with an identity and the hosting node. */
interface Entries {
  readonly count: number;
  readonly keys: Buffer;
  readonly values: Buffer;
  readonly keyList: Buffer[];
  readonly valueList: Buffer[];
}

const KEY_SIZE = ipcacheKeyCodec.layout.size;
const VALUE_SIZE = ipcacheInfoCodec.layout.size;

/** Encodes `count` entries into packed buffers with the product's codecs; returns them and the ms it took. */
function encodeEntries(count: number): { entries: Entries; ms: number } {
  const t0 = process.hrtime.bigint();
  const keys = Buffer.alloc(count * KEY_SIZE);
  const values = Buffer.alloc(count * VALUE_SIZE);
  for (let i = 0; i < count; i++) {
    // 10.64.0.0 + i: distinct /32s; 64 pods per node, 16 nodes per cluster.
    const ip = `10.${64 + (i >>> 16)}.${(i >>> 8) & 255}.${i & 255}`;
    const node = (i >>> 6) % 4096;
    keys.set(ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: 0, ip }), i * KEY_SIZE);
    values.set(ipcacheInfoCodec.encode({ identity: 0x10000 + (i % 60000), tunnelIp: `172.31.${node >>> 8}.${node & 255}`, nodeId: node, flags: i % 64 === 0 ? IpcacheFlags.node : 0 }), i * VALUE_SIZE);
  }
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const keyList = Array.from({ length: count }, (_, i) => keys.subarray(i * KEY_SIZE, (i + 1) * KEY_SIZE));
  const valueList = Array.from({ length: count }, (_, i) => values.subarray(i * VALUE_SIZE, (i + 1) * VALUE_SIZE));
  return { entries: { count, keys, values, keyList, valueList }, ms };
}

interface MapUnderTest {
  readonly name: string;
  readonly role: string;
  readonly map: BpfMap;
  readonly type: string;
  readonly maxEntries: number;
  /** Entries written: the run's count, or the map's capacity when that is smaller. */
  readonly count: number;
}

interface Sample {
  readonly round: number;
  readonly map: string;
  readonly batchMs: number;
  readonly batched: boolean;
  readonly loopMs: number;
  readonly singleMs: number;
}

function ms(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function clear(m: MapUnderTest, e: Entries): void {
  for (let i = 0; i < m.count; i++) m.map.delete(e.keyList[i]);
  if (m.map.nextKey(null) !== null) throw new Error(`${m.name}: not empty after deleting what the bench wrote`);
}

/** The map holds exactly what was written (spot checks plus the count). */
function verify(m: MapUnderTest, e: Entries, how: string, full: boolean): void {
  for (const i of [0, m.count >>> 1, m.count - 1]) {
    const got = m.map.lookup(e.keyList[i]);
    if (!got || !got.equals(e.valueList[i])) throw new Error(`${m.name} after ${how}: entry ${i} reads back ${got?.toString('hex') ?? 'absent'}`);
  }
  if (full) {
    const n = m.map.keys().length;
    if (n !== m.count) throw new Error(`${m.name} after ${how}: ${n} entries, wrote ${m.count}`);
  }
}

function sample(roundNo: number, m: MapUnderTest, e: Entries): Sample {
  let result: BatchUpdateResult = { count: 0, batched: false };
  clear(m, e);
  const batchMs = ms(() => {
    result = m.map.updateBatch(e.keys.subarray(0, m.count * KEY_SIZE), e.values.subarray(0, m.count * VALUE_SIZE), m.count);
  });
  if (result.count !== m.count) throw new Error(`${m.name}: batch wrote ${result.count} of ${m.count}`);
  verify(m, e, 'batch', roundNo === 1);
  clear(m, e);
  const loopMs = ms(() => m.map.updateBatch(e.keys.subarray(0, m.count * KEY_SIZE), e.values.subarray(0, m.count * VALUE_SIZE), m.count, { method: 'loop' }));
  verify(m, e, 'native loop', roundNo === 1);
  clear(m, e);
  const singleMs = ms(() => {
    for (let i = 0; i < m.count; i++) m.map.update(e.keyList[i], e.valueList[i]);
  });
  verify(m, e, 'single updates', roundNo === 1);
  return { round: roundNo, map: m.name, batchMs, batched: result.batched, loopMs, singleMs };
}

/** Pin dirs of earlier runs whose process is gone (a run killed before its cleanup). */
function removeStalePins(): void {
  let dirs: string[] = [];
  try {
    dirs = readdirSync(PIN_PARENT).filter((d) => d.startsWith(PIN_PREFIX));
  } catch {
    return;
  }
  for (const d of dirs) {
    const pid = Number(d.slice(PIN_PREFIX.length));
    if (!pid || !pidAlive(pid)) rmSync(join(PIN_PARENT, d), { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  requireRoot('bench/maps', 'BPF maps and bpffs');
  let opts: Options;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    note(`❌ ${(err as Error).message}`);
    process.exitCode = 2;
    return;
  }
  const pinRoot = join(PIN_PARENT, `${PIN_PREFIX}${process.pid}`);
  const cacheDir = mkdtempSync(join(tmpdir(), 'meshctl-bench-maps-'));
  const objects: BpfObject[] = [];
  const maps: BpfMap[] = [];

  await runBounded(
    'bench/maps',
    BUDGET_S * 1000,
    async () => {
      const startedAt = new Date().toISOString();
      const hostBefore = hostInfo();
      await ensureBpffs();
      removeStalePins();
      note(`⌛ maps benchmark: ${opts.entries} entries, ${opts.rounds} round(s); load ${hostBefore.loadavg1m}; pins in ${pinRoot}`);

      const fromContainer = (await compilePrograms())['from-container'];
      const benchObj = await compileBpf({ source: join(ROOT, 'bench', 'bpf', 'maps.c'), cacheDir, includeDirs: [join(ROOT, 'bpf')] });
      objects.push(await BpfObject.load(fromContainer, { pinRoot }), await BpfObject.load(benchObj));
      const ipcache = BpfMap.openPinned(join(pinRoot, MapNames.ipcache));
      const benchIpcache = objects[1].map('bench_ipcache');
      const benchHash = objects[1].map('bench_hash');
      maps.push(ipcache, benchIpcache, benchHash);
      const under = (name: string, role: string, map: BpfMap): MapUnderTest => {
        const info = map.info();
        return { name, role, map, type: info.type, maxEntries: info.maxEntries, count: Math.min(opts.entries, info.maxEntries) };
      };
      const targets = [
        under('bench_hash', 'baseline: plain hash, same key/value/size', benchHash),
        under('bench_ipcache', 'mesh_ipcache layout and flags, sized for 100k', benchIpcache),
        under(MapNames.ipcache, 'the real pinned map (from-container.o)', ipcache),
      ];

      const samples: Sample[] = [];
      const encodeMs: number[] = [];
      let entries: Entries | null = null;
      encodeEntries(opts.entries); // warm the JIT: the agent encodes from a long-running process
      for (let r = 1; r <= opts.rounds; r++) {
        const enc = encodeEntries(opts.entries);
        entries = enc.entries;
        encodeMs.push(enc.ms);
        for (const m of r % 2 === 1 ? targets : [...targets].reverse()) {
          const s = sample(r, m, entries);
          samples.push(s);
          note(`   round ${r} ${m.name.padEnd(13)} ${m.count} entries: batch ${fmt(s.batchMs, 1)} ms${s.batched ? '' : ' (loop fallback)'}, native loop ${fmt(s.loopMs, 1)} ms, JS single ${fmt(s.singleMs, 1)} ms`);
        }
      }
      for (const m of targets) clear(m, entries!);

      const rows = targets.map((m) => {
        const ss = samples.filter((s) => s.map === m.name);
        const batchMs = median(ss.map((s) => s.batchMs));
        const loopMs = median(ss.map((s) => s.loopMs));
        const singleMs = median(ss.map((s) => s.singleMs));
        return {
          map: m.name,
          role: m.role,
          type: m.type,
          maxEntries: m.maxEntries,
          entries: m.count,
          batchedSyscall: ss.every((s) => s.batched),
          batchMs: round(batchMs, 2),
          batchNsPerEntry: round((batchMs * 1e6) / m.count, 0),
          nativeLoopMs: round(loopMs, 2),
          singleMs: round(singleMs, 2),
          singleUsPerUpdate: round((singleMs * 1e3) / m.count, 3),
        };
      });
      const encodeMedian = median(encodeMs);
      const trie = rows.find((r) => r.map === 'bench_ipcache')!;
      const target = {
        entries: TARGET_ENTRIES,
        batchMsMax: BATCH_TARGET_MS,
        measuredEntries: trie.entries,
        batchMs: trie.batchMs,
        encodePlusBatchMs: round(encodeMedian * (trie.entries / opts.entries) + trie.batchMs, 2),
        met: trie.entries >= TARGET_ENTRIES && trie.batchMs <= BATCH_TARGET_MS,
      };
      const hostAfter = hostInfo();

      const baseline = rows.find((r) => r.map === 'bench_hash')!;
      const perEntryNs = (msTotal: number, n: number): number => (msTotal * 1e6) / n;
      const tableRows: string[][] = [];
      for (const r of rows) {
        const methods: Array<[string, number, number]> = [
          [r.batchedSyscall ? 'batch (1 syscall)' : 'batch (no batch op: native loop)', r.batchMs, baseline.batchMs],
          ['native loop (1 syscall each)', r.nativeLoopMs, baseline.nativeLoopMs],
          ['JS single update() each', r.singleMs, baseline.singleMs],
        ];
        for (const [method, total, base] of methods) {
          const ratio = perEntryNs(total, r.entries) / perEntryNs(base, baseline.entries);
          tableRows.push([r.map, r.type, `${r.entries}${r.entries < opts.entries ? ` (max)` : ''}`, method, fmt(total, 1), fmt(perEntryNs(total, r.entries) / 1e3, 3), `${fmt(ratio)}×`]);
        }
      }
      tableRows.push(['JS encode only', 'codecs', String(opts.entries), 'ipcacheKey/InfoCodec.encode', fmt(encodeMedian, 1), fmt(perEntryNs(encodeMedian, opts.entries) / 1e3, 3), '-']);
      note(`\n${markdownTable(['map', 'type', 'entries', 'method', 'ms', 'µs/entry', '×hash (per entry)'], tableRows)}\n`);
      const verdict = target.measuredEntries < TARGET_ENTRIES ? `⚠️  not judged (only ${target.measuredEntries} entries)` : target.met ? '✅' : '❌';
      note(
        `${verdict} target: ${TARGET_ENTRIES} ipcache entries by batch in ≤ ${BATCH_TARGET_MS} ms: ${fmt(target.batchMs, 1)} ms for ${target.measuredEntries} on bench_ipcache` +
          ` (${fmt(target.encodePlusBatchMs, 1)} ms with encoding). Medians of ${opts.rounds} round(s); load average ${hostBefore.loadavg1m} before, ${hostAfter.loadavg1m} after (${hostAfter.cpus} CPUs).`,
      );
      process.stdout.write(
        `${JSON.stringify(
          {
            benchmark: 'maps',
            revision: revision(),
            startedAt,
            finishedAt: new Date().toISOString(),
            host: { ...hostAfter, loadavg1mBefore: hostBefore.loadavg1m },
            options: opts,
            encodeMs: round(encodeMedian, 2),
            rows,
            target,
            samples: samples.map((s) => ({ ...s, batchMs: round(s.batchMs, 2), loopMs: round(s.loopMs, 2), singleMs: round(s.singleMs, 2) })),
          },
          null,
          2,
        )}\n`,
      );
      return true;
    },
    async () => {
      for (const m of maps.splice(0)) m.close();
      for (const o of objects.splice(0)) o.close();
      rmSync(pinRoot, { recursive: true, force: true });
      try {
        if (readdirSync(PIN_PARENT).length === 0) rmSync(PIN_PARENT, { recursive: true, force: true });
      } catch {
        // already gone
      }
      rmSync(cacheDir, { recursive: true, force: true });
    },
  );
}

await main();
