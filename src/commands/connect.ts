/** `meshctl connect` and `meshctl disconnect`: commander wiring only. */
import { Command, Option } from 'commander';
import { LabPaths, stateHome } from '../lab/state.js';
import { connectClusters, disconnectClusters, type DirectionResult } from '../mesh/connect.js';
import { CONNECTION_MODES } from '../mesh/preflight.js';
import { out } from '../util/output.js';

function modeOption(): Option {
  return new Option('--connection-mode <mode>', 'bidirectional: both ways; unicast: context → destinations only; mesh: every pair among them')
    .choices([...CONNECTION_MODES])
    .default('bidirectional');
}

function connectedLine(d: DirectionResult): string {
  return `${d.from} → ${d.to}: ${d.from}'s agents read ${d.to}'s clustermesh-apiserver at ${d.endpoint} as ${d.user}`;
}

function planLine(d: DirectionResult): string {
  if (d.action === 'already') return `   ${d.from} → ${d.to}: already connected (${d.endpoint} as ${d.user}); nothing to do`;
  const redo = d.state === 'stale' ? ' (replaces an out-of-date connection)' : '';
  return (
    `   ${d.from} → ${d.to}${redo}: user ${d.user} (read-only on mesh/v1/) in ${d.to}'s clustermesh-apiserver, ` +
    `a client certificate CN ${d.user} from ${d.to}'s CA, MeshPeer ${d.to} in ${d.from}'s store (${d.store}) ` +
    `with endpoint ${d.endpoint}, server name ${d.serverName}, trusting CA ${d.caFingerprints.join(' + ')}`
  );
}

export function connectCommand(): Command {
  return new Command('connect')
    .description("Connect clusters: each direction lets one cluster's agents read the other's clustermesh-apiserver")
    .requiredOption('--context <name>', 'source cluster')
    .requiredOption('--destination-context <names>', 'destination cluster(s), comma-separated')
    .addOption(modeOption())
    .option('--allow-mismatching-ca', 'connect clusters whose mesh CAs differ (each side trusts both)')
    .option('--dry-run', 'print the plan and change nothing')
    .addHelpText(
      'after',
      '\nExamples:\n  meshctl connect --context c1 --destination-context c2\n  meshctl connect --context c1 --destination-context c2,c3 --connection-mode mesh --dry-run',
    )
    .action(async (o: { context: string; destinationContext: string; connectionMode: string; allowMismatchingCa?: boolean; dryRun?: boolean }) => {
      const paths = new LabPaths(stateHome());
      if (o.dryRun) out.wait('Dry run: checking, then printing the plan; nothing will change');
      const r = await connectClusters(paths, {
        context: o.context,
        destinations: o.destinationContext,
        mode: o.connectionMode,
        allowMismatchingCa: o.allowMismatchingCa,
        dryRun: o.dryRun,
        onWarning: (m) => out.warn(m),
        onDirection: (d) => {
          if (o.dryRun) out.info(planLine(d));
          else if (d.action === 'already') out.ok(`${connectedLine(d)} (already connected)`);
          else out.ok(connectedLine(d));
        },
      });
      if (r.dryRun) {
        const todo = r.directions.filter((d) => d.action === 'planned').length;
        out.ok(`Pre-flight passed for mesh ${r.mesh.join(', ')}; ${todo} of ${r.directions.length} direction(s) would be made (dry run, nothing changed)`);
      } else if (r.directions.every((d) => d.action === 'already')) {
        out.ok(`Already connected (${r.mode}); nothing changed`);
      } else {
        out.ok(`Connected (${r.mode}); mesh: ${r.mesh.join(', ')}. Check with: meshctl status --context ${o.context}`);
      }
    });
}

export function disconnectCommand(): Command {
  return new Command('disconnect')
    .description("Disconnect clusters: remove each direction's MeshPeer and revoke its apiserver user")
    .requiredOption('--context <name>', 'source cluster')
    .requiredOption('--destination-context <names>', 'destination cluster(s), comma-separated')
    .addOption(modeOption())
    .addHelpText('after', '\nExample:\n  meshctl disconnect --context c1 --destination-context c2')
    .action(async (o: { context: string; destinationContext: string; connectionMode: string }) => {
      const paths = new LabPaths(stateHome());
      await disconnectClusters(paths, {
        context: o.context,
        destinations: o.destinationContext,
        mode: o.connectionMode,
        onDirection: (d) => {
          if (d.action === 'not-connected') {
            out.ok(`${d.from} → ${d.to}: not connected; nothing to remove`);
            return;
          }
          const what = [
            d.removedPeer ? `MeshPeer ${d.to} from ${d.from}'s store` : '',
            d.removedUser ? `user remote-${d.from} from ${d.to}'s clustermesh-apiserver` : '',
          ].filter(Boolean);
          out.ok(`${d.from} → ${d.to}: disconnected (removed ${what.join(' and ')})`);
        },
      });
    });
}
