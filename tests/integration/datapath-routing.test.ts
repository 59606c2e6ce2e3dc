/**
 * The datapath in each routing mode, with real packets through a real 3-node lab cluster:
 * pod-to-pod ICMP, TCP and UDP on one node and across nodes, a ClusterIP service balancing TCP and
 * UDP over backends on every node with replies from the VIP, and what the underlay wire carries
 * (tcpdump in the underlay netns on node 1's port): VXLAN whose VNI is the source pod's identity
 * in tunnel mode, bare pod addresses in native mode (within one VPC, and across two through the
 * underlay's router), and both in hybrid mode depending on whether the peer node shares node 1's
 * VPC.
 *
 * One cluster per mode, created and deleted in turn; the pods are reused across the checks.
 * Own state dir (so own name prefix); cleaned up before and after.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES, TestLab, eventually, listNetns, requireRoot, sh } from '../helpers/lab.js';
import { labPrefix } from '../../src/lab/state.js';

const lab = new TestLab('/tmp/meshctl-test-datapath-routing');
const prefix = labPrefix(lab.home);
const UNDERLAY = `mesh${prefix}-underlay`;
const FIXTURE = join(FIXTURES, 'datapath', 'echo-spread.yaml');
const NS = 'dp';
const VXLAN_PORT = 8472;

type Routing = 'tunnel' | 'native' | 'hybrid';
type Path = 'tunnel' | 'native';

interface Mode {
  readonly label: string;
  readonly routing: Routing;
  readonly cluster: string;
  readonly id: number;
  readonly podCidr: string;
  readonly vpcs?: string;
}

const MODES: readonly Mode[] = [
  { label: 'tunnel', routing: 'tunnel', cluster: 'rt-tun', id: 21, podCidr: '10.121.0.0/16' },
  { label: 'native', routing: 'native', cluster: 'rt-nat', id: 22, podCidr: '10.122.0.0/16' },
  { label: 'hybrid over VPCs a,b', routing: 'hybrid', cluster: 'rt-hyb', id: 23, podCidr: '10.123.0.0/16', vpcs: 'a,b' },
  // native beyond one VPC: the underlay's router carries the pod slices between the VPCs
  { label: 'native over VPCs a,b', routing: 'native', cluster: 'rt-nv', id: 24, podCidr: '10.124.0.0/16', vpcs: 'a,b' },
];

/**
 * A UDP client run inside a pod: sends `count` datagrams to ip:port, each from a fresh socket (so
 * each is a new flow and a service picks a backend for each), and prints one JSON array with the
 * address each reply came from and the identity line it carried.
 */
const UDP_CLIENT = `
const dgram = require('node:dgram');
const [ip, port, count] = process.argv.slice(1);
const one = (i) => new Promise((resolve) => {
  const s = dgram.createSocket('udp4');
  const t = setTimeout(() => { s.close(); resolve({ i, error: 'timeout' }); }, 2000);
  s.on('message', (m, r) => {
    clearTimeout(t);
    s.close();
    resolve({ i, from: r.address, port: r.port, line: m.toString().split('\\n')[0] });
  });
  s.send('ping ' + i, Number(port), ip);
});
(async () => {
  const out = [];
  for (let i = 0; i < Number(count); i++) out.push(await one(i));
  console.log(JSON.stringify(out));
})();
`;

/**
 * A TCP client run inside a pod: writes `size` bytes to the echo port (which greets with one
 * identity line, then echoes) and prints how many bytes came back once `expect` of them have.
 * Segments this large go out as GSO/TSO packets: the path's MTU handling is exercised too.
 */
const TCP_BULK_CLIENT = `
const net = require('node:net');
const [ip, port, size, expect] = process.argv.slice(1);
const want = Number(expect);
let got = 0;
const s = net.connect(Number(port), ip, () => s.write(Buffer.alloc(Number(size), 0x61)));
const timer = setTimeout(() => { console.log(JSON.stringify({ got, error: 'timeout' })); process.exit(1); }, 10000);
s.on('data', (d) => {
  got += d.length;
  if (got >= want) { clearTimeout(timer); console.log(JSON.stringify({ got })); s.destroy(); }
});
s.on('error', (e) => { console.log(JSON.stringify({ got, error: e.message })); process.exit(1); });
`;
const BULK_BYTES = 2_000_000;

interface UdpReply {
  readonly i: number;
  readonly from?: string;
  readonly port?: number;
  readonly line?: string;
  readonly error?: string;
}

interface NodeInfo {
  readonly name: string;
  readonly ip: string;
  readonly vpc: string;
  readonly podCidr: string;
  readonly link: string;
}

interface PodInfo {
  readonly name: string;
  readonly node: string;
  readonly ip: string;
}

/** One packet tcpdump printed: the outer addresses, and for VXLAN the VNI and inner addresses. */
interface WirePacket {
  readonly outer: { src: string; dst: string; sport?: number; dport?: number };
  readonly vni?: number;
  readonly inner?: { src: string; dst: string; what: string };
}

const ADDR_LINE = /^\s+(\d+\.\d+\.\d+\.\d+)(?:\.(\d+))? > (\d+\.\d+\.\d+\.\d+)(?:\.(\d+))?: (.*)$/;

/** Parse `tcpdump -nn -v -T vxlan` output (a packet starts with its timestamp at column 0). */
function parseTcpdump(text: string): WirePacket[] {
  const blocks: string[][] = [];
  for (const line of text.split('\n')) {
    if (/^\d\d:\d\d:\d\d\.\d+ /.test(line)) blocks.push([line]);
    else if (blocks.length) blocks[blocks.length - 1].push(line);
  }
  const out: WirePacket[] = [];
  for (const b of blocks) {
    const addrs = b.map((l) => ADDR_LINE.exec(l)).filter((m): m is RegExpExecArray => m !== null);
    if (!addrs.length) continue;
    const [o, i] = addrs;
    const outer = { src: o[1], dst: o[3], sport: o[2] ? Number(o[2]) : undefined, dport: o[4] ? Number(o[4]) : undefined };
    const vni = /VXLAN, flags \[I\] \(0x08\), vni (\d+)/.exec(o[5]);
    if (vni && i) out.push({ outer, vni: Number(vni[1]), inner: { src: i[1], dst: i[3], what: i[5] } });
    else out.push({ outer });
  }
  return out;
}

/** Captures not stopped yet (afterAll stops them if a test could not). */
const running = new Set<{ stop(): Promise<void> }>();

/** tcpdump in the underlay netns on one port of a VPC bridge, line-buffered into memory. */
class Capture {
  private out = '';
  private err = '';
  private constructor(private readonly proc: ChildProcess) {
    proc.stdout!.on('data', (d: Buffer) => (this.out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (this.err += d.toString()));
  }

  static async start(dev: string, filter: string): Promise<Capture> {
    const proc = spawn('ip', ['netns', 'exec', UNDERLAY, 'tcpdump', '-i', dev, '-nn', '-v', '-l', '-T', 'vxlan', filter], { stdio: ['ignore', 'pipe', 'pipe'] });
    const cap = new Capture(proc);
    running.add(cap);
    try {
      await eventually(async () => cap.err.includes('listening on') || (proc.exitCode !== null ? Promise.reject(new Error(cap.err)) : false), 15_000, `tcpdump on ${dev}`);
    } catch (err) {
      await cap.stop();
      throw err;
    }
    return cap;
  }

  packets(): WirePacket[] {
    return parseTcpdump(this.out);
  }

  async stop(): Promise<void> {
    running.delete(this);
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
    this.proc.kill('SIGINT');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
}

beforeAll(async () => {
  requireRoot();
  await lab.cleanup();
}, 60_000);

afterAll(async () => {
  for (const c of [...running]) await c.stop();
  await lab.cleanup();
}, 60_000);

describe.each(MODES)('routing $label', (mode) => {
  const ctx = ['--context', mode.cluster];
  let nodes: NodeInfo[] = [];
  let pods: PodInfo[] = [];
  let storeEndpoint = '';
  let vip = '';

  const pod = (name: string): PodInfo => pods.find((p) => p.name === name)!;
  const echoOn = (i: number): PodInfo => pods.find((p) => p.name !== 'client' && p.node === nodes[i].name)!;
  const exec = (from: PodInfo, cmd: readonly string[]) => lab.cli(['lab', 'exec', ...ctx, `${NS}/${from.name}`, '--', ...cmd]);

  async function identities(): Promise<Map<string, number>> {
    const r = await sh('etcdctl', ['--endpoints', storeEndpoint, 'get', '--prefix', '/registry/meshendpoints/', '--print-value-only']);
    if (r.exitCode !== 0) throw new Error(`etcdctl: ${r.stderr}`);
    const out = new Map<string, number>();
    for (const line of r.stdout.split('\n').filter(Boolean)) {
      const ep = JSON.parse(line) as { spec: { ip: string; identity: number } };
      out.set(ep.spec.ip, ep.spec.identity);
    }
    return out;
  }

  async function ping(from: PodInfo, to: string): Promise<boolean> {
    const r = await exec(from, ['ping', '-c', '1', '-W', '2', to]);
    return r.exitCode === 0 && r.stdout.includes('1 received');
  }

  async function http(from: PodInfo, url: string): Promise<{ pod: string; node: string; clientIP: string }> {
    const r = await exec(from, ['curl', '-s', '-m', '3', url]);
    if (r.exitCode !== 0) throw new Error(`curl ${url} from ${from.name}: exit ${r.exitCode} ${r.stderr}`);
    return JSON.parse(r.stdout);
  }

  async function udp(from: PodInfo, ip: string, count: number): Promise<UdpReply[]> {
    const r = await exec(from, ['node', '-e', UDP_CLIENT, ip, '9001', String(count)]);
    if (r.exitCode !== 0) throw new Error(`udp client in ${from.name}: exit ${r.exitCode} ${r.stderr}`);
    return JSON.parse(r.stdout) as UdpReply[];
  }

  /** The path node 1's traffic to a peer node must take in this mode. */
  const pathTo = (peer: NodeInfo): Path =>
    mode.routing === 'tunnel' ? 'tunnel' : mode.routing === 'native' ? 'native' : peer.vpc === nodes[0].vpc ? 'native' : 'tunnel';

  /** The conversations checked: [what, from, to]. */
  const pairs = (): Array<[string, PodInfo, PodInfo]> => [
    ['same node', pod('client'), echoOn(0)],
    ['node 1 -> node 2', pod('client'), echoOn(1)],
    ['node 1 -> node 3', pod('client'), echoOn(2)],
    ['node 2 -> node 1', echoOn(1), pod('client')],
    ['node 2 -> node 3', echoOn(1), echoOn(2)],
  ];

  beforeAll(async () => {
    requireRoot();
    const args = ['lab', 'create', mode.cluster, '--id', String(mode.id), '--pod-cidr', mode.podCidr, '--nodes', '3', '--routing', mode.routing];
    await lab.ok(mode.vpcs ? [...args, '--vpc', mode.vpcs] : args);
    await lab.ok(['lab', 'apply', '-f', FIXTURE, ...ctx]);

    const list = await lab.json(['lab', 'list']);
    const c = list.clusters.find((x: any) => x.name === mode.cluster);
    storeEndpoint = c.store.endpoint;
    const state = JSON.parse(readFileSync(join(lab.home, 'lab.json'), 'utf8'));
    nodes = c.nodes.map((n: any) => ({ name: n.name, ip: n.ip, vpc: n.vpc, podCidr: n.podCidr, link: state.clusters[mode.cluster].nodes.find((s: any) => s.name === n.name).link }));
    pods = (await lab.json(['lab', 'get', 'pods', '-n', NS, ...ctx])).items.map((p: any) => ({ name: p.metadata.name, node: p.spec.nodeName, ip: p.status.podIP }));
    vip = (await lab.json(['lab', 'get', 'svc', '-n', NS, ...ctx])).items[0].spec.clusterIP;
    // every agent has published its endpoints (the ipcache of the other nodes follows from them)
    await eventually(async () => (await identities()).size === pods.length, 20_000, 'MeshEndpoints of every pod');
    // the agents' passes that follow program the other nodes' ipcache and the service: wait for
    // the first answers here, so every test below can expect each packet to get through
    for (const [what, from, to] of pairs()) {
      await eventually(() => ping(from, to.ip), 20_000, `first ping ${what} (${from.name} -> ${to.ip})`, 500);
    }
    await eventually(() => http(pod('client'), `http://${vip}:80/`), 20_000, `service ${vip}:80 answering`, 500);
  }, 180_000);

  afterAll(async () => {
    await lab.cli(['lab', 'delete', mode.cluster]);
  }, 60_000);

  test('placement: three nodes, one echo replica each, the client beside the first', () => {
    expect(nodes.map((n) => n.name)).toEqual([1, 2, 3].map((i) => `${mode.cluster}-n${i}`));
    expect(pods).toHaveLength(4);
    expect(pod('client').node).toBe(nodes[0].name);
    expect(nodes.map((_, i) => echoOn(i)?.node)).toEqual(nodes.map((n) => n.name));
    if (mode.vpcs) {
      // so node 1 has one peer in its VPC and one beyond it
      expect(nodes.map((n) => n.vpc)).toEqual(['a', 'b', 'a']);
      expect(nodes[1].ip.split('.')[2]).not.toBe(nodes[0].ip.split('.')[2]);
    } else {
      expect(new Set(nodes.map((n) => n.vpc)).size).toBe(1);
    }
  });

  test('pods reach pods on the same node and on other nodes: ICMP, TCP (and 2 MB echoed), UDP', async () => {
    const client = pod('client');
    for (const [what, from, to] of pairs()) {
      expect({ what, ping: await ping(from, to.ip) }).toEqual({ what, ping: true });

      const res = await http(from, `http://${to.ip}:8080/`);
      expect({ what, ...res }).toMatchObject({ what, pod: to.name, node: to.node, clientIP: from.ip });

      const [reply] = await udp(from, to.ip, 1);
      expect({ what, ...reply }).toEqual({ what, i: 0, from: to.ip, port: 9001, line: `${mode.cluster}/${to.node}/${NS}/${to.name}` });

      if (from === client) {
        const total = BULK_BYTES + `${mode.cluster}/${to.node}/${NS}/${to.name}\n`.length;
        const bulk = await exec(from, ['node', '-e', TCP_BULK_CLIENT, to.ip, '9000', String(BULK_BYTES), String(total)]);
        expect({ what, exitCode: bulk.exitCode, ...JSON.parse(bulk.stdout || '{}') }).toEqual({ what, exitCode: 0, got: total });
      }
    }
  });

  test('ClusterIP balances TCP and UDP over backends on every node; replies come from the VIP', async () => {
    const client = pod('client');
    const backends = pods.filter((p) => p.name !== 'client').map((p) => p.name).sort();
    expect(backends).toHaveLength(3);

    // TCP: 30 connections; curl only gets an answer when the replies come back from the VIP
    const script = `for i in $(seq 30); do curl -s -m 3 http://${vip}:80/ || echo '{"error":"curl '$?'"}'; echo; done`;
    const r = await exec(client, ['bash', '-c', script]);
    expect(r.exitCode).toBe(0);
    const answers = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    expect(answers).toHaveLength(30);
    for (const a of answers) expect(a).toMatchObject({ cluster: mode.cluster, clientIP: client.ip });
    expect([...new Set(answers.map((a) => a.pod))].sort()).toEqual(backends);

    // UDP: 30 flows; every reply's source is the VIP and port, not the backend
    const replies = await udp(client, vip, 30);
    expect(replies.filter((x) => x.error)).toEqual([]);
    for (const x of replies) expect({ from: x.from, port: x.port }).toEqual({ from: vip, port: 9001 });
    const answered = new Set(replies.map((x) => x.line!.split('/')[3]));
    expect([...answered].sort()).toEqual(backends);
    process.stderr.write(
      `${mode.label}: service ${vip} TCP ${countBy(answers.map((a) => a.pod))}; UDP ${countBy(replies.map((x) => x.line!.split('/')[3]))}\n`,
    );
  });

  test(`on the wire: ${mode.routing === 'tunnel' ? 'VXLAN with VNI = source identity' : mode.routing === 'native' ? 'pod addresses, no encapsulation' : 'native within the VPC, VXLAN across VPCs'}`, async () => {
    const client = pod('client');
    const ids = await identities();
    const peers = [echoOn(1), echoOn(2)];
    const peerNode = (p: PodInfo): NodeInfo => nodes.find((n) => n.name === p.node)!;
    for (const ip of [client.ip, ...peers.map((p) => p.ip)]) expect(ids.get(ip)! >> 16).toBe(mode.id);
    expect(ids.get(client.ip)).not.toBe(ids.get(peers[0].ip)); // so a VNI tells the two apart

    const cap = await Capture.start(nodes[0].link, `udp port ${VXLAN_PORT} or net ${mode.podCidr}`);
    try {
      for (const p of peers) {
        expect(await ping(client, p.ip)).toBe(true);
        await http(client, `http://${p.ip}:8080/`);
        await udp(client, p.ip, 1);
      }
      // both directions of every conversation seen (tcpdump is line-buffered but not instant)
      const between = (a: string, b: string) => (w: WirePacket) => {
        const x = w.inner ?? w.outer;
        return x.src === a && x.dst === b;
      };
      await eventually(
        async () => peers.every((p) => cap.packets().some(between(client.ip, p.ip)) && cap.packets().some(between(p.ip, client.ip))),
        15_000,
        'packets of both directions to both peers on the wire',
        200,
      );
    } finally {
      await cap.stop();
    }

    const wire = cap.packets();
    for (const p of peers) {
      const node = peerNode(p);
      const path = pathTo(node);
      const mine = wire.filter((w) => {
        const x = w.inner ?? w.outer;
        return (x.src === client.ip && x.dst === p.ip) || (x.src === p.ip && x.dst === client.ip);
      });
      const summary = mine.map((w) => (w.vni !== undefined ? `vxlan vni ${w.vni} ${w.outer.src}>${w.outer.dst}:${w.outer.dport} [${w.inner!.src}>${w.inner!.dst}]` : `plain ${w.outer.src}>${w.outer.dst}`));
      process.stderr.write(`${mode.label}: ${client.node} <-> ${node.name} (vpc ${nodes[0].vpc}/${node.vpc}) expect ${path}: ${mine.length} packets, e.g. ${summary.slice(0, 2).join('; ')}\n`);
      expect(mine.length).toBeGreaterThanOrEqual(4);
      if (path === 'tunnel') {
        for (const w of mine) {
          expect(w.vni).toBeDefined();
          // the VNI is the inner source's identity, in both directions
          expect({ inner: w.inner!.src, vni: w.vni }).toEqual({ inner: w.inner!.src, vni: ids.get(w.inner!.src) });
          const there = w.inner!.src === client.ip;
          expect({ src: w.outer.src, dst: w.outer.dst, dport: w.outer.dport }).toEqual({
            src: there ? nodes[0].ip : node.ip,
            dst: there ? node.ip : nodes[0].ip,
            dport: VXLAN_PORT,
          });
        }
      } else {
        // pod addresses themselves on the underlay, nothing encapsulated between these pods
        expect(mine.filter((w) => w.vni !== undefined)).toEqual([]);
      }
    }
    if (mode.routing === 'native') expect(wire.filter((w) => w.vni !== undefined)).toEqual([]);
    if (mode.routing === 'tunnel') expect(wire.filter((w) => w.vni === undefined)).toEqual([]);
  });
});

describe('after all modes', () => {
  test('nothing of the deleted clusters is left: namespaces, tcpdump', () => {
    expect(listNetns().filter((n) => n.startsWith(`mesh${prefix}-`))).toEqual([]);
    expect(running.size).toBe(0);
  });
});

function countBy(xs: readonly string[]): string {
  const m = new Map<string, number>();
  for (const x of xs) m.set(x, (m.get(x) ?? 0) + 1);
  return [...m].sort().map(([k, v]) => `${k.slice(-5)}=${v}`).join(' ');
}
