// The writer's compiled encoders make exactly the codecs' bytes, and reject what the codecs reject
// with the same message; each is compiled (not the codec fallback) for today's layouts.
import {
  IPCACHE_PREFIX_BASE,
  backendInfoCodec,
  backendKeyCodec,
  endpointInfoCodec,
  endpointKeyCodec,
  ipcacheInfoCodec,
  ipcacheKeyCodec,
  nodeInfoCodec,
  nodeKeyCodec,
  revNatInfoCodec,
  revNatKeyCodec,
  serviceInfoCodec,
  serviceKeyCodec,
  type StructCodec,
} from '../../src/datapath/codecs.js';
import { isCompiled, latin1Of, parseIpv4, prefixKeyEncoder, prefixKeyNumber, putLatin1, structEncoder } from '../../src/datapath/encoders.js';

const hex = (s: string): string => Buffer.from(s, 'latin1').toString('hex');

const cases: Array<[string, StructCodec<any>, unknown[]]> = [
  ['endpoint key', endpointKeyCodec, [{ ip: '10.1.2.3', clusterId: 0 }, { ip: '255.255.255.255', clusterId: 65535 }]],
  ['endpoint info', endpointInfoCodec, [{ ifindex: 7, lxcMac: '02:aa:bb:cc:dd:ee', podMac: 'fe:00:00:00:00:01', endpointId: 5, flags: 3, identity: 65538 }]],
  ['ipcache info', ipcacheInfoCodec, [{ identity: 0xffffff, tunnelIp: '172.31.1.2', nodeId: 16383, flags: 1 }, { identity: 0, tunnelIp: '0.0.0.0', nodeId: 0, flags: 0 }]],
  ['node key', nodeKeyCodec, [{ ip: '10.251.0.2' }]],
  ['node info', nodeInfoCodec, [{ nodeId: 2, clusterId: 1, flags: 1 }]],
  ['service key', serviceKeyCodec, [{ vip: '10.96.0.10', dport: 53, proto: 17 }]],
  ['service info', serviceInfoCodec, [{ count: 3, revNatId: 9, flags: 1 }]],
  ['backend key', backendKeyCodec, [{ revNatId: 9, slot: 1 }]],
  ['backend info', backendInfoCodec, [{ ip: '10.64.0.1', port: 8080, proto: 6, flags: 0, clusterId: 1 }]],
  ['rev-NAT key', revNatKeyCodec, [{ revNatId: 9 }]],
  ['rev-NAT info', revNatInfoCodec, [{ vip: '10.96.0.10', port: 53 }]],
];

describe('compiled encoders', () => {
  test.each(cases)('%s: compiled, same bytes as the codec', (_name, codec, values) => {
    const enc = structEncoder(codec);
    expect(isCompiled(enc)).toBe(true);
    for (const v of values) expect(hex(enc(v))).toBe(codec.encode(v).toString('hex'));
  });

  test.each([
    ['a u16 out of range', ipcacheInfoCodec, { identity: 1, tunnelIp: '1.2.3.4', nodeId: 70000, flags: 0 }],
    ['a bad address', ipcacheInfoCodec, { identity: 1, tunnelIp: '1.2.3.256', nodeId: 1, flags: 0 }],
    ['a short address', nodeKeyCodec, { ip: '10.1.2' }],
    ['a bad MAC', endpointInfoCodec, { ifindex: 7, lxcMac: '02:aa:bb:cc:dd', podMac: 'fe:00:00:00:00:01', endpointId: 5, flags: 3, identity: 1 }],
  ] as Array<[string, StructCodec<any>, unknown]>)('rejects %s with the codec’s message', (_name, codec, value) => {
    let want = '';
    try {
      codec.encode(value);
    } catch (err) {
      want = (err as Error).message;
    }
    expect(want).not.toBe('');
    expect(() => structEncoder(codec)(value)).toThrow(new RangeError(want));
  });

  test('the ipcache key encoder reads the address in place and matches the codec', () => {
    const enc = prefixKeyEncoder(ipcacheKeyCodec.layout, 'prefixlen', 'ip', (raw, ip) => ipcacheKeyCodec.encode({ prefixLen: raw - IPCACHE_PREFIX_BASE, clusterId: 0, ip }));
    expect(enc).not.toBeNull();
    for (const [prefix, len] of [['10.64.1.2/32', 32], ['10.0.0.0/8', 8], ['0.0.0.0/0', 0]] as const) {
      const end = prefix.indexOf('/');
      expect(hex(enc!(len + IPCACHE_PREFIX_BASE, prefix, 0, end))).toBe(ipcacheKeyCodec.encode({ prefixLen: len, clusterId: 0, ip: prefix.slice(0, end) }).toString('hex'));
    }
  });

  test('the numeric ipcache key round-trips the codec\'s bytes and leaves other bytes to strings', () => {
    const num = prefixKeyNumber(ipcacheKeyCodec.layout, 'prefixlen', 'ip', (raw, ip) => ipcacheKeyCodec.encode({ prefixLen: raw - IPCACHE_PREFIX_BASE, clusterId: 0, ip }));
    expect(num).not.toBeNull();
    const seen = new Set<number>();
    for (const [prefix, len] of [['10.64.1.2/32', 32], ['255.255.255.255/32', 32], ['10.0.0.0/8', 8], ['0.0.0.0/0', 0], ['10.0.0.0/9', 9]] as const) {
      const end = prefix.indexOf('/');
      const k = num!.encode(len + IPCACHE_PREFIX_BASE, prefix, 0, end);
      expect(Number.isSafeInteger(k)).toBe(true);
      seen.add(k);
      const want = ipcacheKeyCodec.encode({ prefixLen: len, clusterId: 0, ip: prefix.slice(0, end) });
      const b = Buffer.alloc(want.length + 4, 0xee);
      num!.put(k, b, 2);
      expect(b.subarray(2, 2 + want.length).toString('hex')).toBe(want.toString('hex'));
      expect(b[0]).toBe(0xee);
      expect(b[want.length + 2]).toBe(0xee);
      expect(num!.from(want, 0)).toBe(k);
    }
    expect(seen.size).toBe(5);
    expect(num!.from(ipcacheKeyCodec.encode({ prefixLen: 32, clusterId: 3, ip: '10.1.2.3' }), 0)).toBeUndefined();
  });

  test.each([4, 8, 12, 16, 24, 40])('latin1Of and putLatin1 agree with Buffer for %i bytes', (size) => {
    const b = Buffer.from(Array.from({ length: size + 3 }, (_, i) => (i * 37 + 200) & 0xff));
    const s = latin1Of(b.subarray(1), size);
    expect(s).toBe(b.toString('latin1', 1, 1 + size));
    const out = Buffer.alloc(size + 2);
    putLatin1(s, out, 1);
    expect(out.subarray(1, 1 + size).equals(b.subarray(1, 1 + size))).toBe(true);
    expect(out[0] + out[size + 1]).toBe(0);
  });

  test.each([
    ['1.2.3.4', 0x01020304],
    ['255.255.255.255', 0xffffffff],
    ['0.0.0.0', 0],
  ])('parseIpv4(%s)', (s, n) => {
    expect(parseIpv4(s)).toBe(n);
  });

  test.each(['1.2.3', '1.2.3.4.5', '1..3.4', '1.2.3.4444', 'a.b.c.d', '', '1.2.3.'])('parseIpv4 rejects %j', (s) => {
    expect(() => parseIpv4(s)).toThrow(new RangeError(`invalid IPv4 address ${JSON.stringify(s)}`));
  });
});
