// The Datapath writer against real pinned maps: restart adoption, owner layers, write order,
// size migration, drift repair and the cost of a flush. Every case runs the real Datapath in a
// node process inside a network namespace made for this run (eth0 is a veth standing in for the
// node's underlay, lxcdpw0 for a pod's device), with a pin dir of its own. Needs root; fails (never
// skips) without it.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { requireRoot, sleep } from '../helpers/lab.js';
import { LAYOUT_VERSION } from '../../src/datapath/codecs.js';

const execFileAsync = promisify(execFile);

const PREFIX = 'meshdpw-';
const BPFFS = '/sys/fs/bpf';
const suffix = randomBytes(3).toString('hex');
const NS = `${PREFIX}${suffix}`;
const PIN_PARENT = join(BPFFS, `${PREFIX}${suffix}`);
const here = dirname(fileURLToPath(import.meta.url));
const DIST = join(here, '..', '..', 'src', 'datapath');

async function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(cmd, args, { maxBuffer: 64 * 1024 * 1024, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(err) };
  }
}

async function must(cmd: string, args: string[]): Promise<void> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim()}`);
}

/** Removes what this suite (this run or a crashed earlier one) may have left. */
async function cleanupLeftovers(): Promise<void> {
  const list = await run('ip', ['netns', 'list']);
  for (const line of list.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    if (name.startsWith(PREFIX)) await run('ip', ['netns', 'delete', name]);
  }
  if (existsSync(BPFFS)) {
    for (const entry of readdirSync(BPFFS)) if (entry.startsWith(PREFIX)) rmSync(join(BPFFS, entry), { recursive: true, force: true });
  }
}

// Shared by every script: imports, open() with this node's settings, and a standard wanted state.
const PRELUDE = `
const [dpPath, codecsPath, addonPath, pinDir] = process.argv.slice(1);
const { Datapath } = await import(dpPath);
const c = await import(codecsPath);
const addon = await import(addonPath);
const { readdirSync } = await import('node:fs');
const open = (extra = {}) => Datapath.open({ pinDir, nodeIp: '10.251.0.1', nodeId: 1, clusterId: 1, routing: 'tunnel', ...extra });
const podIp = (i) => '10.' + (64 + (i >>> 16)) + '.' + ((i >>> 8) & 255) + '.' + (i & 255);
const ipInfo = (identity) => ({ identity, tunnelIp: '10.251.0.2', nodeId: 2, flags: 0 });
const ipKey = (p) => c.ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: 0, ip: p });
const identityOf = (dp, p) => { const v = dp.rawMap(c.MapNames.ipcache).lookup(ipKey(p)); return v ? c.ipcacheInfoCodec.decode(v).identity : null; };
const svc = { vip: '10.96.0.10', dport: 80, proto: 6 };
const backends = [1, 2, 3].map((i) => ({ ip: '10.64.0.' + i, port: 8080 }));
const ep = (id, ip, flags) => ({ ifindex: 1, lxcMac: '02:00:00:00:00:01', podMac: '02:00:00:00:00:02', endpointId: id, flags, identity: 65538 });
function standardState(dp, n, reverse = false) {
  const order = Array.from({ length: n }, (_, i) => reverse ? n - 1 - i : i);
  for (const i of order) dp.upsertIpcache(podIp(i), ipInfo(65536 + (i % 1000)));
  dp.upsertNode('10.251.0.2', { nodeId: 2, clusterId: 1, flags: 0 });
  dp.setPolicy(5, c.Direction.Ingress, [{ identity: 65537, port: 80, proto: 6 }, { identity: 65539, port: 0, proto: 0 }]);
  dp.upsertEndpoint('10.64.0.1', ep(5, '10.64.0.1', c.EndpointFlags.policyIngress));
  dp.upsertService(svc, reverse ? [...backends].reverse() : backends);
}
const out = await (async () => {
`;
const POSTLUDE = `
})();
console.log(JSON.stringify(out, (k, v) => (typeof v === 'bigint' ? v.toString() : v)));
`;

/** Runs `body` (the inside of an async function returning JSON-able data) in the node netns. */
async function inNode<T>(pinDir: string, body: string): Promise<T> {
  const script = PRELUDE + body + POSTLUDE;
  const r = await run('nsenter', [
    `--net=/run/netns/${NS}`,
    '--',
    process.execPath,
    '--input-type=module',
    '-e',
    script,
    join(DIST, 'datapath.js'),
    join(DIST, 'codecs.js'),
    join(DIST, 'addon.js'),
    pinDir,
  ]);
  if (r.code !== 0 || r.stderr.trim() !== '') throw new Error(`script failed (exit ${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

const pinDir = (name: string): string => join(PIN_PARENT, name);

describe('Datapath writer (root, real pinned maps)', () => {
  beforeAll(async () => {
    requireRoot();
    await cleanupLeftovers();
    await must('ip', ['netns', 'add', NS]);
    await must('ip', ['-n', NS, 'link', 'set', 'lo', 'up']);
    await must('ip', ['-n', NS, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
    await must('ip', ['-n', NS, 'link', 'add', 'lxcdpw0', 'type', 'veth', 'peer', 'name', 'lxcdpw0p']);
    for (const dev of ['eth0', 'eth0p', 'lxcdpw0', 'lxcdpw0p']) await must('ip', ['-n', NS, 'link', 'set', dev, 'up']);
    await must('ip', ['-n', NS, 'addr', 'add', '10.251.0.1/24', 'dev', 'eth0']);
  }, 60_000);

  afterAll(async () => {
    await cleanupLeftovers();
  }, 60_000);

  test('a restart that states the same wanted state writes 0 entries; unclaimed ones go only after pruneAdopted()', async () => {
    const dir = pinDir('restart');
    const first = await inNode<{ r: { updated: number; deleted: number }; writes: object }>(
      dir,
      `const dp = await open(); standardState(dp, 2000); const r = dp.flush(); const writes = { ...dp.writes }; dp.close(); return { r, writes };`,
    );
    // 2000 ipcache + 1 node + 2 rules + 1 endpoint + 3 backends + 1 rev-NAT + 1 service.
    expect(first.r).toEqual({ updated: 2009, deleted: 0 });
    expect(first.writes).toEqual({ updates: 2009, deletes: 0 });

    const again = await inNode<Record<string, unknown>>(
      dir,
      `const dp = await open();
       const adopted = dp.reads.entries;
       standardState(dp, 2000, true); // another order: same wanted state
       const r = dp.flush();
       dp.pruneAdopted();
       const r2 = dp.flush();
       const writes = { ...dp.writes };
       dp.close();
       return { adopted, r, r2, writes };`,
    );
    expect(again).toEqual({ adopted: 2009, r: { updated: 0, deleted: 0 }, r2: { updated: 0, deleted: 0 }, writes: { updates: 0, deletes: 0 } });

    const stale = await inNode<Record<string, unknown>>(
      dir,
      `const dp = await open();
       standardState(dp, 1999); // pod 1999 went away while the agent was down
       const r = dp.flush();
       const kept = identityOf(dp, podIp(1999));
       dp.pruneAdopted();
       const r2 = dp.flush();
       const gone = identityOf(dp, podIp(1999));
       dp.close();
       return { r, kept, r2, gone };`,
    );
    expect(stale).toEqual({ r: { updated: 0, deleted: 0 }, kept: 65536 + 999, r2: { updated: 0, deleted: 1 }, gone: null });

    // A service the restarted agent knows is gone, though it never stated it: its slots and rev-NAT go too.
    const gone = await inNode<Record<string, unknown>>(
      dir,
      `const dp = await open();
       dp.deleteService(svc);
       const r = dp.flush();
       const left = [c.MapNames.services, c.MapNames.backends, c.MapNames.revnat].map((m) => dp.rawMap(m).keys().length);
       dp.close();
       return { r, left };`,
    );
    expect(gone).toEqual({ r: { updated: 0, deleted: 5 }, left: [0, 0, 0] });
  }, 120_000);

  test('owners are isolated: precedence local, then remotes by name; a removal falls back; clearOwner removes only its own', async () => {
    const steps = await inNode<Array<Record<string, unknown>>>(
      pinDir('owners'),
      `const dp = await open();
       const steps = [];
       const look = (r) => ({ r, local: identityOf(dp, '10.2.0.1'), shared: identityOf(dp, '10.9.0.1'), onlyA: identityOf(dp, '10.9.0.2') });
       dp.upsertIpcache('10.2.0.1', ipInfo(100));
       dp.upsertIpcache('10.9.0.1', ipInfo(300), 'remote:b');
       dp.upsertIpcache('10.9.0.1', ipInfo(200), 'remote:a');
       dp.upsertIpcache('10.9.0.1', ipInfo(101));
       dp.upsertIpcache('10.9.0.2', ipInfo(201), 'remote:a');
       steps.push(look(dp.flush()));
       dp.upsertIpcache('10.9.0.1', ipInfo(250), 'remote:a'); // a lower claim: the kernel keeps local's
       dp.deleteIpcache('10.2.0.1', 'remote:a');             // not remote:a's to remove
       dp.upsertIpcache('10.2.0.1', ipInfo(100));             // unchanged
       steps.push(look(dp.flush()));
       dp.deleteIpcache('10.9.0.1');                          // local lets go: remote:a's value
       steps.push(look(dp.flush()));
       dp.clearOwner('remote:a');                             // remote:b's value; a's own entry goes
       steps.push(look(dp.flush()));
       dp.clearOwner('remote:b');
       steps.push({ ...look(dp.flush()), prefixesA: dp.ipcachePrefixes('remote:a'), prefixesLocal: dp.ipcachePrefixes() });
       dp.upsertNode('10.251.0.7', { nodeId: 7, clusterId: 2, flags: 0 }, 'remote:c');
       dp.upsertNode('10.251.0.7', { nodeId: 7, clusterId: 1, flags: 0 });
       const nodeOf = () => c.nodeInfoCodec.decode(dp.rawMap(c.MapNames.nodes).lookup(c.nodeKeyCodec.encode({ ip: '10.251.0.7' }))).clusterId;
       const r1 = dp.flush(); const n1 = nodeOf();
       dp.deleteNode('10.251.0.7');
       const r2 = dp.flush(); const n2 = nodeOf();
       steps.push({ r1, n1, r2, n2, nodesC: dp.nodeIps('remote:c') });
       const errors = [];
       for (const f of [() => dp.upsertIpcache('10.2.0.0/16', ipInfo(1), 'peer-a'), () => dp.upsertIpcache('10.2.0.1/16', ipInfo(1)), () => dp.upsertIpcache('10.2.0.0/33', ipInfo(1)), () => dp.clearOwner('remote:')]) {
         try { f(); errors.push('accepted'); } catch (e) { errors.push(e.message); }
       }
       try { await open({ sizes: { ipcache: 0 } }); errors.push('accepted'); } catch (e) { errors.push(e.message); }
       steps.push({ errors });
       dp.close();
       return steps;`,
    );
    expect(steps).toEqual([
      { r: { updated: 3, deleted: 0 }, local: 100, shared: 101, onlyA: 201 },
      { r: { updated: 0, deleted: 0 }, local: 100, shared: 101, onlyA: 201 },
      { r: { updated: 1, deleted: 0 }, local: 100, shared: 250, onlyA: 201 },
      { r: { updated: 1, deleted: 1 }, local: 100, shared: 300, onlyA: null },
      { r: { updated: 0, deleted: 1 }, local: 100, shared: null, onlyA: null, prefixesA: [], prefixesLocal: ['10.2.0.1/32'] },
      { r1: { updated: 1, deleted: 0 }, n1: 1, r2: { updated: 1, deleted: 0 }, n2: 2, nodesC: ['10.251.0.7'] },
      {
        errors: [
          `owner "peer-a": must be 'local', 'cidr' or 'remote:<cluster name>' (a DNS label of 1-32 characters)`,
          'ipcache prefix "10.2.0.1/16": host bits must be zero',
          'ipcache prefix "10.2.0.0/33": the length must be 0..32',
          `owner "remote:": must be 'local', 'cidr' or 'remote:<cluster name>' (a DNS label of 1-32 characters)`,
          'map size sizes.ipcache=0: must be a positive integer below 2^31',
        ],
      },
    ]);
  }, 60_000);

  test('one flush writes in dependency order: upserts backends → services, then deletes services → backends', async () => {
    const res = await inNode<Record<string, unknown>>(
      pinDir('order'),
      `const seq = [];
       const dp = await open({ trace: (w) => seq.push(w.op + ' ' + w.map) });
       const collapse = (a) => a.filter((x, i) => x !== a[i - 1]);
       const svc2 = { vip: '10.96.0.11', dport: 53, proto: 17 };
       // Stated in the wrong order on purpose: the flush reorders.
       dp.upsertService(svc, backends);
       dp.upsertEndpoint('10.64.0.7', ep(7, '10.64.0.7', c.EndpointFlags.policyIngress));
       dp.upsertIpcache('10.65.0.0/16', ipInfo(65540));
       dp.upsertService(svc2, [{ ip: '10.64.0.9', port: 53 }]);
       dp.setPolicy(7, c.Direction.Ingress, [{ identity: 65537, port: 80, proto: 6 }]);
       dp.upsertNode('10.251.0.2', { nodeId: 2, clusterId: 1, flags: 0 });
       dp.flush();
       const up = collapse(seq.splice(0));
       // A backend leaves: the last slot moves into its hole; the count shrinks before the old slot goes.
       dp.upsertService(svc, [backends[2], backends[0]]);
       const moved = dp.flush();
       const move = seq.splice(0);
       const svcInfo = c.serviceInfoCodec.decode(dp.rawMap(c.MapNames.services).lookup(c.serviceKeyCodec.encode(svc)));
       const slot = (s) => c.backendInfoCodec.decode(dp.rawMap(c.MapNames.backends).lookup(c.backendKeyCodec.encode({ revNatId: svcInfo.revNatId, slot: s }))).ip;
       const slots = [slot(1), slot(2)];
       dp.upsertService(svc, [backends[0]]);
       dp.deleteService(svc2);
       dp.deleteEndpoint('10.64.0.7');
       dp.deletePolicy(7);
       dp.deleteIpcache('10.65.0.0/16');
       dp.deleteNode('10.251.0.2');
       dp.flush();
       const down = collapse(seq.splice(0));
       dp.close();
       return { up, moved, move, count: svcInfo.count, slots, down };`,
    );
    expect(res).toEqual({
      up: ['update mesh_backends', 'update mesh_revnat', 'update mesh_policy', 'update mesh_nodes', 'update mesh_ipcache', 'update mesh_endpoints', 'update mesh_services'],
      moved: { updated: 2, deleted: 1 },
      move: ['update mesh_backends', 'update mesh_services', 'delete mesh_backends'],
      count: 2,
      slots: ['10.64.0.1', '10.64.0.3'],
      down: [
        'update mesh_services',
        'delete mesh_services',
        'delete mesh_endpoints',
        'delete mesh_ipcache',
        'delete mesh_nodes',
        'delete mesh_policy',
        'delete mesh_revnat',
        'delete mesh_backends',
      ],
    });
  }, 60_000);

  test("a policy rule's counters are kept: a value differing only in counters is not rewritten", async () => {
    const res = await inNode<Record<string, unknown>>(
      pinDir('counters'),
      `const dp = await open();
       const rules = [{ identity: 65537, port: 443, proto: 6 }];
       dp.setPolicy(8, c.Direction.Ingress, rules);
       dp.flush();
       const pm = dp.rawMap(c.MapNames.policy);
       const [k, v] = pm.entries()[0];
       const entry = c.policyEntryCodec.decode(v);
       const counters = Object.keys(entry).filter((f) => typeof entry[f] === 'bigint');
       for (const f of counters) entry[f] = 7n; // as the datapath would count
       pm.update(k, c.policyEntryCodec.encode(entry));
       dp.setPolicy(8, c.Direction.Ingress, rules);
       const same = dp.flush();
       const repaired = dp.repair();
       const after = c.policyEntryCodec.decode(pm.lookup(k));
       dp.setPolicy(8, c.Direction.Ingress, [{ ...rules[0], deny: true }]);
       const changed = dp.flush();
       dp.close();
       return { counters: counters.length > 0, same, repaired, kept: counters.every((f) => after[f] === 7n), changed };`,
    );
    expect(res).toEqual({ counters: true, same: { updated: 0, deleted: 0 }, repaired: { updated: 0, deleted: 0 }, kept: true, changed: { updated: 1, deleted: 0 } });
  }, 60_000);

  test('a write that fails (a full map) is reported with its key, the other maps are still written, and it is retried', async () => {
    const res = await inNode<Record<string, unknown>>(
      pinDir('full'),
      `const dp = await open({ sizes: { nodes: 4 } });
       const nodeIp = (i) => '10.251.1.' + i;
       for (let i = 1; i <= 6; i++) dp.upsertNode(nodeIp(i), { nodeId: i, clusterId: 1, flags: 0 });
       dp.upsertIpcache('10.66.0.1', ipInfo(65541));
       dp.upsertEndpoint('10.64.0.9', ep(9, '10.64.0.9', 0));
       const first = dp.flush();
       const failed = (first.errors ?? []).map((e) => ({ map: e.map, op: e.op, ip: c.nodeKeyCodec.decode(e.key).ip, code: e.error.code }));
       const written = { ipcache: identityOf(dp, '10.66.0.1'), nodes: dp.rawMap(c.MapNames.nodes).keys().length, endpoint: dp.rawMap(c.MapNames.endpoints).keys().length };
       dp.deleteNode(nodeIp(1));
       dp.deleteNode(nodeIp(2));
       const second = dp.flush(); // upserts come before deletes: the retries still find the map full
       const third = dp.flush();
       const nodes = dp.rawMap(c.MapNames.nodes).keys().map((k) => c.nodeKeyCodec.decode(k).ip).sort();
       dp.close();
       return { first: { updated: first.updated, deleted: first.deleted }, failed, written, second: { updated: second.updated, deleted: second.deleted, errors: second.errors?.length ?? 0 }, third, nodes };`,
    );
    expect(res).toEqual({
      first: { updated: 6, deleted: 0 },
      failed: [
        { map: 'mesh_nodes', op: 'update', ip: '10.251.1.5', code: 'E2BIG' },
        { map: 'mesh_nodes', op: 'update', ip: '10.251.1.6', code: 'E2BIG' },
      ],
      written: { ipcache: 65541, nodes: 4, endpoint: 1 },
      second: { updated: 0, deleted: 2, errors: 2 },
      third: { updated: 2, deleted: 0 },
      nodes: ['10.251.1.3', '10.251.1.4', '10.251.1.5', '10.251.1.6'],
    });
  }, 60_000);

  test('an ipcache pinned at 65536 entries, reopened at 524288, is migrated with its entries and the programs move to it', async () => {
    const dir = pinDir('migrate');
    const before = await inNode<{ id: number; max: number; prog: number }>(
      dir,
      `const dp = await open({ sizes: { ipcache: 65536 } });
       standardState(dp, 3000);
       dp.flush();
       dp.attachEndpoint('lxcdpw0');
       const info = dp.rawMap(c.MapNames.ipcache).info();
       const prog = addon.queryTc({ ifname: 'lxcdpw0', direction: 'ingress' }).programId;
       dp.close();
       return { id: info.id, max: info.maxEntries, prog };`,
    );
    expect(before.max).toBe(65536);
    const after = await inNode<Record<string, any>>(
      dir,
      `const dp = await open();
       const info = dp.rawMap(c.MapNames.ipcache).info();
       const entries = dp.rawMap(c.MapNames.ipcache).dump().count;
       standardState(dp, 3000);
       const r = dp.flush();
       const tc = addon.queryTc({ ifname: 'lxcdpw0', direction: 'ingress' });
       const pins = readdirSync(pinDir).filter((n) => n.startsWith('mesh_ipcache'));
       const res = { migrations: dp.migrations, id: info.id, max: info.maxEntries, entries, r, prog: tc.programId, progName: tc.programName, pins, sizes: dp.sizes };
       dp.close();
       return res;`,
    );
    expect(after.migrations).toEqual([{ map: 'mesh_ipcache', fromMaxEntries: 65536, toMaxEntries: 524288, copied: 3000, reattached: ['lxcdpw0'] }]);
    expect(after.max).toBe(524288);
    expect(after.id).not.toBe(before.id);
    expect(after.entries).toBe(3000);
    expect(after.r).toEqual({ updated: 0, deleted: 0 });
    expect(after.prog).not.toBe(before.prog);
    expect(after.progName).toBe('mesh_from_conta');
    expect(after.pins).toEqual(['mesh_ipcache']);
    expect(after.sizes).toMatchObject({ ipcache: 524288, nodes: 16384 });
    // The old map goes once nothing refers to it (the kernel frees it after the program swap).
    let oldGone = false;
    for (let i = 0; i < 50 && !oldGone; i++) {
      oldGone = (await run('bpftool', ['map', 'show', 'id', String(before.id)])).code !== 0;
      if (!oldGone) await sleep(100);
    }
    expect(oldGone).toBe(true);
  }, 120_000);

  test('a pinned map of another layout (not only size) is replaced instead of failing the load forever', async () => {
    const dir = pinDir('layout');
    await must('mkdir', ['-p', join(dir, `layout-v${LAYOUT_VERSION}`)]);
    // A map of this layout's pin dir that libbpf refuses to reuse: mesh_config with a smaller value.
    await must('bpftool', ['map', 'create', join(dir, 'mesh_config'), 'type', 'array', 'key', '4', 'value', '8', 'entries', '1', 'name', 'mesh_config']);
    const res = await inNode<Record<string, unknown>>(
      dir,
      `const dp = await open();
       const cfg = c.configCodec.decode(dp.rawMap(c.MapNames.config).lookup(Buffer.alloc(4)));
       const res = { migrations: dp.migrations.map((m) => ({ map: m.map, copied: m.copied })), nodeIp: cfg.nodeIp, valueSize: dp.rawMap(c.MapNames.config).info().valueSize };
       dp.close();
       return res;`,
    );
    expect(res).toEqual({ migrations: [{ map: 'mesh_config', copied: 0 }], nodeIp: '10.251.0.1', valueSize: expect.any(Number) });
    expect(res.valueSize).not.toBe(8);
  }, 60_000);

  test('pins an older build left (no marker of this layout) are made anew, even a map libbpf would reuse', async () => {
    const dir = pinDir('older');
    await must('mkdir', ['-p', dir]);
    // mesh_services kept its sizes when its value layout changed: libbpf alone would reuse it.
    await must('bpftool', ['map', 'create', join(dir, 'mesh_services'), 'type', 'hash', 'key', '8', 'value', '8', 'entries', '8192', 'name', 'mesh_services']);
    await must('bpftool', ['map', 'update', 'pinned', join(dir, 'mesh_services'), 'key', '10', '96', '0', '1', '0', '80', '6', '0', 'value', '3', '0', '0', '0', '1', '0', '0', '0']);
    const res = await inNode<Record<string, unknown>>(
      dir,
      `const dp = await open();
       const res = { services: dp.rawMap(c.MapNames.services).keys().length, migrations: dp.migrations.length };
       dp.close();
       return res;`,
    );
    expect(res).toEqual({ services: 0, migrations: 0 });
    expect(existsSync(join(dir, `layout-v${LAYOUT_VERSION}`))).toBe(true);
  }, 60_000);

  test('repair() rewrites entries changed or removed behind the shadow and deletes unknown ones; flush() alone does not see them', async () => {
    const res = await inNode<Record<string, unknown>>(
      pinDir('repair'),
      `const dp = await open();
       dp.pruneAdopted();
       for (let i = 0; i < 100; i++) dp.upsertIpcache(podIp(i), ipInfo(70000 + i));
       dp.flush();
       const m = dp.rawMap(c.MapNames.ipcache);
       m.update(ipKey(podIp(5)), c.ipcacheInfoCodec.encode(ipInfo(999)));
       m.delete(ipKey(podIp(6)));
       m.update(ipKey('10.77.0.1'), c.ipcacheInfoCodec.encode(ipInfo(1)));
       const flushed = dp.flush();
       const dumps0 = dp.reads.dumps;
       const repaired = dp.repair();
       const dumps = dp.reads.dumps - dumps0;
       const again = dp.repair();
       const state = [identityOf(dp, podIp(5)), identityOf(dp, podIp(6)), identityOf(dp, '10.77.0.1')];
       const fill = [dp.mapFill()[c.MapNames.ipcache], m.keys().length];
       dp.close();
       return { flushed, repaired, again, state, dumps, fill };`,
    );
    expect(res).toEqual({ flushed: { updated: 0, deleted: 0 }, repaired: { updated: 2, deleted: 1 }, again: { updated: 0, deleted: 0 }, state: [70005, 70006, null], dumps: 7, fill: [100, 100] });
  }, 60_000);

  test('flush() costs map operations for the changed entries only, whatever the number of unchanged ones', async () => {
    const res = await inNode<Array<Record<string, unknown>>>(
      pinDir('cost'),
      `// Count every map operation that goes through the addon (elements, for batch calls).
       const ops = {};
       const P = addon.BpfMap.prototype;
       for (const [name, n] of [['lookup', () => 1], ['update', () => 1], ['delete', () => 1], ['nextKey', () => 1], ['keys', () => 1], ['entries', () => 1], ['dump', () => 1], ['updateBatch', (a) => a[2]], ['deleteBatch', (a) => a[1]]]) {
         const orig = P[name];
         P[name] = function (...args) { ops[name] = (ops[name] ?? 0) + n(args); return orig.apply(this, args); };
       }
       const dp = await open();
       dp.pruneAdopted();
       const rows = [];
       let held = 0;
       for (const size of [1000, 100000]) {
         for (let i = held; i < size; i++) dp.upsertIpcache(podIp(i), ipInfo(65536 + (i % 1000)));
         dp.flush();
         held = size;
         for (const k of Object.keys(ops)) delete ops[k];
         const noop = dp.flush();
         const noopOps = { ...ops };
         dp.upsertIpcache(podIp(7), ipInfo(99999));
         dp.deleteIpcache(podIp(8));
         dp.upsertIpcache(podIp(size + 1), ipInfo(5));
         const one = dp.flush();
         rows.push({ size, noop, noopOps, one, oneOps: { ...ops } });
         for (const k of Object.keys(ops)) delete ops[k];
         dp.upsertIpcache(podIp(7), ipInfo(65536 + 7)); dp.upsertIpcache(podIp(8), ipInfo(65536 + 8)); dp.deleteIpcache(podIp(size + 1));
         dp.flush();
       }
       dp.close();
       return rows;`,
    );
    const expected = (size: number): Record<string, unknown> => ({
      size,
      noop: { updated: 0, deleted: 0 },
      noopOps: {},
      one: { updated: 2, deleted: 1 },
      oneOps: { update: 2, delete: 1 },
    });
    expect(res).toEqual([expected(1000), expected(100000)]);
  }, 120_000);
});
