import { validateClusterId, validateClusterName, validatePodCidr, validateVpcNames, checkRangeFree } from '../../src/lab/validate.js';
import { parseCidr } from '../../src/util/cidr.js';
import { ValidationError } from '../../src/util/errors.js';

function message(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ValidationError);
    return (err as Error).message;
  }
  throw new Error('expected a ValidationError');
}

describe('lab input rules', () => {
  test.each([
    ['Bad_Name', `invalid cluster name "Bad_Name": must consist of a-z, 0-9 and '-', and start and end with a letter or digit`],
    ['a'.repeat(33), `invalid cluster name "${'a'.repeat(33)}": must be 1-32 characters long (got 33)`],
    ['default', 'invalid cluster name "default": the name is reserved'],
    ['-c1', `invalid cluster name "-c1": must consist of a-z, 0-9 and '-', and start and end with a letter or digit`],
  ])('cluster name %s', (name, want) => {
    expect(message(() => validateClusterName(name))).toBe(want);
  });

  test.each(['c1', 'a'.repeat(32), 'east-1'])('accepts cluster name %s', (name) => {
    expect(validateClusterName(name)).toBe(name);
  });

  test.each(['0', '256', 'abc', '1.5', '-1', ''])('cluster id %s', (id) => {
    expect(message(() => validateClusterId(id))).toBe(`invalid cluster id "${id}": must be an integer from 1 to 255`);
  });

  test.each([
    ['10.1.0.0/33', 'invalid pod CIDR "10.1.0.0/33": must be an IPv4 prefix like 10.1.0.0/16 with zero host bits'],
    ['10.1.0.1/16', 'invalid pod CIDR "10.1.0.1/16": must be an IPv4 prefix like 10.1.0.0/16 with zero host bits'],
    ['10.1.0.0/28', 'invalid pod CIDR "10.1.0.0/28": prefix length must be from /8 to /24'],
  ])('pod CIDR %s', (cidr, want) => {
    expect(message(() => validatePodCidr(cidr))).toBe(want);
  });

  test('VPC names', () => {
    expect(validateVpcNames('a,b')).toEqual(['a', 'b']);
    expect(message(() => validateVpcNames('a,a'))).toBe('invalid VPC list "a,a": names must be unique');
  });

  test('ranges colliding with host routes or the lab underlay', () => {
    const routes = [{ dst: parseCidr('192.0.2.0/24')!, text: '192.0.2.0/24 dev eth0' }];
    expect(message(() => checkRangeFree(parseCidr('192.0.0.0/16')!, 'pod CIDR', routes, []))).toBe(
      'pod CIDR 192.0.0.0/16 collides with host route 192.0.2.0/24 dev eth0',
    );
    expect(message(() => checkRangeFree(parseCidr('172.31.0.0/20')!, 'pod CIDR', routes, []))).toBe(
      "pod CIDR 172.31.0.0/20 collides with the lab's underlay range 172.31.0.0/16",
    );
    expect(() => checkRangeFree(parseCidr('10.1.0.0/16')!, 'pod CIDR', routes, [])).not.toThrow();
  });
});
