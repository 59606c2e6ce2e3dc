// ClusterIP load balancing at scale and when backends go: 32-bit backend slots (500 and 70,000
// backends behind one VIP) and sticky conntrack entries revalidated against the service, so a
// client of a removed backend is moved or reset instead of talking into a void.
//
//   ns a 10.200.1.2 ─ lxca ┐                         ┌ lxcc ─ ns c 10.200.2.2
//   ns b 10.200.1.3 ─ lxcb ┘ node n1 ── eth0 ══ eth0 ── node n2
import type { ResultPromise } from 'execa';
import { execa } from 'execa';
import {
  Direction,
  MapNames,
  Proto,
  backendInfoCodec,
  backendKeyCodec,
  serviceInfoCodec,
  serviceKeyCodec,
} from '../../src/datapath/codecs.js';
import { BpfNet, inNs, type Pod, type TestNode } from '../helpers/bpf-net.js';

const net = new BpfNet('lb');
const ID = { a: 0x010101, b: 0x010102, c: 0x010103 };
const VIP = '10.96.0.10';
let n1: TestNode, n2: TestNode;
let a: Pod, b: Pod, c: Pod;

// Sends one UDP datagram from each of `n` source ports, so each is a new flow to the VIP.
const FLOWS_PY = `
import socket, sys
vip, port, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for sp in range(first, first + n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', sp))
    s.sendto(b'x', (vip, port))
    s.close()
`;

// Line echo server: answers every chunk with "<name>:<chunk>".
const ECHO_JS = `
const net = require('node:net');
const [port, name] = process.argv.slice(1);
net.createServer((s) => { s.on('data', (d) => s.write(name + ':' + String(d).trim() + '\\n')); s.on('error', () => {}); })
  .listen(+port, '0.0.0.0', () => console.log('ready'));`;

// UDP echo: answers every datagram with the same bytes.
const UDP_ECHO_JS = `
const dgram = require('node:dgram');
const u = dgram.createSocket('udp4');
u.on('message', (m, r) => u.send(m, r.port, r.address));
u.bind(+process.argv[1], '0.0.0.0', () => console.log('ready'));`;

// Sends one datagram of n bytes on a socket connected to vip:port (so only answers from the
// VIP count) and prints the size of the answer, "refused" (an ICMP port unreachable the
// kernel matched to this socket) or "timeout".
const UDP_CLIENT_PY = `
import socket, sys
vip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((vip, port))
s.send(b'f' * n)
try:
    print(len(s.recv(65536)))
except ConnectionRefusedError:
    print('refused')
except socket.timeout:
    print('timeout')
`;

// Connects, sends "1" and prints the answer; on "go" from stdin sends "2" and prints what
// happens to it: the answer, the socket error, or "timeout" (black-holed).
const CLIENT_JS = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
const s = net.connect(+port, host);
let phase = 1;
s.on('connect', () => s.write('1\\n'));
s.on('data', (d) => {
  process.stdout.write('reply ' + String(d));
  if (phase === 2) process.exit(0);
});
s.on('error', (e) => { process.stdout.write('error ' + e.code + '\\n'); process.exit(0); });
s.on('close', () => { process.stdout.write('closed\\n'); process.exit(0); });
process.stdin.on('data', () => {
  phase = 2;
  s.write('2\\n');
  setTimeout(() => { process.stdout.write('timeout\\n'); process.exit(0); }, 4000);
});`;

beforeAll(async () => {
  await net.setup();
  n1 = await net.addNode('n1', '10.99.0.1', '10.200.1.0', 1);
  n2 = await net.addNode('n2', '10.99.0.2', '10.200.2.0', 2);
  await net.linkNodes(n1, n2);
  a = await net.addPod(n1, 'a', '10.200.1.2', ID.a, 101);
  b = await net.addPod(n1, 'b', '10.200.1.3', ID.b, 102);
  c = await net.addPod(n2, 'c', '10.200.2.2', ID.c, 201);
  await net.wire(n1);
  await net.wire(n2);
  net.writeIpcache(n1, n2.podCidr, 24, ID.c, n2.ip);
  net.writeIpcache(n2, n1.podCidr, 24, ID.a, n1.ip);
  net.writePeerNode(n1, n2, 0);
  net.writePeerNode(n2, n1, 0);
}, 180_000);

afterAll(async () => {
  await net.teardown();
}, 60_000);

/** Synthetic backend address number i (10.224.0.0/11, routed nowhere). */
const syntheticIp = (i: number) => `10.${224 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;

function serviceEntries(port: number) {
  return net.conntrack(n1).filter((e) => e.key.direction === Direction.Service && e.key.daddr === VIP && e.key.dport === port);
}

async function sendFlows(port: number, firstPort: number, n: number): Promise<void> {
  await inNs(a.ns, 'python3', ['-c', FLOWS_PY, VIP, String(port), String(firstPort), String(n)], { timeout: 120_000 });
}

describe('services with many backends', () => {
  test('500 backends: new flows are spread over all of them', async () => {
    const backends = Array.from({ length: 500 }, (_, i) => ({ ip: syntheticIp(i + 1), port: 80 }));
    net.setService(n1, { vip: VIP, port: 500, proto: Proto.udp, revNatId: 50 }, backends);
    await sendFlows(500, 20_000, 8000);
    const chosen = serviceEntries(500);
    expect(chosen.length).toBe(8000);
    // With 8000 flows over 500 backends, missing one has a chance of about 5e-5.
    expect(new Set(chosen.map((e) => e.entry.natIp)).size).toBe(500);
    // Each entry records the slot it took, and that slot holds the backend it went to.
    for (const e of chosen.slice(0, 50)) {
      expect(e.entry.natIp).toBe(backends[e.entry.backendSlot - 1].ip);
    }
  }, 180_000);

  test('70,000 backend entries are programmed and selected among', async () => {
    const backends = Array.from({ length: 70_000 }, (_, i) => ({ ip: syntheticIp(i + 1), port: 8080 }));
    net.setService(n1, { vip: VIP, port: 700, proto: Proto.udp, revNatId: 70 }, backends);
    const info = net.map(n1, MapNames.services).lookup(serviceKeyCodec.encode({ vip: VIP, dport: 700, proto: Proto.udp }));
    expect(serviceInfoCodec.decode(info!).count).toBe(70_000);
    const last = net.map(n1, MapNames.backends).lookup(backendKeyCodec.encode({ revNatId: 70, slot: 70_000 }));
    expect(backendInfoCodec.decode(last!).ip).toBe(syntheticIp(70_000));

    await sendFlows(700, 40_000, 300);
    const chosen = serviceEntries(700);
    expect(chosen.length).toBe(300);
    const slots = chosen.map((e) => e.entry.backendSlot);
    // Spread over the whole range, beyond what a 16-bit slot could address.
    expect(new Set(slots).size).toBeGreaterThan(290);
    expect(Math.max(...slots)).toBeGreaterThan(65_536);
    for (const e of chosen) {
      expect(e.entry.natIp).toBe(backends[e.entry.backendSlot - 1].ip);
      expect(e.entry.natPort).toBe(8080);
    }
    // The translated packets really went to those backends.
    const egress = net.conntrack(n1).filter((e) => e.key.direction === Direction.Egress && e.key.dport === 8080 && e.key.saddr === a.ip);
    expect(egress.length).toBe(300);
  }, 180_000);
});

describe('a backend removed mid-connection', () => {
  const PORT = 80;
  const svc = { vip: VIP, port: PORT, proto: Proto.tcp, revNatId: 9 };

  beforeAll(async () => {
    await net.spawn(b.ns, process.execPath, ['-e', ECHO_JS, '7000', 'b']);
    await net.spawn(c.ns, process.execPath, ['-e', ECHO_JS, '7000', 'c']);
  }, 30_000);

  /** A client connection through the VIP that got its first answer from `want`. */
  async function connectedTo(want: string): Promise<{ child: ResultPromise; lines: string[] }> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const child = execa('ip', ['netns', 'exec', a.ns, process.execPath, '-e', CLIENT_JS, VIP, String(PORT)], { reject: false, buffer: false });
      const lines: string[] = [];
      child.stdout!.on('data', (d: Buffer) => lines.push(...String(d).split('\n').filter(Boolean)));
      for (let i = 0; i < 50 && lines.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
      if (lines[0] === `reply ${want}:1`) return { child, lines };
      child.kill('SIGKILL');
      await child;
    }
    throw new Error(`no connection reached backend ${want}`);
  }

  async function nextOutcome(conn: { child: ResultPromise; lines: string[] }): Promise<string> {
    conn.child.stdin!.write('go\n');
    await conn.child;
    return conn.lines[1] ?? '(nothing)';
  }

  test.each([
    ['its slot now holds another backend', 'rewrite'],
    ['the service count no longer covers its slot', 'shrink'],
  ])('%s: the client is moved or reset, never left with the removed backend', async (_name, how) => {
    let conn;
    if (how === 'rewrite') {
      net.setService(n1, svc, [{ ip: b.ip, port: 7000 }]);
      conn = await connectedTo('b');
      net.setService(n1, svc, [{ ip: c.ip, port: 7000 }]);
    } else {
      net.setService(n1, svc, [{ ip: c.ip, port: 7000 }, { ip: b.ip, port: 7000 }]);
      conn = await connectedTo('b');
      // Lower the count only: slot 2 still holds b in the map.
      net.map(n1, MapNames.services).update(
        serviceKeyCodec.encode({ vip: VIP, dport: PORT, proto: Proto.tcp }),
        serviceInfoCodec.encode({ count: 1, revNatId: svc.revNatId, flags: 0 }),
      );
    }
    const outcome = await nextOutcome(conn);
    // c knows nothing of the connection and resets it; b must not see it again.
    expect(outcome).not.toBe('reply b:2');
    expect(outcome).not.toBe('timeout');
    expect(['error ECONNRESET', 'reply c:2']).toContain(outcome);
    // The client's sticky entry was re-pointed: none of a's connections to the VIP sticks to b.
    expect(serviceEntries(PORT).filter((e) => e.key.saddr === a.ip && e.entry.natIp === b.ip)).toEqual([]);
  }, 60_000);

  test('a backend still in its slot keeps its connections', async () => {
    net.setService(n1, svc, [{ ip: b.ip, port: 7000 }]);
    const conn = await connectedTo('b');
    // Rewriting the same backend (an agent resync) changes nothing.
    net.setService(n1, svc, [{ ip: b.ip, port: 7000 }]);
    expect(await nextOutcome(conn)).toBe('reply b:2');
  }, 60_000);
});

describe('fragmented datagrams through a service', () => {
  beforeAll(async () => {
    await net.spawn(b.ns, process.execPath, ['-e', UDP_ECHO_JS, '5353']);
    await net.spawn(c.ns, process.execPath, ['-e', UDP_ECHO_JS, '5353']);
  }, 30_000);

  test.each([
    ['a local backend', 'b'],
    ['a backend across the tunnel', 'c'],
  ])('a 4 KB datagram to the VIP and its 4 KB answer, both fragmented, with %s', async (_name, which) => {
    const backend = which === 'b' ? b : c;
    net.setService(n1, { vip: VIP, port: 53, proto: Proto.udp, revNatId: 53 }, [{ ip: backend.ip, port: 5353 }]);
    const r = await inNs(a.ns, 'python3', ['-c', UDP_CLIENT_PY, VIP, '53', '4000']);
    expect(r.stdout.trim()).toBe('4000');
  });
});

describe('ICMP errors about service connections', () => {
  test.each([
    ['a local backend', 'b'],
    ['a backend across the tunnel', 'c'],
  ])("%s's port unreachable reaches the client as from the VIP", async (_name, which) => {
    const backend = which === 'b' ? b : c;
    // Nothing listens on 5999: the backend's kernel answers with ICMP port unreachable,
    // quoting a packet to backend:5999 that the client never addressed.
    net.setService(n1, { vip: VIP, port: 54, proto: Proto.udp, revNatId: 54 }, [{ ip: backend.ip, port: 5999 }]);
    const r = await inNs(a.ns, 'python3', ['-c', UDP_CLIENT_PY, VIP, '54', '10']);
    expect(r.stdout.trim()).toBe('refused');
  });
});
