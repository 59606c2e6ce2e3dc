/**
 * The clustermesh-apiserver of one lab cluster, checked with the real etcdctl: admin and peer
 * rights, revocation, refused certificates, enable/disable idempotency, --dry-run, lab delete.
 * Own state dir (fixed, so a crashed run is cleaned up by the next); cleaned up before and after.
 */
import { execa } from 'execa';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestLab, listNetns, requireRoot } from '../helpers/lab.js';
import { LabPaths, labPrefix, readLabState, type ClusterState } from '../../src/lab/state.js';
import { addPeerUser, apiserverHealth, listPeerUsers, removePeerUser } from '../../src/mesh/apiserver.js';
import { CertificateError, caFingerprint, createCa, issueCertificate, verifyCertificate } from '../../src/mesh/certs.js';
import { pidAlive } from '../../src/util/exec.js';

const lab = new TestLab('/tmp/meshctl-test-mesh-apiserver');
const paths = new LabPaths(lab.home);
const prefix = labPrefix(lab.home);
const meshDir = paths.meshDir('c1');
const mine = (): string[] => listNetns().filter((n) => n.startsWith(`mesh${prefix}-`));

async function cluster(): Promise<ClusterState> {
  const s = await readLabState(paths);
  if (!s?.clusters.c1) throw new Error('no cluster c1 in lab.json');
  return s.clusters.c1;
}

/** Every file under the state dir with its size and mode (what --dry-run must not change). */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const f of readdirSync(d).sort()) {
      const p = join(d, f);
      const st = statSync(p);
      if (p.startsWith(join(lab.home, 'clusters', 'c1', 'logs')) || p.startsWith(paths.storeDir('c1'))) continue; // written by running processes
      if (f.endsWith('.pid') || f === 'lab.lock') continue;
      out.push(`${p.slice(dir.length)} ${st.isDirectory() ? 'dir' : st.size} ${(st.mode & 0o777).toString(8)}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

interface Cred {
  readonly cert: string;
  readonly key: string;
}

async function etcdctl(endpoint: string, cred: Cred, args: string[], netns?: string): Promise<{ exitCode: number; out: string }> {
  const base = ['--endpoints', endpoint, '--cacert', join(meshDir, 'ca.crt'), '--cert', cred.cert, '--key', cred.key, '--dial-timeout', '3s', '--command-timeout', '4s', ...args];
  const [cmd, argv] = netns ? ['ip', ['netns', 'exec', netns, 'etcdctl', ...base]] : ['etcdctl', base];
  const r = await execa(cmd, argv, { reject: false, env: { ...process.env, ETCDCTL_API: '3' }, timeout: 20_000 });
  return { exitCode: r.exitCode ?? -1, out: `${r.stdout}\n${r.stderr}` };
}

const admin: Cred = { cert: join(meshDir, 'admin.crt'), key: join(meshDir, 'admin.key') };
const peerCred = (peer: string): Cred => ({ cert: join(meshDir, `remote-${peer}.crt`), key: join(meshDir, `remote-${peer}.key`) });

/** Test-made certificates live outside the state dir, so lab delete can be checked to leave nothing. */
const credDir = mkdtempSync(join(tmpdir(), 'meshctl-test-creds-'));
function writeCred(name: string, pair: { certPem: string; keyPem: string }): Cred {
  const cert = join(credDir, `${name}.crt`);
  const key = join(credDir, `${name}.key`);
  writeFileSync(cert, pair.certPem);
  writeFileSync(key, pair.keyPem, { mode: 0o600 });
  return { cert, key };
}

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
  rmSync(lab.home, { recursive: true, force: true }); // test-owned: also what older runs left in it
  await lab.ok(['lab', 'create', 'c1', '--id', '1', '--pod-cidr', '10.1.0.0/16', '--nodes', '1']);
}, 120_000);

afterAll(async () => {
  await lab.cleanup();
  rmSync(credDir, { recursive: true, force: true });
});

describe('clustermesh-apiserver', () => {
  let endpoint = '';

  test('enable --dry-run prints the plan and changes nothing', async () => {
    const before = snapshot(lab.home);
    const labJson = readFileSync(paths.stateFile, 'utf8');
    const r = await lab.ok(['enable', '--context', 'c1', '--dry-run']);
    expect(r.stderr).toContain('Dry run: enabling cluster mesh on c1 would:');
    expect(r.stderr).toContain('start mesh-apiserver: etcd');
    expect(snapshot(lab.home)).toEqual(before);
    expect(readFileSync(paths.stateFile, 'utf8')).toBe(labJson);
    expect(existsSync(meshDir)).toBe(false);
  });

  test('enable: certificates, processes, lab.json; twice is idempotent', async () => {
    const r = await lab.ok(['enable', '--context', 'c1']);
    expect(r.stderr).toContain('Cluster mesh enabled on c1');
    const c = await cluster();
    expect(c.mesh).toMatchObject({
      endpoint: `https://${c.controlPlane.mgmtIp}:32379`,
      internalEndpoint: `https://${c.controlPlane.vpcIp}:32379`,
      caFingerprint: caFingerprint(readFileSync(join(meshDir, 'ca.crt'), 'utf8')),
    });
    endpoint = c.mesh!.endpoint;
    for (const f of ['ca.key', 'server.key', 'admin.key']) expect(statSync(join(meshDir, f)).mode & 0o777).toBe(0o600);
    for (const p of ['mesh-apiserver', 'mesh-export']) expect(existsSync(join(paths.procsDir('c1'), `${p}.json`))).toBe(true);
    const exp = JSON.parse(readFileSync(join(paths.procsDir('c1'), 'mesh-export.json'), 'utf8'));
    expect(exp.argv.slice(2)).toEqual(['mesh-export', '--cluster', 'c1', '--store', c.store.internalEndpoint, '--apiserver', 'https://127.0.0.1:32379', '--cert-dir', meshDir]);
    expect(exp.netns).toBe(c.controlPlane.netns);
    expect(await apiserverHealth(paths, c)).toEqual({ ok: true, endpoint });

    const files = Object.fromEntries(['ca.crt', 'server.crt', 'admin.crt'].map((f) => [f, readFileSync(join(meshDir, f), 'utf8')]));
    const pid = Number(readFileSync(join(paths.runDir('c1'), 'mesh-apiserver.pid'), 'utf8'));
    const again = await lab.ok(['enable', '--context', 'c1']);
    expect(again.stderr).toContain(`Cluster mesh already enabled on c1; apiserver ${endpoint}`);
    for (const [f, text] of Object.entries(files)) expect(readFileSync(join(meshDir, f), 'utf8')).toBe(text);
    expect(Number(readFileSync(join(paths.runDir('c1'), 'mesh-apiserver.pid'), 'utf8'))).toBe(pid); // not restarted
    expect((await cluster()).mesh).toEqual(c.mesh);
    const dry = await lab.ok(['enable', '--context', 'c1', '--dry-run']);
    expect(dry.stderr).toContain('would change nothing (already enabled)');
  });

  test('enable with a different --ca-cert is refused and changes nothing', async () => {
    const other = writeCred('other-ca', createCa({ commonName: 'other' }));
    const before = readFileSync(join(meshDir, 'ca.crt'), 'utf8');
    const r = await lab.cli(['enable', '--context', 'c1', '--ca-cert', other.cert, '--ca-key', other.key]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain(`❌ cluster c1 already uses mesh CA ${caFingerprint(before).slice(0, 16)}…; --ca-cert ${other.cert} is CA`);
    expect(readFileSync(join(meshDir, 'ca.crt'), 'utf8')).toBe(before);
  });

  test('admin certificate writes and reads mesh/v1/', async () => {
    expect((await etcdctl(endpoint, admin, ['put', 'mesh/v1/cluster-config/c1', '{"version":1}'])).out).toContain('OK');
    const r = await etcdctl(endpoint, admin, ['get', '--prefix', 'mesh/v1/']);
    expect(r.exitCode).toBe(0);
    expect(r.out).toContain('mesh/v1/cluster-config/c1');
  });

  test('a peer user reads mesh/v1/ and nothing else; after removal it reads nothing', async () => {
    const c = await cluster();
    await addPeerUser(paths, c, 'c2');
    await addPeerUser(paths, c, 'c2'); // idempotent
    expect(await listPeerUsers(paths, c)).toEqual(['c2']);
    expect(statSync(peerCred('c2').key).mode & 0o777).toBe(0o600);
    const peer = peerCred('c2');
    const read = await etcdctl(endpoint, peer, ['get', '--prefix', 'mesh/v1/']);
    expect(read.exitCode).toBe(0);
    expect(read.out).toContain('mesh/v1/cluster-config/c1');
    for (const args of [['put', 'mesh/v1/nodes/c1/x', 'y'], ['del', 'mesh/v1/cluster-config/c1'], ['user', 'list'], ['get', 'other/key']]) {
      const r = await etcdctl(endpoint, peer, args);
      expect([args.join(' '), r.exitCode]).toEqual([args.join(' '), 1]);
      expect(r.out).toContain('permission denied');
    }
    await removePeerUser(paths, c, 'c2');
    expect(await listPeerUsers(paths, c)).toEqual([]);
    expect(existsSync(peer.cert)).toBe(false);
    // the peer kept a copy of its credentials: they read nothing any more
    const kept = writeCred('revoked', issueCertificate({ ca: { certPem: readFileSync(join(meshDir, 'ca.crt'), 'utf8'), keyPem: readFileSync(join(meshDir, 'ca.key'), 'utf8') }, commonName: 'remote-c2', usage: 'client' }));
    const after = await etcdctl(endpoint, kept, ['get', '--prefix', 'mesh/v1/']);
    expect(after.exitCode).toBe(1);
    expect(after.out).not.toContain('mesh/v1/cluster-config/c1');
    expect(after.out).toMatch(/permission denied|user name not found|authentication failed/);
  });

  test('refused: a client certificate of another CA, an expired one, a server name not in the SANs', async () => {
    const c = await cluster();
    const caPair = { certPem: readFileSync(join(meshDir, 'ca.crt'), 'utf8'), keyPem: readFileSync(join(meshDir, 'ca.key'), 'utf8') };
    const foreign = writeCred('foreign', issueCertificate({ ca: createCa({ commonName: 'other' }), commonName: 'root', usage: 'client' }));
    const r1 = await etcdctl(endpoint, foreign, ['get', '--prefix', 'mesh/v1/']);
    expect(r1.exitCode).not.toBe(0);
    expect(r1.out).not.toContain('mesh/v1/cluster-config/c1');
    const expired = writeCred('expired', issueCertificate({ ca: caPair, commonName: 'root', usage: 'client', notBefore: new Date('2025-01-01T00:00:00Z'), notAfter: new Date('2026-01-02T00:00:00Z') }));
    const r2 = await etcdctl(endpoint, expired, ['get', '--prefix', 'mesh/v1/']);
    expect(r2.exitCode).not.toBe(0);
    expect(r2.out).not.toContain('mesh/v1/cluster-config/c1');
    const log = readFileSync(join(paths.logsDir('c1'), 'mesh-apiserver.log'), 'utf8');
    expect(log).toMatch(/certificate signed by unknown authority/);
    expect(log).toMatch(/certificate has expired or is not yet valid/);
    // 127.0.0.2 reaches the apiserver inside its namespace but is not in the certificate
    const r3 = await etcdctl(`https://127.0.0.2:32379`, admin, ['get', '--prefix', 'mesh/v1/'], c.controlPlane.netns);
    expect(r3.exitCode).not.toBe(0);
    expect(r3.out).toContain('127.0.0.2');
    const serverPem = readFileSync(join(meshDir, 'server.crt'), 'utf8');
    expect(() => verifyCertificate({ name: 'server.crt', certPem: serverPem, caBundlePem: caPair.certPem, usage: 'server', address: '127.0.0.2' })).toThrow(
      new CertificateError('server.crt', 'wrong-san', `not valid for 127.0.0.2 (SANs: ${c.controlPlane.vpcIp}, ${c.controlPlane.mgmtIp}, 127.0.0.1, clustermesh-apiserver.meshctl.local)`),
    );
  });

  test('disable refuses while a peer user exists; --force stops both processes and removes the files', async () => {
    const c = await cluster();
    await addPeerUser(paths, c, 'c3');
    const r = await lab.cli(['disable', '--context', 'c1']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toContain('❌ cluster c1 has connected peers (c3): disconnect them first, or use --force');
    expect((await apiserverHealth(paths, c)).ok).toBe(true);
    const pid = Number(readFileSync(join(paths.runDir('c1'), 'mesh-apiserver.pid'), 'utf8'));
    await lab.ok(['disable', '--context', 'c1', '--force']);
    expect(pidAlive(pid)).toBe(false);
    expect(existsSync(meshDir)).toBe(false);
    for (const p of ['mesh-apiserver', 'mesh-export']) expect(existsSync(join(paths.procsDir('c1'), `${p}.json`))).toBe(false);
    expect((await cluster()).mesh).toBeUndefined();
    const again = await lab.ok(['disable', '--context', 'c1']);
    expect(again.stderr).toContain('Cluster mesh is not enabled on c1; nothing to do');
  });

  test('lab delete of an enabled cluster leaves no process, namespace or file', async () => {
    // a bad own CA is refused before anything is made
    const old = writeCred('expired-ca', createCa({ commonName: 'old', now: new Date('2020-01-01T00:00:00Z'), days: 10 }));
    const bad = await lab.cli(['enable', '--context', 'c1', '--ca-cert', old.cert, '--ca-key', old.key]);
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toContain(`❌ certificate ${old.cert}: expired on 2020-01-11T00:00:00Z`);
    expect(existsSync(meshDir)).toBe(false);
    expect((await cluster()).mesh).toBeUndefined();
    await lab.ok(['enable', '--context', 'c1']);
    const pid = Number(readFileSync(join(paths.runDir('c1'), 'mesh-apiserver.pid'), 'utf8'));
    expect(pidAlive(pid)).toBe(true);
    await lab.ok(['lab', 'delete', 'c1']);
    expect(pidAlive(pid)).toBe(false);
    expect(mine()).toEqual([]);
    expect(existsSync(lab.home) ? readdirSync(lab.home) : []).toEqual([]);
  });
});
