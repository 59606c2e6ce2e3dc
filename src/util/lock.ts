import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OperationError } from './errors.js';
import { pidAlive, sleep } from './exec.js';

/**
 * A lock file holding the owner's pid: `O_EXCL` create, stale locks (dead owner) are taken over.
 * Serialises CLI commands that change one lab's state.
 */
export async function withLock<T>(path: string, fn: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
  await mkdir(dirname(path), { recursive: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const fh = await open(path, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number((await readFile(path, 'utf8').catch(() => '')).trim());
      if (!owner || !pidAlive(owner) || owner === process.pid) {
        await rm(path, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new OperationError(`lab is locked by process ${owner} (${path})`);
      await sleep(100);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(path, { force: true });
  }
}
