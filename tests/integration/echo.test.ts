/**
 * The native pod workload (dist/native/meshctl-echo) answers byte for byte as the protocol
 * says: explicit expected bytes for the cases the lab relies on, and the same bytes as the Node
 * reference (src/lab/echo.ts, the echo pods ran before) over a table of well-formed, odd and
 * malformed requests. Both servers run in one namespace of this test's own; the client runs
 * there too, so no traffic leaves it.
 */
import { execa, type ResultPromise } from 'execa';
import { join } from 'node:path';
import { ECHO_BIN } from '../../src/lab/echo.js';
import { labPrefix } from '../../src/lab/state.js';
import { ROOT, requireRoot, sh, sleep } from '../helpers/lab.js';

const NETNS = `mesh${labPrefix('/tmp/meshctl-test-echo')}-echo`;
const ID = { cluster: 'c7', node: 'c7-n2', namespace: 'demo', pod: 'echo-5d8c9-x2k4q', podIP: '10.7.1.9' };
const LINE = `${ID.cluster}/${ID.node}/${ID.namespace}/${ID.pod}\n`;
const NATIVE = { http: 8080, tcp: 9000, udp: 9001 };
const REFERENCE = { http: 18080, tcp: 19000, udp: 19001 };

const REFERENCE_JS = `
import { startEcho } from ${JSON.stringify(join(ROOT, 'dist', 'src', 'lab', 'echo.js'))};
await startEcho(${JSON.stringify(ID)}, ${JSON.stringify(REFERENCE)});
process.stderr.write('listening\\n');`;

/** One exchange per input line (JSON): send bytes, optionally half-close, collect until EOF or quiet. */
const CLIENT_JS = `
const net = require('net'), dgram = require('dgram');
const x = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const send = Buffer.from(x.send, 'base64');
let done = false;
const finish = (data, eof, localPort) => {
  if (done) return;
  done = true;
  process.stdout.write(JSON.stringify({ data: data.toString('base64'), eof, localPort }), () => process.exit(0));
};
if (x.udp) {
  const u = dgram.createSocket('udp4');
  u.on('message', (m) => finish(m, false, u.address().port));
  u.bind(0, '127.0.0.1', () => u.send(send, x.port, '127.0.0.1'));
  setTimeout(() => finish(Buffer.alloc(0), false, u.address().port), x.quietMs);
} else {
  const chunks = [];
  const s = net.connect({ host: '127.0.0.1', port: x.port }, () => { s.write(send); if (x.halfClose) s.end(); });
  let timer = null;
  const quiet = () => { clearTimeout(timer); timer = setTimeout(() => finish(Buffer.concat(chunks), false, s.localPort), x.quietMs); };
  s.on('data', (b) => { chunks.push(b); quiet(); });
  s.on('end', () => finish(Buffer.concat(chunks), true, s.localPort));
  s.on('error', () => finish(Buffer.concat(chunks), true, s.localPort));
  quiet();
}`;

interface Reply {
  readonly data: Buffer;
  readonly eof: boolean;
  readonly localPort: number;
}

async function exchange(port: number, send: Buffer | string, opts: { udp?: boolean; halfClose?: boolean; quietMs?: number } = {}): Promise<Reply> {
  const input = JSON.stringify({ port, send: (typeof send === 'string' ? Buffer.from(send, 'latin1') : send).toString('base64'), udp: opts.udp ?? false, halfClose: opts.halfClose ?? false, quietMs: opts.quietMs ?? 400 });
  const r = await execa('ip', ['netns', 'exec', NETNS, process.execPath, '-e', CLIENT_JS], { input, reject: false, timeout: 20_000 });
  if (r.exitCode !== 0) throw new Error(`client in ${NETNS}: ${r.stderr}`);
  const o = JSON.parse(String(r.stdout)) as { data: string; eof: boolean; localPort: number };
  return { data: Buffer.from(o.data, 'base64'), eof: o.eof, localPort: o.localPort };
}

const DATE = /Date: (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT\r\n/g;

/** The reply as text, its Date header checked for form and replaced, and whether it was closed. */
function dated(r: Reply): string {
  return r.data.toString('latin1').replace(DATE, 'Date: <date>\r\n') + (r.eof ? '<EOF>' : '<OPEN>');
}

/** As dated(), with the client's port (which differs between two exchanges) made fixed too. */
function normalize(r: Reply): string {
  return dated(r).split(`"clientPort":${r.localPort}}`).join('"clientPort":<port>}');
}

function body(path: string, method: string, clientPort: number): string {
  return JSON.stringify({ ...ID, path, method, clientIP: '127.0.0.1', clientPort });
}

/** What the protocol specifies for a 200: these headers in this order, then the JSON body. */
function ok(path: string, method: string, clientPort: number, keepAlive: boolean, withBody = true): string {
  const b = body(path, method, clientPort);
  return (
    `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(b)}\r\nDate: <date>\r\n` +
    (keepAlive ? 'Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n' : 'Connection: close\r\n') +
    '\r\n' +
    (withBody ? b : '')
  );
}

let native: ResultPromise | null = null;
let reference: ResultPromise | null = null;

async function waitListening(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await sh('ip', ['netns', 'exec', NETNS, 'ss', '-Hltn', `sport = :${port}`]);
    if (r.stdout.trim()) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on ${port} in ${NETNS}`);
}

beforeAll(async () => {
  requireRoot();
  await sh('ip', ['netns', 'del', NETNS]);
  const add = await sh('ip', ['netns', 'add', NETNS]);
  if (add.exitCode !== 0) throw new Error(`ip netns add ${NETNS}: ${add.stderr}`);
  await sh('ip', ['-n', NETNS, 'link', 'set', 'lo', 'up']);
  native = execa('ip', ['netns', 'exec', NETNS, ECHO_BIN, ID.cluster, ID.node, ID.namespace, ID.pod, ID.podIP], { reject: false });
  reference = execa('ip', ['netns', 'exec', NETNS, process.execPath, '--input-type=module', '-e', REFERENCE_JS], { reject: false });
  await waitListening(NATIVE.http);
  await waitListening(REFERENCE.http);
  await waitListening(NATIVE.tcp);
  await waitListening(REFERENCE.tcp);
});

afterAll(async () => {
  native?.kill('SIGKILL');
  reference?.kill('SIGKILL');
  await Promise.allSettled([native, reference]);
  await sh('ip', ['netns', 'del', NETNS]);
});

describe('native echo: the bytes the protocol specifies', () => {
  test('HTTP/1.1 GET: 200 with the JSON identity, kept alive', async () => {
    const r = await exchange(NATIVE.http, 'GET /some/path?q=1 HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(dated(r)).toBe(ok('/some/path?q=1', 'GET', r.localPort, true) + '<OPEN>');
    expect(JSON.parse(r.data.toString().split('\r\n\r\n')[1])).toEqual({ ...ID, path: '/some/path?q=1', method: 'GET', clientIP: '127.0.0.1', clientPort: r.localPort });
  });

  test('Connection: close and HTTP/1.0 are answered and closed', async () => {
    const a = await exchange(NATIVE.http, 'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(dated(a)).toBe(ok('/', 'GET', a.localPort, false) + '<EOF>');
    const b = await exchange(NATIVE.http, 'POST /a HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi');
    expect(dated(b)).toBe(ok('/a', 'POST', b.localPort, false) + '<EOF>');
  });

  test('HEAD has the headers of GET and no body; quotes in the path are JSON-escaped', async () => {
    const r = await exchange(NATIVE.http, 'HEAD /a"b\\c HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(dated(r)).toBe(ok('/a"b\\c', 'HEAD', r.localPort, true, false) + '<OPEN>');
    expect(r.data.toString()).toContain(`content-length: ${Buffer.byteLength(body('/a"b\\c', 'HEAD', r.localPort))}\r\n`);
  });

  test('pipelined requests with chunked and 100-continue bodies: one answer each, in order', async () => {
    const r = await exchange(
      NATIVE.http,
      'POST /1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' +
        'PUT /2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody' +
        'GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(dated(r)).toBe(
      ok('/1', 'POST', r.localPort, true) + 'HTTP/1.1 100 Continue\r\n\r\n' + ok('/2', 'PUT', r.localPort, true) + ok('/3', 'GET', r.localPort, false) + '<EOF>',
    );
  });

  test('malformed requests: 400 (or 431 for a huge head) and closed', async () => {
    expect(dated(await exchange(NATIVE.http, 'garbage\r\n\r\n'))).toBe('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n<EOF>');
    expect(dated(await exchange(NATIVE.http, `GET / HTTP/1.1\r\nHost: x\r\nX: ${'a'.repeat(17_000)}\r\n\r\n`))).toBe(
      'HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n<EOF>',
    );
    expect(dated(await exchange(NATIVE.http, 'GET / HTTP/1.1\r\n\r\n'))).toBe(
      'HTTP/1.1 400 Bad Request\r\nConnection: close\r\nDate: <date>\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n<EOF>',
    );
  });

  test('TCP 9000: the identity line, then every byte echoed; closed after the client closes', async () => {
    const payload = Buffer.alloc(300_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) & 0xff;
    const r = await exchange(NATIVE.tcp, payload, { halfClose: true, quietMs: 3000 });
    expect(r.eof).toBe(true);
    expect(r.data.subarray(0, LINE.length).toString()).toBe(LINE);
    expect(r.data.subarray(LINE.length).equals(payload)).toBe(true);
  });

  test('UDP 9001: the identity line followed by the datagram, also an empty one', async () => {
    const d = await exchange(NATIVE.udp, Buffer.from([0, 1, 2, 255, 10]), { udp: true });
    expect(d.data.equals(Buffer.concat([Buffer.from(LINE), Buffer.from([0, 1, 2, 255, 10])]))).toBe(true);
    const e = await exchange(NATIVE.udp, Buffer.alloc(0), { udp: true });
    expect(e.data.toString()).toBe(LINE);
    const big = Buffer.alloc(4000, 'u');
    expect((await exchange(NATIVE.udp, big, { udp: true })).data.equals(Buffer.concat([Buffer.from(LINE), big]))).toBe(true);
  });
});

describe('native echo: the same bytes as the Node reference', () => {
  const H = 'Host: x\r\n';
  const cases: Array<[string, string]> = [
    ['GET keep-alive', `GET / HTTP/1.1\r\n${H}\r\n`],
    ['absolute URL', `GET http://h/abs?x=1 HTTP/1.1\r\n${H}\r\n`],
    ['OPTIONS *', `OPTIONS * HTTP/1.1\r\n${H}\r\n`],
    ['PURGE (a method llhttp knows)', `PURGE / HTTP/1.1\r\n${H}\r\n`],
    ['unknown method', `FOO / HTTP/1.1\r\n${H}\r\n`],
    ['lowercase method', `get / HTTP/1.1\r\n${H}\r\n`],
    ['odd but legal path bytes', `GET /{}|^\`<>"\\ HTTP/1.1\r\n${H}\r\n`],
    ['non-ASCII path byte', `GET /\xe9 HTTP/1.1\r\n${H}\r\n`],
    ['DEL in path', `GET /\x7f HTTP/1.1\r\n${H}\r\n`],
    ['runs of spaces', `GET   /x  HTTP/1.1\r\n${H}\r\n`],
    ['HTTP/1.0', 'GET / HTTP/1.0\r\n\r\n'],
    ['HTTP/1.0 keep-alive', 'GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n'],
    ['HTTP/2.0 request line', `GET / HTTP/2.0\r\n${H}\r\n`],
    ['no version (0.9)', 'GET /nine\r\n\r\n'],
    ['Connection: Close (case)', `GET / HTTP/1.1\r\n${H}Connection: Close\r\n\r\n`],
    ['Connection: keep-alive, close', `GET / HTTP/1.1\r\n${H}Connection: keep-alive, close\r\n\r\n`],
    ['two Host headers', 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'],
    ['missing Host', 'GET / HTTP/1.1\r\n\r\n'],
    ['leading empty line', `\r\nGET /lead HTTP/1.1\r\n${H}\r\n`],
    ['bare LF', 'GET / HTTP/1.1\nHost: x\n\n'],
    ['header name with space', `GET / HTTP/1.1\r\n${H}Bad Header: x\r\n\r\n`],
    ['control byte in a value', `GET / HTTP/1.1\r\n${H}X: a\x01b\r\n\r\n`],
    ['UTF-8 in a value', `GET / HTTP/1.1\r\n${H}X: caf\xc3\xa9\r\n\r\n`],
    ['Content-Length body then pipelined', `POST /p HTTP/1.1\r\n${H}Content-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\n${H}\r\n`],
    ['duplicate Content-Length', `POST / HTTP/1.1\r\n${H}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd`],
    ['bad Content-Length', `POST / HTTP/1.1\r\n${H}Content-Length: x\r\n\r\n`],
    ['chunked with extensions and trailer', `POST /c HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\nGET /after HTTP/1.1\r\n${H}\r\n`],
    ['chunked and Content-Length', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n`],
    ['Transfer-Encoding gzip', `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\n\r\nabc`],
    ['Expect: 100-continue', `POST / HTTP/1.1\r\n${H}Expect: 100-continue\r\nContent-Length: 2\r\n\r\nab`],
    ['Expect: something else', `POST / HTTP/1.1\r\n${H}Expect: foo\r\nContent-Length: 2\r\n\r\nab`],
    ['data after Connection: close', `GET /1 HTTP/1.1\r\n${H}\r\nGET /2 HTTP/1.1\r\n${H}Connection: close\r\n\r\nGET /3 HTTP/1.1\r\n${H}\r\n`],
    ['header too large', `GET / HTTP/1.1\r\n${H}X: ${'a'.repeat(17_000)}\r\n\r\n`],
  ];
  test.each(cases)('%s', async (_name, request) => {
    const req = Buffer.from(request, 'latin1');
    const [n, r] = await Promise.all([exchange(NATIVE.http, req), exchange(REFERENCE.http, req)]);
    const norm = (x: Reply): string => normalize(x).replace(/content-length: \d+/g, 'content-length: <n>');
    expect(norm(n)).toBe(norm(r));
    // the lengths differ only by the digits of the two client ports
    const len = (x: Reply): number[] => [...x.data.toString('latin1').matchAll(/content-length: (\d+)/g)].map((m) => Number(m[1]) - String(x.localPort).length);
    expect(len(n)).toEqual(len(r));
  });

  test('TCP and UDP echo', async () => {
    for (const [nat, ref] of [
      [NATIVE.tcp, REFERENCE.tcp],
      [NATIVE.udp, REFERENCE.udp],
    ] as const) {
      const udp = nat === NATIVE.udp;
      const [a, b] = await Promise.all([exchange(nat, 'hello\n', { udp, halfClose: true }), exchange(ref, 'hello\n', { udp, halfClose: true })]);
      expect(a.data.toString()).toBe(b.data.toString());
      expect(a.eof).toBe(b.eof);
    }
  });
});
