//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * l7gate socket-level load balancer for Kubernetes Services (IPv4 and IPv6).
 *
 * cgroup/connect4 and cgroup/sendmsg4 rewrite a ClusterIP:port destination
 * to a backend's address before the socket emits a packet, so the pod's
 * packets leave addressed to the backend pod and the datapath's egress
 * policy, the proxy redirect and flow records all see the real peer.
 * cgroup/recvmsg4 and cgroup/getpeername4 rewrite the backend's address
 * back to the ClusterIP for the application (UDP replies, getpeername).
 *
 * The IPv6 programs (connect6, sendmsg6, recvmsg6, getpeername6) do the
 * same for IPv6 ClusterIPs with the lb6_* maps. A v4-mapped address
 * (::ffff:a.b.c.d, a dual-stack AF_INET6 socket talking IPv4) is handled
 * as its IPv4 form: looked up in lb4_services, rewritten to the v4-mapped
 * form of an IPv4 backend, reverse-translated through lb4_revnat. (The
 * kernel runs connect6/getpeername6/recvmsg6 for such sockets, but sendmsg4
 * for an unconnected send to a v4-mapped address.) Without this a
 * dual-stack socket would reach the ClusterIP untranslated.
 *
 * Layout (bpf/socklb.go owns the user-space side):
 *   lb4_services  {vip, port, proto} -> {id, count, affinity timeout, gen, flags}
 *   lb6_services  {vip6, port, proto} -> the same value
 *   lb4_slots     {service id, slot, gen} -> backend id, slot < count (both
 *                 families: service and backend ids are one space each)
 *   lb4_backends  backend id -> {address, port, proto}
 *   lb6_backends  backend id -> {address6, port, proto}
 *   lb_affinity_match {service id, backend id}: backend belongs to service
 *   lb_affinity   LRU {netns cookie, service id} -> {backend id, last used}
 *   lb4_revnat    LRU {socket cookie, backend address, port} -> {vip, port}
 *   lb6_revnat    LRU {socket cookie, backend address6, port} -> {vip6, port}
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

/* IPv6 addresses as four 32-bit words in network byte order, as
 * bpf_sock_addr's user_ip6 gives them. */
struct lb6_key {
	__u32 address[4];
	__u16 port; /* network byte order */
	__u8 proto;
	__u8 pad;
};

struct lb6_backend {
	__u32 address[4];
	__u16 port; /* network byte order */
	__u8 proto;
	__u8 pad;
};

struct lb6_revnat_key {
	__u64 cookie;
	__u32 address[4];
	__u16 port;
	__u16 pad;
	__u32 pad2;
};

struct lb6_revnat_value {
	__u32 address[4];
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
	__type(key, struct lb6_key);
	__type(value, struct lb4_service);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb6_services SEC(".maps");

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
	__type(key, __u32);
	__type(value, struct lb6_backend);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb6_backends SEC(".maps");

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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb6_revnat_key);
	__type(value, struct lb6_revnat_value);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb6_revnat SEC(".maps");

/* Verdicts of a cgroup sock_addr program. */
#define SYS_REJECT 0
#define SYS_PROCEED 1

/* Outcomes of a translation. */
#define XLATE_PASS 0   /* not a service of ours: leave the destination */
#define XLATE_REFUSE 1 /* ours, but no backend to give: ECONNREFUSED */
#define XLATE_DONE 2   /* rewritten */

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

/* choose returns the backend id for the service *svc found at key in the
 * services map (either family), or 0 to refuse. */
static __always_inline __u32 choose(struct bpf_sock_addr *ctx, void *services, const void *key,
				    struct lb4_service *svc, __u64 now, __u64 *netns)
{
	if (svc->count == 0)
		return 0;
	__u32 id = 0;
	if (svc->flags & LB_F_AFFINITY) {
		*netns = bpf_get_netns_cookie(ctx);
		id = affinity_backend(svc, *netns, now);
	}
	if (id)
		return id;
	id = pick_slot(svc);
	if (id)
		return id;
	/* A sync swapped generations between the two lookups: read the
	 * service again, once. */
	struct lb4_service *v = bpf_map_lookup_elem(services, key);
	if (!v)
		return 0;
	*svc = *v;
	if (svc->count == 0)
		return 0;
	return pick_slot(svc);
}

static __always_inline void remember_affinity(const struct lb4_service *svc, __u64 netns, __u64 now, __u32 id)
{
	if (!(svc->flags & LB_F_AFFINITY))
		return;
	struct lb_affinity_key ak = { .netns_cookie = netns, .service = svc->id };
	struct lb_affinity_value av = { .last_used = now, .backend = id };
	bpf_map_update_elem(&lb_affinity, &ak, &av, BPF_ANY);
}

static __always_inline int verdict(int r)
{
	if (r == XLATE_REFUSE) {
		bpf_set_retval(-ECONNREFUSED);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

/* xlate4 translates an IPv4 destination *addr:*port when it is a service
 * frontend. */
static __always_inline int xlate4(struct bpf_sock_addr *ctx, __u8 proto, __u32 *addr, __u16 *port)
{
	struct lb4_key key = { .address = *addr, .port = *port, .proto = proto };
	struct lb4_service *v = bpf_map_lookup_elem(&lb4_services, &key);
	if (!v)
		return XLATE_PASS; /* not a service of ours */
	struct lb4_service svc = *v;
	__u64 now = bpf_ktime_get_ns();
	__u64 netns = 0;
	__u32 id = choose(ctx, &lb4_services, &key, &svc, now, &netns);
	if (!id)
		return XLATE_REFUSE;
	struct lb4_backend *be = bpf_map_lookup_elem(&lb4_backends, &id);
	if (!be)
		return XLATE_REFUSE;
	__u32 baddr = be->address;
	__u16 bport = be->port;
	remember_affinity(&svc, netns, now, id);
	/* getpeername and UDP replies show the ClusterIP again. */
	struct lb4_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = baddr,
		.port = bport,
	};
	struct lb4_revnat_value rv = { .address = key.address, .port = key.port };
	bpf_map_update_elem(&lb4_revnat, &rk, &rv, BPF_ANY);
	*addr = baddr;
	*port = bport;
	return XLATE_DONE;
}

/* rev4 shows an IPv4 backend's address as the ClusterIP it was reached by. */
static __always_inline int rev4(struct bpf_sock_addr *ctx, __u32 *addr, __u16 *port)
{
	struct lb4_revnat_key rk = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = *addr,
		.port = *port,
	};
	struct lb4_revnat_value *rv = bpf_map_lookup_elem(&lb4_revnat, &rk);
	if (!rv)
		return 0;
	*addr = rv->address;
	*port = rv->port;
	return 1;
}

/* xlate6 translates an IPv6 destination (key holds it) when it is a
 * service frontend, into *addr and *port. */
static __always_inline int xlate6(struct bpf_sock_addr *ctx, const struct lb6_key *key, __u32 addr[4], __u16 *port)
{
	struct lb4_service *v = bpf_map_lookup_elem(&lb6_services, key);
	if (!v)
		return XLATE_PASS;
	struct lb4_service svc = *v;
	__u64 now = bpf_ktime_get_ns();
	__u64 netns = 0;
	__u32 id = choose(ctx, &lb6_services, key, &svc, now, &netns);
	if (!id)
		return XLATE_REFUSE;
	struct lb6_backend *be = bpf_map_lookup_elem(&lb6_backends, &id);
	if (!be)
		return XLATE_REFUSE;
	struct lb6_revnat_key rk = { .cookie = bpf_get_socket_cookie(ctx), .port = be->port };
	struct lb6_revnat_value rv = { .port = key->port };
#pragma unroll
	for (int i = 0; i < 4; i++) {
		rk.address[i] = be->address[i];
		rv.address[i] = key->address[i];
		addr[i] = be->address[i];
	}
	*port = be->port;
	remember_affinity(&svc, netns, now, id);
	bpf_map_update_elem(&lb6_revnat, &rk, &rv, BPF_ANY);
	return XLATE_DONE;
}

/* is_v4mapped: ctx's address is ::ffff:a.b.c.d. */
static __always_inline int is_v4mapped(const struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0xffff);
}

static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx, __u8 proto)
{
	__u32 addr = ctx->user_ip4;
	__u16 port = (__u16)ctx->user_port;
	int r = xlate4(ctx, proto, &addr, &port);
	if (r == XLATE_DONE) {
		ctx->user_ip4 = addr;
		ctx->user_port = (__u32)port;
	}
	return verdict(r);
}

static __always_inline int sock6_xlate(struct bpf_sock_addr *ctx, __u8 proto)
{
	if (is_v4mapped(ctx)) {
		__u32 addr = ctx->user_ip6[3];
		__u16 port = (__u16)ctx->user_port;
		int r = xlate4(ctx, proto, &addr, &port);
		if (r == XLATE_DONE) {
			ctx->user_ip6[3] = addr;
			ctx->user_port = (__u32)port;
		}
		return verdict(r);
	}
	struct lb6_key key = { .port = (__u16)ctx->user_port, .proto = proto };
	key.address[0] = ctx->user_ip6[0];
	key.address[1] = ctx->user_ip6[1];
	key.address[2] = ctx->user_ip6[2];
	key.address[3] = ctx->user_ip6[3];
	__u32 addr[4] = {};
	__u16 port = 0;
	int r = xlate6(ctx, &key, addr, &port);
	if (r == XLATE_DONE) {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
		ctx->user_port = (__u32)port;
	}
	return verdict(r);
}

static __always_inline void sock4_rev(struct bpf_sock_addr *ctx)
{
	__u32 addr = ctx->user_ip4;
	__u16 port = (__u16)ctx->user_port;
	if (rev4(ctx, &addr, &port)) {
		ctx->user_ip4 = addr;
		ctx->user_port = (__u32)port;
	}
}

static __always_inline void sock6_rev(struct bpf_sock_addr *ctx)
{
	__u16 port = (__u16)ctx->user_port;
	if (is_v4mapped(ctx)) {
		__u32 addr = ctx->user_ip6[3];
		if (rev4(ctx, &addr, &port)) {
			ctx->user_ip6[3] = addr;
			ctx->user_port = (__u32)port;
		}
		return;
	}
	struct lb6_revnat_key rk = { .cookie = bpf_get_socket_cookie(ctx), .port = port };
	rk.address[0] = ctx->user_ip6[0];
	rk.address[1] = ctx->user_ip6[1];
	rk.address[2] = ctx->user_ip6[2];
	rk.address[3] = ctx->user_ip6[3];
	struct lb6_revnat_value *rv = bpf_map_lookup_elem(&lb6_revnat, &rk);
	if (!rv)
		return;
	ctx->user_ip6[0] = rv->address[0];
	ctx->user_ip6[1] = rv->address[1];
	ctx->user_ip6[2] = rv->address[2];
	ctx->user_ip6[3] = rv->address[3];
	ctx->user_port = (__u32)rv->port;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
	return sock4_xlate(ctx, (__u8)ctx->protocol);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
	return sock6_xlate(ctx, (__u8)ctx->protocol);
}

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_xlate(ctx, IPPROTO_UDP);
}

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	sock6_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx)
{
	sock6_rev(ctx);
	return SYS_PROCEED;
}
