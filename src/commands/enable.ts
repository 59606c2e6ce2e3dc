/** `meshctl enable` / `meshctl disable`: commander wiring only; each action calls one domain function. */
import { Command } from 'commander';
import { disableCluster, enableCluster } from '../mesh/apiserver.js';
import { LabPaths, stateHome } from '../lab/state.js';
import { out } from '../util/output.js';
import { requireRoot } from './root.js';

/** A fresh `enable` command (callable more than once: the clustermesh alias group builds its own). */
export function enableCommand(name = 'enable'): Command {
  return new Command(name)
    .description('Enable the cluster mesh on a cluster: CA, certificates, the clustermesh-apiserver and the export process')
    .requiredOption('--context <name>', 'lab cluster')
    .option('--ca-cert <file>', "the cluster's own CA certificate (PEM) instead of the lab's shared CA")
    .option('--ca-key <file>', 'the key of --ca-cert (PEM, RSA)')
    .option('--dry-run', 'print what would be created, change nothing')
    .addHelpText('after', '\nExamples:\n  meshctl enable --context c1\n  meshctl enable --context c2 --ca-cert ca.crt --ca-key ca.key --dry-run')
    .action(async (o: { context: string; caCert?: string; caKey?: string; dryRun?: boolean }) => {
      requireRoot('enable');
      const r = await enableCluster(new LabPaths(stateHome()), {
        context: o.context,
        caCertFile: o.caCert,
        caKeyFile: o.caKey,
        dryRun: o.dryRun,
        onStep: (m) => out.info(m),
      });
      if (r.dryRun) {
        out.info(`Dry run: enabling cluster mesh on ${r.cluster} would${r.actions.length ? ':' : ' change nothing (already enabled)'}`);
        for (const a of r.actions) out.info(`  - ${a}`);
        return;
      }
      if (r.alreadyEnabled) {
        out.ok(`Cluster mesh already enabled on ${r.cluster}${r.actions.length ? `; repaired: ${r.actions.join(', ')}` : ''}; apiserver ${r.endpoint}`);
      } else {
        out.ok(`Cluster mesh enabled on ${r.cluster}: apiserver ${r.endpoint} (peers use ${r.internalEndpoint}), CA sha256 ${r.caFingerprint.slice(0, 16)}…`);
      }
    });
}

/** A fresh `disable` command. */
export function disableCommand(name = 'disable'): Command {
  return new Command(name)
    .description('Disable the cluster mesh on a cluster: stop its clustermesh-apiserver and export process, remove their files')
    .requiredOption('--context <name>', 'lab cluster')
    .option('--force', 'disable even while peers are connected')
    .addHelpText('after', '\nExamples:\n  meshctl disable --context c1\n  meshctl disable --context c1 --force')
    .action(async (o: { context: string; force?: boolean }) => {
      requireRoot('disable');
      const r = await disableCluster(new LabPaths(stateHome()), { context: o.context, force: o.force });
      if (!r.wasEnabled) return out.ok(`Cluster mesh is not enabled on ${r.cluster}; nothing to do`);
      if (r.peers.length) out.warn(`Peers ${r.peers.join(', ')} were still connected; their agents lose ${r.cluster}`);
      out.ok(`Cluster mesh disabled on ${r.cluster}`);
    });
}
