// SPDX-License-Identifier: MIT OR GPL-2.0
//
// xsock's XDP filter: redirect to the AF_XDP socket of the receiving queue
// only the frames that are ours, and hand everything else to the kernel, so
// ARP, ssh and the kernel's own sockets keep working on the same interface.
//
// "Ours" is decided at run time from two maps that userspace fills:
//   - xsock_ethertypes: EtherTypes (network byte order) carried whole to
//     xsock (our reliable-link and diagnostic protocols); the key 0, which
//     no real EtherType uses, means "every frame" (the WAN emulator is an
//     L2 bridge and takes everything);
//   - xsock_ipv4_rules: IPv4 destination address + protocol + destination
//     port (port 0 = any port) for the TCP mode, which shares the interface
//     address family with the kernel.
//
// Two entry points share one body: `xsock_filter` for single-buffer frames
// and `xsock_filter_frags` (section "xdp.frags", i.e. BPF_F_XDP_HAS_FRAGS)
// for multi-buffer (jumbo) frames. Only headers in the first buffer are read.
//
// Self-contained on purpose: the few uapi definitions it needs are written
// out below (values from include/uapi/linux/bpf.h), so the build does not
// depend on a distribution's kernel headers matching the bpf target.

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
// BTF-defined map attributes, as libbpf expects them (bpf_helpers.h).
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

// enum bpf_map_type
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_XSKMAP 17

// enum xdp_action
#define XDP_PASS 2

// struct xdp_md: "user accessible metadata for XDP packet hook".
struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

// Helpers by number (FN(map_lookup_elem) = 1, FN(redirect_map) = 51).
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
// "The lower two bits of *flags* are used as the return code if the map
// lookup fails", so a queue without an xsock socket falls back to XDP_PASS.
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;

#define ETH_HLEN 14
#define ETH_P_IPV4_BE 0x0008 // htons(0x0800)
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IP_OFFSET_MASK_BE 0xff1f // htons(0x1fff): fragment offset bits

// Keep in step with `MAX_QUEUES` in nic/src/xdp/filter.rs.
#define XSOCK_MAX_QUEUES 64

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XSOCK_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsock_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u16);
	__type(value, __u8);
} xsock_ethertypes SEC(".maps");

// Keep the layout in step with `Ipv4RuleKey` in nic/src/xdp/filter.rs.
struct ipv4_rule_key {
	__u32 daddr; // network byte order
	__u16 dport; // network byte order, 0 = any port
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ipv4_rule_key);
	__type(value, __u8);
} xsock_ipv4_rules SEC(".maps");

// Per-CPU counters: [0] redirected to a socket lookup, [1] passed to kernel.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} xsock_counters SEC(".maps");

static __always_inline void count(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&xsock_counters, &slot);
	if (value)
		*value += 1;
}

static __always_inline int pass(void)
{
	count(1);
	return XDP_PASS;
}

static __always_inline int to_socket(struct xdp_md *ctx)
{
	count(0);
	return bpf_redirect_map(&xsock_xsks, ctx->rx_queue_index, XDP_PASS);
}

static __always_inline int ipv4_is_ours(struct xdp_md *ctx, void *l3, void *data_end)
{
	__u8 *ip = l3;
	if ((void *)(ip + 20) > data_end)
		return 0;
	__u32 ihl = (ip[0] & 0x0f) * 4;
	if (ihl < 20)
		return 0;

	struct ipv4_rule_key key = {};
	key.daddr = *(__u32 *)(ip + 16);
	key.proto = ip[9];

	__u16 frag = *(__u16 *)(ip + 6);
	if ((key.proto == IPPROTO_TCP || key.proto == IPPROTO_UDP) &&
	    (frag & IP_OFFSET_MASK_BE) == 0) {
		__u8 *l4 = (__u8 *)ip + ihl;
		if ((void *)(l4 + 4) <= data_end) {
			key.dport = *(__u16 *)(l4 + 2);
			if (bpf_map_lookup_elem(&xsock_ipv4_rules, &key))
				return 1;
		}
	}
	key.dport = 0;
	return bpf_map_lookup_elem(&xsock_ipv4_rules, &key) != 0;
}

static __always_inline int filter(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + ETH_HLEN > data_end)
		return pass();
	__u16 ethertype = *(__u16 *)((__u8 *)data + 12);

	if (bpf_map_lookup_elem(&xsock_ethertypes, &ethertype))
		return to_socket(ctx);
	if (ethertype == ETH_P_IPV4_BE && ipv4_is_ours(ctx, data + ETH_HLEN, data_end))
		return to_socket(ctx);
	__u16 any = 0;
	if (bpf_map_lookup_elem(&xsock_ethertypes, &any))
		return to_socket(ctx);
	return pass();
}

SEC("xdp")
int xsock_filter(struct xdp_md *ctx)
{
	return filter(ctx);
}

SEC("xdp.frags")
int xsock_filter_frags(struct xdp_md *ctx)
{
	return filter(ctx);
}

char _license[] SEC("license") = "Dual MIT/GPL";
