/**
 * Conntrack upkeep from user space: the datapath only ages entries (an entry past its
 * `expiresNs` is treated as missing); deleting them, and dropping every entry of an endpoint
 * that goes, is done here on the pinned `mesh_conntrack` map.
 *
 * Clock: the datapath stamps entries with bpf_ktime_get_ns(), which is CLOCK_MONOTONIC;
 * `process.hrtime.bigint()` reads the same clock (libuv's uv_hrtime), so it is the default "now".
 */
import type { BpfMap } from './addon.js';
import { ctEntryCodec, ctKeyCodec, CtFlags, Direction, type CtEntry, type CtKey } from './codecs.js';

/** What these functions need of a map: BpfMap has it. */
export type ConntrackMap = Pick<BpfMap, 'keys' | 'lookup' | 'delete'>;

/** Now on the datapath's clock (CLOCK_MONOTONIC), in nanoseconds. */
export function conntrackNow(): bigint {
  return process.hrtime.bigint();
}

/** Is the entry dead at `nowNs` (the datapath already treats it as missing)? */
export function conntrackExpired(entry: CtEntry, nowNs: bigint): boolean {
  return entry.expiresNs <= nowNs;
}

/**
 * Does the entry belong to `ip`: its tuple holds it, or (a SERVICE entry) it chose `ip` as the
 * backend?
 */
export function conntrackHoldsIp(key: CtKey, entry: CtEntry, ip: string): boolean {
  if (key.saddr === ip || key.daddr === ip) return true;
  return key.direction === Direction.Service && (entry.flags & CtFlags.service) !== 0 && entry.natIp === ip;
}

function sweep(map: ConntrackMap, doomed: (key: CtKey, entry: CtEntry) => boolean): number {
  let deleted = 0;
  for (const rawKey of map.keys()) {
    const rawValue = map.lookup(rawKey);
    if (rawValue === null) continue; // gone between the walk and the lookup (LRU, datapath)
    if (!doomed(ctKeyCodec.decode(rawKey), ctEntryCodec.decode(rawValue))) continue;
    if (map.delete(rawKey)) deleted++;
  }
  return deleted;
}

/**
 * Deletes every expired entry of `mesh_conntrack`. `nowNs` defaults to now on the datapath's
 * clock. Returns how many entries it deleted. Costs one walk of the map plus a lookup per entry;
 * run it every few seconds to a minute, not per packet.
 */
export function gcConntrack(map: ConntrackMap, nowNs: bigint = conntrackNow()): number {
  return sweep(map, (_key, entry) => conntrackExpired(entry, nowNs));
}

/**
 * Deletes every entry whose tuple holds `ip` (either end, any direction) and every SERVICE entry
 * that chose `ip` as its backend: for an endpoint that goes, so a pod that later gets the same
 * address starts with no state. Returns how many entries it deleted.
 */
export function flushConntrack(map: ConntrackMap, ip: string): number {
  return sweep(map, (key, entry) => conntrackHoldsIp(key, entry, ip));
}
