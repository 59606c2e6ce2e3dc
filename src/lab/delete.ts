/** `lab delete`: stop a cluster's processes and remove its namespaces, pins and files. */
import { readdir, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BPF_PIN_ROOT } from '../defaults.js';
import { NotFoundError } from '../util/errors.js';
import { deleteNetnsMany, listNetns } from './netns.js';
import { stopSupervisor } from './processes.js';
import { clusterNetnsPrefix, labPrefix, readLabState, withLabLock, writeLabState, type LabPaths, type LabState } from './state.js';
import { deleteVpc, removeNodeRoute, sweepLab } from './topology.js';

async function removeCluster(paths: LabPaths, lab: LabState, name: string): Promise<void> {
  await stopSupervisor(paths, name);
  const nsPrefix = clusterNetnsPrefix(lab.prefix, name);
  const mine = (await listNetns()).filter((n) => n.startsWith(nsPrefix));
  // Pods before nodes: a pod's veth peer lives in its node.
  mine.sort((a, b) => Number(b.slice(nsPrefix.length).startsWith('p')) - Number(a.slice(nsPrefix.length).startsWith('p')));
  await deleteNetnsMany(mine);
  for (const n of lab.clusters[name].nodes) await removeNodeRoute(lab, n);
  await rm(join(BPF_PIN_ROOT, lab.prefix, name), { recursive: true, force: true });
  await rm(paths.clusterDir(name), { recursive: true, force: true });
  delete lab.clusters[name];
  const used = new Set(Object.values(lab.clusters).flatMap((c) => c.vpcs));
  for (const v of Object.keys(lab.vpcs)) if (!used.has(v)) await deleteVpc(lab, v);
}

/** Remove the lab's files, leaving the state dir itself only if something else is in it. */
async function removeLabFiles(paths: LabPaths): Promise<void> {
  await rm(paths.stateFile, { force: true });
  await rm(join(paths.home, 'clusters'), { recursive: true, force: true });
  await rm(paths.meshCaDir, { recursive: true, force: true });
  await rm(paths.lockFile, { force: true });
  try {
    if ((await readdir(paths.home)).length === 0) await rmdir(paths.home);
  } catch {
    /* not there */
  }
}

/** Delete one cluster. When it was the last one, the lab's underlay and host link go too. */
export async function deleteCluster(paths: LabPaths, name: string): Promise<void> {
  await withLabLock(paths, async () => {
    const lab = await readLabState(paths);
    if (!lab || !lab.clusters[name]) {
      const known = lab ? Object.keys(lab.clusters).sort() : [];
      throw new NotFoundError('cluster', `cluster "${name}" not found; known clusters: ${known.length ? known.join(', ') : '(none)'}`);
    }
    await removeCluster(paths, lab, name);
    if (Object.keys(lab.clusters).length > 0) {
      await writeLabState(paths, lab);
      return;
    }
    await sweepLab(lab.prefix);
    // The underlay is gone: a state file still naming the cluster would make the next create
    // skip building the underlay.
    await rm(paths.stateFile, { force: true });
  });
  const lab = await readLabState(paths);
  if (!lab || Object.keys(lab.clusters).length === 0) await removeLabFiles(paths);
}

/**
 * Delete every cluster and the lab itself. Works from whatever is left, even without a readable
 * lab.json: supervisors by their pid files, namespaces and the host link by the lab's prefix.
 */
export async function deleteAll(paths: LabPaths): Promise<string[]> {
  const deleted: string[] = [];
  await withLabLock(paths, async () => {
    let lab: LabState | null = null;
    try {
      lab = await readLabState(paths);
    } catch {
      lab = null; // corrupt state: sweep by prefix below
    }
    const clusterDirs = await readdir(join(paths.home, 'clusters')).catch(() => [] as string[]);
    for (const c of new Set([...Object.keys(lab?.clusters ?? {}), ...clusterDirs])) {
      await stopSupervisor(paths, c);
      deleted.push(c);
    }
    await sweepLab(lab?.prefix ?? labPrefix(paths.home));
  });
  await removeLabFiles(paths);
  return deleted.sort();
}
