/** A real etcd on loopback for tests that need a store but no root (its own temp dir and ports). */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { EtcdClusterClient } from '../../src/cluster/etcd-client.js';

const ETCD = '/usr/bin/etcd';
const ETCDCTL = '/usr/bin/etcdctl';

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export class TestEtcd {
  private proc: ChildProcess | undefined;
  private log = '';

  private constructor(
    readonly name: string,
    readonly dir: string,
    readonly endpoint: string,
    private readonly peer: string,
  ) {}

  /** Start an etcd in a new temp dir; waits until it answers. */
  static async start(name: string): Promise<TestEtcd> {
    const dir = mkdtempSync(join(tmpdir(), `meshctl-${name}-`));
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    const e = new TestEtcd(name, dir, `http://127.0.0.1:${clientPort}`, `http://127.0.0.1:${peerPort}`);
    await e.run();
    return e;
  }

  /** A new client of this store (close it). */
  client(): EtcdClusterClient {
    return new EtcdClusterClient({ endpoints: [this.endpoint] });
  }

  /** Stop the process (SIGTERM, SIGKILL after 5 s); the data stays. */
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = undefined;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    const timer = setTimeout(() => p.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }

  /** Stop and start again on the same ports; `wipe` starts from an empty data dir (a new store). */
  async restart(opts: { wipe?: boolean } = {}): Promise<void> {
    await this.stop();
    if (opts.wipe) rmSync(join(this.dir, 'data'), { recursive: true, force: true });
    await this.run();
  }

  async etcdctl(args: readonly string[]): Promise<string> {
    const r = await execa(ETCDCTL, ['--endpoints', this.endpoint, ...args], { env: { ETCDCTL_API: '3' } });
    return r.stdout;
  }

  /** Compact the history up to the current revision; returns that revision. */
  async compact(): Promise<string> {
    const c = this.client();
    try {
      const rev = (await c.etcd.get('/').exec()).header.revision;
      await this.etcdctl(['compact', rev]);
      return rev;
    } finally {
      await c.close();
    }
  }

  async remove(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async run(): Promise<void> {
    const p = spawn(
      ETCD,
      ['--name', this.name, '--data-dir', join(this.dir, 'data'), '--listen-client-urls', this.endpoint, '--advertise-client-urls', this.endpoint, '--listen-peer-urls', this.peer, '--initial-advertise-peer-urls', this.peer, '--initial-cluster', `${this.name}=${this.peer}`, '--log-level', 'warn', '--logger', 'zap'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.proc = p;
    p.stderr?.on('data', (b: Buffer) => {
      this.log = (this.log + b.toString()).slice(-4000);
    });
    const c = this.client();
    try {
      await c.waitReady(15_000);
    } catch (err) {
      throw new Error(`etcd did not start: ${(err as Error).message}\n${this.log}`);
    } finally {
      await c.close();
    }
  }
}

/** Poll until cond() holds, or throw after timeoutMs naming what was awaited. */
export async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
