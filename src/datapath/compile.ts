/**
 * Compiles BPF C sources with clang, caching objects by content.
 *
 * Cache layout in `cacheDir`:
 *   <key>.json          manifest: every file clang read for that key, with its sha256
 *   <stem>.<key>-<deps>.o  the object; <deps> hashes the manifest, so a path once returned never
 *                       changes content (a loaded object's file is never rewritten under it)
 * `key` hashes the compiler's version, the flags, the source and every file in the include
 * dirs. The manifest then catches changes to anything else the source included (headers next
 * to it, system headers such as <bpf/bpf_helpers.h>), as ccache's direct mode does.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';

import { CompileError } from './errors.js';

const execFileAsync = promisify(execFile);

/** Bumped when the cache format or the fixed flags change. */
const CACHE_FORMAT = 1;

/** clang's own stderr is kept whole in CompileError.stderr; the message shows this many lines. */
const STDERR_MESSAGE_LINES = 40;

export const CLANG_NOT_FOUND_MESSAGE = 'clang not found: install clang (apt-get install clang)';

export interface CompileBpfOptions {
  /** The BPF C file. */
  readonly source: string;
  /** Directory for cached objects; created when missing. */
  readonly cacheDir: string;
  /** -I directories, searched in order. Default none. Every file in them is part of the cache key. */
  readonly includeDirs?: readonly string[];
  /** -D macros: NAME → value, or true for a bare `-DNAME`. Default none. */
  readonly defines?: Readonly<Record<string, string | number | true>>;
  /** Extra clang flags, appended after the fixed ones. Default none. */
  readonly extraFlags?: readonly string[];
  /** clang executable. Default `clang` on PATH. */
  readonly clang?: string;
}

export interface CompileResult {
  /** The object file (inside cacheDir). */
  readonly objectPath: string;
  /** True when it came from the cache without running clang. */
  readonly cached: boolean;
}

interface Manifest {
  readonly format: number;
  readonly object: string;
  readonly deps: ReadonlyArray<readonly [string, string]>;
}

const TARGET_ARCH: Record<string, string> = {
  x64: 'x86',
  arm64: 'arm64',
  arm: 'arm',
  ppc64: 'powerpc',
  s390x: 's390',
  riscv64: 'riscv',
  loong64: 'loongarch',
};

// With -target bpf, clang does not search the multiarch dir that holds <asm/types.h>.
const MULTIARCH: Record<string, string> = {
  x64: '/usr/include/x86_64-linux-gnu',
  arm64: '/usr/include/aarch64-linux-gnu',
};

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

const clangVersions = new Map<string, Promise<string>>();

function isEnoent(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

async function clangVersion(clang: string, source: string): Promise<string> {
  let pending = clangVersions.get(clang);
  if (pending === undefined) {
    pending = execFileAsync(clang, ['--version']).then(({ stdout }) => stdout.split('\n')[0] ?? '');
    clangVersions.set(clang, pending);
    pending.catch(() => clangVersions.delete(clang));
  }
  try {
    return await pending;
  } catch (err) {
    if (isEnoent(err)) throw new CompileError(source, '', CLANG_NOT_FOUND_MESSAGE);
    throw new CompileError(source, String((err as { stderr?: string }).stderr ?? ''), `run ${clang} --version: ${(err as Error).message}`);
  }
}

/** Files under dir, recursively, as sorted relative paths (a missing dir has none). */
async function listFiles(dir: string): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true, recursive: true });
  } catch (err) {
    if (isEnoent(err)) return [];
    throw err;
  }
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath ?? e.path, e.name)))
    .sort();
}

/** The flags that determine the output, without input/output paths. */
function buildFlags(options: CompileBpfOptions, includeDirs: string[]): string[] {
  const arch = TARGET_ARCH[process.arch] ?? process.arch;
  const flags = ['-O2', '-g', '-target', 'bpf', `-D__TARGET_ARCH_${arch}`, '-Wall', '-Wno-unused-function'];
  for (const dir of includeDirs) flags.push(`-I${dir}`);
  const multiarch = MULTIARCH[process.arch];
  if (multiarch !== undefined && existsSync(multiarch)) flags.push(`-idirafter${multiarch}`);
  for (const name of Object.keys(options.defines ?? {}).sort()) {
    const value = options.defines![name];
    flags.push(value === true ? `-D${name}` : `-D${name}=${value}`);
  }
  flags.push(...(options.extraFlags ?? []));
  return flags;
}

/** Parses a make-style dependency file written by clang -MD. */
export function parseDepFile(text: string, baseDir: string): string[] {
  const joined = text.replace(/\\\r?\n/g, ' ');
  const colon = joined.search(/:(\s|$)/);
  const body = colon >= 0 ? joined.slice(colon + 1) : joined;
  const deps: string[] = [];
  // Tokens are separated by unescaped whitespace; "\ " is a space inside a path.
  for (const token of body.match(/(?:\\.|[^\s\\])+/g) ?? []) {
    deps.push(resolve(baseDir, token.replace(/\\(.)/g, '$1')));
  }
  return [...new Set(deps)].sort();
}

async function hashFile(path: string): Promise<string | null> {
  try {
    return sha256(await readFile(path));
  } catch (err) {
    if (isEnoent(err)) return null;
    throw err;
  }
}

async function readManifest(path: string): Promise<Manifest | null> {
  try {
    const manifest = JSON.parse(await readFile(path, 'utf8')) as Manifest;
    return manifest.format === CACHE_FORMAT ? manifest : null;
  } catch {
    return null;
  }
}

async function manifestStillValid(manifest: Manifest, cacheDir: string): Promise<boolean> {
  if (!existsSync(join(cacheDir, manifest.object))) return false;
  for (const [path, hash] of manifest.deps) {
    if ((await hashFile(path)) !== hash) return false;
  }
  return true;
}

function compileFailure(source: string, stderr: string): CompileError {
  const lines = stderr.replace(/\s+$/, '').split('\n');
  const shown = lines.slice(Math.max(0, lines.length - STDERR_MESSAGE_LINES)).join('\n');
  return new CompileError(source, stderr, `compile ${source} failed:\n${shown}`);
}

/**
 * Compiles `source` for the BPF target (`clang -O2 -g -target bpf -D__TARGET_ARCH_<arch>`) and
 * returns the object and whether it came from the cache. Throws CompileError: with message
 * {@link CLANG_NOT_FOUND_MESSAGE} when clang is missing, and with clang's stderr when the source
 * does not compile.
 */
export async function compileBpfDetailed(options: CompileBpfOptions): Promise<CompileResult> {
  const source = resolve(options.source);
  const cacheDir = resolve(options.cacheDir);
  const clang = options.clang ?? 'clang';
  const includeDirs = (options.includeDirs ?? []).map((d) => resolve(d));

  let sourceText: Buffer;
  try {
    sourceText = await readFile(source);
  } catch (err) {
    throw new CompileError(source, '', `compile ${source}: ${(err as Error).message}`);
  }
  const version = await clangVersion(clang, source);
  const flags = buildFlags(options, includeDirs);

  const keyHash = createHash('sha256');
  keyHash.update(JSON.stringify({ format: CACHE_FORMAT, clang, version, flags, source }));
  keyHash.update(sourceText);
  for (const dir of includeDirs) {
    for (const file of await listFiles(dir)) {
      keyHash.update(`\0${dir}\0${file}\0${(await hashFile(join(dir, file))) ?? ''}`);
    }
  }
  const key = keyHash.digest('hex').slice(0, 32);
  const manifestPath = join(cacheDir, `${key}.json`);

  const manifest = await readManifest(manifestPath);
  if (manifest !== null && (await manifestStillValid(manifest, cacheDir))) {
    return { objectPath: join(cacheDir, manifest.object), cached: true };
  }

  await mkdir(cacheDir, { recursive: true });
  const tmp = join(cacheDir, `.tmp-${key}-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    try {
      await execFileAsync(clang, [...flags, '-MD', '-MF', `${tmp}.d`, '-c', source, '-o', `${tmp}.o`], {
        cwd: dirname(source),
        maxBuffer: 64 * 1024 * 1024,
      });
    } catch (err) {
      if (isEnoent(err) && (err as { path?: string }).path === clang) {
        throw new CompileError(source, '', CLANG_NOT_FOUND_MESSAGE);
      }
      throw compileFailure(source, String((err as { stderr?: string }).stderr ?? (err as Error).message));
    }
    const deps: Array<[string, string]> = [];
    for (const dep of parseDepFile(await readFile(`${tmp}.d`, 'utf8'), dirname(source))) {
      deps.push([dep, (await hashFile(dep)) ?? '']);
    }
    // The stem first: libbpf names the object after the file's base name up to its first dot.
    const stem = basename(source).split('.')[0] || 'bpf';
    const object = `${stem}.${key}-${sha256(JSON.stringify(deps)).slice(0, 16)}.o`;
    await rename(`${tmp}.o`, join(cacheDir, object));
    const next: Manifest = { format: CACHE_FORMAT, object, deps };
    await writeFile(`${tmp}.json`, JSON.stringify(next, null, 1));
    await rename(`${tmp}.json`, manifestPath);
    return { objectPath: join(cacheDir, object), cached: false };
  } finally {
    await Promise.all([`${tmp}.o`, `${tmp}.d`, `${tmp}.json`].map((p) => rm(p, { force: true })));
  }
}

/** {@link compileBpfDetailed}, returning only the object path. */
export async function compileBpf(options: CompileBpfOptions): Promise<string> {
  return (await compileBpfDetailed(options)).objectPath;
}
