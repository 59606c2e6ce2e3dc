/**
 * The narrow interface through which the agent and the CLI read and change a cluster's objects.
 * Implemented on the lab store (etcd) now and on the Kubernetes API later.
 */
import type { KubeObject } from './types.js';

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface WatchEvent {
  readonly type: WatchEventType;
  /** For DELETED, the last known object (or a stub holding only the key's name). */
  readonly object: KubeObject;
}

export interface ListResult {
  readonly items: KubeObject[];
  /** Store revision of the list, to watch from. */
  readonly revision: string;
  /** Values that failed validation and were skipped. */
  readonly invalid: number;
}

export interface CreateOptions {
  /** Bind the object to a lease of this many seconds, kept alive by the client until close(). */
  readonly leaseTtlSeconds?: number;
}

export interface Watch {
  close(): void;
}

export interface WatchHandlers {
  readonly onEvent: (ev: WatchEvent) => void;
  /** A value that failed validation (skipped). */
  readonly onInvalid?: (key: string, reason: string) => void;
  readonly onError?: (err: Error) => void;
}

export interface ClusterClient {
  get(resource: string, namespace: string | undefined, name: string): Promise<KubeObject | null>;
  list(resource: string, namespace?: string): Promise<ListResult>;
  /** Create; throws AlreadyExistsError when the object exists. */
  create(resource: string, obj: KubeObject, opts?: CreateOptions): Promise<KubeObject>;
  /** Create or replace. With metadata.resourceVersion set, only if unchanged since (else ConflictError). */
  put(resource: string, obj: KubeObject, opts?: CreateOptions): Promise<KubeObject>;
  /** Delete; false when it did not exist. */
  delete(resource: string, namespace: string | undefined, name: string): Promise<boolean>;
  /** Watch a resource (all namespaces) from a revision returned by list(). */
  watch(resource: string, fromRevision: string, handlers: WatchHandlers): Watch;
  close(): Promise<void>;
}

export class AlreadyExistsError extends Error {
  constructor(readonly key: string) {
    super(`${key} already exists`);
    this.name = 'AlreadyExistsError';
  }
}

export class ConflictError extends Error {
  constructor(readonly key: string) {
    super(`${key} changed since it was read`);
    this.name = 'ConflictError';
  }
}
