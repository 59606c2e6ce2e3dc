/**
 * Certificates of the cluster mesh (DESIGN §5): a CA per mesh (the lab's shared CA, or a cluster's
 * own), the apiserver's server certificate, the admin client certificate (CN root) and one client
 * certificate per peer (CN remote-<peer>). Keys come from node:crypto (native, fast), certificates
 * are built and signed with node-forge, and verified with node:crypto's X509Certificate, so what
 * forge builds is checked by an independent parser.
 *
 * Files (clusters/<c>/mesh/): ca.crt ca.key server.crt server.key admin.crt admin.key
 * remote-<peer>.crt remote-<peer>.key. Keys are written mode 0600.
 */
import { X509Certificate, createHash, createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import forge from 'node-forge';
import { MESH_CA_DAYS, MESH_CERT_DAYS, MESH_PEER_USER_PREFIX } from '../defaults.js';
import { ValidationError } from '../util/errors.js';
import type { LabPaths } from '../lab/state.js';

export interface CertKeyPair {
  readonly certPem: string;
  readonly keyPem: string;
}

export type CertificateProblem = 'expired' | 'not-yet-valid' | 'wrong-ca' | 'wrong-san' | 'wrong-usage' | 'malformed';

/** A certificate that cannot be used: which one (a file or role name) and why. */
export class CertificateError extends Error {
  constructor(
    readonly certificate: string,
    readonly reason: CertificateProblem,
    detail: string,
  ) {
    super(`certificate ${certificate}: ${detail}`);
    this.name = 'CertificateError';
  }
}

export interface CreateCaOptions {
  readonly commonName: string;
  /** Validity in days; default MESH_CA_DAYS. */
  readonly days?: number;
  /** Start of validity; default now. */
  readonly now?: Date;
}

export interface IssueCertificateOptions {
  readonly ca: CertKeyPair;
  readonly commonName: string;
  readonly usage: 'server' | 'client';
  /** Subject alternative names (IP addresses and DNS names); default none. */
  readonly ips?: readonly string[];
  readonly dnsNames?: readonly string[];
  /** Validity in days from notBefore; default MESH_CERT_DAYS. Ignored when notAfter is given. */
  readonly days?: number;
  /** Default now (minus a minute for clock skew). */
  readonly notBefore?: Date;
  readonly notAfter?: Date;
}

const DAY_MS = 86_400_000;
const SKEW_MS = 60_000;

function newRsaKey(): { forgeKey: forge.pki.rsa.PrivateKey; forgePub: forge.pki.rsa.PublicKey; keyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  return {
    forgeKey: forge.pki.privateKeyFromPem(privateKey),
    forgePub: forge.pki.publicKeyFromPem(publicKey) as forge.pki.rsa.PublicKey,
    keyPem: privateKey,
  };
}

/** A positive 128-bit serial in hex (the top bit cleared so DER keeps it positive). */
function serial(): string {
  const b = randomBytes(16);
  b[0] &= 0x7f;
  b[0] |= 0x01;
  return b.toString('hex');
}

/** forge wants an RSA private key; PKCS#8 and PKCS#1 PEM both go through node:crypto to PKCS#1. */
function forgeRsaKey(keyPem: string, name: string): forge.pki.rsa.PrivateKey {
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new CertificateError(name, 'malformed', `not a private key (${(err as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'rsa') throw new CertificateError(name, 'malformed', `key type ${key.asymmetricKeyType} is not supported (meshctl signs with RSA keys)`);
  return forge.pki.privateKeyFromPem(key.export({ type: 'pkcs1', format: 'pem' }) as string);
}

/** A self-signed CA certificate and its key (RSA 2048). */
export function createCa(opts: CreateCaOptions): CertKeyPair {
  const { forgeKey, forgePub, keyPem } = newRsaKey();
  const cert = forge.pki.createCertificate();
  const start = opts.now ?? new Date();
  cert.publicKey = forgePub;
  cert.serialNumber = serial();
  cert.validity.notBefore = new Date(start.getTime() - SKEW_MS);
  cert.validity.notAfter = new Date(start.getTime() + (opts.days ?? MESH_CA_DAYS) * DAY_MS);
  const subject = [{ name: 'commonName', value: opts.commonName }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(forgeKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem };
}

/** A leaf certificate signed by `ca`: server (serverAuth, with SANs) or client (clientAuth; etcd takes the user from its CN). */
export function issueCertificate(opts: IssueCertificateOptions): CertKeyPair {
  const caCert = forge.pki.certificateFromPem(opts.ca.certPem);
  const caKey = forgeRsaKey(opts.ca.keyPem, 'ca.key');
  const { forgePub, keyPem } = newRsaKey();
  const cert = forge.pki.createCertificate();
  const notBefore = opts.notBefore ?? new Date(Date.now() - SKEW_MS);
  cert.publicKey = forgePub;
  cert.serialNumber = serial();
  cert.validity.notBefore = notBefore;
  cert.validity.notAfter = opts.notAfter ?? new Date(notBefore.getTime() + SKEW_MS + (opts.days ?? MESH_CERT_DAYS) * DAY_MS);
  cert.setSubject([{ name: 'commonName', value: opts.commonName }]);
  cert.setIssuer(caCert.subject.attributes);
  const altNames = [...(opts.ips ?? []).map((ip) => ({ type: 7, ip })), ...(opts.dnsNames ?? []).map((value) => ({ type: 2, value }))];
  const exts: object[] = [
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    opts.usage === 'server' ? { name: 'extKeyUsage', serverAuth: true } : { name: 'extKeyUsage', clientAuth: true },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ];
  if (altNames.length > 0) exts.push({ name: 'subjectAltName', altNames });
  cert.setExtensions(exts);
  cert.sign(caKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem };
}

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The certificates of a PEM bundle, each as its own PEM block (newline-terminated). */
export function splitPemBundle(pem: string): string[] {
  return (pem.match(PEM_CERT) ?? []).map((p) => p.trim() + '\n');
}

/** One bundle of all certificates in `pems`, duplicates dropped, order kept. */
export function bundle(...pems: string[]): string {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const p of pems.flatMap(splitPemBundle)) {
    const k = p.replace(/\s+/g, '');
    if (seen.has(k)) continue;
    seen.add(k);
    out.push(p);
  }
  return out.join('');
}

function parseX509(name: string, pem: string): X509Certificate {
  const blocks = splitPemBundle(pem);
  if (blocks.length === 0) throw new CertificateError(name, 'malformed', 'no PEM certificate found');
  try {
    return new X509Certificate(blocks[0]);
  } catch (err) {
    throw new CertificateError(name, 'malformed', `cannot parse (${(err as Error).message})`);
  }
}

/** SHA-256 of the certificate's DER, lowercase hex. */
export function caFingerprint(certPem: string): string {
  return createHash('sha256').update(parseX509('ca', certPem).raw).digest('hex');
}

/** An ISO time without milliseconds: 2026-01-02T00:00:00Z. */
function isoSeconds(d: Date): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

const dn = (text: string): string => text.split('\n').filter(Boolean).join(', ');

const OID_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const OID_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

function sans(x: X509Certificate): string[] {
  return (x.subjectAltName ?? '')
    .split(', ')
    .filter(Boolean)
    .map((s) => s.replace(/^(IP Address|DNS):/, ''));
}

export interface VerifyCertificateOptions {
  /** How the certificate is named in errors (a file name, "server.crt of c2"). */
  readonly name: string;
  readonly certPem: string;
  /** The CA(s) the certificate must be issued by. */
  readonly caBundlePem: string;
  /** When given, the extended key usage must allow it. */
  readonly usage?: 'server' | 'client';
  /** When given, an IP address or DNS name the certificate's SANs must contain. */
  readonly address?: string;
  /** Default now. */
  readonly now?: Date;
}

/**
 * Check a certificate as a TLS peer would: it parses, is valid at `now`, is signed by a CA of the
 * bundle, allows `usage` and names `address`. Throws CertificateError (reason, exact message).
 */
export function verifyCertificate(opts: VerifyCertificateOptions): void {
  const x = parseX509(opts.name, opts.certPem);
  const now = opts.now ?? new Date();
  const from = new Date(x.validFrom);
  const to = new Date(x.validTo);
  if (now.getTime() > to.getTime()) throw new CertificateError(opts.name, 'expired', `expired on ${isoSeconds(to)}`);
  if (now.getTime() < from.getTime()) throw new CertificateError(opts.name, 'not-yet-valid', `not valid before ${isoSeconds(from)}`);
  const cas = splitPemBundle(opts.caBundlePem).map((p, i) => parseX509(`CA ${i + 1} of the bundle`, p));
  const issuer = cas.find((ca) => x.checkIssued(ca) && x.verify(ca.publicKey));
  if (!issuer) throw new CertificateError(opts.name, 'wrong-ca', `not issued by the mesh CA (issuer "${dn(x.issuer)}")`);
  if (opts.usage) {
    const eku = x.keyUsage ?? [];
    const want = opts.usage === 'server' ? OID_SERVER_AUTH : OID_CLIENT_AUTH;
    if (!eku.includes(want)) {
      const names = eku.map((o) => (o === OID_SERVER_AUTH ? 'server' : o === OID_CLIENT_AUTH ? 'client' : o));
      throw new CertificateError(opts.name, 'wrong-usage', `not for ${opts.usage} use (extended key usage: ${names.join(', ') || 'none'})`);
    }
  }
  if (opts.address !== undefined) {
    const isIp = /^[\d.]+$/.test(opts.address) || opts.address.includes(':');
    const ok = isIp ? x.checkIP(opts.address) !== undefined : x.checkHost(opts.address, { subject: 'never' }) !== undefined;
    if (!ok) throw new CertificateError(opts.name, 'wrong-san', `not valid for ${opts.address} (SANs: ${sans(x).join(', ') || 'none'})`);
  }
}

/** Write a file atomically; keys get mode 0600. */
export async function writeSecretFile(file: string, text: string, mode = 0o600): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, text, { mode });
  await chmod(tmp, mode);
  await rename(tmp, file);
}

async function readIfExists(file: string): Promise<string | null> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** Validate a CA: the certificate parses, is a CA, is valid now, and the key is its key (RSA). */
export function validateCa(certFile: string, certPem: string, keyFile: string, keyPem: string, now = new Date()): void {
  const x = parseX509(certFile, certPem);
  if (!x.ca) throw new CertificateError(certFile, 'wrong-usage', 'is not a CA certificate (basicConstraints CA:FALSE)');
  const to = new Date(x.validTo);
  if (now.getTime() > to.getTime()) throw new CertificateError(certFile, 'expired', `expired on ${isoSeconds(to)}`);
  const from = new Date(x.validFrom);
  if (now.getTime() < from.getTime()) throw new CertificateError(certFile, 'not-yet-valid', `not valid before ${isoSeconds(from)}`);
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (err) {
    throw new CertificateError(keyFile, 'malformed', `not a private key (${(err as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'rsa') throw new CertificateError(keyFile, 'malformed', `key type ${key.asymmetricKeyType} is not supported (meshctl signs with RSA keys)`);
  if (!x.checkPrivateKey(key)) throw new CertificateError(keyFile, 'malformed', `is not the key of ${certFile}`);
}

export interface ClusterCa extends CertKeyPair {
  readonly fingerprint: string;
  /** True when it is the lab's shared CA (mesh-ca/), false for a cluster's own. */
  readonly shared: boolean;
}

/**
 * The cluster's mesh CA, in clusters/<c>/mesh/ca.crt/.key. Kept when present (a different `own` CA
 * is then a ValidationError); otherwise `own` (validated: CertificateError naming the file) or the
 * lab's shared CA in mesh-ca/ (made on first use) is copied there.
 */
export async function ensureClusterCa(paths: LabPaths, cluster: string, own?: { certFile: string; keyFile: string }): Promise<ClusterCa> {
  const dir = paths.meshDir(cluster);
  const labCaCert = join(paths.meshCaDir, 'ca.crt');
  const labCaKey = join(paths.meshCaDir, 'ca.key');
  let ownPair: CertKeyPair | null = null;
  if (own) {
    const certPem = await readFile(own.certFile, 'utf8').catch((err) => {
      throw new CertificateError(own.certFile, 'malformed', `cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
    });
    const keyPem = await readFile(own.keyFile, 'utf8').catch((err) => {
      throw new CertificateError(own.keyFile, 'malformed', `cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
    });
    validateCa(own.certFile, certPem, own.keyFile, keyPem);
    ownPair = { certPem, keyPem };
  }
  const labCa = await readIfExists(labCaCert);
  const labFp = labCa ? caFingerprint(labCa) : null;
  const existing = await readIfExists(join(dir, 'ca.crt'));
  const existingKey = await readIfExists(join(dir, 'ca.key'));
  if (existing && existingKey) {
    const fp = caFingerprint(existing);
    if (ownPair && caFingerprint(ownPair.certPem) !== fp) {
      throw new ValidationError(
        'ca-cert',
        'same-ca',
        `cluster ${cluster} already uses mesh CA ${fp.slice(0, 16)}…; --ca-cert ${own!.certFile} is CA ${caFingerprint(ownPair.certPem).slice(0, 16)}…; run 'meshctl disable --context ${cluster}' first to change it`,
      );
    }
    validateCa(join(dir, 'ca.crt'), existing, join(dir, 'ca.key'), existingKey);
    return { certPem: existing, keyPem: existingKey, fingerprint: fp, shared: fp === labFp };
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  let pair: CertKeyPair;
  if (ownPair) {
    pair = ownPair;
  } else {
    if (!labCa) {
      await mkdir(paths.meshCaDir, { recursive: true, mode: 0o700 });
      const ca = createCa({ commonName: 'meshctl lab mesh CA' });
      await writeSecretFile(labCaKey, ca.keyPem);
      await writeSecretFile(labCaCert, ca.certPem, 0o644);
    }
    pair = { certPem: await readFile(labCaCert, 'utf8'), keyPem: await readFile(labCaKey, 'utf8') };
  }
  await writeSecretFile(join(dir, 'ca.key'), pair.keyPem);
  await writeSecretFile(join(dir, 'ca.crt'), pair.certPem, 0o644);
  const fp = caFingerprint(pair.certPem);
  return { ...pair, fingerprint: fp, shared: !ownPair };
}

/** Read the cluster's CA from clusters/<c>/mesh/ (after ensureClusterCa). */
export async function readClusterCa(paths: LabPaths, cluster: string): Promise<CertKeyPair> {
  const dir = paths.meshDir(cluster);
  return { certPem: await readFile(join(dir, 'ca.crt'), 'utf8'), keyPem: await readFile(join(dir, 'ca.key'), 'utf8') };
}

/** Issue and write clusters/<c>/mesh/<base>.crt/.key. */
export async function writeIssued(paths: LabPaths, cluster: string, base: string, opts: Omit<IssueCertificateOptions, 'ca'>): Promise<CertKeyPair> {
  const ca = await readClusterCa(paths, cluster);
  const pair = issueCertificate({ ...opts, ca });
  const dir = paths.meshDir(cluster);
  await writeSecretFile(join(dir, `${base}.key`), pair.keyPem);
  await writeSecretFile(join(dir, `${base}.crt`), pair.certPem, 0o644);
  return pair;
}

/** Base file name of the client certificate `cluster` issues for `peer`'s agents. */
export function peerCertBase(peer: string): string {
  return `${MESH_PEER_USER_PREFIX}${peer}`;
}

/**
 * The client certificate (CN remote-<peer>, clientAuth) that `peer`'s agents present to read this
 * cluster's apiserver, signed by the cluster's CA and written to clusters/<cluster>/mesh/remote-<peer>.crt/.key.
 */
export async function issuePeerCertificate(paths: LabPaths, cluster: string, peer: string): Promise<CertKeyPair> {
  const base = peerCertBase(peer);
  return writeIssued(paths, cluster, base, { commonName: base, usage: 'client' });
}
