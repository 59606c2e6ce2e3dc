#!/usr/bin/env node
/** meshctl: one top-level handler prints errors (one line, with a hint by error type) and sets the exit code. */
import { Command, CommanderError } from 'commander';
import { agentCommand } from '../src/commands/agent.js';
import { clustermeshCommand } from '../src/commands/clustermesh.js';
import { connectCommand, disconnectCommand } from '../src/commands/connect.js';
import { disableCommand, enableCommand } from '../src/commands/enable.js';
import { labCommand } from '../src/commands/lab.js';
import { meshExportCommand } from '../src/commands/mesh-export.js';
import { statusCommand } from '../src/commands/status.js';
import { PreflightError } from '../src/mesh/preflight.js';
import { EnvironmentError, NotFoundError, ValidationError } from '../src/util/errors.js';

const program = new Command('meshctl')
  .description('Connect independent clusters into one network (cluster mesh over an eBPF datapath)')
  .version('0.1.0')
  .showSuggestionAfterError()
  .exitOverride()
  .configureOutput({ outputError: (str, write) => write(`❌ ${str.replace(/^error: /, '')}`) })
  .addHelpText('after', '\nExample:\n  meshctl lab create c1 --id 1 --pod-cidr 10.1.0.0/16')
  .addCommand(labCommand())
  .addCommand(enableCommand())
  .addCommand(disableCommand())
  .addCommand(connectCommand())
  .addCommand(disconnectCommand())
  .addCommand(statusCommand())
  .addCommand(clustermeshCommand())
  .addCommand(agentCommand(), { hidden: true })
  .addCommand(meshExportCommand(), { hidden: true });

const outputError = (str: string, write: (s: string) => void): void => write(`❌ ${str.replace(/^error: /, '')}`);
for (const c of program.commands) {
  c.exitOverride().configureOutput({ outputError });
  for (const sub of c.commands) {
    sub.exitOverride().configureOutput({ outputError });
    for (const subsub of sub.commands) subsub.exitOverride().configureOutput({ outputError });
  }
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // help and version exit 0; usage errors 2 (commander already printed the line)
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else if (err instanceof ValidationError) {
    process.stderr.write(`❌ ${err.message}\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`❌ ${err instanceof Error ? err.message : String(err)}\n`);
    if (err instanceof EnvironmentError && err.hint) process.stderr.write(`💡 ${err.hint}\n`);
    if (err instanceof PreflightError && err.hint) process.stderr.write(`💡 ${err.hint}\n`);
    if (err instanceof NotFoundError && err.what === 'context') process.stderr.write('💡 list clusters with: meshctl lab list\n');
    process.exitCode = 1;
  }
}
// Leftover handles (etcd channels) must not keep a finished command alive. Long-running
// commands (agent, supervisor) only get here when they are shutting down. Stdout first drains:
// a pipe takes large `-o json` output asynchronously (500 pods are ~1 MB).
process.stdout.write('', () => setTimeout(() => process.exit(), 50).unref());
