/** Network namespaces and links of a lab. Everything here acts only inside the lab's own namespaces. */
import { readdir } from 'node:fs/promises';
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
