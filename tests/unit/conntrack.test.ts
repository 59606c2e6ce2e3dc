// The decisions of src/datapath/conntrack.ts that need no map: which entries are dead and which
// belong to an address. The map walks themselves run against the real pinned map in
// tests/integration/bpf-conntrack.test.ts.
import { CtFlags, Direction, Proto, type CtEntry, type CtKey } from '../../src/datapath/codecs.js';
import { conntrackExpired, conntrackHoldsIp, conntrackNow } from '../../src/datapath/conntrack.js';

const entry = (over: Partial<CtEntry> = {}): CtEntry => ({
  createdNs: 1n,
  lastSeenNs: 2n,
  expiresNs: 1_000n,
  packets: 1n,
  bytes: 60n,
  natIp: '0.0.0.0',
  natPort: 0,
  revNatId: 0,
  srcIdentity: 0x010101,
  backendSlot: 0,
  flags: 0,
  tcpFlags: 0,
  ...over,
});
const key = (over: Partial<CtKey> = {}): CtKey => ({
  saddr: '10.0.1.2',
  daddr: '10.0.2.3',
  sport: 40000,
  dport: 80,
  proto: Proto.tcp,
  direction: Direction.Egress,
  ...over,
});

describe('conntrackExpired', () => {
  test.each([
    ['before expiry', 999n, false],
    ['at expiry', 1_000n, true],
    ['after expiry', 5_000n, true],
  ])('%s', (_name, now, expired) => {
    expect(conntrackExpired(entry(), now)).toBe(expired);
  });

  test('now is on the monotonic clock and moves forward', () => {
    const a = conntrackNow();
    const b = conntrackNow();
    expect(b).toBeGreaterThanOrEqual(a);
  });
});

describe('conntrackHoldsIp', () => {
  test.each([
    ['source of the tuple', key(), entry(), '10.0.1.2', true],
    ['destination of the tuple', key(), entry(), '10.0.2.3', true],
    ['another address', key(), entry(), '10.0.9.9', false],
    [
      'the backend a SERVICE entry chose',
      key({ daddr: '10.96.0.10', direction: Direction.Service }),
      entry({ natIp: '10.0.7.7', flags: CtFlags.service }),
      '10.0.7.7',
      true,
    ],
    [
      'the VIP recorded in an EGRESS entry is not the endpoint',
      key(),
      entry({ natIp: '10.96.0.10', revNatId: 3 }),
      '10.96.0.10',
      false,
    ],
  ])('%s', (_name, k, e, ip, holds) => {
    expect(conntrackHoldsIp(k, e, ip)).toBe(holds);
  });
});
