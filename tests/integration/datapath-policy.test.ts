/**
 * Policy in the real datapath: one 2-node tunnel cluster with the echo app, NetworkPolicy and
 * MeshNetworkPolicy objects applied and removed through the CLI, real packets from the pods, and
 * the verdicts checked three ways: what the pods see (curl, ping, UDP echo), the flow events on
 * each node's flow socket, and the agents' Prometheus counters (read before and after).
 *
 * Traffic runs with `ip netns exec <pod netns>`, which is what `lab exec` does, without starting
 * a CLI per probe (that matters when timing how fast a removed policy stops dropping).
 * Own state dir (and so own name prefix); cleaned up before and after. Needs root.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES, TestLab, eventually, requireRoot, sh, sleep } from '../helpers/lab.js';
import { FlowTap, curl, inPod, matches, ping, sctpInit, tcp, udp, type FlowFilter, type FlowRecord } from '../helpers/traffic.js';
import { labPrefix } from '../../src/lab/state.js';
import { pidAlive } from '../../src/util/exec.js';

const lab = new TestLab('/tmp/meshctl-test-dp-policy');
const prefix = labPrefix(lab.home);
const CLUSTER = 'c1';
const POLICY = join(FIXTURES, 'policy');
const NODES = ['c1-n1', 'c1-n2'] as const;
type NodeName = (typeof NODES)[number];
const nodeNetns = (node: NodeName): string => `mesh${prefix}-${CLUSTER}.n${node.slice(-1)}`;
const PROTO_ICMP = 1;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_SCTP = 132;

interface Pod {
  readonly name: string;
  readonly ip: string;
  readonly node: NodeName;
  readonly netns: string;
}

/** meshctl_datapath_packets of one node: `verdict/reason/direction` → packets. */
async function packetCounters(node: NodeName): Promise<Map<string, number>> {
  const r = await sh('ip', ['netns', 'exec', nodeNetns(node), 'curl', '-s', '-m', '5', 'http://localhost:9962/metrics']);
  if (r.exitCode !== 0) throw new Error(`metrics of ${node}: curl exited ${r.exitCode}: ${r.stderr}`);
  const out = new Map<string, number>();
  for (const line of r.stdout.split('\n')) {
    const m = /^meshctl_datapath_packets\{([^}]*)\}\s+(\S+)$/.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...m[1].matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    out.set(`${labels.verdict}/${labels.reason}/${labels.direction}`, Number(m[2]));
  }
  return out;
}

/** Sum of counters whose `verdict/reason/direction` key passes the filter. */
function sumCounters(c: Map<string, number>, verdict: string, reason?: string, direction?: string): number {
  let n = 0;
  for (const [k, v] of c) {
    const [vd, rs, dir] = k.split('/');
    if (vd === verdict && (reason === undefined || rs === reason) && (direction === undefined || dir === direction)) n += v;
  }
  return n;
}

const apply = (file: string) => lab.ok(['lab', 'apply', '-f', join(POLICY, file), '--context', CLUSTER]);
const remove = (file: string) => lab.ok(['lab', 'remove', '-f', join(POLICY, file), '--context', CLUSTER]);

let client: Pod;
let other: Pod;
/** Echo pod on client's node / on the other node. */
let echoNearClient: Pod;
let echoFarFromClient: Pod;
const taps = new Map<NodeName, FlowTap>();
const tap = (node: NodeName): FlowTap => taps.get(node)!;
const agentPid = (node: NodeName): number => Number(readFileSync(join(lab.home, 'clusters', CLUSTER, 'run', `agent-${node}.pid`), 'utf8'));
const reported: string[] = [];

/** Wait until `from` → `to` on HTTP answers (ok) or times out (denied): policy changes are asynchronous. */
async function waitHttp(from: Pod, to: Pod, want: 'ok' | 'denied', port = 8080): Promise<void> {
  await eventually(
    async () => {
      const r = await curl(from, to, port, want === 'ok' ? 2 : 1);
      return want === 'ok' ? r.exitCode === 0 : r.exitCode === 28;
    },
    20_000,
    `${from.name} → ${to.name}:${port} ${want}`,
    200,
  );
}

/**
 * Probe `from` → `to` on HTTP back to back until it answers (ok) or times out (denied); ms counts
 * from `since`. The connect timeout sets the resolution: 50 ms when waiting for ok (a slow answer
 * only makes the figure worse), 200 ms when waiting for denied (a slow answer must not pass for a
 * drop). Throws after 10 s.
 */
async function timeUntil(from: Pod, to: Pod, want: 'ok' | 'denied', since: number): Promise<{ ms: number; attempts: number }> {
  let attempts = 0;
  for (;;) {
    attempts++;
    const r = await inPod(from, ['curl', '-s', '--connect-timeout', want === 'ok' ? '0.05' : '0.2', '-m', '1', `http://${to.ip}:8080/`]);
    if (want === 'ok' ? r.exitCode === 0 : r.exitCode === 28) return { ms: Date.now() - since, attempts };
    if (Date.now() - since > 10_000) throw new Error(`${from.name} → ${to.name} not ${want} 10 s on (curl exit ${r.exitCode})`);
  }
}

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
  await lab.ok(['lab', 'create', CLUSTER, '--id', '1', '--pod-cidr', '10.1.0.0/16', '--nodes', '2']);
  await lab.ok(['lab', 'apply', '-f', join(FIXTURES, 'echo-app.yaml'), '--context', CLUSTER]);
  const pods = (await lab.json(['lab', 'get', 'pods', '-n', 'demo', '--context', CLUSTER])).items.map(
    (p: any): Pod => ({ name: p.metadata.name, ip: p.status.podIP, node: p.spec.nodeName, netns: p.status.meshctl.netns }),
  ) as Pod[];
  client = pods.find((p) => p.name === 'client')!;
  other = pods.find((p) => p.name === 'other')!;
  const echos = pods.filter((p) => p.name.startsWith('echo-'));
  echoNearClient = echos.find((p) => p.node === client.node)!;
  echoFarFromClient = echos.find((p) => p.node !== client.node)!;
  expect(echoNearClient).toBeDefined();
  expect(echoFarFromClient).toBeDefined();
  // Everyone reaches everyone before any policy.
  for (const from of [client, other]) for (const to of echos) await waitHttp(from, to, 'ok');
  for (const n of NODES) taps.set(n, await FlowTap.open(lab.home, CLUSTER, n));
}, 180_000);

afterAll(async () => {
  for (const t of taps.values()) t.close();
  if (reported.length) process.stderr.write(`datapath-policy figures:\n  ${reported.join('\n  ')}\n`);
  await lab.cleanup();
}, 120_000);

/** Echo pods on the same node as `p` and on the other one. */
const echoesFor = (p: Pod): { same: Pod; remote: Pod } =>
  p.node === echoNearClient.node ? { same: echoNearClient, remote: echoFarFromClient } : { same: echoFarFromClient, remote: echoNearClient };

/** Checks shared by the NetworkPolicy and the MeshNetworkPolicy that admit app=client into the echo pods. */
async function expectIngressFromClientOnly(): Promise<void> {
  for (const echo of [echoNearClient, echoFarFromClient]) await waitHttp(other, echo, 'denied');
  for (const echo of [echoFarFromClient, echoNearClient]) {
    // Allowed, and the reply came back through the echo pod's egress (conntrack REPLY).
    const ok = await curl(client, echo);
    expect({ to: echo.name, exitCode: ok.exitCode }).toEqual({ to: echo.name, exitCode: 0 });
    expect(ok.body).toMatchObject({ pod: echo.name, clientIP: client.ip, clientPort: ok.sport });
    const reply = { verdict: 'FORWARDED', direction: 'egress', protocol: PROTO_TCP, src: echo.ip, sport: 8080, dst: client.ip, dport: ok.sport } as const;
    expect(await tap(echo.node).atLeast(reply, 1)).toBeGreaterThanOrEqual(1);
    expect(await tap(client.node).atLeast({ ...reply, direction: 'ingress' }, 1)).toBeGreaterThanOrEqual(1);

    // Denied at the echo pod's node, with the exact 5-tuple in the flow event.
    const denied = await curl(other, echo);
    expect({ to: echo.name, exitCode: denied.exitCode }).toEqual({ to: echo.name, exitCode: 28 });
    const drop = { verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'ingress', protocol: PROTO_TCP, src: other.ip, sport: denied.sport, dst: echo.ip, dport: 8080 } as const;
    expect(await tap(echo.node).atLeast(drop, 1)).toBeGreaterThanOrEqual(1);
    const ev = tap(echo.node).find(drop)!;
    expect(ev.node).toBe(echo.node);
    expect(ev.path).toBe(other.node === echo.node ? 'local' : 'tunnel');
    expect(ev.source.identity >> 16).toBe(1); // the sender's cluster-1 identity, carried in the VNI across nodes
    expect(ev.destination.identity >> 16).toBe(1);
    expect(ev.source.identity).not.toBe(ev.destination.identity);
  }
}

describe('datapath policy (2-node tunnel cluster)', () => {
  test('NetworkPolicy: echo pods admit app=client only; others dropped with POLICY_DENIED; replies pass', async () => {
    await apply('ingress-from-client.yaml');
    try {
      await expectIngressFromClientOnly();
      // Through the echo Service: the backend's policy judges the translated packet (its port 8080).
      const svc = (await lab.json(['lab', 'get', 'svc', '-n', 'demo', '--context', CLUSTER])).items[0].spec.clusterIP as string;
      const vip: Pod = { name: 'svc/echo', ip: svc, node: client.node, netns: '' };
      for (let i = 0; i < 3; i++) {
        const ok = await curl(client, vip, 80);
        expect(ok.exitCode).toBe(0);
        expect(ok.body).toMatchObject({ clientIP: client.ip, clientPort: ok.sport });
      }
      const denied = await curl(other, vip, 80);
      expect(denied.exitCode).toBe(28);
      const drop = { verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'ingress', src: other.ip, sport: denied.sport, dport: 8080 } as const;
      await eventually(async () => NODES.some((n) => tap(n).count(drop) >= 1), 10_000, 'a drop of other → echo Service at the backend', 50);
      // Unselected pods stay open: other still reaches client (no policy selects client).
      expect((await curl(other, client)).exitCode).toBe(0);
    } finally {
      await remove('ingress-from-client.yaml');
    }
    for (const echo of [echoNearClient, echoFarFromClient]) await waitHttp(other, echo, 'ok');
  });

  test('egress NetworkPolicy: other may open TCP 8080 to app=echo only; the rest dropped at its node; replies pass', async () => {
    const { same, remote } = echoesFor(other);
    await apply('egress-other-to-echo.yaml');
    try {
      await waitHttp(other, remote, 'denied', 9000);
      for (const echo of [same, remote]) {
        const ok = await curl(other, echo);
        expect({ to: echo.name, exitCode: ok.exitCode }).toEqual({ to: echo.name, exitCode: 0 });
        expect(ok.body).toMatchObject({ pod: echo.name, clientIP: other.ip, clientPort: ok.sport });
        // The reply enters other as a reply of its own allowed connection.
        const reply = { verdict: 'FORWARDED', direction: 'ingress', protocol: PROTO_TCP, src: echo.ip, sport: 8080, dst: other.ip, dport: ok.sport } as const;
        expect(await tap(other.node).atLeast(reply, 1)).toBeGreaterThanOrEqual(1);

        for (const port of [9000]) {
          const denied = await curl(other, echo, port);
          expect({ to: `${echo.name}:${port}`, exitCode: denied.exitCode }).toEqual({ to: `${echo.name}:${port}`, exitCode: 28 });
          const drop = { verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'egress', protocol: PROTO_TCP, src: other.ip, sport: denied.sport, dst: echo.ip, dport: port } as const;
          expect(await tap(other.node).atLeast(drop, 1)).toBeGreaterThanOrEqual(1);
        }
      }
      // Not app=echo: denied even on the allowed port.
      const toClient = await curl(other, client);
      expect(toClient.exitCode).toBe(28);
      expect(
        await tap(other.node).atLeast({ verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'egress', src: other.ip, sport: toClient.sport, dst: client.ip, dport: 8080 }, 1),
      ).toBeGreaterThanOrEqual(1);
      // UDP to echo is not allowed either: nothing comes back, and every datagram is dropped at other's node.
      const u = await udp(other, remote, 3);
      expect(u.replies).toBe(0);
      expect(
        await tap(other.node).atLeast({ verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'egress', protocol: PROTO_UDP, src: other.ip, sport: u.sport, dst: remote.ip, dport: 9001 }, 3),
      ).toBe(3);
      // client is not selected: unaffected.
      expect((await curl(client, echoFarFromClient)).exitCode).toBe(0);
    } finally {
      await remove('egress-other-to-echo.yaml');
    }
    await waitHttp(other, client, 'ok');
  });

  test('lab remove -f of a policy restores access within 1 s', async () => {
    const echo = echoesFor(other).remote;
    await apply('ingress-from-client.yaml');
    const enforced = await timeUntil(other, echo, 'denied', Date.now());
    reported.push(`policy apply → other → ${echo.name} dropped: ${enforced.ms} ms after apply exited (${enforced.attempts} probe(s), 200 ms connect timeout)`);
    await sleep(500);
    await remove('ingress-from-client.yaml');
    const restored = await timeUntil(other, echo, 'ok', Date.now());
    reported.push(`policy removal → access restored (other → ${echo.name} across nodes): ${restored.ms} ms after remove exited (${restored.attempts} attempt(s))`);
    expect(restored.ms).toBeLessThan(1500);
  });

  test('MeshNetworkPolicy (cilium.io/v2): echo pods admit app=client only, like the NetworkPolicy', async () => {
    await apply('mesh-ingress-from-client.yaml');
    try {
      await expectIngressFromClientOnly();
      // toPorts is split by protocol: client's UDP to 9001 passes and is echoed, other's is dropped.
      const ok = await udp(client, echoFarFromClient, 3);
      expect(ok.replies).toBe(3);
      const denied = await udp(other, echoFarFromClient, 3);
      expect(denied.replies).toBe(0);
      expect(
        await tap(echoFarFromClient.node).atLeast(
          { verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'ingress', protocol: PROTO_UDP, src: other.ip, sport: denied.sport, dst: echoFarFromClient.ip, dport: 9001 },
          3,
        ),
      ).toBe(3);
      // A port the policy does not list: client's ICMP echo is dropped too.
      expect(await ping(client, echoFarFromClient, 2)).toBe(0);
    } finally {
      await remove('mesh-ingress-from-client.yaml');
    }
    for (const echo of [echoNearClient, echoFarFromClient]) await waitHttp(other, echo, 'ok');
  });

  test('a policy updated in place (same name) narrows what it allows', async () => {
    const echo = echoFarFromClient;
    await apply('ingress-from-client.yaml');
    try {
      await waitHttp(other, echo, 'denied');
      expect((await curl(client, echo)).exitCode).toBe(0);
      expect((await tcp(client, echo, 9000)).exitCode).toBe(0);
      await apply('ingress-from-client-9000.yaml');
      await waitHttp(client, echo, 'denied');
      const denied = await curl(client, echo);
      expect(denied.exitCode).toBe(28);
      expect(
        await tap(echo.node).atLeast({ verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'ingress', src: client.ip, sport: denied.sport, dst: echo.ip, dport: 8080 }, 1),
      ).toBeGreaterThanOrEqual(1);
      expect((await tcp(client, echo, 9000)).exitCode).toBe(0);
      expect((await tcp(other, echo, 9000)).exitCode).toBe(28);
      // Likewise on the echo pod of client's own node (local delivery).
      await waitHttp(client, echoNearClient, 'denied');
      expect((await tcp(client, echoNearClient, 9000)).exitCode).toBe(0);
    } finally {
      await remove('ingress-from-client.yaml');
    }
    for (const from of [client, other]) await waitHttp(from, echo, 'ok');
  });

  test('MeshNetworkPolicy (meshctl.io/v1) egress: a port without protocol is allowed on TCP, UDP and SCTP, nothing else', async () => {
    const { same, remote } = echoesFor(other);
    await apply('mesh-egress-other-udp.yaml');
    try {
      await waitHttp(other, remote, 'denied');
      for (const echo of [same, remote]) {
        expect({ to: echo.name, replies: (await udp(other, echo, 3)).replies }).toEqual({ to: echo.name, replies: 3 });
        // TCP 9001 passes the policy and meets a closed port: refused, not timed out.
        expect({ to: echo.name, tcp9001: (await tcp(other, echo, 9001)).exitCode }).toEqual({ to: echo.name, tcp9001: 7 });
        const d = await tcp(other, echo, 9000);
        expect({ to: echo.name, tcp9000: d.exitCode }).toEqual({ to: echo.name, tcp9000: 28 });
        expect(
          await tap(other.node).atLeast({ verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'egress', src: other.ip, sport: d.sport, dst: echo.ip, dport: 9000 }, 1),
        ).toBeGreaterThanOrEqual(1);
      }
      // SCTP too: the rule carries its port (9001 passes at other's egress, 9002 is dropped there).
      const sctp = { protocol: PROTO_SCTP, direction: 'egress', src: other.ip, dst: remote.ip } as const;
      const allowedSport = await sctpInit(other, remote, 9001);
      expect(await tap(other.node).atLeast({ ...sctp, verdict: 'FORWARDED', sport: allowedSport, dport: 9001 }, 1)).toBe(1);
      const deniedSport = await sctpInit(other, remote, 9002);
      expect(await tap(other.node).atLeast({ ...sctp, verdict: 'DROPPED', dropReason: 'POLICY_DENIED', sport: deniedSport, dport: 9002 }, 1)).toBe(1);
      expect(tap(other.node).count({ ...sctp, sport: allowedSport, dport: 9001, verdict: 'DROPPED' })).toBe(0);
      // client is no echo pod: its UDP echo is out of reach.
      expect((await udp(other, client, 2)).replies).toBe(0);
    } finally {
      await remove('mesh-egress-other-udp.yaml');
    }
    await waitHttp(other, client, 'ok');
  });

  test('flow events and counters agree with the traffic sent', async () => {
    const N = 20;
    const K = 10;
    const echo = echoFarFromClient;

    // N pings across nodes, no policy: N forwarded each way at both nodes.
    const before = { src: await packetCounters(client.node), dst: await packetCounters(echo.node) };
    const srcMark = tap(client.node).records.length;
    const dstMark = tap(echo.node).records.length;
    expect(await ping(client, echo, N)).toBe(N);
    const req = { verdict: 'FORWARDED', protocol: PROTO_ICMP, src: client.ip, dst: echo.ip } as const;
    const rep = { verdict: 'FORWARDED', protocol: PROTO_ICMP, src: echo.ip, dst: client.ip } as const;
    const since = (t: FlowTap, mark: number, f: FlowFilter) => t.records.slice(mark).filter((r) => matches(r, f)).length;
    await tap(client.node).atLeast({ ...rep, direction: 'ingress' }, N);
    await tap(echo.node).atLeast({ ...rep, direction: 'egress' }, N);
    const seen = {
      srcEgress: since(tap(client.node), srcMark, { ...req, direction: 'egress' }),
      srcIngress: since(tap(client.node), srcMark, { ...rep, direction: 'ingress' }),
      dstIngress: since(tap(echo.node), dstMark, { ...req, direction: 'ingress' }),
      dstEgress: since(tap(echo.node), dstMark, { ...rep, direction: 'egress' }),
    };
    const after = { src: await packetCounters(client.node), dst: await packetCounters(echo.node) };
    const grew = {
      srcEgress: sumCounters(after.src, 'forwarded', undefined, 'egress') - sumCounters(before.src, 'forwarded', undefined, 'egress'),
      srcIngress: sumCounters(after.src, 'forwarded', undefined, 'ingress') - sumCounters(before.src, 'forwarded', undefined, 'ingress'),
      dstIngress: sumCounters(after.dst, 'forwarded', undefined, 'ingress') - sumCounters(before.dst, 'forwarded', undefined, 'ingress'),
      dstEgress: sumCounters(after.dst, 'forwarded', undefined, 'egress') - sumCounters(before.dst, 'forwarded', undefined, 'egress'),
    };
    // Labels read like the flow records: forwarded|dropped, a drop reason name, ingress|egress.
    for (const k of after.src.keys()) expect(k).toMatch(/^(forwarded\/NONE|dropped\/[A-Z_]+)\/(ingress|egress)$/);
    reported.push(`${N} pings client → ${echo.name}: FORWARDED events ${JSON.stringify(seen)}; forwarded counters grew ${JSON.stringify(grew)}`);
    for (const k of Object.keys(seen) as Array<keyof typeof seen>) {
      expect({ k, events: seen[k] >= N }).toEqual({ k, events: true });
      expect({ k, counter: grew[k] >= N }).toEqual({ k, counter: true });
    }

    // K denied pings and K denied UDP datagrams: K drops each, in events and in the counter.
    await apply('ingress-from-client.yaml');
    try {
      await waitHttp(other, echo, 'denied');
      await sleep(300);
      const b = await packetCounters(echo.node);
      const mark = tap(echo.node).records.length;
      expect(await ping(other, echo, K)).toBe(0);
      const u = await udp(other, echo, K);
      expect(u.replies).toBe(0);
      const dropIcmp = { verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'ingress', protocol: PROTO_ICMP, src: other.ip, dst: echo.ip } as const;
      const dropUdp = { verdict: 'DROPPED', dropReason: 'POLICY_DENIED', direction: 'ingress', protocol: PROTO_UDP, src: other.ip, sport: u.sport, dst: echo.ip, dport: 9001 } as const;
      await tap(echo.node).atLeast(dropUdp, K);
      const events = { icmp: since(tap(echo.node), mark, dropIcmp), udp: since(tap(echo.node), mark, dropUdp) };
      const a = await packetCounters(echo.node);
      const denied = sumCounters(a, 'dropped', 'POLICY_DENIED', 'ingress') - sumCounters(b, 'dropped', 'POLICY_DENIED', 'ingress');
      reported.push(`${K} denied pings + ${K} denied UDP datagrams other → ${echo.name}: DROPPED events ${JSON.stringify(events)}; POLICY_DENIED counter grew ${denied}`);
      expect(events).toEqual({ icmp: K, udp: K });
      expect(denied).toBeGreaterThanOrEqual(2 * K);
    } finally {
      await remove('ingress-from-client.yaml');
    }
  });
  test('the pinned policy keeps working while the agent restarts; a policy removed meanwhile is gone once it is back', async () => {
    const echo = echoesFor(other).remote;
    await apply('ingress-from-client.yaml');
    try {
      await waitHttp(other, echo, 'denied');
      const old = agentPid(echo.node);
      process.kill(old, 'SIGKILL');
      // No agent on echo's node right now: the maps stay pinned, the verdicts do not change.
      expect((await curl(other, echo, 8080, 1)).exitCode).toBe(28);
      expect((await curl(client, echo, 8080, 1)).exitCode).toBe(0);
      await eventually(async () => agentPid(echo.node) !== old && pidAlive(agentPid(echo.node)) && (await packetCounters(echo.node)).size > 0, 20_000, 'agent back', 200);
      // The restarted agent rebuilds the same state: still enforced, nothing flushed.
      expect((await curl(other, echo)).exitCode).toBe(28);
      expect((await curl(client, echo)).exitCode).toBe(0);

      const again = agentPid(echo.node);
      process.kill(again, 'SIGKILL');
      await remove('ingress-from-client.yaml');
      const restored = await timeUntil(other, echo, 'ok', Date.now());
      reported.push(`policy removed while the agent of ${echo.node} was down → access restored ${restored.ms} ms after remove exited`);
      expect(agentPid(echo.node)).not.toBe(again);
    } catch (err) {
      await lab.cli(['lab', 'remove', '-f', join(POLICY, 'ingress-from-client.yaml'), '--context', CLUSTER]);
      throw err;
    }
    // Its flow socket was made anew: subscribe again, and the stream flows.
    tap(echo.node).close();
    taps.set(echo.node, await FlowTap.open(lab.home, CLUSTER, echo.node));
    await eventually(
      async () => {
        const r = await curl(other, echo);
        const f = { verdict: 'FORWARDED', direction: 'ingress', src: other.ip, sport: r.sport, dst: echo.ip, dport: 8080 } as const;
        return r.exitCode === 0 && (await tap(echo.node).atLeast(f, 1, 2000)) >= 1;
      },
      20_000,
      `a flow event on the new flow socket of ${echo.node}`,
      200,
    );
  });
});

describe('Datapath.sync of policy rules', () => {
  // The compiler emits allow rules only, so the lab cannot change a rule's flags yet; the
  // Datapath API can (setPolicy with deny). Run it in a netns of its own: open() makes a VXLAN device.
  const netns = `mesh${prefix}-dpsync`;
  const pinDir = `/sys/fs/bpf/meshctl-test-dpsync-${prefix}`;
  const SCRIPT = `
const { Datapath } = await import(process.argv[1]);
const { Direction, MapNames, policyEntryCodec } = await import(process.argv[2]);
const dp = await Datapath.open({ pinDir: process.argv[3], nodeIp: '10.250.9.1', nodeId: 1, clusterId: 1, routing: 'tunnel', netdev: 'lo' });
const flags = () => [...dp.rawMap(MapNames.policy).entries()].map(([, v]) => policyEntryCodec.decode(v).flags);
const out = [];
dp.setPolicy(2, Direction.Ingress, [{ identity: 65537, port: 0, proto: 0 }]);
out.push({ sync: dp.sync(), flags: flags() });
dp.setPolicy(2, Direction.Ingress, [{ identity: 65537, port: 0, proto: 0, deny: true }]);
out.push({ sync: dp.sync(), flags: flags() });
out.push({ sync: dp.sync(), flags: flags() });
dp.close();
console.log(JSON.stringify(out));`;

  test('a rule whose allow/deny flag changed is rewritten; an unchanged one is left alone', async () => {
    requireRoot();
    await sh('ip', ['netns', 'del', netns]);
    await sh('rm', ['-rf', pinDir]);
    expect((await sh('ip', ['netns', 'add', netns])).exitCode).toBe(0);
    try {
      const dist = join(FIXTURES, '..', 'dist', 'src', 'datapath');
      const r = await sh('ip', ['netns', 'exec', netns, process.execPath, '--input-type=module', '-e', SCRIPT, join(dist, 'datapath.js'), join(dist, 'codecs.js'), pinDir]);
      expect(r.stderr).toBe('');
      expect(JSON.parse(r.stdout)).toEqual([
        { sync: { updated: 1, deleted: 0 }, flags: [0] },
        { sync: { updated: 1, deleted: 0 }, flags: [1] },
        { sync: { updated: 0, deleted: 0 }, flags: [1] },
      ]);
    } finally {
      await sh('ip', ['netns', 'del', netns]);
      await sh('rm', ['-rf', pinDir]);
    }
  });
});
