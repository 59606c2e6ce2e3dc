/** The command line of the `mesh-export` supervisor process (the `enable` helper writes its proc spec). */

export interface MeshExportArgsOptions {
  readonly cluster: string;
  /** The cluster's store URL as seen from the control-plane netns, e.g. http://198.18.7.10:2379. */
  readonly store: string;
  /** The apiserver's client URL, e.g. https://127.0.0.1:32379. */
  readonly apiserver: string;
  /** Directory holding ca.crt, admin.crt and admin.key (LabPaths.meshDir(c)). */
  readonly certDir: string;
}

/** Arguments after `node dist/bin/meshctl.js`: `mesh-export --cluster C --store … --apiserver … --cert-dir DIR`. */
export function meshExportArgs(o: MeshExportArgsOptions): string[] {
  return ['mesh-export', '--cluster', o.cluster, '--store', o.store, '--apiserver', o.apiserver, '--cert-dir', o.certDir];
}
