/**
 * Helpers for the cluster-mesh end-to-end tests: clusters of a test lab, their pods, probes between
 * pods (ICMP, HTTP, UDP, a bulk TCP echo), a tcpdump of the underlay, and reads of a node's pinned
 * ipcache. Everything runs through the real CLI, the real namespaces and the real maps.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { BpfMap } from '../../src/datapath/addon.js';
import { MapNames, ipcacheInfoCodec, ipcacheKeyCodec } from '../../src/datapath/codecs.js';
import { nodePinDir } from '../../src/datapath/datapath.js';
import { labPrefix } from '../../src/lab/state.js';
import { BIN, TestLab, eventually } from './lab.js';

export const ECHO_NS = 'demo';

export interface ClusterSpec {
  readonly name: string;
  readonly id: number;
  readonly podCidr: string;
  /** Default 10.<96+id>.0.0/16: service CIDRs must be disjoint in a mesh. */
  readonly serviceCidr?: string;
  readonly routing?: 'tunnel' | 'native' | 'hybrid';
  readonly vpcs?: string;
  readonly nodes?: number;
}

export interface MeshPod {
  readonly cluster: string;
  readonly name: string;
  readonly node: string;
  readonly ip: string;
}

export interface MeshNode {
  readonly cluster: string;
  readonly name: string;
  readonly ip: string;
  readonly vpc: string;
  /** The node's port on its VPC bridge in the underlay netns. */
  readonly link: string;
}

export class MeshLab extends TestLab {
  readonly prefix: string;
  readonly underlay: string;
  constructor(home: string) {
    super(home);
    this.prefix = labPrefix(home);
    this.underlay = `mesh${this.prefix}-underlay`;
  }

  async createCluster(c: ClusterSpec): Promise<void> {
    const args = ['lab', 'create', c.name, '--id', String(c.id), '--pod-cidr', c.podCidr, '--service-cidr', c.serviceCidr ?? `10.${96 + c.id}.0.0/16`, '--nodes', String(c.nodes ?? 2), '--routing', c.routing ?? 'tunnel'];
    let r = await this.cli(c.vpcs ? [...args, '--vpc', c.vpcs] : args, {}, 240_000);
    for (let attempt = 2; attempt <= 3 && r.exitCode !== 0 && /were not ready within/.test(r.stderr); attempt++) {
      // a loaded shared machine can miss lab create's agent deadline: say so and try again (3 attempts)
      process.stderr.write(`mesh helper: lab create ${c.name} retried after: ${r.stderr.trim().split('\n').pop()}\n`);
      await this.cli(['lab', 'delete', c.name]);
      r = await this.cli(c.vpcs ? [...args, '--vpc', c.vpcs] : args, {}, 240_000);
    }
    if (r.exitCode !== 0) throw new Error(`lab create ${c.name} exited ${r.exitCode}: ${r.stderr}`);
  }

  /** meshctl with a long timeout (enable, connect and waits are slow on a shared machine). */
  async slow(args: readonly string[], env: Record<string, string> = {}, timeoutMs = 360_000) {
    return this.cli(args, env, timeoutMs);
  }

  state(): any {
    return JSON.parse(readFileSync(join(this.home, 'lab.json'), 'utf8'));
  }

  nodes(cluster: string): MeshNode[] {
    return this.state().clusters[cluster].nodes.map((n: any) => ({ cluster, name: n.name, ip: n.ip, vpc: n.vpc, link: n.link }));
  }

  async pods(cluster: string, ns = ECHO_NS): Promise<MeshPod[]> {
    const list = await this.json(['lab', 'get', 'pods', '-n', ns, '--context', cluster]);
    return list.items
      .filter((p: any) => p.status?.podIP)
      .map((p: any) => ({ cluster, name: p.metadata.name, node: p.spec.nodeName, ip: p.status.podIP }))
      .sort((a: MeshPod, b: MeshPod) => a.name.localeCompare(b.name));
  }

  exec(pod: MeshPod, argv: readonly string[], timeoutMs = 60_000) {
    return this.cli(['lab', 'exec', '--context', pod.cluster, `${ECHO_NS}/${pod.name}`, '--', ...argv], {}, timeoutMs);
  }

  /** A long-running command in a pod, not awaited (iperf3). */
  spawnIn(pod: MeshPod, argv: readonly string[]): ResultPromise {
    return execa(process.execPath, [BIN, 'lab', 'exec', '--context', pod.cluster, `${ECHO_NS}/${pod.name}`, '--', ...argv], {
      reject: false,
      env: { ...process.env, MESHCTL_HOME: this.home },
    });
  }

  async status(cluster: string, extra: readonly string[] = []): Promise<{ exitCode: number; report: any; stderr: string }> {
    const r = await this.cli(['status', '--context', cluster, '-o', 'json', ...extra], {}, 400_000);
    let report: any = null;
    try {
      report = JSON.parse(r.stdout);
    } catch {
      /* not json: stderr says why */
    }
    return { exitCode: r.exitCode, report, stderr: r.stderr };
  }

  /** Identity of each pod address of a cluster, from the MeshEndpoints its agents published. */
  async identities(cluster: string): Promise<Map<string, number>> {
    const r = await execa('etcdctl', ['--endpoints', this.state().clusters[cluster].store.endpoint, 'get', '--prefix', '/registry/meshendpoints/', '--print-value-only'], { reject: false });
    if (r.exitCode !== 0) throw new Error(`etcdctl: ${r.stderr}`);
    const out = new Map<string, number>();
    for (const line of String(r.stdout).split('\n').filter(Boolean)) {
      const ep = JSON.parse(line) as { spec: { ip: string; identity: number } };
      out.set(ep.spec.ip, ep.spec.identity);
    }
    return out;
  }

  /** A node's ipcache (the pinned map): /32 address → entry. Reopened on each read (a restart may replace the map). */
  ipcache(cluster: string, node: string): Map<string, { identity: number; tunnelIp: string; flags: number }> {
    const m = BpfMap.openPinned(join(nodePinDir(this.prefix, cluster, node), MapNames.ipcache));
    try {
      const d = m.dump();
      const ks = d.keys.length / d.count || 0;
      const vs = d.values.length / d.count || 0;
      const out = new Map<string, { identity: number; tunnelIp: string; flags: number }>();
      for (let i = 0; i < d.count; i++) {
        const k = ipcacheKeyCodec.decode(d.keys, i * ks);
        if (k.prefixLen !== 32) continue;
        const v = ipcacheInfoCodec.decode(d.values, i * vs);
        out.set(k.ip, { identity: v.identity, tunnelIp: v.tunnelIp, flags: v.flags });
      }
      return out;
    } finally {
      m.close();
    }
  }
}

/** Addresses of a map inside a /16 (the test clusters' pod CIDRs are all /16). */
export function inCidr16(ips: Iterable<string>, cidr: string): string[] {
  const net = cidr.split('.').slice(0, 2).join('.') + '.';
  return [...ips].filter((ip) => ip.startsWith(net)).sort();
}

/** Each reply as JSON: one UDP datagram to the echo port and its identity line. */
export const UDP_CLIENT = `
const dgram = require('node:dgram');
const [ip, port] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
const t = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(1); }, 3000);
s.on('message', (m, r) => { clearTimeout(t); console.log(JSON.stringify({ from: r.address, line: m.toString().split('\\n')[0] })); s.close(); });
s.send('ping', Number(port), ip);
`;

/** Writes size bytes to the TCP echo port (a greeting line, then the echo) and reports the bytes back. */
export const TCP_BULK_CLIENT = `
const net = require('node:net');
const [ip, port, size, expect] = process.argv.slice(1);
let got = 0;
const s = net.connect(Number(port), ip, () => s.write(Buffer.alloc(Number(size), 0x61)));
const timer = setTimeout(() => { console.log(JSON.stringify({ got, error: 'timeout' })); process.exit(1); }, 20000);
s.on('data', (d) => { got += d.length; if (got >= Number(expect)) { clearTimeout(timer); console.log(JSON.stringify({ got })); s.destroy(); } });
s.on('error', (e) => { console.log(JSON.stringify({ got, error: e.message })); process.exit(1); });
`;
export const BULK_BYTES = 2_000_000;

export async function ping(lab: MeshLab, from: MeshPod, to: MeshPod): Promise<boolean> {
  const r = await lab.exec(from, ['ping', '-c', '1', '-W', '2', to.ip]);
  return r.exitCode === 0 && r.stdout.includes('1 received');
}

export async function http(lab: MeshLab, from: MeshPod, to: MeshPod): Promise<any> {
  const r = await lab.exec(from, ['curl', '-s', '-m', '3', `http://${to.ip}:8080/`]);
  if (r.exitCode !== 0) throw new Error(`curl ${to.ip} from ${from.cluster}/${from.name}: exit ${r.exitCode} ${r.stderr}`);
  return JSON.parse(r.stdout);
}

export async function udp(lab: MeshLab, from: MeshPod, to: MeshPod): Promise<{ from?: string; line?: string; error?: string }> {
  const r = await lab.exec(from, ['node', '-e', UDP_CLIENT, to.ip, '9001']);
  return JSON.parse(r.stdout || '{"error":"no output"}');
}

export async function bulk(lab: MeshLab, from: MeshPod, to: MeshPod): Promise<{ exitCode: number; got?: number; error?: string; want: number }> {
  const want = BULK_BYTES + `${to.cluster}/${to.node}/${ECHO_NS}/${to.name}\n`.length;
  const r = await lab.exec(from, ['node', '-e', TCP_BULK_CLIENT, to.ip, '9000', String(BULK_BYTES), String(want)]);
  return { exitCode: r.exitCode, want, ...JSON.parse(r.stdout || '{}') };
}

/** One packet tcpdump printed: outer addresses and, for VXLAN, the VNI and the inner addresses. */
export interface WirePacket {
  readonly src: string;
  readonly dst: string;
  readonly vni?: number;
  readonly inner?: { readonly src: string; readonly dst: string };
}

const ADDR = /^\s*(\d+\.\d+\.\d+\.\d+)(?:\.\d+)? > (\d+\.\d+\.\d+\.\d+)(?:\.\d+)?: (.*)$/;

/** Parse `tcpdump -nn -v -T vxlan` (a packet starts with a timestamp at column 0; -i any prefixes the device). */
export function parseTcpdump(text: string): WirePacket[] {
  const blocks: string[][] = [];
  for (const line of text.split('\n')) {
    if (/^\d\d:\d\d:\d\d\.\d+ /.test(line)) blocks.push([line.replace(/^\S+\s+(?:\S+\s+(?:In|Out|M|B|P)\s+)?/, '')]);
    else if (blocks.length) blocks[blocks.length - 1].push(line);
  }
  const out: WirePacket[] = [];
  for (const b of blocks) {
    const addrs = b.map((l) => ADDR.exec(l)).filter((m): m is RegExpExecArray => m !== null);
    if (!addrs.length) continue;
    const [o, i] = addrs;
    const vni = /VXLAN, flags \[I\] \(0x08\), vni (\d+)/.exec(b.join(' '));
    if (vni && i) out.push({ src: o[1], dst: o[2], vni: Number(vni[1]), inner: { src: i[1], dst: i[2] } });
    else if (!vni) out.push({ src: o[1], dst: o[2] });
  }
  return out;
}

const captures = new Set<Capture>();

/** tcpdump in the lab's underlay netns, collected in memory. */
export class Capture {
  private out = '';
  private err = '';
  private constructor(private readonly proc: ChildProcess) {
    proc.stdout!.on('data', (d: Buffer) => (this.out += d.toString()));
    proc.stderr!.on('data', (d: Buffer) => (this.err += d.toString()));
  }

  static async start(lab: MeshLab, dev: string, filter: string): Promise<Capture> {
    const proc = spawn('ip', ['netns', 'exec', lab.underlay, 'tcpdump', '-i', dev, '-nn', '-v', '-l', '-T', 'vxlan', filter], { stdio: ['ignore', 'pipe', 'pipe'] });
    const cap = new Capture(proc);
    captures.add(cap);
    try {
      await eventually(async () => cap.err.includes('listening on') || (proc.exitCode !== null ? Promise.reject(new Error(cap.err)) : false), 20_000, `tcpdump on ${dev}`);
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
    captures.delete(this);
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
    this.proc.kill('SIGINT');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }

  /** Stop every capture a test left running (afterAll). */
  static async stopAll(): Promise<void> {
    for (const c of [...captures]) await c.stop();
  }
}

/** How packets from one pod to another crossed the wire: bare, VXLAN (with the VNIs seen), or not seen. */
export function pathOf(packets: readonly WirePacket[], from: MeshPod, to: MeshPod): { native: boolean; vxlan: boolean; vnis: number[] } {
  const bare = packets.some((p) => p.vni === undefined && p.src === from.ip && p.dst === to.ip);
  const enc = packets.filter((p) => p.vni !== undefined && p.inner?.src === from.ip && p.inner?.dst === to.ip);
  return { native: bare, vxlan: enc.length > 0, vnis: [...new Set(enc.map((p) => p.vni!))].sort() };
}

/** Seconds since t0, one decimal. */
export const since = (t0: number): number => Math.round((Date.now() - t0) / 100) / 10;
