// policyEntries(): rules → mesh_policy LPM entries. The verdict a lookup would get is simulated
// here the way the kernel answers (most specific prefix per lookup, identity then any), and
// compared with the rule semantics for every port of interest.
import { Direction, PolicyFlags, policyEntryCodec, policyKeyCodec, type PolicyKey } from '../../src/datapath/codecs.js';
import { policyEntries, policyEntryCount, splitPortRange, type PolicyRule } from '../../src/datapath/policy-keys.js';

describe('splitPortRange', () => {
  test.each([
    ['one port', 80, 80, [{ port: 80, prefixLen: 16 }]],
    ['an aligned block', 1024, 2047, [{ port: 1024, prefixLen: 6 }]],
    ['every port', 0, 65535, [{ port: 0, prefixLen: 0 }]],
    ['9000-9002', 9000, 9002, [{ port: 9000, prefixLen: 15 }, { port: 9002, prefixLen: 16 }]],
  ])('%s', (_name, first, last, want) => {
    expect(splitPortRange(first, last)).toEqual(want);
  });

  test('every range tiles exactly, with at most 30 prefixes', () => {
    const ranges: Array<[number, number]> = [[1, 65535], [20000, 29999], [1, 2], [32767, 32768], [4097, 61439]];
    for (let i = 0; i < 200; i++) {
      const x = (i * 7919) % 65536;
      const y = (i * 104729) % 65536;
      ranges.push([Math.min(x, y), Math.max(x, y)]);
    }
    for (const [first, last] of ranges) {
      const parts = splitPortRange(first, last);
      expect(parts.length).toBeLessThanOrEqual(30);
      let next = first;
      for (const p of parts) {
        expect(p.port).toBe(next);
        const size = 2 ** (16 - p.prefixLen);
        expect(p.port % size).toBe(0);
        next += size;
      }
      expect(next).toBe(last + 1);
    }
  });

  test('bad range', () => {
    expect(() => splitPortRange(10, 9)).toThrow('port range 10-9: must be 0 <= first <= last <= 65535');
  });
});

type Verdict = 'allow' | 'deny' | 'none';

/** The kernel's answer: longest prefix among entries of that identity, then combine like policy.h. */
function lookup(entries: Array<{ key: PolicyKey; deny: boolean }>, identity: number, proto: number, port: number): Verdict {
  const one = (id: number): Verdict => {
    let best: { len: number; deny: boolean } | null = null;
    for (const e of entries) {
      const k = e.key;
      if (k.identity !== id) continue;
      let len: number;
      if (k.proto === 0) len = 0;
      else if (k.proto !== proto) continue;
      else {
        const bits = k.portPrefixLen ?? 0;
        if (bits > 0 && port >>> (16 - bits) !== k.dport >>> (16 - bits)) continue;
        len = 8 + bits;
      }
      if (!best || len > best.len) best = { len, deny: e.deny };
    }
    return best ? (best.deny ? 'deny' : 'allow') : 'none';
  };
  const a = one(identity);
  const b = identity === 0 ? 'none' : one(0);
  if (a === 'deny' || b === 'deny') return 'deny';
  return a === 'allow' || b === 'allow' ? 'allow' : 'none';
}

/** What the rules mean: a deny among the matching rules wins, else any allow. */
function meaning(rules: PolicyRule[], identity: number, proto: number, port: number): Verdict {
  const m = rules.filter(
    (r) =>
      (r.identity === 0 || r.identity === identity) &&
      (r.proto === 0 || (r.proto === proto && (r.port === 0 || (port >= r.port && port <= (r.endPort ?? r.port))))),
  );
  if (m.some((r) => r.deny)) return 'deny';
  return m.length > 0 ? 'allow' : 'none';
}

function decode(rules: PolicyRule[]) {
  return policyEntries(7, Direction.Ingress, rules).map((e) => ({ key: policyKeyCodec.decode(e.key), deny: (policyEntryCodec.decode(e.value).flags & PolicyFlags.deny) !== 0 }));
}

const A = 0x010001;
const B = 0x010002;
const TCP = 6;
const UDP = 17;

describe('policyEntries', () => {
  const cases: Array<[string, PolicyRule[], number]> = [
    ['one port', [{ identity: A, port: 80, proto: TCP }], 1],
    ['L3 only', [{ identity: A, port: 0, proto: 0 }], 1],
    ['a 10,000-port range', [{ identity: A, port: 20000, endPort: 29999, proto: TCP }], 10],
    ['duplicates and covered allows collapse', [{ identity: A, port: 80, proto: TCP }, { identity: A, port: 80, proto: TCP }, { identity: A, port: 0, proto: TCP }], 1],
    ['overlapping ranges (the compiler merges them first; here they only must not conflict)', [{ identity: A, port: 1000, endPort: 2000, proto: TCP }, { identity: A, port: 1500, endPort: 3000, proto: TCP }], 11],
    ['a deny inside an allowed range', [{ identity: A, port: 20000, endPort: 29999, proto: TCP }, { identity: A, port: 25000, proto: TCP, deny: true }], 11],
    ['a deny covering allows turns them into denies (then collapses)', [{ identity: A, port: 20000, endPort: 29999, proto: TCP }, { identity: A, port: 0, proto: 0, deny: true }], 1],
    [
      'any-identity deny with identity allows',
      [{ identity: 0, port: 443, proto: TCP, deny: true }, { identity: A, port: 0, proto: 0 }, { identity: B, port: 400, endPort: 500, proto: TCP }, { identity: 0, port: 53, proto: UDP }],
      2 + 1 + splitPortRange(400, 500).length,
    ],
  ];

  test.each(cases)('%s', (_name, rules, count) => {
    const entries = decode(rules);
    expect(entries).toHaveLength(count);
    expect(policyEntryCount(rules)).toBe(count);
    const ports = new Set<number>([0, 1, 52, 53, 54, 79, 80, 81, 399, 400, 443, 450, 500, 501, 65535]);
    for (const r of rules) for (const p of [r.port, r.endPort ?? r.port]) for (const d of [-1, 0, 1]) if (p + d >= 0 && p + d <= 65535) ports.add(p + d);
    for (const id of [A, B, 0x020001])
      for (const proto of [TCP, UDP, 1])
        for (const port of ports) {
          const got = lookup(entries, id, proto, proto === 1 ? 0 : port);
          const want = meaning(rules, id, proto, proto === 1 ? 0 : port);
          expect({ id, proto, port, v: got }).toEqual({ id, proto, port, v: want === 'none' ? 'none' : want });
        }
  });

  test('entries are sorted and keyed to the endpoint and direction', () => {
    const e = policyEntries(9, Direction.Egress, [{ identity: B, port: 80, proto: TCP }, { identity: A, port: 0, proto: 0 }]).map((x) => policyKeyCodec.decode(x.key));
    expect(e).toEqual([
      { endpointId: 9, direction: Direction.Egress, identity: A, proto: 0, dport: 0, portPrefixLen: 0 },
      { endpointId: 9, direction: Direction.Egress, identity: B, proto: TCP, dport: 80, portPrefixLen: 16 },
    ]);
  });

  test('a port with protocol any is refused', () => {
    expect(() => policyEntries(1, Direction.Ingress, [{ identity: 0, port: 80, proto: 0 }])).toThrow('policy rule: protocol 0 (any) takes no port, got 80');
  });
});
