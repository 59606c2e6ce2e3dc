import { EnvironmentError } from '../util/errors.js';

/** Commands that build namespaces need root; say so in one line instead of failing deep inside. */
export function requireRoot(what: string): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new EnvironmentError(`${what} needs root (network namespaces, links, bpffs)`, 'run it with sudo, or as root');
  }
}
