/**
 * The whole cluster mesh through the CLI: enable, connect, `status --wait`, then real packets
 * between pods of different clusters and what the underlay carries.
 *
 *  1. two tunnel clusters (c1 id 1, c2 id 2): status --wait after connect (its seconds are logged),
 *     ICMP, HTTP, UDP and a 2 MB TCP echo both ways; VXLAN whose VNI is the source pod's identity
 *     with c1's id in bits 16–23.
 *  2. three clusters connected with --connection-mode mesh: c1 tunnel (VPC a), c2 native (VPC a),
 *     c3 hybrid (VPCs a,b): every pair connected, every pod reaches every pod; bare pod addresses
 *     on the wire only between c2 and c3's VPC-a node, VXLAN everywhere else.
 *
 * Each part has its own mkdtemp MESHCTL_HOME (so its own prefix, namespaces and pins), cleaned up
 * before and after.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIXTURES, eventually, requireRoot } from '../helpers/lab.js';
import { Capture, MeshLab, bulk, http, pathOf, ping, since, udp, type MeshPod } from '../helpers/mesh.js';

const ECHO_APP = join(FIXTURES, 'echo-app.yaml');
const WAIT = ['--wait', '--wait-duration', '5m'];

describe('two tunnel clusters', () => {
  const home = mkdtempSync(join(tmpdir(), 'meshctl-e2e-2-'));
  const lab = new MeshLab(home);
  let c1: MeshPod[] = [];
  let c2: MeshPod[] = [];
  let waitSeconds = 0;

  beforeAll(async () => {
    requireRoot();
    await lab.cleanup();
    await lab.createCluster({ name: 'c1', id: 1, podCidr: '10.1.0.0/16' });
    await lab.createCluster({ name: 'c2', id: 2, podCidr: '10.2.0.0/16' });
    for (const c of ['c1', 'c2']) await lab.ok(['lab', 'apply', '-f', ECHO_APP, '--context', c]);
    for (const c of ['c1', 'c2']) {
      const r = await lab.slow(['enable', '--context', c]);
      if (r.exitCode !== 0) throw new Error(`enable ${c}: ${r.stderr}`);
    }
    c1 = await lab.pods('c1');
    c2 = await lab.pods('c2');
  }, 900_000);

  afterAll(async () => {
    await Capture.stopAll();
    await lab.cleanup();
    rmSync(home, { recursive: true, force: true });
  }, 120_000);

  test('connect, then status --wait returns 0 on both sides', async () => {
    const t0 = Date.now();
    const r = await lab.slow(['connect', '--context', 'c1', '--destination-context', 'c2']);
    expect({ exitCode: r.exitCode, stderr: r.exitCode ? r.stderr : '' }).toEqual({ exitCode: 0, stderr: '' });
    const s1 = await lab.status('c1', WAIT);
    waitSeconds = since(t0);
    process.stderr.write(`mesh-e2e: status --context c1 --wait returned ${s1.exitCode} ${waitSeconds}s after connect\n`);
    expect({ exitCode: s1.exitCode, err: s1.exitCode ? s1.stderr : '' }).toEqual({ exitCode: 0, err: '' });
    expect(s1.report).toMatchObject({ ready: true, summary: { nodes: 2, connectedToAll: 2, min: 1, max: 1 } });
    expect(s1.report.peers.map((p: any) => [p.cluster, p.configured, p.connected, p.synced])).toEqual([['c2', 2, 2, 2]]);
    // the agents hold every address of c2 (its pods; the counts come from the agents)
    expect(s1.report.peers[0].entries.ips.min).toBeGreaterThanOrEqual(c2.length);
    expect(s1.stderr).toContain('✅ All 2 nodes are connected to all clusters [min:1 / avg:1.0 / max:1]');

    const s2 = await lab.status('c2', WAIT);
    expect({ exitCode: s2.exitCode, err: s2.exitCode ? s2.stderr : '' }).toEqual({ exitCode: 0, err: '' });
    expect(s2.report.peers.map((p: any) => p.cluster)).toEqual(['c1']);
  }, 700_000);

  test('pods reach pods across the clusters both ways: ICMP, HTTP, UDP, 2 MB TCP echo', async () => {
    const client1 = c1.find((p) => p.name === 'client')!;
    const client2 = c2.find((p) => p.name === 'client')!;
    const echo1 = c1.filter((p) => p.name.startsWith('echo-'));
    const echo2 = c2.filter((p) => p.name.startsWith('echo-'));
    expect([echo1.length, echo2.length]).toEqual([2, 2]);
    const pairs: Array<[MeshPod, MeshPod]> = [...echo2.map((e): [MeshPod, MeshPod] => [client1, e]), ...echo1.map((e): [MeshPod, MeshPod] => [client2, e])];
    for (const [from, to] of pairs) {
      const what = `${from.cluster}/${from.name} -> ${to.cluster}/${to.name} (${to.ip})`;
      // the first packet of a pair may race the last entry of a sync that status just reported
      await eventually(() => ping(lab, from, to), 20_000, `ping ${what}`, 500);
      expect({ what, ping: await ping(lab, from, to) }).toEqual({ what, ping: true });
      expect({ what, ...(await http(lab, from, to)) }).toMatchObject({ what, cluster: to.cluster, pod: to.name, clientIP: from.ip });
      expect({ what, ...(await udp(lab, from, to)) }).toEqual({ what, from: to.ip, line: `${to.cluster}/${to.node}/demo/${to.name}` });
      const b = await bulk(lab, from, to);
      expect({ what, exitCode: b.exitCode, got: b.got }).toEqual({ what, exitCode: 0, got: b.want });
    }
  }, 300_000);

  test("the underlay carries VXLAN whose VNI is the source pod's identity, with c1's id in bits 16-23", async () => {
    const client1 = c1.find((p) => p.name === 'client')!;
    const to = c2.find((p) => p.name.startsWith('echo-'))!;
    const node = lab.nodes('c1').find((n) => n.name === client1.node)!;
    const identity = (await lab.identities('c1')).get(client1.ip);
    expect(identity).toBeDefined();
    const cap = await Capture.start(lab, node.link, 'udp port 8472');
    for (let i = 0; i < 3; i++) await ping(lab, client1, to);
    await new Promise((r) => setTimeout(r, 500));
    await cap.stop();
    const seen = pathOf(cap.packets(), client1, to);
    expect(seen).toEqual({ native: false, vxlan: true, vnis: [identity] });
    expect((seen.vnis[0] >> 16) & 0xff).toBe(1);
  }, 120_000);
});

describe('three clusters, connection mode mesh: tunnel, native and hybrid', () => {
  const home = mkdtempSync(join(tmpdir(), 'meshctl-e2e-3-'));
  const lab = new MeshLab(home);
  const CLUSTERS = ['c1', 'c2', 'c3'] as const;
  const pods = new Map<string, MeshPod[]>();

  beforeAll(async () => {
    requireRoot();
    await lab.cleanup();
    await lab.createCluster({ name: 'c1', id: 1, podCidr: '10.1.0.0/16', routing: 'tunnel', vpcs: 'a' });
    await lab.createCluster({ name: 'c2', id: 2, podCidr: '10.2.0.0/16', routing: 'native', vpcs: 'a' });
    await lab.createCluster({ name: 'c3', id: 3, podCidr: '10.3.0.0/16', routing: 'hybrid', vpcs: 'a,b' });
    for (const c of CLUSTERS) await lab.ok(['lab', 'apply', '-f', ECHO_APP, '--context', c]);
    for (const c of CLUSTERS) {
      const r = await lab.slow(['enable', '--context', c]);
      if (r.exitCode !== 0) throw new Error(`enable ${c}: ${r.stderr}`);
    }
    for (const c of CLUSTERS) pods.set(c, await lab.pods(c));
  }, 1_200_000);

  afterAll(async () => {
    await Capture.stopAll();
    await lab.cleanup();
    rmSync(home, { recursive: true, force: true });
  }, 180_000);

  test('connect --connection-mode mesh: every cluster connected and synced to both others', async () => {
    const t0 = Date.now();
    const r = await lab.slow(['connect', '--context', 'c1', '--destination-context', 'c2,c3', '--connection-mode', 'mesh']);
    expect({ exitCode: r.exitCode, stderr: r.exitCode ? r.stderr : '' }).toEqual({ exitCode: 0, stderr: '' });
    for (const c of CLUSTERS) {
      const s = await lab.status(c, WAIT);
      process.stderr.write(`mesh-e2e (3 clusters): status --context ${c} --wait returned ${s.exitCode} ${since(t0)}s after connect\n`);
      expect({ c, exitCode: s.exitCode, err: s.exitCode ? s.stderr : '' }).toEqual({ c, exitCode: 0, err: '' });
      expect(s.report.peers.map((p: any) => [p.cluster, p.synced])).toEqual(CLUSTERS.filter((x) => x !== c).map((x) => [x, 2]));
      expect(s.report.summary).toMatchObject({ nodes: 2, connectedToAll: 2, min: 2, max: 2 });
    }
  }, 1_000_000);

  test('every pod reaches every pod across clusters (ICMP + HTTP), bare addresses only between c2 and the VPC-a node of c3', async () => {
    // one client per cluster and the echo replica on each node of the others
    const caps = [];
    for (const n of CLUSTERS.flatMap((c) => lab.nodes(c))) caps.push(await Capture.start(lab, n.link, 'icmp or udp port 8472'));
    const probes: Array<{ from: MeshPod; to: MeshPod }> = [];
    for (const a of CLUSTERS) {
      for (const b of CLUSTERS) {
        if (a === b) continue;
        const from = pods.get(a)!.find((p) => p.name === 'client')!;
        for (const to of pods.get(b)!.filter((p) => p.name.startsWith('echo-'))) probes.push({ from, to });
      }
    }
    for (const { from, to } of probes) {
      const what = `${from.cluster}/${from.name} -> ${to.cluster}/${to.name} on ${to.node}`;
      await eventually(() => ping(lab, from, to), 20_000, `ping ${what}`, 500);
      expect({ what, ...(await http(lab, from, to)) }).toMatchObject({ what, cluster: to.cluster, pod: to.name, clientIP: from.ip });
    }
    await new Promise((r) => setTimeout(r, 500));
    for (const c of caps) await c.stop();
    const packets = caps.flatMap((c) => c.packets());
    const vpcOf = (p: MeshPod): string => lab.nodes(p.cluster).find((n) => n.name === p.node)!.vpc;
    const nativeCapable = (c: string): boolean => c === 'c2' || c === 'c3';
    for (const { from, to } of probes) {
      const what = `${from.cluster}/${from.node} -> ${to.cluster}/${to.node}`;
      const bare = nativeCapable(from.cluster) && nativeCapable(to.cluster) && vpcOf(from) === vpcOf(to);
      const seen = pathOf(packets, from, to);
      expect({ what, native: seen.native, vxlan: seen.vxlan }).toEqual({ what, native: bare, vxlan: !bare });
    }
  }, 600_000);
});
