//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * l7gate socket-level load balancer for Kubernetes Services (IPv4).
 *
 * cgroup/connect4 and cgroup/sendmsg4 rewrite a ClusterIP:port destination
 * to a backend's address before the socket emits a packet, so the pod's
 * packets leave addressed to the backend pod and the datapath's egress
 * policy, the proxy redirect and flow records all see the real peer.
 * cgroup/recvmsg4 and cgroup/getpeername4 rewrite the backend's address
 * back to the ClusterIP for the application (UDP replies, getpeername).
 *
 * Layout (bpf/socklb.go owns the user-space side):
 *   lb4_services  {vip, port, proto} -> {id, count, affinity timeout, gen, flags}
 *   lb4_slots     {service id, slot, gen} -> backend id, slot < count
 *   lb4_backends  backend id -> {address, port, proto}
 *   lb_affinity_match {service id, backend id}: backend belongs to service
 *   lb_affinity   LRU {netns cookie, service id} -> {backend id, last used}
 *   lb4_revnat    LRU {socket cookie, backend address, port} -> {vip, port}
 *
 * A service's slots are written under the generation not in force, then
 * its lb4_services value (count and generation at once) is replaced, then
 * the old generation's slots are deleted: a connect sees the old or the
 * new backend set, never a mix. A service with count 0 refuses connect()
 * and sendmsg() with ECONNREFUSED, as kube-proxy rejects a Service without
 * endpoints. Anything inconsistent (a slot or backend missing) refuses too:
 * never pass a ClusterIP through untranslated when it is ours to translate.
 */

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define ECONNREFUSED 111
#define NSEC_PER_SEC 1000000000ULL

#define LB_F_AFFINITY 1 /* sessionAffinity: ClientIP (per client netns) */

struct lb4_key {
	__u32 address; /* network byte order */
	__u16 port;    /* network byte order */
	__u8 proto;
	__u8 pad;
};

struct lb4_service {
	__u32 id;
	__u32 count;            /* backends in slots 0..count-1; 0 refuses */
	__u32 affinity_timeout; /* seconds, with LB_F_AFFINITY */
	__u8 gen;               /* generation of the slots in force (0 or 1) */
	__u8 flags;
	__u16 pad;
};

struct lb4_slot_key {
	__u32 service;
	__u32 slot;
	__u32 gen;
};

struct lb4_backend {
	__u32 address; /* network byte order */
	__u16 port;    /* network byte order */
	__u8 proto;
	__u8 pad;
};

struct lb_affinity_key {
	__u64 netns_cookie;
	__u32 service;
	__u32 pad;
};

struct lb_affinity_value {
	__u64 last_used; /* bpf_ktime_get_ns */
	__u32 backend;
	__u32 pad;
};

struct lb_affinity_match_key {
	__u32 service;
	__u32 backend;
};

struct lb4_revnat_key {
	__u64 cookie;
	__u32 address;
	__u16 port;
	__u16 pad;
};

struct lb4_revnat_value {
	__u32 address;
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_slot_key);
	__type(value, __u32);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb4_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_affinity_match_key);
	__type(value, __u32);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_affinity_match SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_value);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_revnat_key);
	__type(value, struct lb4_revnat_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb4_revnat SEC(".maps");

/* Verdicts of a cgroup sock_addr program. */
#define SYS_REJECT 0
#define SYS_PROCEED 1

/* pick_slot returns the backend id in a random slot of svc, 0 if the slot is
 * missing (a sync replaced the generation meanwhile). */
static __always_inline __u32 pick_slot(const struct lb4_service *svc)
{
	struct lb4_slot_key sk = {
		.service = svc->id,
		.slot = bpf_get_prandom_u32() % svc->count,
		.gen = svc->gen,
	};
	__u32 *id = bpf_map_lookup_elem(&lb4_slots, &sk);
	return id ? *id : 0;
}

/* affinity_backend returns the backend a client netns was last given for
 * svc, if still fresh and still one of svc's backends; 0 otherwise. */
static __always_inline __u32 affinity_backend(const struct lb4_service *svc, __u64 netns, __u64 now)
{
	struct lb_affinity_key ak = { .netns_cookie = netns, .service = svc->id };
	struct lb_affinity_value *av = bpf_map_lookup_elem(&lb_affinity, &ak);
	if (!av)
		return 0;
	if (now - av->last_used > (__u64)svc->affinity_timeout * NSEC_PER_SEC)
		return 0;
	struct lb_affinity_match_key mk = { .service = svc->id, .backend = av->backend };
	if (!bpf_map_lookup_elem(&lb_affinity_match, &mk))
		return 0;
	return av->backend;
}

static __always_inline int refuse(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
}

/* xlate rewrites ctx's destination when it is a service frontend. */
static __always_inline int xlate(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct lb4_key key = {
		.address = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.proto = proto,
	};
	struct lb4_service *v = bpf_map_lookup_elem(&lb4_services, &key);
	if (!v)
		return SYS_PROCEED; /* not a service of ours */
	struct lb4_service svc = *v;
	if (svc.count == 0)
		return refuse();

	__u64 now = bpf_ktime_get_ns();
	__u64 netns = 0;
	__u32 id = 0;
	if (svc.flags & LB_F_AFFINITY) {
		netns = bpf_get_netns_cookie(ctx);
		id = affinity_backend(&svc, netns, now);
	}
	if (!id) {
		id = pick_slot(&svc);
		if (!id) {
			/* A sync swapped generations between the two lookups:
			 * read the service again, once. */
			v = bpf_map_lookup_elem(&lb4_services, &key);
			if (!v)
				return refuse();
			svc = *v;
			if (svc.count == 0)
				return refuse();
			id = pick_slot(&svc);
			if (!id)
				return refuse();
		}
	}
	struct lb4_backend *be = bpf_map_lookup_elem(&lb4_backends, &id);
	if (!be)
		return refuse();
	__u32 addr = be->address;
	__u16 port = be->port;

	if (svc.flags & LB_F_AFFINITY) {
		struct lb_affinity_key ak = { .netns_cookie = netns, .service = svc.id };
		struct lb_affinity_value av = { .last_used = now, .backend = id };
		bpf_map_update_elem(&lb_affinity, &ak, &av, BPF_ANY);
	}
	/* getpeername and UDP replies show the ClusterIP again. */
	struct lb4_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = addr,
		.port = port,
	};
	struct lb4_revnat_value rv = { .address = key.address, .port = key.port };
	bpf_map_update_elem(&lb4_revnat, &rk, &rv, BPF_ANY);

	ctx->user_ip4 = addr;
	ctx->user_port = (__u32)port;
	return SYS_PROCEED;
}

/* rev_xlate shows a backend's address as the ClusterIP it was reached by. */
static __always_inline void rev_xlate(struct bpf_sock_addr *ctx)
{
	struct lb4_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
	};
	struct lb4_revnat_value *rv = bpf_map_lookup_elem(&lb4_revnat, &rk);
	if (!rv)
		return;
	ctx->user_ip4 = rv->address;
	ctx->user_port = (__u32)rv->port;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
	return xlate(ctx, (__u8)ctx->protocol);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return xlate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	rev_xlate(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	rev_xlate(ctx);
	return SYS_PROCEED;
}
