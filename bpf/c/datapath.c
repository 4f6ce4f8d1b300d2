//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * l7gate datapath: L3/L4 policy, conntrack and proxy redirect for pods.
 *
 * tc_from_pod runs on TCX ingress of a pod's host-side veth (traffic leaving
 * the pod: its egress policy); tc_to_pod runs on TCX egress of the same veth
 * (traffic entering the pod: its ingress policy). sk_lookup_proxy is attached
 * to the node's network namespace and hands redirected connections to the
 * proxy's transparent listener. See bpf/doc.go for the map layout and the
 * lookup order.
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "marks.h"

char __license[] SEC("license") = "Dual MIT/GPL";

#define AF_INET 2
#define AF_INET6 10

#define DIR_INGRESS 0
#define DIR_EGRESS 1

/* Verdicts: a larger number wins when entries are combined. */
#define VERDICT_NONE 0
#define VERDICT_ALLOW 1
#define VERDICT_REDIRECT 2
#define VERDICT_DENY 3

/* Why a packet was dropped or forwarded; carried in events. */
#define REASON_POLICY 0      /* decided by a policy entry */
#define REASON_DEFAULT 1     /* no entry matched */
#define REASON_NO_LISTENER 2 /* redirect target missing from the sockmap */
#define REASON_FRAGMENT 3    /* non-first fragment of an unknown datagram */
#define REASON_NO_ENDPOINT 4 /* interface not registered as an endpoint */
#define REASON_UNSUPPORTED 5 /* no longer emitted (IPv6 before it was enforced) */
#define REASON_MALFORMED 6
#define REASON_REVALIDATE 7  /* established flow no longer allowed */
#define REASON_SPOOFED 8     /* pod sent from an address not its own (IPv4 or ARP) */
#define REASON_VLAN 9        /* VLAN-tagged frame: any tag, VID 0 and stacked tags too */
#define REASON_ETHERTYPE_MISMATCH 10 /* skb->protocol disagrees with the frame */
#define REASON_UNSUPPORTED_ETHERTYPE 11 /* neither IPv4, ARP nor IPv6 */
#define REASON_FAIL_CLOSED 12 /* the endpoint direction's policy could not be synced */
#define REASON_IP_OPTIONS 13  /* source-routed IPv4 datagram */
#define REASON_IPV6_EXT 14     /* IPv6 extension header not walked: unknown, misplaced, repeated, too many */
#define REASON_IPV6_ROUTING 15 /* IPv6 routing header: type 0, or segments left */
#define REASON_ND_ROUTER 16    /* router advertisement or redirect from a pod, redirect to a pod */
#define REASON_WRONG_FAMILY 17 /* ICMP in IPv6, ICMPv6 in IPv4 */
#define REASON_MLD 18          /* multicast listener discovery from a pod (link-local; no multicast router here) */

#define EVENT_F_DROPPED 1
#define EVENT_F_FROM_PROXY 2
#define EVENT_F_UNTRUSTED_MARK 4 /* from-proxy mark ignored: socket not in a proxy cgroup */
#define EVENT_F_RELATED 8        /* ICMP error about the flow shown */
#define EVENT_F_AUDIT 16         /* forwarded: a policy in audit mode would drop it */

/* Policy levels: bits 0..16 are port prefix lengths for a given protocol,
 * bit 17 is "any protocol, any port". */
#define LEVEL_ANY_PROTO 17

#define EP_POLICY_F_ENFORCED 1
#define EP_POLICY_F_FAIL_CLOSED 2 /* drop everything: its policy could not be written */
#define EP_POLICY_F_AUDIT_DEFAULT 4 /* default-deny is in audit mode: forward and report */

/* policy_value flags. POLICY_F_AUDIT: a deny entry in audit mode covers the
 * key (rule_id names it); verdict is what the other entries give (none,
 * allow or redirect). A deny verdict is always enforced. */
#define POLICY_F_AUDIT 1

#define CT_F_SEEN_REPLY 1
#define CT_F_CLOSING 2
#define CT_F_FROM_PROXY 4
#define CT_F_DEFAULT 8
#define CT_F_EGRESS_PROXY 16 /* with CT_F_FROM_PROXY: from the egress proxy */
#define CT_F_PROXY_MASK (CT_F_FROM_PROXY | CT_F_EGRESS_PROXY)
/* With CT_F_FROM_PROXY: the proxy kept the client's address as its source
 * (not the node's), so the flow's replies are steered back into the node's
 * stack, where the proxy's transparent socket gets them. */
#define CT_F_REPLY_TO_PROXY 32

/* Who sent a packet carrying a from-proxy mark. */
#define FROM_NONE 0
#define FROM_INGRESS_PROXY 1 /* passed the destination's ingress L7 rules */
#define FROM_EGRESS_PROXY 2  /* passed the source's egress L7 rules only */

#define NSEC_PER_SEC 1000000000ULL

#define IDENTITY_HOST 1

struct ipcache_key {
	__u32 prefixlen; /* 32 + address prefix length */
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
	__u32 flags;
};

struct endpoint_info {
	__u32 id;
	__u32 flags;
	__u8 ipv4[4];
	__u8 ipv6[16];
};

struct ep_policy_key {
	__u32 endpoint;
	__u8 dir;
	__u8 pad[3];
};

/* Level masks are kept per protocol class (TCP, UDP, SCTP, other) so a
 * packet only probes levels its protocol has entries at. */
#define PROTO_CLASSES 4

/* A sync writes an endpoint direction's new entries under the other
 * generation, then swaps this whole value (levels and generation at once),
 * then deletes the old generation's entries: a packet sees either policy,
 * never a mix (bpf/datapath.go, SyncPolicy). */
struct ep_policy {
	__u32 flags;
	__u32 gen; /* generation of the policy keys in force (0 or 1) */
	__u32 levels_peer[PROTO_CLASSES]; /* levels present for specific peers */
	__u32 levels_any[PROTO_CLASSES];  /* levels present for the wildcard peer */
};

static __always_inline __u32 proto_class(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return 0;
	case IPPROTO_UDP:
		return 1;
	case IPPROTO_SCTP:
		return 2;
	}
	return 3;
}

struct policy_key {
	__u32 endpoint;
	__u32 identity; /* 0: any peer */
	__u8 dir;
	__u8 proto;     /* 0: any protocol (then port_plen and port are 0) */
	__u8 port_plen; /* 0..16 */
	__u8 gen;       /* generation, see struct ep_policy */
	__be16 port;
	__u16 pad2;
};

struct policy_value {
	__u8 verdict;
	__u8 flags; /* POLICY_F_* */
	__u16 proxy_port;
	__u32 rule_id;
};

struct ct_key {
	__u32 endpoint;
	__u8 dir;
	__u8 proto;
	__u8 family;
	__u8 icmp_type; /* ICMP: the flow's type (struct flow), else 0 */
	__be16 sport;
	__be16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct ct_value {
	__u64 created;
	__u64 last_seen;
	__u32 rule_id;
	__u32 revision;
	__u32 peer_identity;
	__u16 proxy_port;
	__u8 verdict;
	__u8 flags;
};

struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_value {
	__be16 sport;
	__be16 dport;
};

/* IPv6 datagrams in flight as fragments: the key has no protocol (only
 * the first fragment's next header counts, RFC 8200 4.5). */
struct frag6_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__be32 id;
};

struct frag6_value {
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad;
	__u16 first_len; /* bytes of the fragmentable part the first fragment carried */
};

struct rule_stats {
	__u64 packets;
	__u64 bytes;
};

struct event_limit {
	__u64 last;
	__u64 tokens; /* in nanoseconds' worth of credit, see emit_event */
	__u64 emitted;
	__u64 suppressed;
};

struct config {
	__u32 revision;
	__u32 events_per_sec;
	__u32 events_burst;
	__u32 pad;
	__u64 ct_tcp_ns;
	__u64 ct_tcp_syn_ns;
	__u64 ct_tcp_closing_ns;
	__u64 ct_other_ns;
};

struct event {
	__u64 timestamp;
	__u32 endpoint;
	__u32 ifindex;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 family;
	__u8 proto;
	__u8 dir;
	__u8 verdict;
	__u8 reason;
	__u8 flags;
	__u16 proxy_port;
};

/* Makes struct event visible in BTF for bpf2go. */
const struct event *unused_event __attribute__((unused));

/* Sizes here are defaults; the loader overrides them from its Config. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* ifindex of the host-side veth */
	__type(value, struct endpoint_info);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ep_policy_key);
	__type(value, struct ep_policy);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ep_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag6_key);
	__type(value, struct frag6_value);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments6 SEC(".maps");

/* Proxy sockets: key = proxy port for a TCP listener, proxy port |
 * PROXY_SOCK_UDP for the UDP socket of the same port (the DNS proxy serves
 * both on one proxy port). A socket under the plain key serves IPv4 (an
 * AF_INET socket) or both families (an AF_INET6 wildcard socket without
 * IPV6_V6ONLY); | PROXY_SOCK_V6 keys a port's IPv6-only socket (bound to
 * an IPv6 address such as ::1), which IPv6 flows take first. */
#define PROXY_SOCK_UDP (1u << 16)
#define PROXY_SOCK_V6 (1u << 17)

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, __u32); /* proxy port [| PROXY_SOCK_UDP] */
	__type(value, __u64);
	__uint(max_entries, 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_socks SEC(".maps");

/* Families a proxy socket has served since this sockmap was created: key
 * PROXY_FAM_V4 / PROXY_FAM_V6, value 1 once a socket serving that family
 * (an AF_INET socket: IPv4; an IPv6-only one: IPv6; a dual-stack one:
 * both) was registered. Go sets it before the socket enters proxy_socks
 * and never clears it (bpf/proxysockets.go; Open sets both while the
 * sockmap holds any socket, for maps pinned before this one existed).
 * Without it no proxy can hold a transparent upstream socket of that
 * family (its connections come only through proxy_socks), so the socket
 * lookup for packets into a pod (to_proxy_socket) cannot succeed and is
 * skipped: those packets are judged as new flows, as when the lookup
 * finds nothing. Sticky, so that a proxy's connections outlive its
 * listener's removal (revalidation keeps TCP flows with their proxy). */
#define PROXY_FAM_V4 0
#define PROXY_FAM_V6 1

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 2);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_families SEC(".maps");

/* Proxied clients: key {endpoint, family}, value 1 once a TCP flow of
 * that family leaving the endpoint's pod was redirected to a proxy (tc,
 * new_flow). Only then can a proxy hold a transparent upstream socket
 * bound to the pod's address (the egress proxy continues a connection
 * from its client's address; the ingress proxy's upstream sockets reach
 * local pods, whose replies are steered by conntrack), whose replies the
 * node routes into the pod's veth untracked: the socket lookup for
 * untracked ACKs into a pod (to_proxy_socket) runs only for a pod and
 * family recorded here. A skipped lookup judges the packet as a new flow,
 * as a lookup that finds nothing does. Never cleared while the endpoint
 * exists (a proxied connection outlives a policy change that ends its
 * redirect); Go deletes an endpoint's entries with the endpoint and
 * records every endpoint when this map is created next to a proxy family
 * already served (an upgrade). Sized 2 per endpoint by the loader: it
 * cannot be full; if a record cannot be written, the redirect is dropped
 * (no-listener), not carried out without one. */
struct proxied_key {
	__u32 endpoint;
	__u32 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct proxied_key);
	__type(value, __u32);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxied_clients SEC(".maps");

/* Proxy upstream sockets by 4-tuple, as tc sees a reply into the pod:
 * {family, local port, remote port, local addr, remote addr} of the socket
 * (IPv4 in the first word; an AF_INET6 socket connected to an IPv4-mapped
 * address is keyed as AF_INET, as its packets are IPv4). A pre-filter of
 * to_proxy_socket: while upstream_filter says it is complete, the kernel's
 * socket lookup runs only for a packet whose 4-tuple is here (a miss is
 * what a lookup that finds nothing gives), and the lookup still decides,
 * so an entry too many (a stale one, a socket that is not a proxy's) only
 * costs the lookup. proxy_upstream_ops adds a socket carrying a from-proxy
 * mark at connect (before its SYN-ACK can arrive) and deletes it when it
 * reaches TCP_CLOSE; Go seeds every TCP socket of the node's namespace
 * (bpf/upstreams.go) after the recorder is attached, then turns the filter
 * on. Value: UPSTREAM_RECORDED or UPSTREAM_SEEDED. */
struct upstream_key {
	__u32 family;
	__u16 lport;
	__u16 rport;
	__u32 laddr[4];
	__u32 raddr[4];
};

#define UPSTREAM_RECORDED 1
#define UPSTREAM_SEEDED 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct upstream_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_upstreams SEC(".maps");

/* upstream_filter[UPSTREAM_FILTER_ON] is 1 once Go has attached the
 * recorder and seeded proxy_upstreams (written by Go only);
 * upstream_filter[UPSTREAM_FILTER_OVERFLOW] is set by the recorder when it
 * cannot record a socket (map full), reset by Go only while the filter is
 * off and before it seeds. The filter is used only while ON is 1 and
 * OVERFLOW is 0: otherwise tc looks every candidate up in the kernel, as
 * without the filter. */
#define UPSTREAM_FILTER_ON 0
#define UPSTREAM_FILTER_OVERFLOW 1

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 2);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} upstream_filter SEC(".maps");

/* Cgroup v2 ids whose sockets may carry from-proxy marks (bpf/cgroup.go). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u32);
	__uint(max_entries, 64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32); /* rule id; 0 = no entry matched */
	__type(value, struct rule_stats);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event_limit);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_limit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

/* A packet as policy and conntrack see it. Conntrack keys use sport,
 * dport and icmp_type; policy is looked up with pport. For ICMP, echo
 * requests and replies are keyed by identifier (request: sport = id,
 * reply: dport = id; type 8 and 0 are each other's reverse), every other
 * type by its type alone, with no reverse flow (no_reply): so an allowed
 * type never opens the door to another, and only an echo reply answers an
 * echo request. ICMP errors about a tracked flow are related (see parse). */
struct flow {
	__u32 saddr[4]; /* IPv4: saddr[0], the rest 0 */
	__u32 daddr[4];
	__be32 frag_id; /* IPv4 id, or IPv6 fragment identification */
	__be16 sport;
	__be16 dport;
	__be16 pport;  /* policy port: destination port, or ICMP type */
	__be16 rpport; /* policy port of the flow this packet would reply to */
	__u16 frag_len; /* IPv6 first fragment: its fragmentable part's length */
	__u8 family;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;  /* conntrack: ICMP type of the flow, else 0 */
	__u8 ricmp_type; /* conntrack: ICMP type of the reverse flow */
	__u8 no_reply;   /* no reverse flow (ICMP other than echo) */
	__u8 frag_first; /* first fragment of a fragmented datagram */
	__u32 len;
	/* PARSE_RELATED: the ICMP error itself (f is the flow it is about). */
	__u32 outer_saddr[4];
	__u8 outer_type;
	__u8 outer_proto;
	__u16 pad;
	/* parse6 → parse: where the quoted packet of an ICMPv6 error lies. */
	__u32 rel_off;
	__u32 rel_end;
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define ICMP6_DEST_UNREACH 1
#define ICMP6_PKT_TOOBIG 2
#define ICMP6_TIME_EXCEED 3
#define ICMP6_PARAMPROB 4
#define ICMP6_ECHO_REQUEST 128
#define ICMP6_ECHO_REPLY 129
#define ND_ROUTER_SOLICIT 133
#define ND_ROUTER_ADVERT 134
#define ND_NEIGHBOR_SOLICIT 135
#define ND_NEIGHBOR_ADVERT 136
#define ND_REDIRECT 137
#define MLD_QUERY 130
#define MLD_DONE 132 /* 131 between: an MLDv1 report */
#define MLD2_REPORT 143

/* is_icmp: f's protocol is its family's ICMP. */
static __always_inline int is_icmp(struct flow *f)
{
	return f->family == AF_INET6 ? f->proto == IPPROTO_ICMPV6 : f->proto == IPPROTO_ICMP;
}

/* icmp_flow keys an ICMP (f->proto ICMP) or ICMPv6 (ICMPV6) message. */
static __always_inline void icmp_flow(struct flow *f, __u8 type, __be16 id)
{
	__u8 echo = f->proto == IPPROTO_ICMPV6 ? ICMP6_ECHO_REQUEST : ICMP_ECHO;
	__u8 reply = f->proto == IPPROTO_ICMPV6 ? ICMP6_ECHO_REPLY : ICMP_ECHOREPLY;

	f->icmp_type = type;
	f->sport = 0;
	f->dport = 0;
	f->no_reply = 1;
	f->ricmp_type = 0;
	if (type == echo) {
		f->sport = id;
		f->ricmp_type = reply;
		f->no_reply = 0;
	} else if (type == reply) {
		f->dport = id;
		f->ricmp_type = echo;
		f->no_reply = 0;
	}
}

static __always_inline void policy_ports(struct flow *f)
{
	if (is_icmp(f)) {
		f->pport = bpf_htons(f->icmp_type);
		f->rpport = bpf_htons(f->ricmp_type);
	} else {
		f->pport = f->dport;
		f->rpport = f->sport;
	}
}

#define PARSE_OK 0
#define PARSE_PASS 1    /* ARP that may pass */
#define PARSE_DROP 2
#define PARSE_RELATED 3 /* ICMP error: f is the flow it is about, f->outer_* the message */

/* check_ip_options drops source-routed datagrams (LSRR, SSRR): a node that
 * accepts source routes would forward them to a destination the sender's
 * egress policy never saw. Malformed option lists are dropped; other
 * options (router alert, timestamps, ...) pass. It returns 0 or the reason
 * to drop. A global function: the verifier checks its loop once, not at
 * every path that reaches it. */
__attribute__((noinline)) int check_ip_options(struct __sk_buff *skb, __u32 olen)
{
	__u8 opts[40];
	__u32 next = 0;

	if (!skb)
		return REASON_MALFORMED;
	olen &= 0x3C;
	if (olen < 4 || olen > 40 || bpf_skb_load_bytes(skb, ETH_HLEN + 20, opts, olen) < 0)
		return REASON_MALFORMED;
	for (__u32 i = 0; i < 40; i++) {
		if (i >= olen)
			break;
		if (i < next)
			continue;
		__u8 type = opts[i];
		if (type == 0) /* end of options */
			break;
		if (type == 1) { /* no operation */
			next = i + 1;
			continue;
		}
		if (i + 1 >= olen || i + 1 >= 40)
			return REASON_MALFORMED;
		__u8 len = opts[i + 1];
		if (len < 2 || i + len > olen)
			return REASON_MALFORMED;
		if (type == IPOPT_LSRR || type == IPOPT_SSRR)
			return REASON_IP_OPTIONS;
		next = i + len;
	}
	return 0;
}

/* related_outer keeps the ICMP error f in the outer fields of rel, the
 * flow it is about, and makes rel the packet's flow. */
static __always_inline void related_outer(struct flow *f, struct flow *rel)
{
	__builtin_memcpy(rel->outer_saddr, f->saddr, 16);
	rel->outer_type = f->icmp_type;
	rel->outer_proto = f->proto;
	rel->frag_id = f->frag_id;
	rel->len = f->len;
	policy_ports(rel);
	*f = *rel;
}

/* related_echo keys rel as the echo flow a quoted ICMP or ICMPv6 echo
 * (type, id) belongs to, seen the error's way (reversed). */
static __always_inline void related_echo(struct flow *rel, __u8 type, __be16 id)
{
	struct flow quoted = {.proto = rel->proto};
	icmp_flow(&quoted, type, id);
	rel->icmp_type = quoted.ricmp_type;
	rel->ricmp_type = quoted.icmp_type;
	rel->sport = quoted.dport;
	rel->dport = quoted.sport;
}

/* parse_related turns f, an ICMP error, into the flow it is about, seen
 * as a packet of that flow travelling the error's way: the quoted
 * datagram reversed; the error stays in f's outer fields. The quoted
 * datagram must have been sent by the error's destination and be a first
 * fragment; TCP, UDP, SCTP and ICMP echo are understood. Returns 1 if f
 * was turned, 0 if f is unchanged. Global: verified once. */
__attribute__((noinline)) int parse_related(struct __sk_buff *skb, __u32 off, __u32 end, struct flow *f)
{
	struct iphdr in;
	struct flow rel = {};

	if (!f)
		return 0;
	if (off + sizeof(in) > end || bpf_skb_load_bytes(skb, off, &in, sizeof(in)) < 0 || in.version != 4 ||
	    in.ihl < 5 || in.saddr != f->daddr[0] || (bpf_ntohs(in.frag_off) & 0x1FFF))
		return 0;
	__u32 ioff = off + in.ihl * 4;
	rel.family = AF_INET;
	rel.proto = in.protocol;
	switch (in.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];
		if (ioff + sizeof(ports) > end || bpf_skb_load_bytes(skb, ioff, ports, sizeof(ports)) < 0)
			return 0;
		rel.sport = ports[1];
		rel.dport = ports[0];
		break;
	}
	case IPPROTO_ICMP: {
		__u8 h[8];
		if (ioff + sizeof(h) > end || bpf_skb_load_bytes(skb, ioff, h, sizeof(h)) < 0)
			return 0;
		if (h[0] != ICMP_ECHO && h[0] != ICMP_ECHOREPLY)
			return 0;
		__be16 id;
		__builtin_memcpy(&id, &h[4], 2);
		related_echo(&rel, h[0], id);
		break;
	}
	default:
		return 0;
	}
	rel.saddr[0] = in.daddr;
	rel.daddr[0] = in.saddr;
	related_outer(f, &rel);
	return 1;
}

/* check_arp lets a pod's ARP through only if it is Ethernet/IPv4 ARP that
 * names the pod's own address as sender (or 0.0.0.0: an RFC 5227 probe).
 * Neighbour entries are per device on a routed node, but a spoofed sender
 * is never legitimate, so it is dropped rather than reasoned about. ARP
 * towards a pod comes from the node and passes. */
static __always_inline int check_arp(struct __sk_buff *skb, __u8 dir, struct endpoint_info *ep, __u8 *reason)
{
	struct {
		__be16 hrd;
		__be16 pro;
		__u8 hln;
		__u8 pln;
		__be16 op;
		__u8 sha[6];
		__be32 spa;
	} __attribute__((packed)) arp;

	if (dir != DIR_EGRESS)
		return PARSE_PASS;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &arp, sizeof(arp)) < 0 || arp.hrd != bpf_htons(1) ||
	    arp.pro != bpf_htons(ETH_P_IP) || arp.hln != 6 || arp.pln != 4 ||
	    (arp.op != bpf_htons(1) && arp.op != bpf_htons(2))) {
		*reason = REASON_MALFORMED;
		return PARSE_DROP;
	}
	if (!ep)
		return PARSE_PASS;
	__be32 own;
	__builtin_memcpy(&own, ep->ipv4, 4);
	if (own && arp.spa != own && !(arp.spa == 0 && arp.op == bpf_htons(1))) {
		*reason = REASON_SPOOFED;
		return PARSE_DROP;
	}
	return PARSE_PASS;
}

/* IPv6. Extension headers are walked up to IPV6_MAX_EXT of them: hop-by-hop
 * (first only), destination options, routing (at most one, and only with no
 * segments left: a source route would send the packet on to a destination
 * the sender's egress policy never saw; type 0 is dropped always), fragment
 * (at most one) and AH. Any other extension header (Mobility, HIP, Shim6,
 * experimental), a longer chain, a misplaced or repeated header is dropped
 * (ipv6-ext): what the program cannot see through, it does not pass. The
 * first protocol that is not an extension header is the flow's protocol,
 * as IPv4's is; ICMP (for IPv4) there is dropped (wrong-family). */
#define IPV6_MAX_EXT 8

static __always_inline int ipv6_ext(__u8 nh)
{
	switch (nh) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_AH:
	case IPPROTO_DSTOPTS:
	case 135: /* Mobility */
	case 139: /* HIP */
	case 140: /* Shim6 */
	case 253: /* experimental */
	case 254:
		return 1;
	}
	return 0;
}

static __always_inline int addr6_linklocal(const __u32 *a)
{
	return (bpf_ntohl(a[0]) & 0xFFC00000) == 0xFE800000;
}

static __always_inline int addr6_zero(const __u32 *a)
{
	return !(a[0] | a[1] | a[2] | a[3]);
}

static __always_inline int addr6_eq(const __u32 *a, const __u8 *b)
{
	__u32 w[4];
	__builtin_memcpy(w, b, 16);
	return a[0] == w[0] && a[1] == w[1] && a[2] == w[2] && a[3] == w[3];
}

#define PARSE6(ret, reason) ((ret) | (reason) << 8)

/* parse_related6 is parse_related for an ICMPv6 error whose quoted packet
 * parse6 found at f->rel_off..f->rel_end: it must have been sent by the
 * error's destination, carry its transport header right after the IPv6
 * header (TCP, UDP, SCTP or ICMPv6 echo) and so not be a fragment. Called
 * by parse, not parse6, to keep the chain of stack frames short. Global:
 * verified once. */
__attribute__((noinline)) int parse_related6(struct __sk_buff *skb, struct flow *f)
{
	struct ipv6hdr in;
	struct flow rel = {};

	if (!f)
		return 0;
	__u32 off = f->rel_off, end = f->rel_end;
	if (off > 0xFFFF || end > 0x1FFFF || off + sizeof(in) > end ||
	    bpf_skb_load_bytes(skb, off, &in, sizeof(in)) < 0 || in.version != 6)
		return 0;
	__builtin_memcpy(rel.daddr, &in.saddr, 16);
	__builtin_memcpy(rel.saddr, &in.daddr, 16);
	if (rel.daddr[0] != f->daddr[0] || rel.daddr[1] != f->daddr[1] || rel.daddr[2] != f->daddr[2] ||
	    rel.daddr[3] != f->daddr[3])
		return 0;
	__u32 ioff = off + sizeof(in);
	rel.family = AF_INET6;
	rel.proto = in.nexthdr;
	switch (in.nexthdr) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];
		if (ioff + sizeof(ports) > end || bpf_skb_load_bytes(skb, ioff, ports, sizeof(ports)) < 0)
			return 0;
		rel.sport = ports[1];
		rel.dport = ports[0];
		break;
	}
	case IPPROTO_ICMPV6: {
		__u8 h[8];
		if (ioff + sizeof(h) > end || bpf_skb_load_bytes(skb, ioff, h, sizeof(h)) < 0)
			return 0;
		if (h[0] != ICMP6_ECHO_REQUEST && h[0] != ICMP6_ECHO_REPLY)
			return 0;
		__be16 id;
		__builtin_memcpy(&id, &h[4], 2);
		related_echo(&rel, h[0], id);
		break;
	}
	default:
		return 0;
	}
	related_outer(f, &rel);
	return 1;
}

/* check_nd lets neighbour discovery through without conntrack or policy,
 * as ARP is: a pod needs it to reach anything. From a pod: router and
 * neighbour solicitations and neighbour advertisements, from the pod's own
 * address, a link-local one or (solicitations only) the unspecified
 * address, an advertisement naming the pod's own or a link-local target;
 * a router advertisement or redirect from a pod is dropped (nd-router).
 * Towards a pod: all but redirects. ND must be unfragmented, hop limit
 * 255 and code 0 (RFC 4861, RFC 6980), else it is malformed. */
static __always_inline int check_nd(struct __sk_buff *skb, __u32 dir, struct flow *f, __u8 type, __u8 code,
				    __u8 hop_limit, int fragmented, __u32 off, __u32 end)
{
	if (fragmented || hop_limit != 255 || code != 0)
		return PARSE6(PARSE_DROP, REASON_MALFORMED);
	if (type == ND_REDIRECT || (dir == DIR_EGRESS && type == ND_ROUTER_ADVERT))
		return PARSE6(PARSE_DROP, REASON_ND_ROUTER);
	if (dir != DIR_EGRESS)
		return PARSE6(PARSE_PASS, 0);
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	int own_src = ep && !addr6_zero(f->saddr) && addr6_eq(f->saddr, ep->ipv6);
	if (!own_src && !addr6_linklocal(f->saddr) && !(addr6_zero(f->saddr) && type != ND_NEIGHBOR_ADVERT))
		return PARSE6(PARSE_DROP, REASON_SPOOFED);
	if (type == ND_NEIGHBOR_ADVERT) {
		__u32 target[4];
		if (off + 8 + 16 > end || bpf_skb_load_bytes(skb, off + 8, target, 16) < 0)
			return PARSE6(PARSE_DROP, REASON_MALFORMED);
		int own_target = ep && !addr6_zero(target) && addr6_eq(target, ep->ipv6);
		if (!own_target && !addr6_linklocal(target))
			return PARSE6(PARSE_DROP, REASON_SPOOFED);
	}
	return PARSE6(PARSE_PASS, 0);
}

/* parse6 is parse for IPv6 (see above for the extension headers). Later
 * fragments follow their datagram's admitted first fragment (fragments6)
 * and may not overlap it (RFC 5722: no legitimate sender overlaps);
 * the first fragment must hold the whole header chain up to the transport
 * header (RFC 7112), else it is malformed; an atomic fragment (offset 0,
 * no more fragments) is a whole datagram (RFC 6946). Returns
 * PARSE6(ret, reason). Global: verified once. */
__attribute__((noinline)) int parse6(struct __sk_buff *skb, __u32 dir, struct flow *f)
{
	struct ipv6hdr ip6;
	__u32 off = ETH_HLEN + sizeof(ip6);

	if (!skb || !f)
		return PARSE6(PARSE_DROP, REASON_MALFORMED);
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.version != 6)
		return PARSE6(PARSE_DROP, REASON_MALFORMED);
	/* The packet must fit the frame; a zero payload length is only BIG
	 * TCP's (above 64 KiB, no jumbo option on the wire here). */
	__u32 avail = skb->len - ETH_HLEN;
	__u32 tot = sizeof(ip6) + bpf_ntohs(ip6.payload_len);
	if (ip6.payload_len == 0 && avail > 0xFFFF + sizeof(ip6) && ip6.nexthdr == IPPROTO_TCP)
		tot = avail;
	if (tot > avail)
		return PARSE6(PARSE_DROP, REASON_MALFORMED);
	__u32 end = ETH_HLEN + tot;

	__builtin_memset(f, 0, sizeof(*f));
	__builtin_memcpy(f->saddr, &ip6.saddr, 16);
	__builtin_memcpy(f->daddr, &ip6.daddr, 16);
	f->family = AF_INET6;
	f->len = skb->len;

	__u8 nh = ip6.nexthdr;
	int seen_frag = 0, seen_rh = 0;
	__u32 frag_start = 0;
	for (int i = 0; i < IPV6_MAX_EXT; i++) {
		if (!ipv6_ext(nh))
			break;
		__u8 h[8];
		__u32 len = 8;
		if (off + sizeof(h) > end || bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return PARSE6(PARSE_DROP, REASON_MALFORMED);
		switch (nh) {
		case IPPROTO_HOPOPTS:
			if (i != 0)
				return PARSE6(PARSE_DROP, REASON_IPV6_EXT);
			len = ((__u32)h[1] + 1) * 8;
			break;
		case IPPROTO_DSTOPTS:
			len = ((__u32)h[1] + 1) * 8;
			break;
		case IPPROTO_ROUTING:
			if (seen_rh)
				return PARSE6(PARSE_DROP, REASON_IPV6_EXT);
			seen_rh = 1;
			if (h[2] == 0 || h[3] != 0)
				return PARSE6(PARSE_DROP, REASON_IPV6_ROUTING);
			len = ((__u32)h[1] + 1) * 8;
			break;
		case IPPROTO_AH:
			len = ((__u32)h[1] + 2) * 4;
			break;
		case IPPROTO_FRAGMENT: {
			if (seen_frag)
				return PARSE6(PARSE_DROP, REASON_IPV6_EXT);
			seen_frag = 1;
			__u16 fo = (__u16)h[2] << 8 | h[3];
			__be32 id;
			__builtin_memcpy(&id, &h[4], 4);
			if (fo & 0xFFF8) {
				/* Later fragment: the rest is payload. Borrow the
				 * first fragment's protocol and ports. */
				struct frag6_key fk = {.id = id};
				__builtin_memcpy(fk.saddr, f->saddr, 16);
				__builtin_memcpy(fk.daddr, f->daddr, 16);
				struct frag6_value *fv = bpf_map_lookup_elem(&fragments6, &fk);
				if (!fv || (fo & 0xFFF8) < fv->first_len)
					return PARSE6(PARSE_DROP, REASON_FRAGMENT);
				f->proto = fv->proto;
				f->frag_id = id;
				if (is_icmp(f)) {
					icmp_flow(f, (__u8)bpf_ntohs(fv->dport), fv->sport);
				} else {
					f->sport = fv->sport;
					f->dport = fv->dport;
				}
				policy_ports(f);
				return PARSE6(PARSE_OK, 0);
			}
			if (fo & 1) {
				f->frag_first = 1;
				f->frag_id = id;
				frag_start = off + 8;
			}
			break;
		}
		default:
			return PARSE6(PARSE_DROP, REASON_IPV6_EXT);
		}
		nh = h[0];
		off += len;
	}
	if (ipv6_ext(nh))
		return PARSE6(PARSE_DROP, REASON_IPV6_EXT);
	if (off > end)
		return PARSE6(PARSE_DROP, REASON_MALFORMED);
	if (f->frag_first)
		f->frag_len = end - frag_start;
	f->proto = nh;

	int ret = PARSE_OK;
	switch (nh) {
	case IPPROTO_TCP: {
		__u8 hdr[20];
		if (off + sizeof(hdr) > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return PARSE6(PARSE_DROP, REASON_MALFORMED);
		__builtin_memcpy(&f->sport, &hdr[0], 2);
		__builtin_memcpy(&f->dport, &hdr[2], 2);
		f->tcp_flags = hdr[13];
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];
		__u32 need = nh == IPPROTO_UDP ? 8 : 12;
		if (off + need > end || bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return PARSE6(PARSE_DROP, REASON_MALFORMED);
		f->sport = ports[0];
		f->dport = ports[1];
		break;
	}
	case IPPROTO_ICMPV6: {
		__u8 h[8];
		if (off + sizeof(h) > end || bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return PARSE6(PARSE_DROP, REASON_MALFORMED);
		if (h[0] >= ND_ROUTER_SOLICIT && h[0] <= ND_REDIRECT)
			return check_nd(skb, dir, f, h[0], h[1], ip6.hop_limit, seen_frag, off, end);
		/* MLD (query 130, reports 131 and 143, done 132) from a pod: every
		 * pod's kernel sends reports from its link-local address. The
		 * node routes no multicast, so nothing needs them: dropped, named
		 * for what they are (not spoofing), whatever the addresses. */
		if (dir == DIR_EGRESS && ((h[0] >= MLD_QUERY && h[0] <= MLD_DONE) || h[0] == MLD2_REPORT))
			return PARSE6(PARSE_DROP, REASON_MLD);
		__be16 id;
		__builtin_memcpy(&id, &h[4], 2);
		icmp_flow(f, h[0], id);
		if (h[0] >= ICMP6_DEST_UNREACH && h[0] <= ICMP6_PARAMPROB && !seen_frag) {
			/* parse looks at the quoted packet (parse_related6) */
			f->rel_off = off + sizeof(h);
			f->rel_end = end;
			ret = PARSE_RELATED;
		}
		break;
	}
	case IPPROTO_ICMP:
		/* ICMP means nothing in IPv6: never let it match ICMP rules. */
		return PARSE6(PARSE_DROP, REASON_WRONG_FAMILY);
	default:
		break;
	}
	policy_ports(f);
	return PARSE6(ret, 0);
}

/* parse accepts untagged IPv4 and IPv6 (returned in f; IPv6 in parse6),
 * ARP (checked by check_arp) and neighbour discovery (check_nd);
 * everything else is dropped with its reason. Tags are checked
 * both in the frame and as the skb's accelerated tag: the receive path
 * moves an outer tag there before tc runs and strips VID-0 tags after it,
 * so a frame with two VLAN-0 tags or a QinQ outer tag would otherwise be
 * seen as 802.1Q here and delivered as plain IPv4. */
static __always_inline int parse(struct __sk_buff *skb, __u8 dir, struct endpoint_info *ep, struct flow *f,
				 __u8 *reason)
{
	__be16 h_proto;
	struct iphdr ip;
	__u32 off = ETH_HLEN;

	if (skb->vlan_present) {
		*reason = REASON_VLAN;
		return PARSE_DROP;
	}
	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &h_proto, sizeof(h_proto)) < 0) {
		*reason = REASON_MALFORMED;
		return PARSE_DROP;
	}
	if (h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD) ||
	    h_proto == bpf_htons(ETH_P_QINQ1)) {
		*reason = REASON_VLAN;
		return PARSE_DROP;
	}
	if (h_proto != bpf_htons(ETH_P_IP) && h_proto != bpf_htons(ETH_P_ARP) && h_proto != bpf_htons(ETH_P_IPV6)) {
		*reason = REASON_UNSUPPORTED_ETHERTYPE;
		return PARSE_DROP;
	}
	if (skb->protocol != h_proto) {
		*reason = REASON_ETHERTYPE_MISMATCH;
		return PARSE_DROP;
	}
	if (h_proto == bpf_htons(ETH_P_IPV6)) {
		int r = parse6(skb, dir, f);
		*reason = r >> 8;
		if ((r & 0xFF) == PARSE_RELATED)
			return parse_related6(skb, f) ? PARSE_RELATED : PARSE_OK;
		return r & 0xFF;
	}
	if (h_proto == bpf_htons(ETH_P_ARP))
		return check_arp(skb, dir, ep, reason);
	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.ihl < 5 || ip.version != 4) {
		*reason = REASON_MALFORMED;
		return PARSE_DROP;
	}
	/* The datagram must fit the frame and hold its header; what the
	 * program reads of it must lie within it (not in trailing padding).
	 * A zero total length is only BIG TCP's (above 64 KiB). */
	__u32 hlen = ip.ihl * 4;
	__u32 avail = skb->len - ETH_HLEN;
	__u32 tot = bpf_ntohs(ip.tot_len);
	if (tot == 0 && avail > 0xFFFF && ip.protocol == IPPROTO_TCP)
		tot = avail;
	if (tot < hlen || tot > avail) {
		*reason = REASON_MALFORMED;
		return PARSE_DROP;
	}
	if (hlen > 20) {
		int bad = check_ip_options(skb, hlen - 20);
		if (bad) {
			*reason = bad;
			return PARSE_DROP;
		}
	}
	__u32 end = ETH_HLEN + tot;

	f->saddr[0] = ip.saddr;
	f->daddr[0] = ip.daddr;
	f->family = AF_INET;
	f->proto = ip.protocol;
	f->frag_id = ip.id;
	f->len = skb->len;
	f->sport = 0;
	f->dport = 0;
	f->tcp_flags = 0;
	f->icmp_type = 0;
	f->ricmp_type = 0;
	f->no_reply = 0;
	f->frag_first = 0;

	if (ip.protocol == IPPROTO_ICMPV6) {
		/* ICMPv6 means nothing in IPv4: never let it match ICMPv6 rules. */
		*reason = REASON_WRONG_FAMILY;
		return PARSE_DROP;
	}
	__u16 frag = bpf_ntohs(ip.frag_off);
	if (frag & 0x1FFF) {
		/* A TCP fragment at offset 8 can only rewrite the header's flags
		 * (RFC 1858): never legitimate. */
		if (ip.protocol == IPPROTO_TCP && (frag & 0x1FFF) == 1) {
			*reason = REASON_FRAGMENT;
			return PARSE_DROP;
		}
		/* Non-first fragment: borrow the ports of the first one, which
		 * was admitted (frag_remember). */
		struct frag_key fk = {.saddr = ip.saddr, .daddr = ip.daddr, .id = ip.id, .proto = ip.protocol};
		struct frag_value *fv = bpf_map_lookup_elem(&fragments, &fk);
		if (!fv) {
			*reason = REASON_FRAGMENT;
			return PARSE_DROP;
		}
		if (ip.protocol == IPPROTO_ICMP) {
			icmp_flow(f, (__u8)bpf_ntohs(fv->dport), fv->sport);
		} else {
			f->sport = fv->sport;
			f->dport = fv->dport;
		}
		policy_ports(f);
		return PARSE_OK;
	}
	f->frag_first = !!(frag & 0x2000);

	off += hlen;
	int ret = PARSE_OK;
	switch (ip.protocol) {
	case IPPROTO_TCP: {
		__u8 hdr[20];
		if (off + sizeof(hdr) > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0) {
			*reason = REASON_MALFORMED;
			return PARSE_DROP;
		}
		__builtin_memcpy(&f->sport, &hdr[0], 2);
		__builtin_memcpy(&f->dport, &hdr[2], 2);
		f->tcp_flags = hdr[13];
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];
		__u32 need = ip.protocol == IPPROTO_UDP ? 8 : 12;
		if (off + need > end || bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0) {
			*reason = REASON_MALFORMED;
			return PARSE_DROP;
		}
		f->sport = ports[0];
		f->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP: {
		__u8 h[8];
		if (off + sizeof(h) > end || bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0) {
			*reason = REASON_MALFORMED;
			return PARSE_DROP;
		}
		__be16 id;
		__builtin_memcpy(&id, &h[4], 2);
		icmp_flow(f, h[0], id);
		if ((h[0] == ICMP_DEST_UNREACH || h[0] == ICMP_TIME_EXCEEDED || h[0] == ICMP_PARAMETERPROB) &&
		    !f->frag_first && parse_related(skb, off + sizeof(h), end, f))
			return PARSE_RELATED;
		break;
	}
	default:
		break;
	}
	policy_ports(f);
	return ret;
}

/* frag_remember lets the later fragments of an admitted first fragment
 * follow it (parse). Only admitted ones: a dropped first fragment's
 * followers are dropped as unknown. */
static __always_inline void frag_remember(struct flow *f)
{
	if (!f->frag_first)
		return;
	__be16 sport = f->sport, dport = f->dport;
	if (is_icmp(f)) {
		sport = f->sport | f->dport; /* the echo identifier, or 0 */
		dport = bpf_htons(f->icmp_type);
	}
	if (f->family == AF_INET6) {
		struct frag6_key fk = {.id = f->frag_id};
		__builtin_memcpy(fk.saddr, f->saddr, 16);
		__builtin_memcpy(fk.daddr, f->daddr, 16);
		struct frag6_value fv = {.sport = sport, .dport = dport, .proto = f->proto, .first_len = f->frag_len};
		bpf_map_update_elem(&fragments6, &fk, &fv, BPF_ANY);
		return;
	}
	struct frag_key fk = {.saddr = f->saddr[0], .daddr = f->daddr[0], .id = (__be16)f->frag_id, .proto = f->proto};
	struct frag_value fv = {.sport = sport, .dport = dport};
	bpf_map_update_elem(&fragments, &fk, &fv, BPF_ANY);
}

/* ipcache_identity: the identity of an address of the family (IPv4: in
 * addr[0]); a miss is world. */
static __always_inline __u32 ipcache_identity(__u8 family, const __u32 *addr)
{
	struct ipcache_key k = {.prefixlen = family == AF_INET6 ? 32 + 128 : 32 + 32, .family = family};
	__builtin_memcpy(k.addr, addr, 16);
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &k);
	return v ? v->identity : 2; /* world */
}

static __always_inline int lookup_levels(struct policy_key *k, __u32 levels, __u16 dport,
					 struct policy_value *out)
{
	struct policy_value *v;

	if (!levels)
		return 0;
#pragma unroll
	for (int l = 16; l >= 0; l--) {
		if (!(levels & (1U << l)))
			continue;
		k->port_plen = l;
		k->port = bpf_htons(l ? (__u16)(dport & (0xFFFF << (16 - l))) : 0);
		v = bpf_map_lookup_elem(&policy, k);
		if (v) {
			*out = *v;
			return 1;
		}
	}
	if (levels & (1U << LEVEL_ANY_PROTO)) {
		k->proto = 0;
		k->port_plen = 0;
		k->port = 0;
		v = bpf_map_lookup_elem(&policy, k);
		if (v) {
			*out = *v;
			return 1;
		}
	}
	return 0;
}

/* evaluate returns the combined verdict for a new flow; VERDICT_NONE means
 * no entry matched. Values are pre-combined by the loader along each
 * peer's chain of L4 prefixes, so the first hit per peer is that peer's
 * answer; the specific peer and the wildcard peer are then combined with
 * deny > redirect > allow. */
static __always_inline void evaluate(__u32 endpoint, __u8 dir, __u32 peer, __u8 proto, __be16 dport,
				     struct ep_policy *pol, struct policy_value *res)
{
	struct policy_value b = {};
	__u16 port = bpf_ntohs(dport);
	struct policy_key k = {.endpoint = endpoint, .identity = peer, .dir = dir, .proto = proto, .gen = pol->gen};

	__u32 pc = proto_class(proto);
	lookup_levels(&k, pol->levels_peer[pc], port, res); /* res is zeroed */
	k.identity = 0;
	k.proto = proto;
	lookup_levels(&k, pol->levels_any[pc], port, &b);
	/* A deny in audit mode for either peer kind audits what is not
	 * denied outright. */
	__u8 flags = res->flags | b.flags;
	__u32 audit_rule = (res->flags & POLICY_F_AUDIT) ? res->rule_id : b.rule_id;
	if (b.verdict > res->verdict)
		*res = b;
	if (res->verdict != VERDICT_DENY && (flags & POLICY_F_AUDIT)) {
		res->flags |= POLICY_F_AUDIT;
		res->rule_id = audit_rule;
	}
}

#define DECIDE_PASS 0xFF

/* decide looks up the endpoint direction's policy and evaluates a flow
 * with it (port: the policy port, network order); it returns DECIDE_PASS,
 * or the reason to drop the flow. No policy at all means not enforced:
 * pass. Global: verified once, not at each of its callers' paths. */
__attribute__((noinline)) int decide_global(__u32 endpoint, __u32 peer, __u32 what, struct policy_value *res)
{
	__u8 dir = what & 0xFF, proto = (what >> 8) & 0xFF;
	__be16 port = what >> 16;
	struct ep_policy_key pk = {.endpoint = endpoint, .dir = dir};
	struct ep_policy *p = bpf_map_lookup_elem(&ep_policy, &pk);

	if (!res)
		return REASON_MALFORMED;
	res->verdict = VERDICT_NONE;
	res->flags = 0;
	res->proxy_port = 0;
	res->rule_id = 0;
	if (!p)
		return DECIDE_PASS;
	/* One snapshot: a sync replaces the value as a whole. */
	struct ep_policy pol = *p;
	if (pol.flags & EP_POLICY_F_FAIL_CLOSED) {
		res->verdict = VERDICT_DENY;
		return REASON_FAIL_CLOSED;
	}
	evaluate(endpoint, dir, peer, proto, port, &pol, res);
	if (res->verdict == VERDICT_DENY) {
		res->flags = 0;
		return REASON_POLICY;
	}
	if (res->verdict == VERDICT_NONE && (pol.flags & EP_POLICY_F_ENFORCED)) {
		if (!(pol.flags & EP_POLICY_F_AUDIT_DEFAULT)) {
			/* the enforced default-deny decides, not an audited deny */
			res->flags = 0;
			res->rule_id = 0;
			return REASON_DEFAULT;
		}
		if (!(res->flags & POLICY_F_AUDIT))
			res->flags |= POLICY_F_AUDIT; /* rule_id 0: the default-deny */
	}
	return DECIDE_PASS;
}

static __always_inline __u8 decide(__u32 endpoint, __u8 dir, __u32 peer, __u8 proto, __be16 port,
				   struct policy_value *res)
{
	return decide_global(endpoint, peer, dir | (__u32)proto << 8 | (__u32)port << 16, res);
}

/* count_rule counts decisions, as Cilium's policy counters do: the first
 * packet of every flow a rule admits and every packet it drops. Packets of
 * established flows are not counted (that would cost a lookup each). */
static __always_inline void count_rule(__u32 rule_id, __u32 len)
{
	struct rule_stats *s = bpf_map_lookup_elem(&rule_stats, &rule_id);
	if (s) {
		s->packets++;
		s->bytes += len;
		return;
	}
	struct rule_stats init = {.packets = 1, .bytes = len};
	bpf_map_update_elem(&rule_stats, &rule_id, &init, BPF_NOEXIST);
}

static __always_inline struct config *settings_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

/* emit_event is a per-CPU token bucket in front of the ring buffer:
 * events_per_sec sustained, events_burst at once. */
static __always_inline void emit_event(struct __sk_buff *skb, struct config *cfg, __u32 endpoint, __u8 dir,
				       struct flow *f, __u32 src_id, __u32 dst_id, struct policy_value *pv,
				       __u8 reason, __u8 flags)
{
	__u32 zero = 0;
	struct event_limit *lim = bpf_map_lookup_elem(&event_limit, &zero);
	if (!lim || !cfg || !cfg->events_per_sec)
		return;
	__u64 now = bpf_ktime_get_ns();
	__u64 cost = NSEC_PER_SEC / cfg->events_per_sec;
	__u64 cap = cost * cfg->events_burst;
	__u64 tokens = lim->tokens + (now - lim->last);
	if (tokens > cap)
		tokens = cap;
	lim->last = now;
	if (tokens < cost) {
		lim->tokens = tokens;
		lim->suppressed++;
		return;
	}
	lim->tokens = tokens - cost;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		lim->suppressed++;
		return;
	}
	lim->emitted++;
	if (!src_id && f->family)
		src_id = ipcache_identity(f->family, f->saddr);
	if (!dst_id && f->family)
		dst_id = ipcache_identity(f->family, f->daddr);
	__builtin_memset(e, 0, sizeof(*e));
	e->timestamp = now;
	e->endpoint = endpoint;
	e->ifindex = skb->ifindex;
	e->src_identity = src_id;
	e->dst_identity = dst_id;
	e->rule_id = pv->rule_id;
	__builtin_memcpy(e->saddr, f->saddr, 16);
	__builtin_memcpy(e->daddr, f->daddr, 16);
	e->sport = f->sport;
	e->dport = f->dport;
	e->family = f->family ? f->family : AF_INET;
	e->proto = f->proto;
	e->dir = dir;
	e->verdict = pv->verdict;
	e->reason = reason;
	e->flags = flags;
	e->proxy_port = pv->proxy_port;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline __u64 ct_lifetime(struct config *cfg, struct ct_value *ct, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return cfg->ct_other_ns;
	if (ct->flags & CT_F_CLOSING)
		return cfg->ct_tcp_closing_ns;
	if (ct->flags & CT_F_SEEN_REPLY)
		return cfg->ct_tcp_ns;
	return cfg->ct_tcp_syn_ns;
}

static __always_inline __u32 proxy_sock_key(__u16 proxy_port, __u8 proto)
{
	return proto == IPPROTO_UDP ? (__u32)proxy_port | PROXY_SOCK_UDP : (__u32)proxy_port;
}

/* proxy_sock returns (referenced) the proxy port's socket for a flow of
 * the protocol and family, or 0: for IPv6 the port's IPv6 socket, else a
 * dual-stack one under the plain key (an AF_INET socket there cannot take
 * IPv6: none). */
static __always_inline struct bpf_sock *proxy_sock(__u16 proxy_port, __u8 proto, __u8 family)
{
	__u32 key = proxy_sock_key(proxy_port, proto);
	struct bpf_sock *sk;
	if (family == AF_INET6) {
		__u32 key6 = key | PROXY_SOCK_V6;
		sk = bpf_map_lookup_elem(&proxy_socks, &key6);
		if (sk)
			return sk;
	}
	sk = bpf_map_lookup_elem(&proxy_socks, &key);
	if (sk && family == AF_INET6 && sk->family != AF_INET6) {
		bpf_sk_release(sk);
		return 0;
	}
	return sk;
}

/* listener_present: the proxy port has a socket for the flow's protocol
 * and family (a UDP redirect needs the proxy's UDP socket, TCP its
 * listener; IPv6 an IPv6 or dual-stack one). */
static __always_inline int listener_present(__u16 proxy_port, __u8 proto, __u8 family)
{
	struct bpf_sock *sk = proxy_sock(proxy_port, proto, family);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* turn_around sends a packet that was on its way into a pod back into the
 * node's stack, through the ingress of the same veth, with the to-proxy mark
 * (proxy_port, and the notrack bit: see marks.h) so that policy routing
 * delivers it locally. Swap MACs so that the frame is addressed to the
 * host-side veth (else it is PACKET_OTHERHOST). */
static __always_inline int turn_around(struct __sk_buff *skb, __u16 proxy_port)
{
	skb->mark = mark_to_proxy(proxy_port) | MARK_TO_PROXY_NOTRACK;
	__u8 macs[12], swapped[12];
	if (bpf_skb_load_bytes(skb, 0, macs, sizeof(macs)) < 0)
		return TC_ACT_SHOT;
	__builtin_memcpy(swapped, macs + 6, 6);
	__builtin_memcpy(swapped + 6, macs, 6);
	if (bpf_skb_store_bytes(skb, 0, swapped, sizeof(swapped), 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

static __always_inline int do_redirect(struct __sk_buff *skb, __u8 dir, __u16 proxy_port)
{
	if (dir == DIR_EGRESS) {
		/* Leaving the pod: the mark alone steers routing to local
		 * delivery. This happens before PREROUTING, so netfilter tracks
		 * (and DNATs) the packet once, as usual: no notrack bit. */
		skb->mark = mark_to_proxy(proxy_port);
		return TC_ACT_OK;
	}
	/* Entering the pod: routing is done, so turn the packet around. */
	return turn_around(skb, proxy_port);
}

/* to_proxy_socket reports whether a TCP packet on its way into a pod is
 * addressed to a socket of a proxy in the node: an upstream connection the
 * proxy opened with the pod's address as its source (IP_TRANSPARENT), whose
 * replies the node routes to the pod. Such a socket is a connected (not
 * listening) socket of the node's network namespace with this 4-tuple that
 * carries a from-proxy SO_MARK. (tc programs cannot read a looked-up
 * socket's cgroup; binding a pod's address and setting SO_MARK both take
 * CAP_NET_ADMIN in the node, and the socket only gets what is addressed to
 * its own 4-tuple.) Only packets with ACK can answer a connection. */
__attribute__((noinline)) int proxy_socket_global(struct __sk_buff *skb, struct flow *f)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	if (!skb || !f)
		return 0;
	if (f->family == AF_INET6) {
		__builtin_memcpy(t.ipv6.saddr, f->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, f->daddr, 16);
		t.ipv6.sport = f->sport;
		t.ipv6.dport = f->dport;
		sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	} else {
		t.ipv4.saddr = f->saddr[0];
		t.ipv4.daddr = f->daddr[0];
		t.ipv4.sport = f->sport;
		t.ipv4.dport = f->dport;
		sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return 0;
	__u32 magic = sk->mark & MARK_MAGIC_MASK;
	int ours = sk->state != BPF_TCP_LISTEN &&
		   (magic == MARK_MAGIC_PROXY_INGRESS || magic == MARK_MAGIC_PROXY_EGRESS);
	bpf_sk_release(sk);
	return ours;
}

/* The lookup (global: verified once, with a stack frame of its own) runs
 * only for a pod a proxy may have continued a connection from (see
 * proxied_clients); the kernel's IPv6 socket lookup costs about twice the
 * IPv4 one. */
static __always_inline int to_proxy_socket(struct __sk_buff *skb, __u32 endpoint, struct flow *f)
{
	if (f->proto != IPPROTO_TCP || !(f->tcp_flags & TCP_ACK))
		return 0;
	/* No proxy ever served this family here: no socket to find. */
	__u32 fam = f->family == AF_INET6 ? PROXY_FAM_V6 : PROXY_FAM_V4;
	__u32 *seen = bpf_map_lookup_elem(&proxy_families, &fam);
	if (!seen || !*seen)
		return 0;
	/* No flow of this pod and family was ever redirected: no proxy
	 * socket is bound to its address. */
	struct proxied_key pk = {.endpoint = endpoint, .family = f->family};
	if (!bpf_map_lookup_elem(&proxied_clients, &pk))
		return 0;
	/* No recorded upstream socket has this 4-tuple (while the record is
	 * complete): the lookup would find no proxy socket. */
	__u32 on_idx = UPSTREAM_FILTER_ON, ovf_idx = UPSTREAM_FILTER_OVERFLOW;
	__u32 *on = bpf_map_lookup_elem(&upstream_filter, &on_idx);
	__u32 *ovf = bpf_map_lookup_elem(&upstream_filter, &ovf_idx);
	if (on && ovf && *on == 1 && *ovf == 0) {
		struct upstream_key uk = {.family = f->family, .lport = f->dport, .rport = f->sport};
		__builtin_memcpy(uk.laddr, f->daddr, 16);
		__builtin_memcpy(uk.raddr, f->saddr, 16);
		if (!bpf_map_lookup_elem(&proxy_upstreams, &uk))
			return 0;
	}
	return proxy_socket_global(skb, f);
}

/* record_proxied records (proxied_clients) that a TCP flow of the family
 * leaving the endpoint's pod goes to a proxy, which may continue it from
 * the pod's address. Returns 0 if it could not be recorded. */
static __always_inline int record_proxied(__u32 endpoint, __u8 family)
{
	struct proxied_key pk = {.endpoint = endpoint, .family = family};
	if (bpf_map_lookup_elem(&proxied_clients, &pk))
		return 1;
	__u32 one = 1;
	return bpf_map_update_elem(&proxied_clients, &pk, &one, BPF_ANY) == 0;
}

/* fill_ct_key keys the flow of packet f at endpoint in dir; reverse keys
 * the flow f would be a reply of (the other direction, tuple swapped). */
static __always_inline void fill_ct_key(struct ct_key *k, __u32 endpoint, __u8 dir, struct flow *f, int reverse)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->endpoint = endpoint;
	k->proto = f->proto;
	k->family = f->family;
	if (!reverse) {
		k->dir = dir;
		k->icmp_type = f->icmp_type;
		k->sport = f->sport;
		k->dport = f->dport;
		__builtin_memcpy(k->saddr, f->saddr, 16);
		__builtin_memcpy(k->daddr, f->daddr, 16);
	} else {
		k->dir = dir ^ 1;
		k->icmp_type = f->ricmp_type;
		k->sport = f->dport;
		k->dport = f->sport;
		__builtin_memcpy(k->saddr, f->daddr, 16);
		__builtin_memcpy(k->daddr, f->saddr, 16);
	}
}

/* pass forwards an admitted packet (and lets its later fragments follow). */
static __always_inline int pass(struct flow *f)
{
	frag_remember(f);
	return TC_ACT_OK;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct flow f = {};
	struct policy_value pv = {};
	__u8 reason = REASON_MALFORMED;
	__u32 ifindex = skb->ifindex;
	__u32 magic = skb->mark & MARK_MAGIC_MASK;

	/* Our own ingress redirect coming back into the host (pods cannot
	 * set marks: they are scrubbed when crossing network namespaces). */
	if (dir == DIR_EGRESS && magic == MARK_MAGIC_TO_PROXY)
		return TC_ACT_OK;

	struct config *cfg = settings_get();
	if (!cfg)
		return TC_ACT_SHOT;

	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	__u32 endpoint = ep ? ep->id : 0;

	int ret = parse(skb, dir, ep, &f, &reason);
	if (ret == PARSE_PASS)
		return TC_ACT_OK;
	if (ret != PARSE_DROP && !ep) {
		ret = PARSE_DROP;
		reason = REASON_NO_ENDPOINT;
	}
	/* A pod may only send from its own address: identities are bound to
	 * addresses, and the node accepts local source addresses on pod veths
	 * (accept_local, needed by ingress redirects of the node's traffic). */
	if (ret != PARSE_DROP && dir == DIR_EGRESS) {
		if (f.family == AF_INET6) {
			/* An endpoint without an IPv6 address sends no IPv6 but
			 * neighbour discovery (passed in parse6). */
			__u32 *own6 = (__u32 *)ep->ipv6;
			if (!(own6[0] | own6[1] | own6[2] | own6[3]) || f.saddr[0] != own6[0] ||
			    f.saddr[1] != own6[1] || f.saddr[2] != own6[2] || f.saddr[3] != own6[3]) {
				ret = PARSE_DROP;
				reason = REASON_SPOOFED;
			}
		} else {
			__be32 own;
			__builtin_memcpy(&own, ep->ipv4, 4);
			if (own && f.saddr[0] != own) {
				ret = PARSE_DROP;
				reason = REASON_SPOOFED;
			}
		}
	}
	if (ret == PARSE_DROP) {
		count_rule(0, skb->len);
		emit_event(skb, cfg, endpoint, dir, &f, 0, 0, &pv, reason, EVENT_F_DROPPED);
		return TC_ACT_SHOT;
	}

	/* A from-proxy mark is believed only from a proxy's own socket: one
	 * in a registered proxy cgroup. Anyone else with CAP_NET_RAW could
	 * set it; their packets are judged by their address (host). */
	int from_proxy = FROM_NONE;
	__u32 proxy_id = 0;
	__u8 mark_flags = 0;
	if (dir == DIR_INGRESS && (magic == MARK_MAGIC_PROXY_INGRESS || magic == MARK_MAGIC_PROXY_EGRESS)) {
		__u64 cgroup = bpf_skb_cgroup_id(skb);
		if (bpf_map_lookup_elem(&proxy_cgroups, &cgroup)) {
			from_proxy = magic == MARK_MAGIC_PROXY_INGRESS ? FROM_INGRESS_PROXY : FROM_EGRESS_PROXY;
			proxy_id = mark_identity(skb->mark);
		} else {
			mark_flags = EVENT_F_UNTRUSTED_MARK;
		}
	}
	__u8 ct_proxy_flags = from_proxy == FROM_NONE	       ? 0
			      : from_proxy == FROM_EGRESS_PROXY ? CT_F_PROXY_MASK
								: CT_F_FROM_PROXY;

	/* An ICMP error about a tracked flow is looked up as a packet of that
	 * flow (f; the message is in f.outer_*); it passes if the flow does,
	 * changing nothing. Else it is judged as the ICMP message it is. */
	int related = ret == PARSE_RELATED;
	__u8 eflags = mark_flags | (from_proxy ? EVENT_F_FROM_PROXY : 0) | (related ? EVENT_F_RELATED : 0);

	__u64 now = bpf_ktime_get_ns();
	__u8 why;
	__u32 peer_addr_id; /* identity of the remote side */

	struct ct_key ck;
	fill_ct_key(&ck, endpoint, dir, &f, 0);
	struct ct_value *ct = bpf_map_lookup_elem(&conntrack, &ck);
	if (ct) {
		int fresh = now - ct->last_seen <= ct_lifetime(cfg, ct, f.proto);
		int new_syn = (f.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN && (ct->flags & CT_F_CLOSING);
		int proxy_mismatch = (ct->flags & CT_F_PROXY_MASK) != ct_proxy_flags;
		if (fresh && !new_syn && !proxy_mismatch) {
			if (ct->revision != cfg->revision) {
				/* Policy changed since this flow was admitted: drop it if it
				 * is no longer allowed; if it is now redirected but was not
				 * (or to another proxy port), handle the packet as a new
				 * flow: it is redirected, and the proxy's stack resets a
				 * connection it never accepted — never passed unchecked.
				 * A redirected flow that is not TCP and is no longer
				 * redirected is handled as new too: the proxy holds no
				 * socket of its own for it (a DNS proxy closes a port its
				 * rules no longer name), so its packets would go on to a
				 * proxy port without a socket for as long as the client
				 * reuses its socket. Otherwise keep its verdict and
				 * redirect (a TCP connection stays with the proxy that
				 * holds it). */
				/* The peer's address may map to another identity now;
				 * the proxy's mark, though, is the flow's for good. */
				__u32 peer = ct->peer_identity;
				if (!(ct->flags & CT_F_FROM_PROXY))
					peer = ipcache_identity(f.family, dir == DIR_INGRESS ? f.saddr : f.daddr);
				ct->peer_identity = peer;
				why = decide(endpoint, dir, peer, f.proto, f.pport, &pv);
				int reproxy = pv.verdict == VERDICT_REDIRECT && from_proxy != FROM_INGRESS_PROXY &&
					      (ct->verdict != VERDICT_REDIRECT || ct->proxy_port != pv.proxy_port);
				if (why != DECIDE_PASS || (reproxy && related)) {
					bpf_map_delete_elem(&conntrack, &ck);
					count_rule(pv.rule_id, f.len);
					__u32 src = dir == DIR_INGRESS ? peer : 0;
					__u32 dst = dir == DIR_INGRESS ? 0 : peer;
					emit_event(skb, cfg, endpoint, dir, &f, src, dst, &pv,
						   why == REASON_FAIL_CLOSED ? why : REASON_REVALIDATE, EVENT_F_DROPPED | eflags);
					return TC_ACT_SHOT;
				}
				int unproxy = ct->verdict == VERDICT_REDIRECT && pv.verdict != VERDICT_REDIRECT &&
					      f.proto != IPPROTO_TCP && !related;
				if (reproxy || unproxy) {
					bpf_map_delete_elem(&conntrack, &ck);
					goto new_flow;
				}
				ct->revision = cfg->revision;
			}
			if (related)
				return pass(&f);
			if (now - ct->last_seen > NSEC_PER_SEC)
				ct->last_seen = now;
			if (f.tcp_flags & (TCP_FIN | TCP_RST) && !(ct->flags & CT_F_CLOSING)) {
				ct->flags |= CT_F_CLOSING;
				ct->last_seen = now;
			}
			if (ct->verdict == VERDICT_REDIRECT) {
				frag_remember(&f);
				return do_redirect(skb, dir, ct->proxy_port);
			}
			return pass(&f);
		}
	}

	/* Reply of a flow admitted in the other direction. */
	/* ck is the reverse key now; new_flow fills it forward again (one key
	 * on the stack: the frame is tight). */
	struct ct_value *rct = 0;
	if (!f.no_reply) {
		fill_ct_key(&ck, endpoint, dir, &f, 1);
		rct = bpf_map_lookup_elem(&conntrack, &ck);
	}
	if (rct && now - rct->last_seen <= ct_lifetime(cfg, rct, f.proto)) {
		if (rct->revision != cfg->revision) {
			/* Re-check the flow in its own direction, as for the forward
			 * path, so that reply-only traffic cannot outlive a policy
			 * change. Its destination port is our source port. */
			__u32 peer = rct->peer_identity;
			if (!(rct->flags & CT_F_FROM_PROXY))
				peer = ipcache_identity(f.family, dir == DIR_INGRESS ? f.saddr : f.daddr);
			rct->peer_identity = peer;
			why = decide(endpoint, dir ^ 1, peer, f.proto, f.rpport, &pv);
			/* A flow that now needs the proxy but was admitted without
			 * it: its replies stop here; its next packet the other way is
			 * handled as new (redirected, then reset by the proxy). */
			int unproxied = pv.verdict == VERDICT_REDIRECT && rct->verdict != VERDICT_REDIRECT &&
					(rct->flags & CT_F_PROXY_MASK) != CT_F_FROM_PROXY;
			if (why != DECIDE_PASS || unproxied) {
				bpf_map_delete_elem(&conntrack, &ck);
				count_rule(pv.rule_id, f.len);
				emit_event(skb, cfg, endpoint, dir, &f, 0, 0, &pv,
					   why == REASON_FAIL_CLOSED ? why : REASON_REVALIDATE, EVENT_F_DROPPED | eflags);
				return TC_ACT_SHOT;
			}
			rct->revision = cfg->revision;
		}
		/* A reply leaving a pod towards a proxy that kept its client's
		 * address (CT_F_REPLY_TO_PROXY), or answering a flow that was
		 * redirected (whose packets never reached the pod: only a proxy
		 * upstream with the same tuple can be answered), goes to the
		 * node's stack, where the proxy's socket is: routing would send
		 * it to the client. ICMP errors about the flow go there too. */
		int steer = dir == DIR_EGRESS && ((rct->flags & CT_F_REPLY_TO_PROXY) || rct->verdict == VERDICT_REDIRECT);
		if (steer)
			skb->mark = mark_to_proxy(0);
		if (related)
			return pass(&f);
		if (!(rct->flags & CT_F_SEEN_REPLY) || now - rct->last_seen > NSEC_PER_SEC) {
			rct->flags |= CT_F_SEEN_REPLY;
			rct->last_seen = now;
		}
		if (f.tcp_flags & (TCP_FIN | TCP_RST) && !(rct->flags & CT_F_CLOSING)) {
			rct->flags |= CT_F_CLOSING;
			rct->last_seen = now;
		}
		/* A packet from elsewhere that looks like a reply of a flow the
		 * pod sent to its egress proxy cannot be one (the proxy answers
		 * from this node): if it belongs to a proxy upstream with the
		 * same tuple, hand it to that socket. */
		if (dir == DIR_INGRESS && rct->verdict == VERDICT_REDIRECT && skb->ingress_ifindex &&
		    to_proxy_socket(skb, endpoint, &f))
			return turn_around(skb, 0);
		return pass(&f);
	}

	/* Not tracked here: a reply to a proxy's upstream socket bound to the
	 * pod's address (the egress proxy's connection to a destination that
	 * is not a local pod, or the ingress proxy answering the egress
	 * proxy) is routed to the pod's veth; hand it to the socket. */
	if (dir == DIR_INGRESS && !related && to_proxy_socket(skb, endpoint, &f))
		return turn_around(skb, 0);

	/* New flow. An ICMP error about no tracked flow is judged as ICMP. */
new_flow:
	if (related) {
		related = 0;
		eflags &= ~EVENT_F_RELATED;
		__builtin_memcpy(f.saddr, f.outer_saddr, 16);
		f.proto = f.outer_proto;
		f.tcp_flags = 0;
		icmp_flow(&f, f.outer_type, 0);
		policy_ports(&f);
	}
	fill_ct_key(&ck, endpoint, dir, &f, 0);
	if (from_proxy && proxy_id)
		peer_addr_id = proxy_id;
	else
		peer_addr_id = ipcache_identity(f.family, dir == DIR_INGRESS ? f.saddr : f.daddr);
	/* Our own identity is only needed for events (0: look it up there). */
	__u32 src_id = dir == DIR_INGRESS ? peer_addr_id : 0;
	__u32 dst_id = dir == DIR_INGRESS ? 0 : peer_addr_id;

	why = decide(endpoint, dir, peer_addr_id, f.proto, f.pport, &pv);
	reason = pv.verdict == VERDICT_NONE && !pv.rule_id ? REASON_DEFAULT : REASON_POLICY;
	if (pv.flags & POLICY_F_AUDIT)
		eflags |= EVENT_F_AUDIT;
	if (why != DECIDE_PASS) {
		count_rule(pv.rule_id, f.len);
		emit_event(skb, cfg, endpoint, dir, &f, src_id, dst_id, &pv, why, eflags | EVENT_F_DROPPED);
		return TC_ACT_SHOT;
	}
	if (pv.verdict == VERDICT_REDIRECT && from_proxy == FROM_INGRESS_PROXY) {
		/* Through the ingress proxy, which enforced exactly these L7
		 * rules: never redirect twice. The egress proxy enforced the
		 * source's egress rules only, so its connections are redirected
		 * to the ingress proxy like any other peer's. */
		pv.verdict = VERDICT_ALLOW;
		pv.proxy_port = 0;
	}
	/* A TCP flow leaving the pod for a proxy: the proxy may continue it
	 * from the pod's address, so replies to that socket are looked for
	 * from now on (before the proxy can see the SYN). */
	if (pv.verdict == VERDICT_REDIRECT && (!listener_present(pv.proxy_port, f.proto, f.family) ||
					       (dir == DIR_EGRESS && f.proto == IPPROTO_TCP &&
						!record_proxied(endpoint, f.family)))) {
		count_rule(pv.rule_id, f.len);
		emit_event(skb, cfg, endpoint, dir, &f, src_id, dst_id, &pv, REASON_NO_LISTENER,
			   eflags | EVENT_F_DROPPED);
		return TC_ACT_SHOT;
	}

	struct ct_value nv = {
		.created = now,
		.last_seen = now,
		.rule_id = pv.rule_id,
		.revision = cfg->revision,
		.peer_identity = peer_addr_id,
		.proxy_port = pv.proxy_port,
		.verdict = pv.verdict == VERDICT_NONE ? VERDICT_ALLOW : pv.verdict,
		.flags = ct_proxy_flags | (pv.verdict == VERDICT_NONE ? CT_F_DEFAULT : 0),
	};
	/* A proxy connection from an address that is not the node's: the
	 * proxy kept its client's address, so replies must be steered back. */
	if (from_proxy && ipcache_identity(f.family, f.saddr) != IDENTITY_HOST)
		nv.flags |= CT_F_REPLY_TO_PROXY;
	if (f.tcp_flags & (TCP_FIN | TCP_RST))
		nv.flags |= CT_F_CLOSING;
	bpf_map_update_elem(&conntrack, &ck, &nv, BPF_ANY);
	count_rule(pv.rule_id, f.len);
	emit_event(skb, cfg, endpoint, dir, &f, src_id, dst_id, &pv, reason, eflags);
	if (pv.verdict == VERDICT_REDIRECT) {
		frag_remember(&f);
		return do_redirect(skb, dir, pv.proxy_port);
	}
	return pass(&f);
}

SEC("tc")
int tc_from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int tc_to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

/* sk_lookup_proxy finds the conntrack entry tc wrote for a redirected flow
 * (by arriving veth and tuple) and hands the connection to the listener
 * registered for its proxy port; a redirected UDP datagram (DNS) goes to
 * the proxy's UDP socket of that port, which reads the original
 * destination with IP_RECVORIGDSTADDR. A missing socket drops the SYN or
 * datagram. */
/* ctx_u32 loads a 4-byte context field at its own offset from the context
 * pointer: the verifier rejects loads through a context pointer the
 * compiler moved (which it does for arrays such as remote_ip6). */
#define ctx_u32(ctx, field)                                                                        \
	({                                                                                         \
		__u32 _v;                                                                          \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                                              \
			     : "=r"(_v)                                                            \
			     : "r"(ctx), "i"(__builtin_offsetof(struct bpf_sk_lookup, field)));    \
		_v;                                                                                \
	})

SEC("sk_lookup")
int sk_lookup_proxy(struct bpf_sk_lookup *ctx)
{
	if ((ctx->family != AF_INET && ctx->family != AF_INET6) ||
	    (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP))
		return SK_PASS;
	__u8 proto = ctx->protocol;
	__u32 ifindex = ctx->ingress_ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep)
		return SK_PASS;

	struct ct_key k;
	struct flow fl = {
		.sport = ctx->remote_port,
		.dport = bpf_htons((__u16)ctx->local_port),
		.family = ctx->family,
		.proto = proto,
	};
	if (ctx->family == AF_INET6) {
		fl.saddr[0] = ctx_u32(ctx, remote_ip6[0]);
		fl.saddr[1] = ctx_u32(ctx, remote_ip6[1]);
		fl.saddr[2] = ctx_u32(ctx, remote_ip6[2]);
		fl.saddr[3] = ctx_u32(ctx, remote_ip6[3]);
		fl.daddr[0] = ctx_u32(ctx, local_ip6[0]);
		fl.daddr[1] = ctx_u32(ctx, local_ip6[1]);
		fl.daddr[2] = ctx_u32(ctx, local_ip6[2]);
		fl.daddr[3] = ctx_u32(ctx, local_ip6[3]);
	} else {
		fl.saddr[0] = ctx->remote_ip4;
		fl.daddr[0] = ctx->local_ip4;
	}
	fill_ct_key(&k, ep->id, DIR_EGRESS, &fl, 0);
	struct ct_value *ct = bpf_map_lookup_elem(&conntrack, &k);
	if (!ct || ct->verdict != VERDICT_REDIRECT) {
		k.dir = DIR_INGRESS;
		ct = bpf_map_lookup_elem(&conntrack, &k);
	}
	if (!ct || ct->verdict != VERDICT_REDIRECT)
		return SK_PASS;

	struct bpf_sock *sk = proxy_sock(ct->proxy_port, proto, fl.family);
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return err ? SK_DROP : SK_PASS;
}

/* proxy_upstream_ops (sockops, attached to the cgroup v2 root by Go)
 * records proxy upstream sockets in proxy_upstreams: at connect (the SYN
 * is not sent yet) a socket whose SO_MARK carries a from-proxy magic, and
 * forgets it when it reaches TCP_CLOSE (RST, or the end of an orderly
 * close: replies still reach it until then). If a socket cannot be
 * recorded, it sets the overflow flag: tc then looks every candidate up in
 * the kernel (upstream_filter). */
SEC("sockops")
int proxy_upstream_ops(struct bpf_sock_ops *ctx)
{
	struct upstream_key uk = {};
	__u32 op = ctx->op;
	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		__u32 magic = ctx->sk ? ctx->sk->mark & MARK_MAGIC_MASK : 0;
		if (magic != MARK_MAGIC_PROXY_INGRESS && magic != MARK_MAGIC_PROXY_EGRESS)
			return 1;
	} else if (op != BPF_SOCK_OPS_STATE_CB || ctx->args[1] != BPF_TCP_CLOSE) {
		return 1;
	}
	uk.lport = bpf_htons((__u16)ctx->local_port);
	uk.rport = bpf_htons((__u16)bpf_ntohl(ctx->remote_port));
	__u32 l0 = ctx->local_ip6[0], l1 = ctx->local_ip6[1], l2 = ctx->local_ip6[2];
	if (ctx->family == AF_INET6 && !(l0 == 0 && l1 == 0 && l2 == bpf_htonl(0xffff))) {
		uk.family = AF_INET6;
		uk.laddr[0] = l0;
		uk.laddr[1] = l1;
		uk.laddr[2] = l2;
		uk.laddr[3] = ctx->local_ip6[3];
		uk.raddr[0] = ctx->remote_ip6[0];
		uk.raddr[1] = ctx->remote_ip6[1];
		uk.raddr[2] = ctx->remote_ip6[2];
		uk.raddr[3] = ctx->remote_ip6[3];
	} else {
		/* AF_INET, or AF_INET6 connected to an IPv4-mapped address. */
		uk.family = AF_INET;
		uk.laddr[0] = ctx->local_ip4;
		uk.raddr[0] = ctx->remote_ip4;
	}
	if (op == BPF_SOCK_OPS_STATE_CB) {
		bpf_map_delete_elem(&proxy_upstreams, &uk);
		return 1;
	}
	__u32 v = UPSTREAM_RECORDED;
	if (bpf_map_update_elem(&proxy_upstreams, &uk, &v, BPF_ANY)) {
		__u32 idx = UPSTREAM_FILTER_OVERFLOW;
		__u32 *ovf = bpf_map_lookup_elem(&upstream_filter, &idx);
		if (ovf)
			*ovf = 1;
		return 1;
	}
	bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	return 1;
}
