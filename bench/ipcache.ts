/**
 * ipcache benchmark: filling the ipcache to 512k entries through the real Datapath code path
 * (upsertIpcache × N, then one flush: owner layer, realized shadow, delta, batch write) against a
 * baseline measured in the same run on the same pinned map: one raw BpfMap.updateBatch of the
 * same entries, encoded beforehand with the codecs (the kernel's share of the work).
 *
 * Also measured at N entries held: the flush of one changed entry, a flush with nothing pending,
 * and draining (clearOwner + flush, N deletes) against a raw deleteBatch of the same keys.
 *
 * Datapath.open needs a node network namespace (it creates the VXLAN device and attaches to
 * eth0), so the bench makes one (`meshbipc-<pid>`, eth0 a veth), runs its measuring half there
 * (`--child`), and removes the namespace and the pin dir afterwards, also on error or Ctrl-C.
 * Rounds: one warm-up, then `--rounds` (default 5) alternating the variant order (AB, BA, …);
 * figures are medians of the measured rounds.
 *
 * Run as root: node dist/bench/ipcache.js [--entries 524288] [--rounds 5]
 * Table on stderr, JSON on stdout.
 */
import { execFile, spawn } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';

import { BPFFS_MOUNT_POINT, ensureBpffs } from '../src/datapath/addon.js';
import { IpcacheFlags, MapNames, ipcacheInfoCodec, ipcacheKeyCodec, type IpcacheInfo } from '../src/datapath/codecs.js';
import { DEFAULT_MAP_SIZES, Datapath } from '../src/datapath/datapath.js';
import { pidAlive } from '../src/util/exec.js';
import { fmt, hostInfo, markdownTable, median, note, requireRoot, revision, round, runBounded } from './common.js';

const execFileAsync = promisify(execFile);

const NS_PREFIX = 'meshbipc-';
const PIN_PARENT = join(BPFFS_MOUNT_POINT, 'meshctl-bench');
const PIN_PREFIX = 'ipcache-';
const TARGET_ENTRIES = 524_288;
const TARGET_MS = 1000;
const BUDGET_S = 900;

interface Options {
  readonly entries: number;
  readonly rounds: number;
}

function parseOptions(argv: string[]): Options & { child: boolean; pinDir: string } {
  const { values } = parseArgs({
    args: argv,
    options: { entries: { type: 'string', default: String(TARGET_ENTRIES) }, rounds: { type: 'string', default: '5' }, child: { type: 'boolean', default: false }, 'pin-dir': { type: 'string', default: '' } },
  });
  const entries = Number(values.entries);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(entries) || entries < 1 || entries > DEFAULT_MAP_SIZES.ipcache) throw new Error(`--entries ${values.entries}: must be 1..${DEFAULT_MAP_SIZES.ipcache} (the ipcache's default size)`);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error(`--rounds ${values.rounds}: must be 1..20`);
  return { entries, rounds, child: values.child ?? false, pinDir: values['pin-dir'] ?? '' };
}

/** One round's figures, ms unless said otherwise. */
interface Sample {
  readonly round: number;
  readonly order: string;
  readonly baselineFillMs: number;
  readonly baselineDrainMs: number;
  readonly stateMs: number;
  readonly flushMs: number;
  readonly fillMs: number;
  readonly oneChangeUs: number;
  readonly oneChangeWrites: number;
  readonly noopFlushUs: number;
  readonly drainMs: number;
}

interface ChildResult {
  readonly samples: Sample[];
  readonly warmup: Sample;
  readonly batched: boolean;
  readonly heapBytesPerEntry: number;
  readonly maxEntries: number;
}

const now = (): number => Number(process.hrtime.bigint()) / 1e6;

/** The measuring half, inside the bench's node namespace. */
async function child(opts: Options, pinDir: string): Promise<void> {
  const n = opts.entries;
  // Inputs as the agent holds them (from its informers): prefix strings and info objects.
  const prefixes: string[] = [];
  const infos: IpcacheInfo[] = [];
  for (let i = 0; i < n; i++) {
    const node = (i >>> 6) % 16_384;
    prefixes.push(`10.${64 + (i >>> 16)}.${(i >>> 8) & 255}.${i & 255}/32`);
    infos.push({ identity: 0x10000 + (i % 60_000), tunnelIp: `172.31.${node >>> 8}.${node & 255}`, nodeId: node, flags: i % 64 === 0 ? IpcacheFlags.node : 0 });
  }
  const ks = ipcacheKeyCodec.layout.size;
  const vs = ipcacheInfoCodec.layout.size;
  const keys = Buffer.alloc(n * ks);
  const values = Buffer.alloc(n * vs);
  for (let i = 0; i < n; i++) {
    keys.set(ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: 0, ip: prefixes[i].slice(0, -3) }), i * ks);
    values.set(ipcacheInfoCodec.encode(infos[i]), i * vs);
  }

  const dp = await Datapath.open({ pinDir, nodeIp: '10.252.0.1', nodeId: 1, clusterId: 1, routing: 'tunnel' });
  const raw = dp.rawMap(MapNames.ipcache);
  let batched = true;
  let heapBytesPerEntry = 0;
  const check = (what: string, ok: boolean): void => {
    if (!ok) throw new Error(`${what}: the map does not hold what was written`);
  };
  const spot = (i: number): boolean => raw.lookup(keys.subarray(i * ks, (i + 1) * ks))?.equals(values.subarray(i * vs, (i + 1) * vs)) ?? false;

  const baseline = (): { fill: number; drain: number } => {
    let t = now();
    const r = raw.updateBatch(keys, values, n);
    const fill = now() - t;
    batched &&= r.batched;
    check('baseline fill', r.count === n && spot(0) && spot(n - 1));
    t = now();
    const d = raw.deleteBatch(keys, n);
    const drain = now() - t;
    check('baseline drain', d.count === n && raw.nextKey(null) === null);
    return { fill, drain };
  };

  const datapath = (measureHeap: boolean): Omit<Sample, 'round' | 'order' | 'baselineFillMs' | 'baselineDrainMs'> => {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (measureHeap) gc?.();
    const heap0 = measureHeap ? process.memoryUsage().heapUsed : 0;
    const t0 = now();
    for (let i = 0; i < n; i++) dp.upsertIpcache(prefixes[i], infos[i]);
    const t1 = now();
    const r = dp.flush();
    const t2 = now();
    check('datapath fill', r.updated === n && r.errors === undefined && spot(0) && spot(n >>> 1) && spot(n - 1));
    if (measureHeap) {
      gc?.();
      heapBytesPerEntry = (process.memoryUsage().heapUsed - heap0) / n;
    }
    const w0 = dp.writes.updates;
    const k = n >>> 1;
    let t = now();
    dp.upsertIpcache(prefixes[k], { ...infos[k], identity: infos[k].identity ^ 1 });
    dp.flush();
    const oneChangeUs = (now() - t) * 1000;
    const oneChangeWrites = dp.writes.updates - w0;
    dp.upsertIpcache(prefixes[k], infos[k]);
    dp.flush();
    t = now();
    const noop = dp.flush();
    const noopFlushUs = (now() - t) * 1000;
    check('no-op flush', noop.updated === 0 && noop.deleted === 0);
    t = now();
    dp.clearOwner('local');
    const d = dp.flush();
    const drainMs = now() - t;
    check('datapath drain', d.deleted === n && raw.nextKey(null) === null);
    return { stateMs: t1 - t0, flushMs: t2 - t1, fillMs: t2 - t0, oneChangeUs, oneChangeWrites, noopFlushUs, drainMs };
  };

  const samples: Sample[] = [];
  let warmup: Sample | null = null;
  try {
    for (let r = 0; r <= opts.rounds; r++) {
      const baseFirst = r % 2 === 0;
      let b = { fill: 0, drain: 0 };
      let d: ReturnType<typeof datapath>;
      if (baseFirst) {
        b = baseline();
        d = datapath(r === 1);
      } else {
        d = datapath(r === 1);
        b = baseline();
      }
      const s: Sample = { round: r, order: baseFirst ? 'baseline,datapath' : 'datapath,baseline', baselineFillMs: b.fill, baselineDrainMs: b.drain, ...d };
      note(
        `   ${r === 0 ? 'warm-up' : `round ${r}`}: baseline ${fmt(s.baselineFillMs, 0)} ms; datapath ${fmt(s.fillMs, 0)} ms (state ${fmt(s.stateMs, 0)} + flush ${fmt(s.flushMs, 0)}); one change ${fmt(s.oneChangeUs, 0)} µs; drain ${fmt(s.drainMs, 0)} vs ${fmt(s.baselineDrainMs, 0)} ms`,
      );
      if (r === 0) warmup = s;
      else samples.push(s);
    }
  } finally {
    const maxEntries = raw.info().maxEntries;
    dp.close();
    const result: ChildResult = { samples, warmup: warmup!, batched, heapBytesPerEntry, maxEntries };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  }
}

async function ip(args: string[]): Promise<void> {
  await execFileAsync('ip', args);
}

/** Namespaces and pin dirs of earlier runs whose process is gone. */
async function removeStale(): Promise<void> {
  const { stdout } = await execFileAsync('ip', ['netns', 'list']);
  for (const line of stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const pid = Number(name.slice(NS_PREFIX.length));
    if (name.startsWith(NS_PREFIX) && (!pid || !pidAlive(pid))) await ip(['netns', 'delete', name]).catch(() => undefined);
  }
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
  let opts: ReturnType<typeof parseOptions>;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    note(`❌ ${(err as Error).message}`);
    process.exitCode = 2;
    return;
  }
  if (opts.child) {
    await child(opts, opts.pinDir);
    return;
  }
  requireRoot('bench/ipcache', 'network namespaces, tc and BPF maps');
  const ns = `${NS_PREFIX}${process.pid}`;
  const pinDir = join(PIN_PARENT, `${PIN_PREFIX}${process.pid}`);
  let proc: ReturnType<typeof spawn> | null = null;

  await runBounded(
    'bench/ipcache',
    BUDGET_S * 1000,
    async (signal) => {
      const startedAt = new Date().toISOString();
      const hostBefore = hostInfo();
      await ensureBpffs();
      await removeStale();
      await ip(['netns', 'add', ns]);
      await ip(['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
      for (const dev of ['lo', 'eth0', 'eth0p']) await ip(['-n', ns, 'link', 'set', dev, 'up']);
      await ip(['-n', ns, 'addr', 'add', '10.252.0.1/24', 'dev', 'eth0']);
      note(`⌛ ipcache benchmark: ${opts.entries} entries, warm-up + ${opts.rounds} round(s); load ${hostBefore.loadavg1m}; netns ${ns}, pins in ${pinDir}`);

      const self = fileURLToPath(import.meta.url);
      const args = ['--net=/run/netns/' + ns, '--', process.execPath, '--expose-gc', self, '--child', '--entries', String(opts.entries), '--rounds', String(opts.rounds), '--pin-dir', pinDir];
      let stdout = '';
      const code = await new Promise<number>((resolve, reject) => {
        proc = spawn('nsenter', args, { stdio: ['ignore', 'pipe', 'inherit'] });
        proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
        proc.on('error', reject);
        proc.on('exit', (c) => resolve(c ?? 1));
        signal.addEventListener('abort', () => proc?.kill('SIGTERM'));
      });
      if (code !== 0) throw new Error(`measuring process exited ${code}`);
      const res = JSON.parse(stdout.trim().split('\n').pop()!) as ChildResult;
      const hostAfter = hostInfo();

      const med = (f: (s: Sample) => number): number => median(res.samples.map(f));
      const ratio = (f: (s: Sample) => number, g: (s: Sample) => number): number => median(res.samples.map((s) => f(s) / g(s)));
      const n = opts.entries;
      const base = med((s) => s.baselineFillMs);
      const fill = med((s) => s.fillMs);
      const nsPer = (ms: number): string => fmt((ms * 1e6) / n, 0);
      const judged = n >= TARGET_ENTRIES;
      const met = fill <= TARGET_MS;
      const rows = [
        ['baseline', `raw updateBatch of ${n} pre-encoded entries (${res.batched ? '1 batch syscall' : 'native loop'})`, fmt(base, 1), nsPer(base), '1.00×', ''],
        ['datapath', `upsertIpcache × ${n} + flush()`, fmt(fill, 1), nsPer(fill), `${fmt(ratio((s) => s.fillMs, (s) => s.baselineFillMs))}×`, judged ? `${met ? '✅' : '❌'} ≤ ${TARGET_MS} ms` : '⚠️ not judged'],
        ['  of which', 'upsertIpcache × N (encode, owner layer, queue)', fmt(med((s) => s.stateMs), 1), nsPer(med((s) => s.stateMs)), '', ''],
        ['  of which', 'flush() (delta, batch write, shadow)', fmt(med((s) => s.flushMs), 1), nsPer(med((s) => s.flushMs)), `${fmt(ratio((s) => s.flushMs, (s) => s.baselineFillMs))}×`, ''],
        ['one change', `upsert + flush of 1 delta, ${n} held`, `${fmt(med((s) => s.oneChangeUs) / 1000, 3)}`, '-', '', `${res.samples.every((s) => s.oneChangeWrites === 1) ? '1 write' : 'writes ≠ 1 ❌'}`],
        ['no-op flush', `flush() with nothing pending, ${n} held`, `${fmt(med((s) => s.noopFlushUs) / 1000, 3)}`, '-', '', ''],
        ['baseline drain', `raw deleteBatch of ${n} keys`, fmt(med((s) => s.baselineDrainMs), 1), nsPer(med((s) => s.baselineDrainMs)), '1.00×', ''],
        ['datapath drain', `clearOwner('local') + flush()`, fmt(med((s) => s.drainMs), 1), nsPer(med((s) => s.drainMs)), `${fmt(ratio((s) => s.drainMs, (s) => s.baselineDrainMs))}×`, ''],
      ];
      note(`\n${markdownTable(['variant', 'what', 'ms (median)', 'ns/entry', '× baseline', 'target'], rows)}\n`);
      note(
        `${judged ? (met ? '✅' : '❌') : '⚠️ '} target: ${TARGET_ENTRIES} ipcache entries through Datapath in ≤ ${TARGET_MS} ms: ${fmt(fill, 0)} ms (kernel baseline ${fmt(base, 0)} ms).` +
          ` Shadow heap ≈ ${fmt(res.heapBytesPerEntry, 0)} B/entry. Medians of ${opts.rounds} round(s) after a warm-up; load average ${hostBefore.loadavg1m} before, ${hostAfter.loadavg1m} after (${hostAfter.cpus} CPUs).`,
      );
      const r2 = (v: number): number => round(v, 2);
      process.stdout.write(
        `${JSON.stringify(
          {
            benchmark: 'ipcache',
            revision: revision(),
            startedAt,
            finishedAt: new Date().toISOString(),
            host: { ...hostAfter, loadavg1mBefore: hostBefore.loadavg1m },
            options: { entries: opts.entries, rounds: opts.rounds },
            mapMaxEntries: res.maxEntries,
            baselineBatched: res.batched,
            medians: {
              baselineFillMs: r2(base),
              datapathFillMs: r2(fill),
              datapathStateMs: r2(med((s) => s.stateMs)),
              datapathFlushMs: r2(med((s) => s.flushMs)),
              fillRatio: r2(ratio((s) => s.fillMs, (s) => s.baselineFillMs)),
              oneChangeUs: r2(med((s) => s.oneChangeUs)),
              noopFlushUs: r2(med((s) => s.noopFlushUs)),
              baselineDrainMs: r2(med((s) => s.baselineDrainMs)),
              datapathDrainMs: r2(med((s) => s.drainMs)),
            },
            heapBytesPerEntry: round(res.heapBytesPerEntry, 0),
            target: { entries: TARGET_ENTRIES, fillMsMax: TARGET_MS, judged, met: judged && met },
            warmup: res.warmup,
            samples: res.samples,
          },
          (_k, v: unknown) => (typeof v === 'number' ? round(v, 3) : v),
          2,
        )}\n`,
      );
      return true;
    },
    async () => {
      proc?.kill('SIGKILL');
      await ip(['netns', 'delete', ns]).catch(() => undefined);
      rmSync(pinDir, { recursive: true, force: true });
      try {
        if (readdirSync(PIN_PARENT).length === 0) rmSync(PIN_PARENT, { recursive: true, force: true });
      } catch {
        // already gone
      }
    },
  );
}

await main();
