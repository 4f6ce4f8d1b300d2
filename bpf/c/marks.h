/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * skb->mark encoding shared by the tc programs, the policy-routing rule and
 * the proxies. The Go mirror is bpf/marks.go; keep both in step.
 *
 *   bits  8-11  magic nibble (MARK_MAGIC_MASK)
 *     0x200     to proxy: set by tc on a redirected flow; ip rule
 *               "fwmark 0x200/0xf00 lookup 2004" delivers it locally.
 *               bits 16-31 carry the proxy port (informational; 0 on
 *               replies steered to a proxy's upstream socket).
 *               bit 0 (MARK_TO_PROXY_NOTRACK) is set on packets tc turns
 *               around into the node's stack (bpf_redirect to the veth's
 *               ingress: ingress redirects, replies to a proxy socket met
 *               on their way into a pod). They were tracked by netfilter
 *               on their first pass and lost that conntrack reference in
 *               the redirect; the node's raw PREROUTING rule
 *               "meta mark & 0xf01 == 0x201 notrack" (agent/node) keeps
 *               netfilter from tracking them a second time, which would
 *               clash with a DNAT entry (kube-proxy's ClusterIP) and
 *               remap the flow's port. Redirects of traffic leaving a pod
 *               happen before PREROUTING: they keep bit 0 clear and are
 *               tracked (and DNATed) once, as usual.
 *     0xA00     from the ingress proxy  } bits 16-31: identity bits 0-15
 *     0xB00     from the egress proxy   } bits  0-7 : identity bits 16-23
 *                                       } bits 12-15: identity bits 24-27
 *
 * Identities therefore fit in 28 bits, which covers cluster identities
 * (from 256) and node-local CIDR identities (from 1<<24).
 *
 * Only 0xA00 skips the receiver's ingress redirect (the ingress proxy
 * enforced those L7 rules); 0xB00 keeps its identity but is redirected to
 * the ingress proxy when the receiver's ingress policy says so. Both are
 * believed only from sockets of a registered proxy cgroup (proxy_cgroups,
 * bpf/cgroup.go); otherwise the packet is judged as if unmarked.
 */
#pragma once

#define MARK_MAGIC_MASK 0x0F00
#define MARK_MAGIC_TO_PROXY 0x0200
#define MARK_TO_PROXY_NOTRACK 0x0001
#define MARK_MAGIC_PROXY_INGRESS 0x0A00
#define MARK_MAGIC_PROXY_EGRESS 0x0B00

static __always_inline __u32 mark_to_proxy(__u16 proxy_port)
{
	return MARK_MAGIC_TO_PROXY | ((__u32)proxy_port << 16);
}

static __always_inline __u32 mark_identity(__u32 mark)
{
	return ((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 16) | (((mark >> 12) & 0xF) << 24);
}
