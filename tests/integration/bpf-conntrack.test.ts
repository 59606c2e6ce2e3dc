// Conntrack with TCP state and lifetimes, its GC and flush from user space
// (src/datapath/conntrack.ts), fragments judged like their first fragment, and ICMP errors of
// tracked connections delivered past policy (path MTU discovery).
//
//   ns a 10.200.1.2 ─ lxca ┐                               10.97.0.1/24 (MTU 1280)
//   ns b 10.200.1.3 ─ lxcb ┤ node n1 ── ethr ══ eth0 ─ router r ─ eth1 ══ eth0 ─ server s
//                          │ 10.98.0.1/24      10.98.0.2/24                 10.97.0.2/24 (MTU 1500)
//                          └ eth0 ══ eth0 ── node n2 (10.99.0.0/24, only so every hook is wired)
import {
  CtFlags,
  CtState,
  Direction,
  DropReason,
  EndpointFlags,
  MapNames,
  Proto,
  Verdict,
  type CtEntry,
  type CtKey,
} from '../../src/datapath/codecs.js';
import { conntrackNow, flushConntrack, gcConntrack } from '../../src/datapath/conntrack.js';
import { BpfNet, inNs, ip, ping, sleep, type Pod, type TestNode } from '../helpers/bpf-net.js';

const net = new BpfNet('ct');
const ID = { a: 0x010101, b: 0x010102 };
let n1: TestNode, n2: TestNode;
let a: Pod, b: Pod;
let r = '', s = '';
let serverLines: string[] = [];

// TCP: "hello" answers and closes; "hold" answers every line and keeps the connection.
// UDP: reports every datagram as "udp <port> <bytes>" on stdout.
const SERVER_JS = `
const net = require('node:net'); const dgram = require('node:dgram');
net.createServer((c) => { c.end('hello\\n'); }).listen(7001, '0.0.0.0');
net.createServer((c) => { c.on('data', (d) => c.write(d)); c.on('error', () => {}); }).listen(7002, '0.0.0.0');
net.createServer({ allowHalfOpen: true }, (c) => { c.on('data', () => {}); c.on('error', () => {}); }).listen(7003, '0.0.0.0');
for (const port of [6001, 6002]) {
  const u = dgram.createSocket('udp4');
  u.on('message', (m) => console.log('udp ' + port + ' ' + m.length));
  u.bind(port, '0.0.0.0');
}
setTimeout(() => console.log('ready'), 200);`;

// Connects to host:port, optionally sends `bytes` bytes first; prints what comes back.
// Mode "hold" keeps the connection open until killed; "half" sends its FIN and then waits for
// the other side, which never closes.
const CLIENT_JS = `
const net = require('node:net');
const [host, port, mode, bytes] = process.argv.slice(1);
const s = net.connect({ port: +port, host, allowHalfOpen: true });
let got = '';
s.on('connect', () => {
  if (mode === 'hold') { s.write('x'); return; }
  if (mode === 'half') { s.end('x', () => setTimeout(() => console.log('ready'), 100)); return; }
  if (+bytes) s.end(Buffer.alloc(+bytes, 0x62));
});
s.on('data', (d) => { got += d; if (mode === 'hold') console.log('ready'); });
s.on('end', () => { process.stdout.write(got); process.exit(0); });
s.on('error', (e) => { console.error(e.message); process.exit(1); });
setTimeout(() => { console.error('timeout'); process.exit(1); }, +(process.env.CLIENT_TIMEOUT_MS || 5000));`;

// Counts what a TCP peer sends and answers "ok <n>" once it is done.
const SINK_JS = `
const net = require('node:net');
net.createServer((c) => { let n = 0; c.on('data', (d) => (n += d.length)); c.on('end', () => c.end('ok ' + n)); c.on('error', () => {}); })
  .listen(9000, '0.0.0.0', () => console.log('ready'));`;

beforeAll(async () => {
  await net.setup();
  n1 = await net.addNode('n1', '10.99.0.1', '10.200.1.0', 1);
  n2 = await net.addNode('n2', '10.99.0.2', '10.200.2.0', 2);
  await net.linkNodes(n1, n2);
  a = await net.addPod(n1, 'a', '10.200.1.2', ID.a, 101);
  b = await net.addPod(n1, 'b', '10.200.1.3', ID.b, 102);
  await net.wire(n1);
  await net.wire(n2);
  serverLines = (await net.spawn(b.ns, process.execPath, ['-e', SERVER_JS])).lines;
}, 180_000);

afterAll(async () => {
  await net.teardown();
}, 60_000);

async function client(mode: 'hello' | 'send', port: number, bytes = 0, host = b.ip, timeoutMs = 5000) {
  return inNs(a.ns, 'env', [`CLIENT_TIMEOUT_MS=${timeoutMs}`, process.execPath, '-e', CLIENT_JS, host, String(port), mode, String(bytes)], {
    reject: false,
    timeout: timeoutMs + 10_000,
  });
}

async function udp(port: number, bytes: number, host = b.ip): Promise<void> {
  await inNs(a.ns, 'python3', ['-c', `import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 41000)); s.sendto(b'u' * ${bytes}, ('${host}', ${port}))`]);
}

const between = (e: { key: CtKey }, x: Pod, y: Pod, dport: number) => e.key.saddr === x.ip && e.key.daddr === y.ip && e.key.dport === dport;

function entriesTo(port: number): { key: CtKey; entry: CtEntry }[] {
  return net.conntrack(n1).filter((e) => between(e, a, b, port));
}

describe('conntrack lifetimes', () => {
  beforeAll(async () => {
    // Short lifetimes for closed TCP and for UDP; long ones for the rest.
    await net.writeConfig(n1, { ctTcpSynS: 60, ctTcpEstablishedS: 3600, ctTcpCloseS: 2, ctOtherS: 2 });
  });

  test('entries carry CLOCK_MONOTONIC time, the clock process.hrtime.bigint() reads', async () => {
    const before = conntrackNow();
    await udp(6001, 10);
    const after = conntrackNow();
    const [e] = entriesTo(6001).filter((x) => x.key.direction === Direction.Egress);
    expect(e.entry.createdNs).toBeGreaterThanOrEqual(before);
    expect(e.entry.createdNs).toBeLessThanOrEqual(after);
    // UDP lives ct_other_s (2 s) after its last packet.
    expect(e.entry.expiresNs - e.entry.lastSeenNs).toBe(2_000_000_000n);
  });

  test('a closed TCP connection goes within the close lifetime; an open one stays', async () => {
    const held = await net.spawn(a.ns, 'env', ['CLIENT_TIMEOUT_MS=60000', process.execPath, '-e', CLIENT_JS, b.ip, '7002', 'hold', '0']);
    expect(held.lines).toContain('ready');
    const r = await client('hello', 7001);
    expect(r.stdout).toBe('hello');
    const closed = entriesTo(7001);
    // a's egress entry and b's ingress entry, both past a FIN.
    expect(closed.map((e) => e.key.direction).sort()).toEqual([Direction.Ingress, Direction.Egress]);
    for (const { entry } of closed) {
      expect(entry.flags & CtFlags.closing).toBe(CtFlags.closing);
      expect(entry.expiresNs - entry.lastSeenNs).toBe(2_000_000_000n);
    }
    const open = entriesTo(7002);
    expect(open.length).toBe(2);
    for (const { entry } of open) {
      expect(entry.flags & (CtFlags.established | CtFlags.closing)).toBe(CtFlags.established);
      expect(entry.expiresNs - entry.lastSeenNs).toBe(3600_000_000_000n);
    }

    await sleep(2500);
    const deleted = gcConntrack(net.map(n1, MapNames.conntrack));
    expect(deleted).toBeGreaterThanOrEqual(2);
    expect(entriesTo(7001)).toEqual([]);
    expect(entriesTo(7002).length).toBe(2);
  }, 30_000);

  test('a half-closed TCP connection (one FIN) keeps the established lifetime', async () => {
    const half = await net.spawn(a.ns, 'env', ['CLIENT_TIMEOUT_MS=60000', process.execPath, '-e', CLIENT_JS, b.ip, '7003', 'half', '0']);
    expect(half.lines).toContain('ready');
    const entries = entriesTo(7003);
    expect(entries.length).toBe(2);
    for (const { entry } of entries) {
      expect(entry.flags & (CtFlags.finOpener | CtFlags.finReply | CtFlags.closing)).toBe(CtFlags.finOpener);
      expect(entry.expiresNs - entry.lastSeenNs).toBe(3600_000_000_000n);
    }
  });

  test('an expired UDP flow is treated as new (policy again) and then collected', async () => {
    net.setRule(n1, { endpointId: b.epId, direction: Direction.Ingress, proto: Proto.udp, identity: ID.a, dport: 6002 });
    net.writeEndpoint(n1, b, EndpointFlags.policyIngress);
    try {
      await udp(6002, 10);
      const first = entriesTo(6002).find((e) => e.key.direction === Direction.Ingress)!;
      expect(first).toBeDefined();
      // The rule goes; within the lifetime the flow still passes as established.
      net.clearRules(n1);
      const events = await net.flows(n1, () => udp(6002, 10));
      expect(events.find((e) => e.daddr === b.ip && e.direction === Direction.Ingress)).toMatchObject({
        verdict: Verdict.Forwarded,
        ctState: CtState.Established,
      });
      // Past it, the next datagram is a new flow and meets the policy.
      await sleep(2500);
      const denied = net.metric(n1, DropReason.PolicyDenied, Direction.Ingress);
      await udp(6002, 10);
      expect(net.metric(n1, DropReason.PolicyDenied, Direction.Ingress)).toBeGreaterThan(denied);
      await sleep(2500);
      gcConntrack(net.map(n1, MapNames.conntrack));
      expect(entriesTo(6002)).toEqual([]);
    } finally {
      net.writeEndpoint(n1, b);
    }
  }, 30_000);

  test("flushConntrack removes every entry of an endpoint's address", async () => {
    await net.writeConfig(n1, { ctOtherS: 600 });
    expect(await ping(a.ns, b.ip)).toBe(true);
    expect(await ping(b.ns, a.ip)).toBe(true);
    await udp(6001, 10);
    const m = net.map(n1, MapNames.conntrack);
    const holding = net.conntrack(n1).filter((e) => e.key.saddr === b.ip || e.key.daddr === b.ip);
    expect(holding.length).toBeGreaterThanOrEqual(5);
    // Entries that do not hold b's address stay.
    const others = net.conntrack(n1).filter((e) => e.key.saddr !== b.ip && e.key.daddr !== b.ip).length;
    expect(flushConntrack(m, b.ip)).toBe(holding.length);
    expect(net.conntrack(n1).filter((e) => e.key.saddr === b.ip || e.key.daddr === b.ip)).toEqual([]);
    expect(net.conntrack(n1).length).toBe(others);
  });
});

describe('fragments', () => {
  beforeAll(async () => {
    await net.writeConfig(n1);
    flushConntrack(net.map(n1, MapNames.conntrack), b.ip);
    net.clearRules(n1);
    net.setRule(n1, { endpointId: b.epId, direction: Direction.Ingress, proto: Proto.udp, identity: ID.a, dport: 6001 });
    net.writeEndpoint(n1, b, EndpointFlags.policyIngress);
  });

  afterAll(() => {
    net.clearRules(n1);
    net.writeEndpoint(n1, b);
  });

  test('a 4 KB UDP datagram (3 fragments at MTU 1450) to an allowed port arrives whole', async () => {
    const before = net.metric(n1, DropReason.FragNotFound, Direction.Ingress);
    const denied = net.metric(n1, DropReason.PolicyDenied, Direction.Ingress);
    const events = await net.flows(n1, () => udp(6001, 4000));
    const atB = events.filter((e) => e.daddr === b.ip && e.direction === Direction.Ingress && e.proto === Proto.udp);
    expect(atB.length).toBe(3);
    expect(atB.every((e) => e.verdict === Verdict.Forwarded && e.dport === 6001)).toBe(true);
    expect(net.metric(n1, DropReason.PolicyDenied, Direction.Ingress)).toBe(denied);
    expect(net.metric(n1, DropReason.FragNotFound, Direction.Ingress)).toBe(before);
    await sleep(200);
    expect(serverLines).toContain('udp 6001 4000');
  });

  test('the same datagram to a port the policy does not allow is dropped, every fragment', async () => {
    const denied = net.metric(n1, DropReason.PolicyDenied, Direction.Ingress);
    const events = await net.flows(n1, () => udp(6002, 4000));
    const atB = events.filter((e) => e.daddr === b.ip && e.direction === Direction.Ingress && e.proto === Proto.udp);
    expect(atB.length).toBe(3);
    expect(atB.every((e) => e.verdict === Verdict.Dropped && e.dropReason === DropReason.PolicyDenied && e.dport === 6002)).toBe(true);
    expect(net.metric(n1, DropReason.PolicyDenied, Direction.Ingress)).toBe(denied + 3n);
    await sleep(200);
    expect(serverLines).not.toContain('udp 6002 4000');
  });
});

describe('ICMP errors of tracked connections', () => {
  beforeAll(async () => {
    r = await net.addNetns('r');
    s = await net.addNetns('s');
    await ip(n1.ns, 'link', 'add', 'ethr', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', r);
    await ip(r, 'link', 'add', 'eth1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', s);
    await ip(n1.ns, 'addr', 'add', '10.98.0.1/24', 'dev', 'ethr');
    await ip(r, 'addr', 'add', '10.98.0.2/24', 'dev', 'eth0');
    await ip(r, 'addr', 'add', '10.97.0.1/24', 'dev', 'eth1');
    await ip(s, 'addr', 'add', '10.97.0.2/24', 'dev', 'eth0');
    // The small link: r sends at most 1280 bytes towards s; s itself has 1500, so it offers
    // an MSS of 1460 and only path MTU discovery can tell a to send less.
    await ip(r, 'link', 'set', 'eth1', 'mtu', '1280');
    for (const [ns, dev] of [[n1.ns, 'ethr'], [r, 'eth0'], [r, 'eth1'], [s, 'eth0']]) await ip(ns, 'link', 'set', dev, 'up');
    await inNs(r, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    await ip(n1.ns, 'route', 'add', '10.97.0.0/24', 'via', '10.98.0.2');
    await ip(r, 'route', 'add', '10.200.1.0/24', 'via', '10.98.0.1');
    await ip(s, 'route', 'add', 'default', 'via', '10.97.0.1');
    await net.spawn(s, process.execPath, ['-e', SINK_JS]);
    // a admits nothing from the world: the router's "fragmentation needed" can only pass as
    // an error about a's own connection.
    net.setRule(n1, { endpointId: a.epId, direction: Direction.Ingress, proto: 0, identity: ID.b, dport: 0 });
    net.writeEndpoint(n1, a, EndpointFlags.policyIngress);
  }, 60_000);

  test('path MTU discovery across a 1280-byte link: a 4 MB transfer with DF completes', async () => {
    const bytes = 4 * 1024 * 1024;
    const events = await net.flows(n1, async () => {
      const res = await client('send', 9000, bytes, '10.97.0.2', 20_000);
      expect(res.stderr).toBe('');
      expect(res.stdout).toBe(`ok ${bytes}`);
    });
    // The router's error reached a as RELATED to a's connection.
    expect(events.find((e) => e.proto === Proto.icmp && e.daddr === a.ip && e.saddr === '10.98.0.2')).toMatchObject({
      verdict: Verdict.Forwarded,
      ctState: CtState.Related,
      direction: Direction.Ingress,
    });
    // a's route cache learnt the smaller path MTU.
    const { stdout } = await ip(a.ns, 'route', 'get', '10.97.0.2');
    expect(stdout).toMatch(/mtu 1280/);
  }, 60_000);

  test('an ICMP error about no tracked connection still meets policy', async () => {
    // Made by hand in the router: a port-unreachable quoting a UDP datagram a never sent.
    const denied = net.metric(n1, DropReason.PolicyDenied, Direction.Ingress);
    await inNs(r, 'python3', [
      '-c',
      [
        'import socket, struct',
        'def csum(b):',
        '    if len(b) % 2: b += b"\\0"',
        '    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16',
        '    return ~s & 0xffff',
        `inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, socket.inet_aton("${a.ip}"), socket.inet_aton("10.97.0.2")) + struct.pack("!HHHH", 45000, 53, 8, 0)`,
        'icmp = struct.pack("!BBHI", 3, 3, 0, 0) + inner',
        'icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]',
        'x = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)',
        `x.sendto(icmp, ("${a.ip}", 0))`,
      ].join('\n'),
    ]);
    await sleep(200);
    expect(net.metric(n1, DropReason.PolicyDenied, Direction.Ingress)).toBeGreaterThan(denied);
  });
});
