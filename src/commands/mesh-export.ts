/** `meshctl mesh-export` (hidden): the export process of a clustermesh-apiserver, run by the supervisor. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { ExponentialBackoff, noop, type IBackoff } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { EtcdClusterClient } from '../cluster/etcd-client.js';
import { runExport } from '../mesh/export.js';
import { EnvironmentError, errorMessage } from '../util/errors.js';

interface MeshExportOptions {
  readonly cluster: string;
  readonly store: string;
  readonly apiserver: string;
  readonly certDir: string;
}

function readCert(dir: string, file: string): Buffer {
  try {
    return readFileSync(join(dir, file));
  } catch (err) {
    throw new EnvironmentError(`read ${join(dir, file)}: ${errorMessage(err)}`, 'enable the cluster mesh first: meshctl enable');
  }
}

export function meshExportCommand(): Command {
  return new Command('mesh-export')
    .description('Mirror this cluster\'s exportable state into its clustermesh-apiserver (started by the supervisor)')
    .requiredOption('--cluster <name>')
    .requiredOption('--store <url>')
    .requiredOption('--apiserver <url>')
    .requiredOption('--cert-dir <dir>')
    .action(async (o: MeshExportOptions) => {
      const credentials = { rootCertificate: readCert(o.certDir, 'ca.crt'), certChain: readCert(o.certDir, 'admin.crt'), privateKey: readCert(o.certDir, 'admin.key') };
      const apiserver = new Etcd3({
        hosts: [o.apiserver],
        credentials,
        // One apiserver: no circuit breaker holding a restarted etcd off; the exporter retries.
        faultHandling: { host: () => noop, global: noop, watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as unknown as IBackoff<unknown> },
        grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 },
        defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 5000 }),
      });
      const store = new EtcdClusterClient({ endpoints: [o.store] });
      const log = (m: string): void => void process.stderr.write(`${new Date().toISOString()} ${m}\n`);
      const exporter = await runExport({ cluster: o.cluster, store, apiserver, log });
      log(`mesh-export of ${o.cluster} started (pid ${process.pid}): ${o.store} → ${o.apiserver}`);
      await new Promise<void>((resolve) => {
        process.once('SIGTERM', resolve);
        process.once('SIGINT', resolve);
      });
      await exporter.stop();
      const s = exporter.stats;
      log(`mesh-export of ${o.cluster} stopped: ${s.written} written, ${s.deleted} deleted, ${s.skipped} skipped`);
      await store.close();
      apiserver.close();
    });
}
