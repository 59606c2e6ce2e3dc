/** `meshctl clustermesh enable|disable|connect|disconnect|status`: the same commands under the name Cilium users type. */
import { Command } from 'commander';
import { connectCommand, disconnectCommand } from './connect.js';
import { disableCommand, enableCommand } from './enable.js';
import { statusCommand } from './status.js';

/** Each subcommand is a fresh instance of the top-level command's builder (commander owns one parent per command). */
export function clustermeshCommand(): Command {
  return new Command('clustermesh')
    .description('Cluster mesh commands under their Cilium names (aliases of meshctl enable, disable, connect, disconnect, status)')
    .addHelpText('after', '\nExample:\n  meshctl clustermesh status --context c1 --wait')
    .addCommand(enableCommand())
    .addCommand(disableCommand())
    .addCommand(connectCommand())
    .addCommand(disconnectCommand())
    .addCommand(statusCommand());
}
