/*
 * Host helper for tests/unit/datapath-layout.test.ts: prints the size and
 * member offsets of every struct in bpf/lib/common.h, and the values of the
 * shared enums and flags, as one JSON object on stdout.
 *
 * Built with the host compiler: cc -I bpf -o <out> tests/layout/print-layout.c
 * MESH_LAYOUT_ONLY keeps the BPF map definitions (and libbpf) out.
 */
#define MESH_LAYOUT_ONLY
#include <stddef.h>
#include <stdio.h>
#include "lib/common.h"

static int first_struct = 1;
static int first_field;

static void struct_begin(const char *name, size_t size)
{
	printf("%s\n    \"%s\": {\"size\": %zu, \"fields\": {", first_struct ? "" : ",", name, size);
	first_struct = 0;
	first_field = 1;
}

static void field(const char *name, size_t offset, size_t size)
{
	printf("%s\"%s\": {\"offset\": %zu, \"size\": %zu}", first_field ? "" : ", ", name, offset, size);
	first_field = 0;
}

static void struct_end(void)
{
	printf("}}");
}

#define S(type) struct_begin(#type, sizeof(struct type))
#define F(type, member) field(#member, offsetof(struct type, member), sizeof(((struct type *)0)->member))

static int first_const = 1;
#define C(name) do { printf("%s\n    \"%s\": %lld", first_const ? "" : ",", #name, (long long)(name)); first_const = 0; } while (0)

int main(void)
{
	printf("{\n  \"structs\": {");

	S(mesh_config);
	F(mesh_config, node_ip); F(mesh_config, node_id); F(mesh_config, vxlan_ifindex);
	F(mesh_config, cluster_id); F(mesh_config, routing_mode); F(mesh_config, flags);
	F(mesh_config, netdev_ifindex); F(mesh_config, ct_tcp_syn_s);
	F(mesh_config, ct_tcp_established_s); F(mesh_config, ct_tcp_close_s); F(mesh_config, ct_other_s);
	F(mesh_config, pad);
	struct_end();

	S(mesh_endpoint_key);
	F(mesh_endpoint_key, ip4); F(mesh_endpoint_key, cluster_id); F(mesh_endpoint_key, pad);
	struct_end();

	S(mesh_endpoint_info);
	F(mesh_endpoint_info, ifindex); F(mesh_endpoint_info, lxc_mac); F(mesh_endpoint_info, pod_mac);
	F(mesh_endpoint_info, ep_id); F(mesh_endpoint_info, flags); F(mesh_endpoint_info, identity);
	struct_end();

	S(mesh_ipcache_key);
	F(mesh_ipcache_key, prefixlen); F(mesh_ipcache_key, cluster_id); F(mesh_ipcache_key, pad);
	F(mesh_ipcache_key, ip4);
	struct_end();

	S(mesh_ipcache_info);
	F(mesh_ipcache_info, identity); F(mesh_ipcache_info, tunnel_ip); F(mesh_ipcache_info, node_id);
	F(mesh_ipcache_info, flags);
	struct_end();

	S(mesh_node_key);
	F(mesh_node_key, ip4);
	struct_end();

	S(mesh_node_info);
	F(mesh_node_info, node_id); F(mesh_node_info, cluster_id); F(mesh_node_info, flags);
	struct_end();

	S(mesh_policy_key);
	F(mesh_policy_key, prefixlen); F(mesh_policy_key, identity); F(mesh_policy_key, ep_id);
	F(mesh_policy_key, direction); F(mesh_policy_key, proto); F(mesh_policy_key, dport);
	F(mesh_policy_key, pad);
	struct_end();

	S(mesh_policy_entry);
	F(mesh_policy_entry, flags); F(mesh_policy_entry, pad); F(mesh_policy_entry, packets);
	F(mesh_policy_entry, bytes);
	struct_end();

	S(mesh_service_key);
	F(mesh_service_key, vip); F(mesh_service_key, dport); F(mesh_service_key, proto);
	F(mesh_service_key, pad);
	struct_end();

	S(mesh_service_info);
	F(mesh_service_info, count); F(mesh_service_info, rev_nat_id); F(mesh_service_info, flags);
	F(mesh_service_info, pad);
	struct_end();

	S(mesh_backend_key);
	F(mesh_backend_key, rev_nat_id); F(mesh_backend_key, pad); F(mesh_backend_key, slot);
	struct_end();

	S(mesh_backend_info);
	F(mesh_backend_info, ip4); F(mesh_backend_info, port); F(mesh_backend_info, proto);
	F(mesh_backend_info, flags); F(mesh_backend_info, cluster_id); F(mesh_backend_info, pad);
	struct_end();

	S(mesh_revnat_key);
	F(mesh_revnat_key, rev_nat_id); F(mesh_revnat_key, pad);
	struct_end();

	S(mesh_revnat_info);
	F(mesh_revnat_info, vip); F(mesh_revnat_info, port); F(mesh_revnat_info, pad);
	struct_end();

	S(mesh_ct_key);
	F(mesh_ct_key, saddr); F(mesh_ct_key, daddr); F(mesh_ct_key, sport); F(mesh_ct_key, dport);
	F(mesh_ct_key, proto); F(mesh_ct_key, direction); F(mesh_ct_key, pad);
	struct_end();

	S(mesh_ct_entry);
	F(mesh_ct_entry, created_ns); F(mesh_ct_entry, last_seen_ns); F(mesh_ct_entry, expires_ns);
	F(mesh_ct_entry, packets); F(mesh_ct_entry, bytes); F(mesh_ct_entry, nat_ip);
	F(mesh_ct_entry, nat_port); F(mesh_ct_entry, rev_nat_id); F(mesh_ct_entry, src_identity);
	F(mesh_ct_entry, backend_slot); F(mesh_ct_entry, flags); F(mesh_ct_entry, tcp_flags);
	F(mesh_ct_entry, pad);
	struct_end();

	S(mesh_frag_key);
	F(mesh_frag_key, saddr); F(mesh_frag_key, daddr); F(mesh_frag_key, id); F(mesh_frag_key, proto);
	F(mesh_frag_key, pad);
	struct_end();

	S(mesh_frag_ports);
	F(mesh_frag_ports, sport); F(mesh_frag_ports, dport);
	struct_end();

	S(mesh_flow_event);
	F(mesh_flow_event, ts_ns); F(mesh_flow_event, saddr); F(mesh_flow_event, daddr);
	F(mesh_flow_event, sport); F(mesh_flow_event, dport); F(mesh_flow_event, proto);
	F(mesh_flow_event, verdict); F(mesh_flow_event, drop_reason); F(mesh_flow_event, direction);
	F(mesh_flow_event, src_identity); F(mesh_flow_event, dst_identity); F(mesh_flow_event, ifindex);
	F(mesh_flow_event, path); F(mesh_flow_event, ct_state); F(mesh_flow_event, ep_id);
	F(mesh_flow_event, pkt_len); F(mesh_flow_event, node_ip);
	struct_end();

	S(mesh_metrics_key);
	F(mesh_metrics_key, reason); F(mesh_metrics_key, direction); F(mesh_metrics_key, pad);
	struct_end();

	S(mesh_metrics_value);
	F(mesh_metrics_value, packets); F(mesh_metrics_value, bytes);
	struct_end();

	printf("\n  },\n  \"constants\": {");
	C(MESH_LAYOUT_VERSION); C(MESH_CLUSTER_ANY); C(MESH_IDENTITY_ANY); C(MESH_IDENTITY_HOST); C(MESH_IDENTITY_WORLD);
	C(MESH_IDENTITY_REMOTE_NODE); C(MESH_IDENTITY_MASK); C(MESH_MAX_SERVICE_BACKENDS);
	C(MESH_IDENTITY_RESERVED_MAX); C(MESH_IDENTITY_CLUSTER_SHIFT); C(MESH_IDENTITY_CLUSTER_MASK);
	C(MESH_CT_LIFETIME_TCP_SYN_S); C(MESH_CT_LIFETIME_TCP_ESTABLISHED_S);
	C(MESH_CT_LIFETIME_TCP_CLOSE_S); C(MESH_CT_LIFETIME_OTHER_S);
	C(MESH_VERDICT_FORWARDED); C(MESH_VERDICT_DROPPED);
	C(MESH_DROP_NONE); C(MESH_DROP_POLICY_DENIED); C(MESH_DROP_POLICY_DENY_RULE);
	C(MESH_DROP_NO_BACKEND); C(MESH_DROP_CT_INVALID); C(MESH_DROP_UNKNOWN_DEST);
	C(MESH_DROP_INVALID_PACKET); C(MESH_DROP_SOURCE_SPOOFED); C(MESH_DROP_UNKNOWN_SOURCE);
	C(MESH_DROP_FIB_FAILED); C(MESH_DROP_NO_TUNNEL_ENDPOINT); C(MESH_DROP_NO_CONFIG);
	C(MESH_DROP_WRITE_FAILED); C(MESH_DROP_TTL_EXCEEDED); C(MESH_DROP_NO_TUNNEL_KEY);
	C(MESH_DROP_BACKEND_INVALID); C(MESH_DROP_REDIRECT_FAILED); C(MESH_DROP_TUNNEL_SOURCE_UNKNOWN);
	C(MESH_DROP_IDENTITY_MISMATCH); C(MESH_DROP_NOT_DIRECT_ROUTED); C(MESH_DROP_FRAG_NOT_FOUND);
	C(MESH_DROP_REASON_MAX);
	C(MESH_DIR_INGRESS); C(MESH_DIR_EGRESS); C(MESH_DIR_SERVICE);
	C(MESH_PATH_NONE); C(MESH_PATH_LOCAL); C(MESH_PATH_TUNNEL); C(MESH_PATH_NATIVE); C(MESH_PATH_STACK);
	C(MESH_CT_NEW); C(MESH_CT_ESTABLISHED); C(MESH_CT_REPLY); C(MESH_CT_RELATED);
	C(MESH_ROUTING_TUNNEL); C(MESH_ROUTING_NATIVE); C(MESH_ROUTING_HYBRID);
	C(MESH_EP_F_POLICY_INGRESS); C(MESH_EP_F_POLICY_EGRESS);
	C(MESH_IPCACHE_F_NODE); C(MESH_IPCACHE_F_LOCAL_NODE); C(MESH_IPCACHE_F_ENCRYPT);
	C(MESH_NODE_F_DIRECT); C(MESH_NODE_F_ENCRYPT);
	C(MESH_POLICY_F_DENY); C(MESH_SVC_F_GLOBAL);
	C(MESH_POLICY_PREFIX_L3); C(MESH_POLICY_PREFIX_PROTO); C(MESH_POLICY_PREFIX_FULL);
	C(MESH_CT_F_SERVICE); C(MESH_CT_F_SEEN_REPLY); C(MESH_CT_F_ESTABLISHED); C(MESH_CT_F_CLOSING);
	C(MESH_CT_F_FIN_OPENER); C(MESH_CT_F_FIN_REPLY); C(MESH_CFG_F_NO_FLOWS); C(MESH_CFG_F_FLOWS_NEW_ONLY);
	printf("\n  }\n}\n");
	return 0;
}
