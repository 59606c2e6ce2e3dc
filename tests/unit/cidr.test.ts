import { cidrsOverlap, formatCidr, parseCidr, parseIp, subnetAt, formatIp } from '../../src/util/cidr.js';

describe('cidr', () => {
  test.each([
    ['10.1.0.0/16', '10.1.0.0/16'],
    ['0.0.0.0/0', '0.0.0.0/0'],
    ['192.168.1.0/24', '192.168.1.0/24'],
  ])('parses %s', (text, want) => {
    expect(formatCidr(parseCidr(text)!)).toBe(want);
  });

  test.each(['10.1.0.1/16', '10.1.0.0/33', '10.1.0/16', '256.1.0.0/16', '10.1.0.0', 'abc', '01.1.0.0/16'])('rejects %s', (text) => {
    expect(parseCidr(text)).toBeNull();
  });

  test('overlap', () => {
    expect(cidrsOverlap(parseCidr('10.0.0.0/8')!, parseCidr('10.1.0.0/16')!)).toBe(true);
    expect(cidrsOverlap(parseCidr('10.1.0.0/16')!, parseCidr('10.2.0.0/16')!)).toBe(false);
  });

  test('subnets and addresses', () => {
    expect(formatCidr(subnetAt(parseCidr('10.1.0.0/16')!, 24, 3))).toBe('10.1.3.0/24');
    expect(() => subnetAt(parseCidr('10.1.0.0/24')!, 28, 16)).toThrow(/no subnet/);
    expect(formatIp(parseIp('255.254.1.0')!)).toBe('255.254.1.0');
  });
});
