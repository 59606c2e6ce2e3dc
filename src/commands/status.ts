/** `meshctl status`: commander wiring only (src/mesh/status.ts does the work). */
import { Command, Option } from 'commander';
import { LabPaths, stateHome } from '../lab/state.js';
import { apiserverHealth } from '../mesh/apiserver.js';
import { gatherStatus, renderStatus, sortKeys, waitDuration, waitForStatus, type StatusReport } from '../mesh/status.js';
import { OperationError } from '../util/errors.js';
import { out } from '../util/output.js';

interface StatusOptions {
  readonly context: string;
  readonly wait?: boolean;
  /** Default MESH_STATUS_WAIT_MS (5m). */
  readonly waitDuration?: string;
  readonly output: 'text' | 'json';
}

export function statusCommand(name = 'status'): Command {
  return new Command(name)
    .description("Show the cluster mesh status of a cluster, as its agents report it (apiserver, peers, sync, errors)")
    .requiredOption('--context <name>', 'cluster')
    .option('--wait', 'wait until every node is connected and synced with every configured peer')
    .option('--wait-duration <duration>', 'how long --wait waits (500ms, 30s, 2m; default 5m or $MESH_STATUS_WAIT_MS)')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .addHelpText('after', '\nExamples:\n  meshctl status --context c1\n  meshctl status --context c1 --wait --wait-duration 2m -o json')
    .action(async (o: StatusOptions) => {
      const paths = new LabPaths(stateHome());
      // A bad duration is a usage error before anything is read.
      const timeoutMs = waitDuration(o.waitDuration);
      let report: StatusReport;
      if (o.wait) report = await waitForStatus(paths, o.context, apiserverHealth, { timeoutMs, onWait: (l) => out.info(l) });
      else report = await gatherStatus(paths, o.context, apiserverHealth);
      for (const line of renderStatus(report)) out.info(line);
      if (o.output === 'json') out.data(sortKeys(report));
      if (!report.ready) {
        const after = o.wait ? ` after ${o.waitDuration ?? `${Math.round(timeoutMs / 1000)}s`}` : '';
        throw new OperationError(`cluster mesh of ${o.context} is not ready${after}: ${report.waitingFor}`);
      }
    });
}
