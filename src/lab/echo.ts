/**
 * The lab's workload protocol: whatever image a container names, a lab pod runs an echo server.
 * Pods run the native one (ECHO_BIN, native/echo/echo.c); this Node implementation is the
 * reference it must match byte for byte (tests/integration/echo.test.ts compares the two).
 * HTTP on 8080 answers JSON naming cluster, node, namespace and pod (and who asked);
 * TCP on 9000 greets with the same identity line, then echoes bytes; UDP on 9001 answers each
 * datagram with the identity line followed by the datagram.
 */
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { ROOT } from '../util/self.js';

export interface EchoIdentity {
  readonly cluster: string;
  readonly node: string;
  readonly namespace: string;
  readonly pod: string;
  readonly podIP: string;
}

export interface EchoPorts {
  readonly http: number;
  readonly tcp: number;
  readonly udp: number;
}

export function identityLine(id: EchoIdentity): string {
  return `${id.cluster}/${id.node}/${id.namespace}/${id.pod}`;
}

/** Start the three servers; resolves when all listen. Call the returned close() to stop them. */
export async function startEcho(id: EchoIdentity, ports: EchoPorts): Promise<() => void> {
  const http = createHttpServer((req, res) => {
    const body = JSON.stringify({
      ...id,
      path: req.url,
      method: req.method,
      clientIP: req.socket.remoteAddress?.replace(/^::ffff:/, ''),
      clientPort: req.socket.remotePort,
    });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  const tcp = createTcpServer((sock) => {
    sock.on('error', () => sock.destroy());
    sock.write(identityLine(id) + '\n');
    sock.pipe(sock);
  });
  const udp = createSocket('udp4');
  udp.on('message', (msg, rinfo) => {
    udp.send(Buffer.concat([Buffer.from(identityLine(id) + '\n'), msg]), rinfo.port, rinfo.address);
  });
  await Promise.all([
    new Promise<void>((r, j) => http.once('error', j).listen(ports.http, '0.0.0.0', () => r())),
    new Promise<void>((r, j) => tcp.once('error', j).listen(ports.tcp, '0.0.0.0', () => r())),
    new Promise<void>((r, j) => {
      udp.once('error', j);
      udp.bind(ports.udp, '0.0.0.0', () => r());
    }),
  ]);
  return () => {
    http.close();
    tcp.close();
    udp.close();
  };
}

/** The native echo (native/echo/echo.c, built by `make build`): what every lab pod runs. */
export const ECHO_BIN = join(ROOT, 'dist', 'native', 'meshctl-echo');
