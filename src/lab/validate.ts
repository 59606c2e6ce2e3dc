/** Rules for user input to `lab create`: each failure is one line naming the value and the rule. */
import { MAX_NODES, ROUTING_MODES, VPC_BASE, type RoutingMode } from '../defaults.js';
import { cidrsOverlap, formatCidr, parseCidr, type Cidr } from '../util/cidr.js';
import { ValidationError } from '../util/errors.js';
import { run } from '../util/exec.js';

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

export function validateClusterName(name: string): string {
  if (name.length === 0 || name.length > 32) {
    throw new ValidationError('name', 'length', `invalid cluster name "${name}": must be 1-32 characters long (got ${name.length})`);
  }
  if (!DNS_LABEL.test(name)) {
    throw new ValidationError(
      'name',
      'dns-label',
      `invalid cluster name "${name}": must consist of a-z, 0-9 and '-', and start and end with a letter or digit`,
    );
  }
  if (name === 'default') {
    throw new ValidationError('name', 'reserved', `invalid cluster name "default": the name is reserved`);
  }
  return name;
}

export function validateClusterId(text: string | number): number {
  const s = String(text).trim();
  const n = /^\d+$/.test(s) ? Number(s) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 255) {
    throw new ValidationError('id', 'range', `invalid cluster id "${text}": must be an integer from 1 to 255`);
  }
  return n;
}

export function validateNodeCount(text: string | number): number {
  const s = String(text).trim();
  const n = /^\d+$/.test(s) ? Number(s) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > MAX_NODES) {
    throw new ValidationError('nodes', 'range', `invalid node count "${text}": must be an integer from 1 to ${MAX_NODES}`);
  }
  return n;
}

export function validateRouting(text: string): RoutingMode {
  if (!(ROUTING_MODES as readonly string[]).includes(text)) {
    throw new ValidationError('routing', 'enum', `invalid routing mode "${text}": must be one of ${ROUTING_MODES.join(', ')}`);
  }
  return text as RoutingMode;
}

export function validateVpcNames(text: string): string[] {
  const names = text.split(',').map((s) => s.trim());
  for (const n of names) {
    if (n.length === 0 || n.length > 15 || !DNS_LABEL.test(n)) {
      throw new ValidationError(
        'vpc',
        'dns-label',
        `invalid VPC name "${n}": must be 1-15 characters of a-z, 0-9 and '-', starting and ending with a letter or digit`,
      );
    }
  }
  if (new Set(names).size !== names.length) {
    throw new ValidationError('vpc', 'unique', `invalid VPC list "${text}": names must be unique`);
  }
  return names;
}

/** A pod CIDR: valid IPv4 prefix from /8 to /24 with zero host bits. */
export function validatePodCidr(text: string, what = 'pod CIDR'): Cidr {
  const c = parseCidr(text);
  if (!c) {
    throw new ValidationError('cidr', 'syntax', `invalid ${what} "${text}": must be an IPv4 prefix like 10.1.0.0/16 with zero host bits`);
  }
  if (c.prefix < 8 || c.prefix > 24) {
    throw new ValidationError('cidr', 'size', `invalid ${what} "${text}": prefix length must be from /8 to /24`);
  }
  return c;
}

export interface HostRoute {
  readonly dst: Cidr;
  readonly text: string;
}

/** The host's routes (all tables), except default routes. */
export async function hostRoutes(): Promise<HostRoute[]> {
  const r = await run('ip', ['-j', '-4', 'route', 'show', 'table', 'all']);
  const routes = JSON.parse(r.stdout || '[]') as Array<{ dst?: string; dev?: string; type?: string }>;
  const outRoutes: HostRoute[] = [];
  for (const rt of routes) {
    if (!rt.dst || rt.dst === 'default') continue;
    const dst = parseCidr(rt.dst.includes('/') ? rt.dst : `${rt.dst}/32`);
    if (dst) outRoutes.push({ dst, text: `${rt.dst}${rt.dev ? ` dev ${rt.dev}` : ''}` });
  }
  return outRoutes;
}

/** Refuse a range that collides with a host route or with the lab's own underlay ranges. */
export function checkRangeFree(c: Cidr, what: string, routes: readonly HostRoute[], labRanges: readonly Cidr[]): void {
  for (const rt of routes) {
    if (cidrsOverlap(c, rt.dst)) {
      throw new ValidationError('cidr', 'host-route', `${what} ${formatCidr(c)} collides with host route ${rt.text}`);
    }
  }
  for (const r of [parseCidr(VPC_BASE)!, ...labRanges]) {
    if (cidrsOverlap(c, r)) {
      throw new ValidationError('cidr', 'lab-range', `${what} ${formatCidr(c)} collides with the lab's underlay range ${formatCidr(r)}`);
    }
  }
}
