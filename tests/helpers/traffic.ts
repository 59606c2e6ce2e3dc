/**
 * Traffic helpers for integration tests on the lab: probes run inside pod namespaces with
 * `ip netns exec` (what `lab exec` does, without a CLI per probe), and a subscriber of an agent's
 * flow socket that keeps the records it reads.
 */
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { FlowRecord as AgentFlowRecord } from '../../src/agent/observability.js';
import { eventually, sh, sleep, type CliResult } from './lab.js';

/** A pod as the tests see it. */
export interface Pod {
  readonly name: string;
  readonly namespace?: string;
  readonly ip: string;
  readonly node: string;
  readonly netns: string;
}

/** Pods from `lab get pods -o json`. */
export function podsFrom(list: { items: any[] }): Pod[] {
  return list.items.map((p: any): Pod => ({ name: p.metadata.name, namespace: p.metadata.namespace, ip: p.status.podIP, node: p.spec.nodeName, netns: p.status.meshctl.netns }));
}

/** What the agent streams on its flow socket (one JSON object per line). */
export type FlowRecord = AgentFlowRecord;

/** What a flow must match; unset fields match anything. */
export interface FlowFilter {
  readonly verdict?: FlowRecord['verdict'];
  readonly dropReason?: string;
  readonly direction?: FlowRecord['direction'];
  readonly protocol?: number;
  readonly src?: string;
  readonly sport?: number;
  readonly dst?: string;
  readonly dport?: number;
}

export const matches = (r: FlowRecord, f: FlowFilter): boolean =>
  (f.verdict === undefined || r.verdict === f.verdict) &&
  (f.dropReason === undefined || r.dropReason === f.dropReason) &&
  (f.direction === undefined || r.direction === f.direction) &&
  (f.protocol === undefined || r.protocol === f.protocol) &&
  (f.src === undefined || r.source.ip === f.src) &&
  (f.sport === undefined || r.source.port === f.sport) &&
  (f.dst === undefined || r.destination.ip === f.dst) &&
  (f.dport === undefined || r.destination.port === f.dport);

/** A subscriber of one node's flow socket that keeps every record it reads. */
export class FlowTap {
  readonly records: FlowRecord[] = [];
  private buf = '';
  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.buf += chunk;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        if (line.trim()) this.records.push(JSON.parse(line) as FlowRecord);
      }
    });
    sock.on('error', () => undefined);
  }

  /** Subscribe to the flow socket of `node` of `cluster` in the lab at `home`. */
  static async open(home: string, cluster: string, node: string): Promise<FlowTap> {
    const path = join(home, 'clusters', cluster, 'run', `flows-${node}.sock`);
    const sock = connect(path);
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    await sleep(50); // the agent adds the subscriber on accept
    return new FlowTap(sock);
  }

  count(f: FlowFilter): number {
    return this.records.filter((r) => matches(r, f)).length;
  }

  find(f: FlowFilter): FlowRecord | undefined {
    return this.records.find((r) => matches(r, f));
  }

  /** Wait until at least n records match (events travel through a ring buffer and a socket). */
  async atLeast(f: FlowFilter, n: number, timeoutMs = 10_000): Promise<number> {
    await eventually(async () => this.count(f) >= n, timeoutMs, `${n} flow event(s) ${JSON.stringify(f)} (have ${this.count(f)})`, 50).catch(() => undefined);
    return this.count(f);
  }

  close(): void {
    this.sock.destroy();
  }
}

export async function inPod(pod: Pod, argv: readonly string[]): Promise<CliResult> {
  return sh('ip', ['netns', 'exec', pod.netns, ...argv]);
}

let localPort = 42000;
/** A fresh local port for a probe (so its 5-tuple is known). */
export const nextPort = (): number => localPort++;
/** One HTTP request from a fixed source port (so the 5-tuple is known); 28 = timed out. */
export async function curl(from: Pod, to: Pod, port = 8080, timeoutS = 2): Promise<{ exitCode: number; body: any; sport: number }> {
  const sport = nextPort();
  const r = await inPod(from, ['curl', '-s', '-m', String(timeoutS), '--local-port', String(sport), `http://${to.ip}:${port}/`]);
  let body: any = null;
  try {
    body = JSON.parse(r.stdout);
  } catch {
    body = null;
  }
  return { exitCode: r.exitCode, body, sport };
}

/** Send n UDP datagrams from a fixed source port, 20 ms apart; returns how many echoes came back. */
const UDP_SENDER = `
const d = require('dgram').createSocket('udp4');
const [ip, port, n, lport] = process.argv.slice(1);
let got = 0;
d.on('message', () => got++);
d.bind(Number(lport), async () => {
  for (let i = 0; i < Number(n); i++) {
    d.send('meshctl-' + i, Number(port), ip);
    await new Promise((r) => setTimeout(r, 20));
  }
  setTimeout(() => { console.log(got); d.close(); }, 1000);
});`;
export async function udp(from: Pod, to: Pod, n: number): Promise<{ replies: number; sport: number }> {
  const sport = nextPort();
  const r = await inPod(from, [process.execPath, '-e', UDP_SENDER, to.ip, '9001', String(n), String(sport)]);
  if (r.exitCode !== 0) throw new Error(`udp sender in ${from.name}: ${r.stderr}`);
  return { replies: Number(r.stdout.trim()), sport };
}

/** A TCP connection from a fixed source port that sends a line and waits for the echo: 0 = echoed,
 * 7 = refused (allowed, nothing listens), 28 = timed out (dropped). */
const TCP_CLIENT = `
const [ip, port, lport] = process.argv.slice(1);
const s = require('net').connect({ host: ip, port: Number(port), localPort: Number(lport) });
s.setTimeout(2000, () => process.exit(28));
s.on('connect', () => s.write('meshctl\\n'));
s.on('data', () => process.exit(0));
s.on('error', (e) => process.exit(e.code === 'ECONNREFUSED' ? 7 : 1));`;
export async function tcp(from: Pod, to: Pod, port: number): Promise<{ exitCode: number; sport: number }> {
  const sport = nextPort();
  const r = await inPod(from, [process.execPath, '-e', TCP_CLIENT, to.ip, String(port), String(sport)]);
  return { exitCode: r.exitCode, sport };
}

/** One SCTP INIT from a fixed source port through a raw socket (this kernel need not speak SCTP:
 * the verdict is read from the flow events, not from an answer). */
const SCTP_INIT = `
import socket, struct, sys
ip, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
s.sendto(struct.pack('!HHII', sport, port, 0, 0) + struct.pack('!BBHIIHHI', 1, 0, 20, 0x1234, 65535, 1, 1, 1), (ip, 0))`;
export async function sctpInit(from: Pod, to: Pod, port: number): Promise<number> {
  const sport = nextPort();
  const r = await inPod(from, ['python3', '-c', SCTP_INIT, to.ip, String(port), String(sport)]);
  if (r.exitCode !== 0) throw new Error(`sctp sender in ${from.name}: ${r.stderr}`);
  return sport;
}

/** n pings 100 ms apart; returns how many replies came back. */
export async function ping(from: Pod, to: Pod, n: number): Promise<number> {
  const r = await inPod(from, ['ping', '-n', '-q', '-c', String(n), '-i', '0.1', '-W', '1', to.ip]);
  const m = /(\d+) received/.exec(r.stdout);
  if (!m) throw new Error(`ping from ${from.name}: ${r.stdout} ${r.stderr}`);
  return Number(m[1]);
}

