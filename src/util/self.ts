/** Paths of meshctl's own entry points, for the processes the lab starts. */
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

/** Repository (or install) root: this file is <root>/dist/src/util/self.js. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export const MESHCTL_BIN = join(ROOT, 'dist', 'bin', 'meshctl.js');
export const ECHO_MAIN = join(ROOT, 'dist', 'src', 'lab', 'echo-main.js');
