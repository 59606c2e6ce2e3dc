/** `--context NAME` → a lab cluster. */
import { NotFoundError, ValidationError } from '../util/errors.js';
import { readLabState, type ClusterState, type LabPaths, type LabState } from './state.js';

export interface ResolvedContext {
  readonly lab: LabState;
  readonly cluster: ClusterState;
}

export async function resolveContext(paths: LabPaths, name: string | undefined): Promise<ResolvedContext> {
  const lab = await readLabState(paths);
  const known = lab ? Object.keys(lab.clusters).sort() : [];
  const list = known.length ? known.join(', ') : '(none; create one with: meshctl lab create NAME --id N --pod-cidr CIDR)';
  if (!name) {
    if (lab && known.length === 1) return { lab, cluster: lab.clusters[known[0]] };
    throw new ValidationError('context', 'required', `--context is required; known clusters: ${list}`);
  }
  if (!lab || !lab.clusters[name]) {
    throw new NotFoundError('context', `unknown context "${name}"; known clusters: ${list}`);
  }
  return { lab, cluster: lab.clusters[name] };
}
