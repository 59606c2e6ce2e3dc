/**
 * A peer this cluster's agents read: a `MeshPeer` object (resource `meshpeers`, cluster-scoped,
 * name = the peer cluster's name) in this cluster's own store, written by `meshctl connect` and
 * removed by `disconnect`. Agents watch these objects and start or stop one remote client per peer
 * without restarting (the Kubernetes provider keeps the same shape in a Secret).
 */
import { z } from 'zod';
import type { KubeObject } from '../cluster/types.js';

export const MESH_PEER_RESOURCE = 'meshpeers';

export const MeshPeerSpecSchema = z.object({
  /** The peer cluster's name (equals metadata.name) and id. */
  cluster: z.string().min(1).max(32),
  clusterId: z.number().int().min(1).max(255),
  /** The peer's clustermesh-apiserver client URLs as agents reach them (https://<vpc ip>:<port>). */
  endpoints: z.array(z.string().url()).min(1),
  /** PEM: the CA(s) agents trust for the peer's server certificate (a bundle with --allow-mismatching-ca). */
  caBundle: z.string().min(1),
  /** PEM: the client certificate (CN remote-<this cluster>) and its key. */
  cert: z.string().min(1),
  key: z.string().min(1),
  /** The TLS server name the peer's certificate carries (its address). */
  serverName: z.string().optional(),
});
export type MeshPeerSpec = z.infer<typeof MeshPeerSpecSchema>;

export function meshPeerObject(spec: MeshPeerSpec): KubeObject {
  return { apiVersion: 'meshctl.io/v1', kind: 'MeshPeer', metadata: { name: spec.cluster }, spec };
}

/** The spec of a MeshPeer object, or an Error naming the bad field. */
export function parseMeshPeer(obj: KubeObject): MeshPeerSpec | Error {
  const r = MeshPeerSpecSchema.safeParse(obj.spec);
  if (!r.success) {
    const i = r.error.issues[0];
    return new Error(`MeshPeer ${obj.metadata.name}: ${i.path.join('.')}: ${i.message}`);
  }
  if (r.data.cluster !== obj.metadata.name) return new Error(`MeshPeer ${obj.metadata.name}: spec.cluster is ${r.data.cluster}`);
  return r.data;
}

/**
 * What each agent publishes per peer in its MeshNodeStatus (`status.clustermesh.peers[]`), and what
 * `meshctl status` aggregates. The CLI never judges a peer by its own connection: only by these.
 */
export interface PeerStatus {
  readonly cluster: string;
  /** A MeshPeer exists for it and the agent runs a client. */
  readonly configured: boolean;
  /** The client reaches the peer's apiserver and its heartbeat is fresh. */
  readonly connected: boolean;
  /** Per sync kind: the peer's marker was seen and the initial list of that kind is applied. */
  readonly synced: Readonly<Record<'nodes' | 'identities' | 'ip', boolean>>;
  /** connected, cluster config valid and every kind synced. */
  readonly ready: boolean;
  /** Entries held from this peer now. */
  readonly entries: Readonly<{ nodes: number; identities: number; ips: number }>;
  /** Values skipped, by reason (`meshctl_remote_invalid_objects{peer,reason}`), and a few samples. */
  readonly invalid: Readonly<Record<string, number>>;
  readonly invalidSamples: ReadonlyArray<{ readonly key: string; readonly reason: string }>;
  /** Last error and its type (the CLI picks its hint by type): tls, auth, unreachable, config, heartbeat. */
  readonly lastError: string;
  readonly lastErrorKind: '' | 'tls' | 'auth' | 'unreachable' | 'config' | 'heartbeat' | 'other';
  /** ISO times: last heartbeat seen (reader's clock), when the current connection became ready. */
  readonly lastHeartbeat: string;
  readonly readySince: string;
  /** Full re-lists done after the first (reconnects, compactions). */
  readonly resyncs: number;
}
