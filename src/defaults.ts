/**
 * Names, ports, label keys, address plans and timeouts used across meshctl.
 * One place, so a change here changes every user of the value.
 */

/** Where a lab keeps its state when MESHCTL_HOME is not set. */
export const DEFAULT_HOME_DIR = '.meshctl';

/** Every lab network namespace starts with this, followed by the lab's short prefix. */
export const NETNS_PREFIX = 'mesh';

/** Characters of hex in a lab's prefix (derived from its state dir). */
export const LAB_PREFIX_LENGTH = 4;

/** Management network between the host link and control planes: 198.18.<k>.0/24 (RFC 2544 range). */
export const MGMT_BASE = '198.18.0.0';

/** VPC subnets inside a lab's underlay namespace: 172.31.<vpcIndex>.0/24. */
export const VPC_BASE = '172.31.0.0/16';

export const DEFAULT_SERVICE_CIDR = '10.96.0.0/16';
export const DEFAULT_NODES = 2;
export const MAX_NODES = 16;
export const DEFAULT_ROUTING = 'tunnel' as const;
export const ROUTING_MODES = ['tunnel', 'native', 'hybrid'] as const;
export type RoutingMode = (typeof ROUTING_MODES)[number];

/** Store (etcd) client port inside a control-plane namespace. */
export const STORE_CLIENT_PORT = 2379;
export const STORE_PEER_PORT = 2380;

/** Echo workload ports inside every lab pod. */
export const ECHO_HTTP_PORT = 8080;
export const ECHO_TCP_PORT = 9000;
export const ECHO_UDP_PORT = 9001;

/** Pod-side MTU: leaves room for VXLAN encapsulation (50 bytes) under a 1500 underlay. */
export const POD_MTU = 1450;

/** Lease TTL of an agent's status object, seconds. */
export const AGENT_STATUS_TTL_S = 10;

/** Supervisor: first restart delay and cap, milliseconds. */
export const RESTART_DELAY_MS = 300;
export const RESTART_DELAY_MAX_MS = 3000;

/** Timeouts, milliseconds. */
export const STORE_READY_TIMEOUT_MS = 20_000;
export const AGENTS_READY_TIMEOUT_MS = 20_000;
export const WORKLOAD_READY_TIMEOUT_MS = 15_000;

/** BPF pin root; a lab's maps live under <root>/<labPrefix>/<cluster>/<node>/. */
export const BPF_PIN_ROOT = '/sys/fs/bpf/meshctl';

/** Identity label keys, kept identical to Cilium's so existing manifests work. */
export const LABEL_NAMESPACE = 'io.kubernetes.pod.namespace';
export const LABEL_CLUSTER = 'io.cilium.k8s.policy.cluster';

/** Routing protocol number on the kernel routes an agent installs (so a restarted agent finds its own). */
export const AGENT_ROUTE_PROTO = 199;

/**
 * Most policy map entries one endpoint may take in one direction; a policy that would need more
 * makes that endpoint deny in that direction and is reported (one bad policy never fills the map).
 */
export const POLICY_MAX_ENTRIES_PER_DIRECTION = 16_384;

/**
 * Cluster mesh: the clustermesh-apiserver (a TLS etcd in the control-plane namespace) listens on
 * this client port (Cilium's NodePort for it is 32379) and uses the peer port on loopback only.
 */
export const MESH_APISERVER_PORT = 32379;
export const MESH_APISERVER_PEER_PORT = 32380;
/** Etcd user the export process writes as (CN of the admin certificate), and the peer user prefix. */
export const MESH_ADMIN_USER = 'root';
export const MESH_PEER_USER_PREFIX = 'remote-';
/** Validity of generated certificates, days (CA ten years). */
export const MESH_CERT_DAYS = 365;
export const MESH_CA_DAYS = 3650;
/** `meshctl status --wait` default. */
export const MESH_STATUS_WAIT_MS = 5 * 60_000;
/** How long `meshctl enable` waits for the clustermesh-apiserver to answer over TLS. */
export const MESH_APISERVER_READY_TIMEOUT_MS = 20_000;
