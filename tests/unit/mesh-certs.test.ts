/** Mesh certificates: issue, verify, refuse (exact messages), files and fingerprints. No root needed. */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CertificateError,
  bundle,
  caFingerprint,
  createCa,
  ensureClusterCa,
  issueCertificate,
  issuePeerCertificate,
  splitPemBundle,
  verifyCertificate,
  type CertificateProblem,
  type VerifyCertificateOptions,
} from '../../src/mesh/certs.js';
import { LabPaths } from '../../src/lab/state.js';

const ca = createCa({ commonName: 'mesh CA' });
const other = createCa({ commonName: 'other' });
const server = issueCertificate({ ca, commonName: 'clustermesh-apiserver', usage: 'server', ips: ['172.31.1.4', '127.0.0.1'] });
const client = issueCertificate({ ca, commonName: 'remote-c1', usage: 'client' });
const expired = issueCertificate({ ca, commonName: 'remote-c1', usage: 'client', notBefore: new Date('2025-01-01T00:00:00Z'), notAfter: new Date('2026-01-02T00:00:00Z') });
const future = issueCertificate({ ca, commonName: 'remote-c1', usage: 'client', notBefore: new Date('2030-05-06T07:08:09Z'), days: 30 });
const foreign = issueCertificate({ ca: other, commonName: 'clustermesh-apiserver', usage: 'server', ips: ['172.31.1.4'] });

describe('verifyCertificate', () => {
  const ok: Array<[string, VerifyCertificateOptions]> = [
    ['server cert for its vpc ip', { name: 'server.crt', certPem: server.certPem, caBundlePem: ca.certPem, usage: 'server', address: '172.31.1.4' }],
    ['server cert for loopback', { name: 'server.crt', certPem: server.certPem, caBundlePem: ca.certPem, usage: 'server', address: '127.0.0.1' }],
    ['client cert', { name: 'remote-c1.crt', certPem: client.certPem, caBundlePem: ca.certPem, usage: 'client' }],
    ['CA found in a bundle of two', { name: 'server.crt', certPem: foreign.certPem, caBundlePem: bundle(ca.certPem, other.certPem), usage: 'server' }],
  ];
  test.each(ok)('accepts: %s', (_name, opts) => {
    expect(() => verifyCertificate(opts)).not.toThrow();
  });

  const refused: Array<[string, VerifyCertificateOptions, CertificateProblem, string]> = [
    ['expired', { name: 'remote-c1.crt', certPem: expired.certPem, caBundlePem: ca.certPem }, 'expired', 'certificate remote-c1.crt: expired on 2026-01-02T00:00:00Z'],
    ['not yet valid', { name: 'remote-c1.crt', certPem: future.certPem, caBundlePem: ca.certPem }, 'not-yet-valid', 'certificate remote-c1.crt: not valid before 2030-05-06T07:08:09Z'],
    ['wrong CA', { name: 'server.crt of c2', certPem: foreign.certPem, caBundlePem: ca.certPem }, 'wrong-ca', 'certificate server.crt of c2: not issued by the mesh CA (issuer "CN=other")'],
    ['wrong SAN', { name: 'server.crt', certPem: server.certPem, caBundlePem: ca.certPem, address: '172.31.1.5' }, 'wrong-san', 'certificate server.crt: not valid for 172.31.1.5 (SANs: 172.31.1.4, 127.0.0.1)'],
    ['wrong DNS name', { name: 'server.crt', certPem: server.certPem, caBundlePem: ca.certPem, address: 'apiserver.example' }, 'wrong-san', 'certificate server.crt: not valid for apiserver.example (SANs: 172.31.1.4, 127.0.0.1)'],
    ['client cert as server', { name: 'remote-c1.crt', certPem: client.certPem, caBundlePem: ca.certPem, usage: 'server' }, 'wrong-usage', 'certificate remote-c1.crt: not for server use (extended key usage: client)'],
    ['malformed', { name: 'admin.crt', certPem: '-----BEGIN CERTIFICATE-----\nnot base64 der\n-----END CERTIFICATE-----\n', caBundlePem: ca.certPem }, 'malformed', 'certificate admin.crt: cannot parse'],
    ['no PEM at all', { name: 'admin.crt', certPem: 'hello', caBundlePem: ca.certPem }, 'malformed', 'certificate admin.crt: no PEM certificate found'],
  ];
  test.each(refused)('refuses: %s', (_name, opts, reason, message) => {
    let err: unknown;
    try {
      verifyCertificate(opts);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CertificateError);
    expect((err as CertificateError).reason).toBe(reason);
    expect((err as CertificateError).certificate).toBe(opts.name);
    if (reason === 'malformed' && message.endsWith('cannot parse')) expect((err as Error).message.startsWith(`${message} (`)).toBe(true);
    else expect((err as Error).message).toBe(message);
  });
});

describe('certificate contents', () => {
  test('CA is a CA, leaves are not; client cert carries its CN and client usage only', () => {
    expect(new X509Certificate(ca.certPem).ca).toBe(true);
    const c = new X509Certificate(client.certPem);
    expect(c.ca).toBe(false);
    expect(c.subject).toBe('CN=remote-c1');
    expect(c.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(c.checkIssued(new X509Certificate(ca.certPem))).toBe(true);
  });
  test('fingerprint is the SHA-256 of the DER, stable, and differs between CAs', () => {
    const fp = caFingerprint(ca.certPem);
    expect(fp).toMatch(/^[0-9a-f]{64}$/);
    expect(caFingerprint(ca.certPem)).toBe(fp);
    expect(fp).toBe(new X509Certificate(ca.certPem).fingerprint256.replace(/:/g, '').toLowerCase());
    expect(caFingerprint(other.certPem)).not.toBe(fp);
  });
  test('bundles split and deduplicate', () => {
    const b = bundle(ca.certPem, other.certPem, ca.certPem);
    expect(splitPemBundle(b)).toHaveLength(2);
    expect(splitPemBundle(b)[1]).toBe(other.certPem.trim() + '\n');
  });
});

describe('cluster CA files', () => {
  let home: string;
  let paths: LabPaths;
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), 'meshctl-certs-'));
    paths = new LabPaths(home);
  });
  afterEach(() => rmSync(home, { recursive: true, force: true }));

  const mode = (f: string): number => statSync(f).mode & 0o777;

  test('lab CA made on first use, shared by clusters, keys 0600, fingerprint stable', async () => {
    const a = await ensureClusterCa(paths, 'c1');
    const b = await ensureClusterCa(paths, 'c2');
    const again = await ensureClusterCa(paths, 'c1');
    expect(a.shared).toBe(true);
    expect(b.fingerprint).toBe(a.fingerprint);
    expect(again.fingerprint).toBe(a.fingerprint);
    expect(caFingerprint(readFileSync(join(paths.meshCaDir, 'ca.crt'), 'utf8'))).toBe(a.fingerprint);
    expect(mode(join(paths.meshCaDir, 'ca.key'))).toBe(0o600);
    expect(mode(join(paths.meshDir('c1'), 'ca.key'))).toBe(0o600);
    const peer = await issuePeerCertificate(paths, 'c1', 'c2');
    expect(mode(join(paths.meshDir('c1'), 'remote-c2.key'))).toBe(0o600);
    expect(readFileSync(join(paths.meshDir('c1'), 'remote-c2.crt'), 'utf8')).toBe(peer.certPem);
    expect(new X509Certificate(peer.certPem).subject).toBe('CN=remote-c2');
    expect(() => verifyCertificate({ name: 'remote-c2.crt', certPem: peer.certPem, caBundlePem: a.certPem, usage: 'client' })).not.toThrow();
  });

  test('own CA is used and not shared; a different one later is refused', async () => {
    writeFileSync(join(home, 'own.crt'), other.certPem);
    writeFileSync(join(home, 'own.key'), other.keyPem);
    const r = await ensureClusterCa(paths, 'c1', { certFile: join(home, 'own.crt'), keyFile: join(home, 'own.key') });
    expect(r).toMatchObject({ shared: false, fingerprint: caFingerprint(other.certPem) });
    writeFileSync(join(home, 'ca2.crt'), ca.certPem);
    writeFileSync(join(home, 'ca2.key'), ca.keyPem);
    await expect(ensureClusterCa(paths, 'c1', { certFile: join(home, 'ca2.crt'), keyFile: join(home, 'ca2.key') })).rejects.toThrow(
      `cluster c1 already uses mesh CA ${caFingerprint(other.certPem).slice(0, 16)}…; --ca-cert ${join(home, 'ca2.crt')} is CA ${caFingerprint(ca.certPem).slice(0, 16)}…; run 'meshctl disable --context c1' first to change it`,
    );
  });

  const expiredCa = createCa({ commonName: 'old', now: new Date('2020-01-01T00:00:00Z'), days: 10 });
  const bad: Array<[string, () => [string, string], CertificateProblem, (h: string) => string]> = [
    ['expired CA', () => [expiredCa.certPem, expiredCa.keyPem], 'expired', (h) => `certificate ${h}/own.crt: expired on 2020-01-11T00:00:00Z`],
    ['a leaf, not a CA', () => [client.certPem, client.keyPem], 'wrong-usage', (h) => `certificate ${h}/own.crt: is not a CA certificate (basicConstraints CA:FALSE)`],
    ['key of another CA', () => [ca.certPem, other.keyPem], 'malformed', (h) => `certificate ${h}/own.key: is not the key of ${h}/own.crt`],
    ['garbage', () => ['junk', ca.keyPem], 'malformed', (h) => `certificate ${h}/own.crt: no PEM certificate found`],
  ];
  test.each(bad)('own CA refused: %s, nothing written', async (_n, files, reason, message) => {
    const [crt, key] = files();
    writeFileSync(join(home, 'own.crt'), crt);
    writeFileSync(join(home, 'own.key'), key);
    const p = ensureClusterCa(paths, 'c1', { certFile: join(home, 'own.crt'), keyFile: join(home, 'own.key') });
    await expect(p).rejects.toThrow(message(home));
    await expect(p).rejects.toMatchObject({ reason });
    expect(() => statSync(paths.meshDir('c1'))).toThrow();
  });
});
