/** Network namespaces and links of a lab. Everything here acts only inside the lab's own namespaces. */
import { readdir, readlink, stat } from 'node:fs/promises';
import { ip, ipBatch, run, sleep } from '../util/exec.js';

export async function listNetns(): Promise<string[]> {
  try {
    return (await readdir('/run/netns')).sort();
  } catch {
    return [];
  }
}

export async function netnsExists(name: string): Promise<boolean> {
  return (await listNetns()).includes(name);
}

export async function addNetns(name: string): Promise<void> {
  await ip(['netns', 'add', name]);
  await ip(['link', 'set', 'lo', 'up'], name);
}

/** Pids of processes in a namespace. */
export async function netnsPids(name: string): Promise<number[]> {
  const r = await ip(['netns', 'pids', name], undefined, false);
  return r.stdout
    .split('\n')
    .map((s) => Number(s.trim()))
    .filter((n) => Number.isInteger(n) && n > 0);
}

/** Kill every process in a namespace, then delete it. Idempotent. */
export async function deleteNetns(name: string): Promise<void> {
  for (let i = 0; i < 3; i++) {
    const pids = await netnsPids(name);
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await sleep(50);
  }
  await ip(['netns', 'del', name], undefined, false);
}

/**
 * Pids of the processes in each of many namespaces, from one pass over /proc (`ip netns pids`
 * walks all of /proc for every namespace it is asked about: quadratic for a lab of 500 pods).
 */
export async function netnsPidsMany(names: readonly string[]): Promise<Map<string, number[]>> {
  const byInode = new Map<string, string>();
  await Promise.all(
    names.map(async (n) => {
      try {
        byInode.set(String((await stat(`/run/netns/${n}`)).ino), n);
      } catch {
        /* gone already */
      }
    }),
  );
  const out = new Map<string, number[]>();
  if (byInode.size === 0) return out;
  const pids = (await readdir('/proc')).filter((d) => /^\d+$/.test(d));
  await Promise.all(
    pids.map(async (pid) => {
      let link: string;
      try {
        link = await readlink(`/proc/${pid}/ns/net`);
      } catch {
        return; // exited, or a kernel thread
      }
      const name = byInode.get(link.slice(5, -1)); // net:[4026532000]
      if (!name) return;
      const list = out.get(name) ?? [];
      list.push(Number(pid));
      out.set(name, list);
    }),
  );
  return out;
}

/** Kill every process in these namespaces, then delete them, in one `ip -batch`. Idempotent. */
export async function deleteNetnsMany(names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  for (let i = 0; i < 3; i++) {
    const pids = [...(await netnsPidsMany(names)).values()].flat();
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await sleep(50);
  }
  const existing = new Set(await listNetns());
  const lines = names.filter((n) => existing.has(n)).map((n) => `netns del ${n}`);
  // -force: go on past one that vanished meanwhile
  if (lines.length > 0) await run('ip', ['-force', '-batch', '-'], { input: lines.join('\n') + '\n', check: false, timeoutMs: 120_000 });
}

/** Create many namespaces (each with lo up comes later, with the rest of its config). */
export async function addNetnsMany(names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  await run('ip', ['-batch', '-'], { input: names.map((n) => `netns add ${n}`).join('\n') + '\n', timeoutMs: 120_000 });
}

/** Set a sysctl inside a namespace (per-namespace knobs only). */
export async function netnsSysctl(netns: string, settings: Record<string, string>): Promise<void> {
  const args = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
  await run('sysctl', ['-q', '-w', ...args], { netns });
}

export async function linkExists(name: string, netns?: string): Promise<boolean> {
  const r = await ip(['link', 'show', 'dev', name], netns, false);
  return r.exitCode === 0;
}

export async function linkMac(name: string, netns?: string): Promise<string> {
  const r = await ip(['-j', 'link', 'show', 'dev', name], netns);
  return (JSON.parse(r.stdout) as Array<{ address: string }>)[0].address;
}

export { ipBatch };
