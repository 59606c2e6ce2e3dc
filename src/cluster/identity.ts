/**
 * Security identities: numbers, reserved identities, the identity object every provider stores,
 * and the IdentityAllocator interface the agent allocates through (the lab implements it on etcd
 * in identity-etcd.ts; a Kubernetes provider would implement it on CRDs).
 *
 * An identity is a 24-bit number `clusterId << 16 | local` (local 1..65535), allocated in the pod's
 * home cluster from its identity labels, so numbers never collide across a mesh. Numbers below 256
 * are reserved and carry no cluster bits.
 *
 * Identity objects (resource `meshidentities`, name = the number) are readable through a
 * ClusterClient, so the agent lists and watches them with an Informer and parseIdentity:
 *
 *   { apiVersion: meshctl.io/v1, kind: MeshIdentity, metadata: { name: "<id>", creationTimestamp },
 *     spec: { id, clusterId, labels: {…sorted}, labelsHash }, status: { lastUsed } }
 */
import type { KubeObject } from './types.js';
import { isLabels, labelsHash, sortLabels, type Labels } from '../agent/labels.js';
import { ValidationError } from '../util/errors.js';

export type { Labels } from '../agent/labels.js';

/**
 * Allocates identities for the endpoints one agent programs, and keeps them from being released
 * while it programs them.
 */
export interface IdentityAllocator {
  /**
   * The identity of a label set, allocated if none exists yet: the same labels always get the same
   * number, and a number never stands for two label sets. Marks it held by this allocator and
   * touched. Throws ValidationError for an empty label set, OperationError when the cluster's
   * numbers are used up or the store keeps failing.
   */
  allocate(labels: Labels): Promise<number>;
  /**
   * This agent no longer programs `id` (call it when its last local endpoint goes). It is no longer
   * touched, and is released once no agent has touched it for the grace period.
   */
  release(id: number): void;
  /** Identities this allocator holds (allocated and not released). */
  held(): ReadonlySet<number>;
  /** Touch held identities periodically; collect unused ones while this allocator holds the GC lease. */
  start(): Promise<void>;
  /** Stop touching and collecting; gives the GC lease up. Held identities stay allocated. */
  stop(): Promise<void>;
}

/** Reserved identities (no cluster bits), numbered as in Cilium. */
export const IDENTITY_HOST = 1;
export const IDENTITY_WORLD = 2;
export const IDENTITY_UNMANAGED = 3;
export const IDENTITY_HEALTH = 4;
export const IDENTITY_INIT = 5;
export const IDENTITY_REMOTE_NODE = 6;
export const IDENTITY_KUBE_APISERVER = 7;

/** Reserved identity → name (`reserved:<name>` is its only label). */
export const RESERVED_IDENTITIES: ReadonlyMap<number, string> = new Map([
  [IDENTITY_HOST, 'host'],
  [IDENTITY_WORLD, 'world'],
  [IDENTITY_UNMANAGED, 'unmanaged'],
  [IDENTITY_HEALTH, 'health'],
  [IDENTITY_INIT, 'init'],
  [IDENTITY_REMOTE_NODE, 'remote-node'],
  [IDENTITY_KUBE_APISERVER, 'kube-apiserver'],
]);

/** Identities below this are reserved and never allocated. */
export const IDENTITY_RESERVED_MAX = 255;
export const IDENTITY_LOCAL_MIN = 1;
export const IDENTITY_LOCAL_MAX = 0xffff;
export const CLUSTER_ID_MIN = 1;
export const CLUSTER_ID_MAX = 255;

/** ClusterClient resource of identity objects. */
export const IDENTITY_RESOURCE = 'meshidentities';
export const IDENTITY_KIND = 'MeshIdentity';
export const IDENTITY_API_VERSION = 'meshctl.io/v1';

/** Labels of a reserved identity (`{ 'reserved:world': '' }`), or undefined for other numbers. */
export function reservedIdentityLabels(id: number): Labels | undefined {
  const name = RESERVED_IDENTITIES.get(id);
  return name === undefined ? undefined : { [`reserved:${name}`]: '' };
}

/** `clusterId << 16 | local`; throws ValidationError when either is out of range. */
export function makeIdentity(clusterId: number, local: number): number {
  checkClusterId(clusterId);
  if (!Number.isInteger(local) || local < IDENTITY_LOCAL_MIN || local > IDENTITY_LOCAL_MAX) {
    throw new ValidationError('identity', 'range', `local identity ${local} out of range ${IDENTITY_LOCAL_MIN}..${IDENTITY_LOCAL_MAX}`);
  }
  return ((clusterId << 16) | local) >>> 0;
}

/** Cluster id of an identity (0 for reserved ones). */
export function identityClusterId(id: number): number {
  return (id >>> 16) & 0xff;
}

/** Is id a number some cluster could have allocated (cluster bits 1..255, local part non-zero)? */
export function isClusterIdentity(id: number): boolean {
  return Number.isInteger(id) && id > 0 && id <= 0xffffff && identityClusterId(id) >= CLUSTER_ID_MIN && (id & 0xffff) >= IDENTITY_LOCAL_MIN;
}

export function checkClusterId(clusterId: number): void {
  if (!Number.isInteger(clusterId) || clusterId < CLUSTER_ID_MIN || clusterId > CLUSTER_ID_MAX) {
    throw new ValidationError('clusterId', 'range', `cluster id ${clusterId} out of range ${CLUSTER_ID_MIN}..${CLUSTER_ID_MAX}`);
  }
}

/** Throws ValidationError unless labels is a non-empty set of string values. */
export function checkIdentityLabels(labels: unknown): asserts labels is Labels {
  if (!isLabels(labels) || Object.keys(labels).length === 0) throw new ValidationError('labels', 'non-empty', 'identity labels must be a non-empty set of string values');
}

/** An identity object as parseIdentity returns it. */
export interface IdentityObject extends KubeObject {
  readonly spec: { readonly id: number; readonly clusterId: number; readonly labels: Labels; readonly labelsHash: string };
  readonly status: { readonly lastUsed: string };
}

/** The object stored for an identity (also what the cluster-mesh export reads). */
export function identityObject(id: number, labels: Labels, now: Date, createdAt?: string): IdentityObject {
  const sorted = sortLabels(labels);
  return {
    apiVersion: IDENTITY_API_VERSION,
    kind: IDENTITY_KIND,
    metadata: { name: String(id), creationTimestamp: createdAt ?? now.toISOString() },
    spec: { id, clusterId: identityClusterId(id), labels: sorted, labelsHash: labelsHash(sorted) },
    status: { lastUsed: now.toISOString() },
  };
}

/**
 * Check an identity object read from a store (informer parse function): the name is the number, a
 * cluster identity; labels a non-empty string set whose hash matches. An Error names the rule.
 */
export function parseIdentity(obj: KubeObject): IdentityObject | Error {
  const name = obj.metadata.name;
  if (obj.kind !== IDENTITY_KIND) return new Error(`kind is ${JSON.stringify(obj.kind)}, not ${IDENTITY_KIND}`);
  if (!/^[1-9][0-9]*$/.test(name)) return new Error(`name ${JSON.stringify(name)} is not an identity number`);
  const id = Number(name);
  if (!isClusterIdentity(id)) return new Error(`${id} is not a cluster identity`);
  const spec = obj.spec as { id?: unknown; labels?: unknown; labelsHash?: unknown } | undefined;
  if (spec?.id !== id) return new Error('spec.id does not match the name');
  if (!isLabels(spec.labels) || Object.keys(spec.labels).length === 0) return new Error('spec.labels is not a non-empty label set');
  const hash = labelsHash(spec.labels);
  if (spec.labelsHash !== hash) return new Error('spec.labelsHash does not match spec.labels');
  const lastUsed = (obj.status as { lastUsed?: unknown } | undefined)?.lastUsed;
  if (typeof lastUsed !== 'string' || Number.isNaN(Date.parse(lastUsed))) return new Error('status.lastUsed is not a time');
  return {
    apiVersion: obj.apiVersion,
    kind: IDENTITY_KIND,
    metadata: { name, resourceVersion: obj.metadata.resourceVersion, creationTimestamp: obj.metadata.creationTimestamp },
    spec: { id, clusterId: identityClusterId(id), labels: sortLabels(spec.labels), labelsHash: hash },
    status: { lastUsed },
  };
}
