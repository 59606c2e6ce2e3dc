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
  /** Store revision of this change (for DELETED, the revision of the delete). */
  readonly revision: string;
}

export interface ListResult {
  readonly items: KubeObject[];
  /** Store revision of the list, to watch from. */
  readonly revision: string;
  /** Values that failed validation and were skipped. */
  readonly invalid: number;
  /** The skipped values: key (`ns/name` or `name`) and why. */
  readonly problems?: ReadonlyArray<{ readonly key: string; readonly reason: string }>;
}

export interface CreateOptions {
  /** Bind the object to a lease of this many seconds, kept alive by the client until close(). */
  readonly leaseTtlSeconds?: number;
}

export interface Watch {
  close(): void;
}

export interface WatchHandlers {
  /** Changes in store order, one call per change. */
  readonly onEvent: (ev: WatchEvent) => void;
  /** A value that failed validation (skipped); key is `ns/name` or `name`. */
  readonly onInvalid?: (key: string, reason: string) => void;
  /**
   * The watch has ended and delivers nothing more: ExpiredError when the store no longer holds
   * the history to continue (list again), any other error for a lost stream. Called at most once.
   */
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
  /**
   * Watch a resource (all namespaces) for changes after `fromRevision` (a revision returned by
   * list()), so list + watch sees every change exactly once. The watch never resumes by itself
   * after an error: the caller lists again (see Informer).
   */
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

/**
 * The store no longer holds the changes a watch needs (they were compacted away): list again and
 * watch from the new list's revision. Kubernetes answers the same case with 410 Gone.
 */
export class ExpiredError extends Error {
  constructor(
    readonly resource: string,
    readonly revision: string,
  ) {
    super(`watch ${resource} from revision ${revision}: history compacted, list again`);
    this.name = 'ExpiredError';
  }
}
