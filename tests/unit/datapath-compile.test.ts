// compileBpf: content-hash caching and error reporting. Needs clang, not root.
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { CLANG_NOT_FOUND_MESSAGE, compileBpf, compileBpfDetailed, parseDepFile } from '../../src/datapath/compile.js';
import { BpfError, CompileError, errnoName, toBpfError } from '../../src/datapath/errors.js';

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'tests', 'bpf-fixtures'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the repository root');
    dir = parent;
  }
  return dir;
}

const FIXTURES = join(repoRoot(), 'tests', 'bpf-fixtures');

describe('compileBpf', () => {
  let work: string;
  let src: string;
  let include: string;
  let cacheDir: string;

  beforeEach(() => {
    work = mkdtempSync(join(tmpdir(), 'meshtest-compile-'));
    src = join(work, 'counter.bpf.c');
    include = join(work, 'include');
    cacheDir = join(work, 'cache');
    cpSync(join(FIXTURES, 'counter.bpf.c'), src);
    cpSync(join(FIXTURES, 'include'), include, { recursive: true });
  });

  afterEach(() => {
    rmSync(work, { recursive: true, force: true });
  });

  test('compiles to a BPF ELF object and serves the second call from the cache', async () => {
    const first = await compileBpfDetailed({ source: src, includeDirs: [include], cacheDir });
    expect(first.cached).toBe(false);
    const elf = readFileSync(first.objectPath);
    expect(elf.subarray(0, 4)).toEqual(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
    expect(elf.readUInt16LE(18)).toBe(247); // e_machine EM_BPF
    const mtime = statSync(first.objectPath).mtimeMs;

    const second = await compileBpfDetailed({ source: src, includeDirs: [include], cacheDir });
    expect(second).toEqual({ objectPath: first.objectPath, cached: true });
    expect(statSync(second.objectPath).mtimeMs).toBe(mtime);
    expect(await compileBpf({ source: src, includeDirs: [include], cacheDir })).toBe(first.objectPath);
  });

  const keyChanges: Array<[string, (opts: { include: string; src: string }) => Record<string, unknown>]> = [
    ['a header in an include dir changes', ({ include }) => {
      writeFileSync(join(include, 'fixture.h'), readFileSync(join(include, 'fixture.h'), 'utf8') + '\n#define FIXTURE_EXTRA 1\n');
      return {};
    }],
    ['the source changes', ({ src }) => {
      writeFileSync(src, readFileSync(src, 'utf8') + '\n/* edited */\n');
      return {};
    }],
    ['a define is added', () => ({ defines: { FIXTURE_MODE: 2 } })],
    ['an extra flag is added', () => ({ extraFlags: ['-DFIXTURE_FLAG'] })],
  ];

  test.each(keyChanges)('recompiles when %s', async (_name, change) => {
    const before = await compileBpfDetailed({ source: src, includeDirs: [include], cacheDir });
    const extra = change({ include, src });
    const after = await compileBpfDetailed({ source: src, includeDirs: [include], cacheDir, ...extra });
    expect(after.cached).toBe(false);
    expect(after.objectPath).not.toBe(before.objectPath);
    expect(existsSync(before.objectPath)).toBe(true);
  });

  test('recompiles when a header outside the include dirs changes, and reuses the object after a revert', async () => {
    // A header found relative to the source, not through -I: only the dependency manifest sees it.
    writeFileSync(join(work, 'local.h'), '#define LOCAL_VALUE 1\n');
    writeFileSync(src, '#include "local.h"\n' + readFileSync(src, 'utf8'));
    const first = await compileBpfDetailed({ source: src, includeDirs: [include], cacheDir });
    writeFileSync(join(work, 'local.h'), '#define LOCAL_VALUE 2\n');
    const second = await compileBpfDetailed({ source: src, includeDirs: [include], cacheDir });
    expect(second.cached).toBe(false);
    expect(second.objectPath).not.toBe(first.objectPath);
    writeFileSync(join(work, 'local.h'), '#define LOCAL_VALUE 1\n');
    const third = await compileBpfDetailed({ source: src, includeDirs: [include], cacheDir });
    expect(third.cached).toBe(false); // the manifest remembers only the latest header state
    expect(third.objectPath).toBe(first.objectPath);
  });

  test('a compile error is a CompileError carrying clang stderr', async () => {
    const bad = join(work, 'bad.bpf.c');
    writeFileSync(bad, 'int broken(void) { return undeclared_thing; }\n');
    const err = await compileBpf({ source: bad, cacheDir }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CompileError);
    const ce = err as CompileError;
    expect(ce.file).toBe(bad);
    expect(ce.stderr).toContain("error: use of undeclared identifier 'undeclared_thing'");
    expect(ce.message.split('\n')[0]).toBe(`compile ${bad} failed:`);
    expect(ce.message).toContain("bad.bpf.c:1:27: error: use of undeclared identifier 'undeclared_thing'");
    // Nothing half-written is left in the cache.
    expect(existsSync(cacheDir) ? readdirSync(cacheDir) : []).toEqual([]);
  });

  test('a missing clang says how to install it', async () => {
    const err = await compileBpf({ source: src, cacheDir, clang: 'meshtest-no-such-clang' }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CompileError);
    expect((err as CompileError).message).toBe('clang not found: install clang (apt-get install clang)');
    expect((err as CompileError).message).toBe(CLANG_NOT_FOUND_MESSAGE);
    expect((err as CompileError).file).toBe(src);
  });

  test('a missing source is a CompileError naming the file', async () => {
    const missing = join(work, 'missing.bpf.c');
    await expect(compileBpf({ source: missing, cacheDir })).rejects.toThrow(
      `compile ${missing}: ENOENT: no such file or directory, open '${missing}'`,
    );
  });
});

describe('parseDepFile', () => {
  test.each([
    ['single line', 'x.o: a.c b.h\n', ['/w/a.c', '/w/b.h']],
    ['continuations and absolute paths', 'x.o: a.c \\\n  /usr/include/linux/bpf.h \\\n  inc/f.h\n', ['/usr/include/linux/bpf.h', '/w/a.c', '/w/inc/f.h']],
    ['escaped spaces', 'x.o: my\\ dir/a.c\n', ['/w/my dir/a.c']],
  ])('%s', (_name, text, want) => {
    expect(parseDepFile(text, '/w')).toEqual(want);
  });
});

// The datapath's error types, which compileBpf and the addon wrapper share.
describe('BpfError', () => {
  const log = Array.from({ length: 30 }, (_, i) => `line ${i + 1}`).join('\n') + '\n';

  test('shows the last 20 verifier log lines in its message and keeps all of them', () => {
    const err = new BpfError({ op: 'load', errno: 13, message: 'load x.o (program p): Permission denied', verifierLog: log });
    expect(err.code).toBe('EACCES');
    expect(err.reason).toBe('load x.o (program p): Permission denied');
    expect(err.message).toBe(
      'load x.o (program p): Permission denied\nverifier log (last 20 of 30 lines):\n' +
        Array.from({ length: 20 }, (_, i) => `line ${i + 11}`).join('\n'),
    );
    expect(err.verifierLog).toBe(log);
    expect(err.verifierLogTail(3)).toBe('line 28\nline 29\nline 30');
  });

  test('without any log the message is the one line', () => {
    const err = new BpfError({ op: 'map_update', errno: 2, message: 'map_update mesh_ipcache: No such file or directory' });
    expect(err.message).toBe('map_update mesh_ipcache: No such file or directory');
    expect(err.verifierLogTail()).toBe('');
  });

  test.each([
    [2, 'ENOENT'],
    [17, 'EEXIST'],
    [524, 'ENOTSUPP'],
    [100000, 'E100000'],
  ])('errno %d is %s', (errno, code) => {
    expect(errnoName(errno)).toBe(code);
  });

  test('toBpfError converts addon-shaped errors and passes others through', () => {
    const native = Object.assign(new Error('obj_get /x: No such file or directory'), { op: 'obj_get', errno: 2, code: 'ENOENT' });
    const converted = toBpfError(native);
    expect(converted).toBeInstanceOf(BpfError);
    expect(converted).toMatchObject({ op: 'obj_get', errno: 2, code: 'ENOENT', message: 'obj_get /x: No such file or directory' });
    const plain = new RangeError('key is 3 bytes');
    expect(toBpfError(plain)).toBe(plain);
  });
});
