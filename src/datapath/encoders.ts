/**
 * Fast encoders for the writer's hot path (hundreds of thousands of ipcache entries per flush).
 *
 * Each one is compiled from a codec's declared layout (codecs.ts stays the one definition of the
 * bytes) and checked once against that codec's own encode() on a probe value; when they disagree
 * (a codec that transforms its fields, a layout this compiler does not know) the codec itself is
 * used. Encoders write into one scratch buffer and return the bytes as a latin1 string: a
 * compact, comparable, hashable string per entry instead of a Buffer object.
 */
import type { FieldLayout, StructCodec, StructLayout } from './codecs.js';

export type Encoder<T> = (value: T) => string;

const compiled = new WeakSet<object>();

/** True when `encoder` is a compiled one (it agreed with its codec), false when it is the codec's own. */
export function isCompiled(encoder: object): boolean {
  return compiled.has(encoder);
}

/** The bytes of a latin1 string (as Encoders return them). */
export function bytesOf(s: string): Buffer {
  return Buffer.from(s, 'latin1');
}

export function latin1(b: Buffer): string {
  return b.toString('latin1');
}

/**
 * `b[0, size)` as a latin1 string. The struct sizes of the maps are built in JS
 * (String.fromCharCode with the bytes as arguments: several times cheaper than a call into
 * Buffer's native toString); other sizes use toString.
 */
export function latin1Of(b: Uint8Array, size: number): string {
  const f = String.fromCharCode;
  switch (size) {
    case 4:
      return f(b[0], b[1], b[2], b[3]);
    case 8:
      return f(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]);
    case 12:
      return f(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]);
    case 16:
      return f(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    case 24:
      return f(b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]);
    default:
      return Buffer.from(b.buffer, b.byteOffset, size).toString('latin1');
  }
}

/** Writes the latin1 string `s` (as Encoders return them) into `b` at `offset`; a JS loop beats Buffer.write's native call for a few bytes. */
export function putLatin1(s: string, b: Uint8Array, offset: number): void {
  for (let i = 0; i < s.length; i++) b[offset + i] = s.charCodeAt(i);
}

/** Dotted quad → u32 (host order), or a RangeError naming the value. No allocations. */
export function parseIpv4(s: string, start = 0, end = s.length): number {
  let n = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || part > 255 || ++dots > 3) throw badIpv4(s.slice(start, end));
      n = n * 256 + part;
      part = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57 && digits < 3) {
      part = part * 10 + (c - 48);
      digits++;
    } else {
      throw badIpv4(s.slice(start, end));
    }
  }
  if (dots !== 3 || digits === 0 || part > 255) throw badIpv4(s.slice(start, end));
  return n * 256 + part;
}

function badIpv4(s: unknown): RangeError {
  return new RangeError(`invalid IPv4 address ${JSON.stringify(s)}`);
}

type Writer = (scratch: Buffer, rec: Record<string, unknown>) => void;

/** One writer per field, specialised by kind (no per-call dispatch; bytes set directly). */
function fieldWriter(layout: StructLayout, f: FieldLayout): Writer {
  const o = f.offset;
  const name = f.name;
  const where = `${layout.cName}.${f.name}`;
  const uint = (v: unknown, bits: number, max: number): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${where}: ${String(v)} is not a u${bits}`);
    return v;
  };
  switch (f.kind) {
    case 'u8':
      return (b, r) => {
        b[o] = uint(r[name], 8, 0xff);
      };
    case 'u16':
      return (b, r) => {
        const v = uint(r[name], 16, 0xffff);
        b[o] = v & 0xff;
        b[o + 1] = v >>> 8;
      };
    case 'u32':
      return (b, r) => {
        const v = uint(r[name], 32, 0xffffffff);
        b[o] = v & 0xff;
        b[o + 1] = (v >>> 8) & 0xff;
        b[o + 2] = (v >>> 16) & 0xff;
        b[o + 3] = v >>> 24;
      };
    case 'port':
      return (b, r) => {
        const v = uint(r[name], 16, 0xffff);
        b[o] = v >>> 8;
        b[o + 1] = v & 0xff;
      };
    case 'u64':
      return (b, r) => {
        const v = r[name];
        if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) throw new RangeError(`${where}: ${String(v)} is not a u64`);
        b.writeBigUInt64LE(v, o);
      };
    case 'ipv4':
      return (b, r) => {
        const v = r[name];
        if (typeof v !== 'string') throw new RangeError(`${where}: expected a dotted-quad string`);
        const n = parseIpv4(v);
        b[o] = n >>> 24;
        b[o + 1] = (n >>> 16) & 0xff;
        b[o + 2] = (n >>> 8) & 0xff;
        b[o + 3] = n & 0xff;
      };
    case 'mac':
      return (b, r) => {
        const v = r[name];
        if (typeof v !== 'string' || !/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(v)) throw new RangeError(`invalid MAC address ${JSON.stringify(v)}`);
        for (let i = 0; i < 6; i++) b[o + i] = parseInt(v.slice(i * 3, i * 3 + 2), 16);
      };
  }
}

/** A value for every field of a layout, different from zero and from each other where it can be. */
function probeFor(layout: StructLayout): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  layout.fields.forEach((f, i) => {
    switch (f.kind) {
      case 'u8':
        out[f.name] = (0x11 * (i + 1)) & 0xff || 1;
        break;
      case 'u16':
      case 'port':
        out[f.name] = (0x1234 + i * 0x101) & 0xffff;
        break;
      case 'u32':
        out[f.name] = (0x12345 + i * 0x10101) >>> 0;
        break;
      case 'u64':
        out[f.name] = BigInt(i + 1) << 40n;
        break;
      case 'ipv4':
        out[f.name] = `${(i % 250) + 1}.2.3.4`;
        break;
      case 'mac':
        out[f.name] = `02:00:00:00:00:${(i % 100).toString().padStart(2, '0')}`;
        break;
    }
  });
  return out;
}

/**
 * An encoder for `layout` whose input has the layout's field names. `reference` is what it must
 * agree with (default: none, so the compiled encoder is used unchecked) on `probe`; on
 * disagreement `fallback` is returned instead.
 */
export function layoutEncoder<T>(layout: StructLayout, reference: (v: T) => Buffer, fallback: Encoder<T>, probe: T = probeFor(layout) as T): Encoder<T> {
  // Only field bytes are ever written, so padding stays zero without clearing.
  const scratch = Buffer.alloc(layout.size);
  const writers = layout.fields.map((f) => fieldWriter(layout, f));
  const size = layout.size;
  const fast: Encoder<T> = (value) => {
    const rec = value as Record<string, unknown>;
    for (let i = 0; i < writers.length; i++) writers[i](scratch, rec);
    return latin1Of(scratch, size);
  };
  try {
    if (latin1(reference(probe)) === fast(probe)) {
      compiled.add(fast);
      return fast;
    }
  } catch {
    // the reference rejects the probe: the layout is not what this compiler thinks
  }
  return fallback;
}

/** The compiled encoder of a plain struct codec (its fields are its TS properties), else the codec. */
export function structEncoder<T>(codec: StructCodec<T>): Encoder<T> {
  return layoutEncoder<T>(codec.layout, (v) => codec.encode(v), (v) => latin1(codec.encode(v)));
}

/**
 * An encoder for keys made of a u32 prefix length and an IPv4 address (plus fields left zero),
 * taking the address as part of a string (`s[start, end)`) so the caller need not slice it.
 * Compiled from the layout's `lenField` (u32) and `ipField` (ipv4) and checked against
 * `reference`; null when the layout is not of that shape or disagrees.
 */
export function prefixKeyEncoder(
  layout: StructLayout,
  lenField: string,
  ipField: string,
  reference: (rawLen: number, ip: string) => Buffer,
): ((rawLen: number, s: string, start: number, end: number) => string) | null {
  const len = layout.fields.find((f) => f.name === lenField && f.kind === 'u32');
  const ipf = layout.fields.find((f) => f.name === ipField && f.kind === 'ipv4');
  if (!len || !ipf) return null;
  const scratch = Buffer.alloc(layout.size);
  const lo = len.offset;
  const io = ipf.offset;
  const size = layout.size;
  const fast = (rawLen: number, s: string, start: number, end: number): string => {
    const n = parseIpv4(s, start, end);
    scratch[lo] = rawLen & 0xff;
    scratch[lo + 1] = (rawLen >>> 8) & 0xff;
    scratch[lo + 2] = (rawLen >>> 16) & 0xff;
    scratch[lo + 3] = rawLen >>> 24;
    scratch[io] = n >>> 24;
    scratch[io + 1] = (n >>> 16) & 0xff;
    scratch[io + 2] = (n >>> 8) & 0xff;
    scratch[io + 3] = n & 0xff;
    return latin1Of(scratch, size);
  };
  try {
    const probe = 'x10.1.2.0y';
    if (latin1(reference(56, '10.1.2.0')) !== fast(56, probe, 1, probe.length - 1)) return null;
    compiled.add(fast);
    return fast;
  } catch {
    return null;
  }
}

/**
 * A prefix key (u32 prefix length, IPv4 address, every other byte zero) as one number:
 * address × 128 + raw length, so a map of such keys holds a number per entry instead of a string.
 * `encode` takes the address as part of a string (`s[start, end)`); `put` writes a number's bytes;
 * `from` reads them back, or answers undefined for bytes that are not of that form (another cluster
 * id, a raw length of 128 or more), which the caller keeps as a latin1 string instead. Compiled from
 * the layout and checked against `reference`; null when the layout is not of that shape or disagrees.
 */
export interface PrefixKeyNumber {
  encode(rawLen: number, s: string, start: number, end: number): number;
  put(key: number, b: Uint8Array, offset: number): void;
  from(b: Uint8Array, offset: number): number | undefined;
}

export function prefixKeyNumber(layout: StructLayout, lenField: string, ipField: string, reference: (rawLen: number, ip: string) => Buffer): PrefixKeyNumber | null {
  const len = layout.fields.find((f) => f.name === lenField && f.kind === 'u32');
  const ipf = layout.fields.find((f) => f.name === ipField && f.kind === 'ipv4');
  if (!len || !ipf) return null;
  const lo = len.offset;
  const io = ipf.offset;
  const size = layout.size;
  const form: PrefixKeyNumber = {
    encode: (rawLen, s, start, end) => parseIpv4(s, start, end) * 128 + rawLen,
    put: (key, b, o) => {
      for (let i = 0; i < size; i++) b[o + i] = 0;
      const n = Math.floor(key / 128);
      b[o + lo] = key & 127;
      b[o + io] = n >>> 24;
      b[o + io + 1] = (n >>> 16) & 0xff;
      b[o + io + 2] = (n >>> 8) & 0xff;
      b[o + io + 3] = n & 0xff;
    },
    from: (b, o) => {
      for (let i = 0; i < size; i++) if (b[o + i] !== 0 && (i < io || i >= io + 4) && i !== lo) return undefined;
      if (b[o + lo] > 127) return undefined;
      return (b[o + io] * 0x1000000 + b[o + io + 1] * 0x10000 + b[o + io + 2] * 0x100 + b[o + io + 3]) * 128 + b[o + lo];
    },
  };
  try {
    const ref = reference(56, '10.1.2.0');
    const probe = 'x10.1.2.0y';
    const k = form.encode(56, probe, 1, probe.length - 1);
    const out = Buffer.alloc(size, 0xee);
    form.put(k, out, 0);
    if (!out.equals(ref) || form.from(ref, 0) !== k) return null;
    return form;
  } catch {
    return null;
  }
}
