/**
 * `meshctl connect` / `disconnect` through the real CLI, on a lab of four 1-node clusters with real
 * stores and real clustermesh-apiservers. Every refusal is one ❌ line naming the values and leaves
 * every store, every apiserver's users and roles, and the state dir as they were.
 *
 *   c1  id 1  pod 10.1.0.0/16  svc 10.101.0.0/16  lab CA
 *   c2  id 2  pod 10.2.0.0/16  svc 10.102.0.0/16  lab CA
 *   c3  id 2  pod 10.3.0.0/16  svc 10.103.0.0/16  lab CA      (id collides with c2)
 *   c4  id 4  pod 10.3.0.0/16  svc 10.104.0.0/16  its own CA  (pod CIDR overlaps c3; enabled late)
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { TestLab, requireRoot, sh, type CliResult } from '../helpers/lab.js';
import { createCa } from '../../src/mesh/certs.js';

const home = mkdtempSync(join(tmpdir(), 'meshctl-test-connect-'));
const lab = new TestLab(home);
const scratch = mkdtempSync(join(tmpdir(), 'meshctl-test-connect-files-'));

interface LabJson {
  clusters: Record<string, { store: { endpoint: string }; mesh?: { endpoint: string; internalEndpoint: string }; controlPlane: { vpcIp: string } }>;
}
const labState = (): LabJson => JSON.parse(readFileSync(join(home, 'lab.json'), 'utf8')) as LabJson;
const meshDir = (c: string): string => join(home, 'clusters', c, 'mesh');

async function etcdctl(args: readonly string[]): Promise<CliResult> {
  return sh('etcdctl', args);
}

/** etcdctl against a cluster's apiserver as its admin. */
async function admin(c: string, args: readonly string[]): Promise<CliResult> {
  const m = labState().clusters[c].mesh!;
  const d = meshDir(c);
  return etcdctl([`--endpoints=${m.endpoint}`, `--cacert=${join(d, 'ca.crt')}`, `--cert=${join(d, 'admin.crt')}`, `--key=${join(d, 'admin.key')}`, ...args]);
}

/** Every key and value of a store (agent status objects change by themselves: their keys only). */
async function storeDump(c: string): Promise<Record<string, string>> {
  const r = await etcdctl([`--endpoints=${labState().clusters[c].store.endpoint}`, 'get', '', '--prefix', '-w', 'json']);
  if (r.exitCode !== 0) throw new Error(`etcdctl get on the store of ${c}: ${r.stderr}`);
  const out: Record<string, string> = {};
  for (const kv of (JSON.parse(r.stdout) as { kvs?: Array<{ key: string; value?: string }> }).kvs ?? []) {
    const key = Buffer.from(kv.key, 'base64').toString();
    const volatile = key.startsWith('/registry/meshnodestatuses/') || key.startsWith('/registry/meshctl/identities/gc-leader');
    out[key] = volatile ? '(volatile)' : Buffer.from(kv.value ?? '', 'base64').toString();
  }
  return out;
}

/** An apiserver's users and roles with their permissions. */
async function authDump(c: string): Promise<string> {
  if (!labState().clusters[c].mesh) return '(not enabled)';
  const users = await admin(c, ['user', 'list']);
  const roles = await admin(c, ['role', 'list']);
  if (users.exitCode !== 0 || roles.exitCode !== 0) throw new Error(`auth dump of ${c}: ${users.stderr} ${roles.stderr}`);
  const parts = [`users: ${users.stdout}`, `roles: ${roles.stdout}`];
  for (const role of roles.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) parts.push((await admin(c, ['role', 'get', role])).stdout);
  for (const user of users.stdout.split('\n').map((s) => s.trim()).filter(Boolean)) parts.push((await admin(c, ['user', 'get', user])).stdout);
  return parts.join('\n');
}

/** The state dir: every file and its bytes, less logs, pids and etcd data dirs (they change by themselves). */
function stateDump(): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      const rel = relative(home, p);
      if (/^clusters\/[^/]+\/(logs|store|run|mesh\/data)$/.test(rel) || rel === 'lab.lock') continue;
      if (e.isDirectory()) walk(p);
      else out[rel] = `${statSync(p).mode.toString(8)} ${readFileSync(p).toString('base64')}`;
    }
  };
  walk(home);
  return out;
}

async function snapshot(): Promise<unknown> {
  const names = Object.keys(labState().clusters).sort();
  const stores: Record<string, unknown> = {};
  const auth: Record<string, string> = {};
  for (const c of names) {
    stores[c] = await storeDump(c);
    auth[c] = await authDump(c);
  }
  return { stores, auth, state: stateDump() };
}

const failLines = (r: CliResult): string[] => r.stderr.split('\n').filter((l) => l.startsWith('❌'));

/** Run a connect that must be refused: exit code, exactly one ❌ line with these parts, nothing changed. */
async function refused(args: readonly string[], exitCode: number, parts: readonly string[]): Promise<string> {
  const before = await snapshot();
  const r = await lab.cli(args);
  expect({ exit: r.exitCode, stderr: r.stderr }).toMatchObject({ exit: exitCode });
  const lines = failLines(r);
  expect(lines).toHaveLength(1);
  for (const p of parts) expect(lines[0]).toContain(p);
  expect(await snapshot()).toEqual(before);
  return lines[0];
}

async function meshPeer(holder: string, peer: string): Promise<any | null> {
  const r = await etcdctl([`--endpoints=${labState().clusters[holder].store.endpoint}`, 'get', `/registry/meshpeers/${peer}`, '--print-value-only']);
  return r.stdout.trim() ? JSON.parse(r.stdout) : null;
}

async function peerNames(holder: string): Promise<string[]> {
  const r = await etcdctl([`--endpoints=${labState().clusters[holder].store.endpoint}`, 'get', '/registry/meshpeers/', '--prefix', '--keys-only']);
  return r.stdout.split('\n').map((s) => s.trim()).filter(Boolean).map((k) => k.split('/').pop()!).sort();
}

async function users(c: string): Promise<string[]> {
  const r = await admin(c, ['user', 'list']);
  return r.stdout.split('\n').map((s) => s.trim()).filter((u) => u.startsWith('remote-')).sort();
}

/** Read the peer's mesh/v1/ with the credentials of a MeshPeer spec, as its agents would. */
async function readAs(spec: { cert: string; key: string; caBundle: string }, peer: string, tag: string): Promise<CliResult> {
  const f = (n: string, v: string): string => {
    const p = join(scratch, `${tag}.${n}`);
    writeFileSync(p, v, { mode: 0o600 });
    return p;
  };
  return etcdctl([
    `--endpoints=${labState().clusters[peer].mesh!.endpoint}`,
    `--cacert=${f('ca', spec.caBundle)}`,
    `--cert=${f('crt', spec.cert)}`,
    `--key=${f('key', spec.key)}`,
    'get',
    'mesh/v1/',
    '--prefix',
    '--keys-only',
  ]);
}

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
  const spec: Array<[string, string, string, string]> = [
    ['c1', '1', '10.1.0.0/16', '10.101.0.0/16'],
    ['c2', '2', '10.2.0.0/16', '10.102.0.0/16'],
    ['c3', '2', '10.3.0.0/16', '10.103.0.0/16'],
    ['c4', '4', '10.3.0.0/16', '10.104.0.0/16'],
  ];
  for (const [name, id, pod, svc] of spec) {
    await lab.ok(['lab', 'create', name, '--id', id, '--pod-cidr', pod, '--service-cidr', svc, '--nodes', '1']);
  }
  for (const c of ['c1', 'c2', 'c3']) await lab.ok(['enable', '--context', c]);
}, 600_000);

afterAll(async () => {
  await lab.cleanup();
  rmSync(home, { recursive: true, force: true });
  rmSync(scratch, { recursive: true, force: true });
}, 300_000);

describe('meshctl connect pre-flight: one line naming the values, nothing written', () => {
  test('an unknown context lists the known ones', async () => {
    await refused(['connect', '--context', 'c1', '--destination-context', 'nope'], 1, ['unknown context "nope"', 'known clusters: c1, c2, c3, c4']);
  });

  test('a cluster connected to itself', async () => {
    await refused(['connect', '--context', 'c1', '--destination-context', 'c1'], 2, ['cannot connect cluster c1 to itself']);
  });

  test('an unknown connection mode is a usage error', async () => {
    await refused(['connect', '--context', 'c1', '--destination-context', 'c2', '--connection-mode', 'star'], 2, ['star', 'bidirectional, unicast, mesh']);
  });

  test('a cluster that is not enabled, with the command that enables it', async () => {
    const r = await lab.cli(['connect', '--context', 'c1', '--destination-context', 'c4']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('💡 meshctl enable --context c4');
    await refused(['connect', '--context', 'c1', '--destination-context', 'c4'], 1, ['cluster c4 is not enabled for cluster mesh']);
  });

  test('enable c4 with a CA of its own', async () => {
    const ca = createCa({ commonName: 'meshctl-test-other-ca' });
    writeFileSync(join(scratch, 'other-ca.crt'), ca.certPem);
    writeFileSync(join(scratch, 'other-ca.key'), ca.keyPem, { mode: 0o600 });
    await lab.ok(['enable', '--context', 'c4', '--ca-cert', join(scratch, 'other-ca.crt'), '--ca-key', join(scratch, 'other-ca.key')]);
  });

  test('different CAs without --allow-mismatching-ca', async () => {
    const line = await refused(['connect', '--context', 'c1', '--destination-context', 'c4'], 1, ['c1 and c4 have different mesh CAs', '--allow-mismatching-ca']);
    expect(line).toMatch(/c1: [0-9A-Fa-f:]+…, c4: [0-9A-Fa-f:]+…/);
  });

  test('overlapping pod CIDRs name both CIDRs and both clusters', async () => {
    await refused(['connect', '--context', 'c3', '--destination-context', 'c4', '--allow-mismatching-ca'], 1, [
      'pod CIDR 10.3.0.0/16 of c3 overlaps pod CIDR 10.3.0.0/16 of c4',
    ]);
  });

  test('the same cluster id', async () => {
    await refused(['connect', '--context', 'c2', '--destination-context', 'c3'], 1, ['cluster id 2 is used by both c2 and c3']);
  });

  test('--dry-run prints the plan and changes nothing', async () => {
    const before = await snapshot();
    const r = await lab.cli(['connect', '--context', 'c1', '--destination-context', 'c2', '--dry-run']);
    expect(r.exitCode).toBe(0);
    const s = labState().clusters;
    expect(r.stderr).toContain(`c1 → c2: user remote-c1`);
    expect(r.stderr).toContain(`c2 → c1: user remote-c2`);
    expect(r.stderr).toContain(`with endpoint ${s.c2.mesh!.internalEndpoint}, server name ${s.c2.controlPlane.vpcIp}`);
    expect(r.stderr).toContain(`MeshPeer c1 in c2's store (${s.c2.store.endpoint})`);
    expect(r.stderr).toContain('2 of 2 direction(s) would be made (dry run, nothing changed)');
    expect(await snapshot()).toEqual(before);
  });

  test('a failure while writing undoes what the run made', async () => {
    const before = await snapshot();
    const r = await lab.cli(['connect', '--context', 'c1', '--destination-context', 'c2'], { MESHCTL_CONNECT_FAIL_AFTER: '1' });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('✅ c1 → c2:');
    expect(failLines(r)).toEqual([expect.stringContaining('undid the 1 direction(s) this run made')]);
    expect(await snapshot()).toEqual(before);
  });
});

describe('meshctl connect and disconnect', () => {
  let oldPeer: any;

  test('bidirectional: a MeshPeer in each store and a read-only user in each apiserver', async () => {
    const r = await lab.ok(['connect', '--context', 'c1', '--destination-context', 'c2']);
    const s = labState().clusters;
    expect(r.stderr).toContain(`✅ c1 → c2: c1's agents read c2's clustermesh-apiserver at ${s.c2.mesh!.internalEndpoint} as remote-c1`);
    expect(r.stderr).toContain(`✅ c2 → c1: c2's agents read c1's clustermesh-apiserver at ${s.c1.mesh!.internalEndpoint} as remote-c2`);
    expect(await peerNames('c1')).toEqual(['c2']);
    expect(await peerNames('c2')).toEqual(['c1']);
    expect(await users('c2')).toEqual(['remote-c1']);
    expect(await users('c1')).toEqual(['remote-c2']);
    oldPeer = await meshPeer('c1', 'c2');
    expect(oldPeer.spec).toMatchObject({
      cluster: 'c2',
      clusterId: 2,
      endpoints: [s.c2.mesh!.internalEndpoint],
      serverName: s.c2.controlPlane.vpcIp,
      caBundle: readFileSync(join(meshDir('c2'), 'ca.crt'), 'utf8'),
    });
    // the credentials read c2's mesh/v1/ and cannot write there
    const read = await readAs(oldPeer.spec, 'c2', 'c1-c2');
    expect({ exit: read.exitCode, err: read.stderr }).toEqual({ exit: 0, err: '' });
    expect(read.stdout).toContain('mesh/v1/');
  });

  test('connecting again succeeds, says so and changes nothing', async () => {
    const before = await snapshot();
    const r = await lab.ok(['connect', '--context', 'c1', '--destination-context', 'c2']);
    expect(r.stderr).toContain('(already connected)');
    expect(r.stderr).toContain('Already connected (bidirectional); nothing changed');
    expect(await snapshot()).toEqual(before);
  });

  test('a third cluster whose id collides with one already connected to the destination', async () => {
    await refused(['connect', '--context', 'c3', '--destination-context', 'c1'], 1, ['cluster id 2 is used by both c2 and c3', '(c1, c2, c3)']);
  });

  test('disconnect removes both directions; the old certificate reads nothing', async () => {
    const r = await lab.ok(['disconnect', '--context', 'c1', '--destination-context', 'c2']);
    expect(r.stderr).toContain("✅ c1 → c2: disconnected (removed MeshPeer c2 from c1's store and user remote-c1 from c2's clustermesh-apiserver)");
    expect(r.stderr).toContain('✅ c2 → c1: disconnected');
    expect(await peerNames('c1')).toEqual([]);
    expect(await peerNames('c2')).toEqual([]);
    expect(await users('c1')).toEqual([]);
    expect(await users('c2')).toEqual([]);
    const read = await readAs(oldPeer.spec, 'c2', 'c1-c2-old');
    expect(read.exitCode).not.toBe(0);
    expect(read.stderr).toMatch(/permission denied|user name not found|authentication failed|invalid auth/i);
  });

  test('disconnecting what is not connected says so and exits 0', async () => {
    const r = await lab.ok(['disconnect', '--context', 'c1', '--destination-context', 'c2']);
    expect(r.stderr).toContain('✅ c1 → c2: not connected; nothing to remove');
    expect(r.stderr).toContain('✅ c2 → c1: not connected; nothing to remove');
    const u = await lab.cli(['disconnect', '--context', 'c1', '--destination-context', 'nope']);
    expect(u.exitCode).toBe(1);
    expect(failLines(u)).toEqual([expect.stringContaining('unknown context "nope"')]);
  });

  test('unicast makes one direction only', async () => {
    await lab.ok(['connect', '--context', 'c1', '--destination-context', 'c2', '--connection-mode', 'unicast']);
    expect(await peerNames('c1')).toEqual(['c2']);
    expect(await peerNames('c2')).toEqual([]);
    expect(await users('c2')).toEqual(['remote-c1']);
    expect(await users('c1')).toEqual([]);
    await lab.ok(['disconnect', '--context', 'c1', '--destination-context', 'c2', '--connection-mode', 'unicast']);
    expect(await peerNames('c1')).toEqual([]);
    expect(await users('c2')).toEqual([]);
  });

  test('mesh mode with three clusters, across two CAs', async () => {
    const r = await lab.ok(['connect', '--context', 'c1', '--destination-context', 'c2,c4', '--connection-mode', 'mesh', '--allow-mismatching-ca']);
    expect(r.stderr.split('\n').filter((l) => l.startsWith('✅ c'))).toHaveLength(6);
    expect(await peerNames('c1')).toEqual(['c2', 'c4']);
    expect(await peerNames('c2')).toEqual(['c1', 'c4']);
    expect(await peerNames('c4')).toEqual(['c1', 'c2']);
    expect(await users('c1')).toEqual(['remote-c2', 'remote-c4']);
    expect(await users('c2')).toEqual(['remote-c1', 'remote-c4']);
    expect(await users('c4')).toEqual(['remote-c1', 'remote-c2']);
    // c1's agents read c4 (another CA) with the bundle they were given, and c4's read c1
    for (const [holder, peer] of [['c1', 'c4'], ['c4', 'c1'], ['c2', 'c1']] as const) {
      const p = await meshPeer(holder, peer);
      const read = await readAs(p.spec, peer, `${holder}-${peer}`);
      expect({ pair: `${holder}->${peer}`, exit: read.exitCode, err: read.stderr }).toEqual({ pair: `${holder}->${peer}`, exit: 0, err: '' });
    }
  });

  test('disconnect in mesh mode removes every pair', async () => {
    const r = await lab.ok(['disconnect', '--context', 'c1', '--destination-context', 'c2,c4', '--connection-mode', 'mesh']);
    expect(r.stderr.split('\n').filter((l) => l.includes(': disconnected ('))).toHaveLength(6);
    for (const c of ['c1', 'c2', 'c4']) {
      expect(await peerNames(c)).toEqual([]);
      expect(await users(c)).toEqual([]);
    }
  });
});


