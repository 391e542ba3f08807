/*
 * Test plumbing for cross/build.sh, never shipped: preloaded (LD_PRELOAD) into a
 * big-endian ntmd that qemu-user runs on a little-endian host, it fills four gaps in the
 * emulator's rtnetlink byte-order conversion (linux-user/fd-trans.c, as in Debian 12's
 * qemu 7.2) that ntmd runs into. On a real big-endian box the kernel speaks the box's
 * byte order and none of this happens; little-endian guests need nothing (the conversion
 * is the identity there).
 *
 * 1. Replies: the attribute loop runs `while (len > sizeof(struct rtattr))`, so an
 *    attribute without payload at the very end of a message keeps the host's byte order.
 *    Recent kernels (6.18 here) end every RTM_NEWLINK in an empty IFLA_DPLL_PIN nest:
 *    the guest reads a last attribute 1024 bytes long that overruns its message, and a
 *    strict parser (netlink-packet-route) refuses the whole message. Repaired when
 *    exactly its 4-byte header remains and its length reads 4 once swapped, not as is.
 * 2. Requests: IFLA_MTU in RTM_NEWLINK/RTM_SETLINK is not converted (the kernel reads
 *    1400 as 2013593600 and answers EINVAL).
 * 3. Requests: IFA_FLAGS in RTM_NEWADDR/RTM_DELADDR is not converted (IFA_F_NODAD would
 *    reach the kernel as an unknown flag).
 * 4. Requests: RTA_METRICS in RTM_NEWROUTE is passed through whole, so the headers of
 *    the nested RTAX_* attributes and their u32 values (a route MTU) keep the guest's
 *    byte order and the kernel refuses the route.
 * For 2 to 4 the shim converts a copy of the request to the host's byte order, so that
 * after the emulator's pass-through the kernel reads what the guest meant.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

static uint16_t swap16(uint16_t v) { return (uint16_t)((v << 8) | (v >> 8)); }

static uint32_t swap32(uint32_t v)
{
	return (v >> 24) | ((v >> 8) & 0xff00) | ((v << 8) & 0xff0000) | (v << 24);
}

static int is_netlink(int fd)
{
	int domain = 0;
	socklen_t sl = sizeof domain;
	return getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &sl) == 0 && domain == AF_NETLINK;
}

/* Size of the fixed header after the nlmsghdr, for the message types the emulator converts. */
static size_t family_header(uint16_t type)
{
	switch (type) {
	case RTM_NEWLINK: case RTM_DELLINK: case RTM_GETLINK: case RTM_SETLINK:
		return NLMSG_ALIGN(sizeof(struct ifinfomsg));
	case RTM_NEWADDR: case RTM_DELADDR: case RTM_GETADDR:
		return NLMSG_ALIGN(sizeof(struct ifaddrmsg));
	case RTM_NEWROUTE: case RTM_DELROUTE: case RTM_GETROUTE:
		return NLMSG_ALIGN(sizeof(struct rtmsg));
	default:
		return 0;
	}
}

/* The u32 attribute of a request that the emulator passes through unconverted, or 0. */
static uint16_t unconverted_u32(uint16_t msg_type)
{
	switch (msg_type) {
	case RTM_NEWLINK: case RTM_SETLINK:
		return IFLA_MTU;
	case RTM_NEWADDR: case RTM_DELADDR:
		return IFA_FLAGS;
	default:
		return 0;
	}
}

static void swap_u32_at(void *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	v = swap32(v);
	memcpy(p, &v, 4);
}

/* Gap 4: the RTAX_* attributes inside RTA_METRICS, in the guest's order, to the host's. */
static void metrics_to_host(unsigned char *p, size_t len)
{
	while (len >= sizeof(struct rtattr)) {
		struct rtattr *a = (struct rtattr *)p;
		uint16_t alen = a->rta_len, type = a->rta_type;
		if (alen < sizeof(struct rtattr) || alen > len)
			return;
		if (alen == RTA_LENGTH(4) && type != RTAX_CC_ALGO)
			swap_u32_at(RTA_DATA(a));
		a->rta_len = swap16(alen);
		a->rta_type = swap16(type);
		size_t step = RTA_ALIGN(alen);
		if (step >= len)
			return;
		p += step;
		len -= step;
	}
}

/*
 * Walks the attributes of every message in buf. Replies (outgoing == 0): gap 1.
 * Requests (outgoing == 1): gaps 2 to 4.
 */
static void walk(unsigned char *buf, size_t left, int outgoing)
{
	while (left >= sizeof(struct nlmsghdr)) {
		struct nlmsghdr *h = (struct nlmsghdr *)buf;
		if (h->nlmsg_len < sizeof(struct nlmsghdr) || h->nlmsg_len > left)
			return;
		size_t fixed = family_header(h->nlmsg_type);
		uint16_t u32_type = unconverted_u32(h->nlmsg_type);
		if (fixed && h->nlmsg_len >= NLMSG_HDRLEN + fixed) {
			unsigned char *p = buf + NLMSG_HDRLEN + fixed;
			size_t len = h->nlmsg_len - NLMSG_HDRLEN - fixed;
			while (len >= sizeof(struct rtattr)) {
				struct rtattr *a = (struct rtattr *)p;
				if (!outgoing && len == sizeof(struct rtattr) && a->rta_len != sizeof(struct rtattr) &&
				    swap16(a->rta_len) == sizeof(struct rtattr)) {
					a->rta_len = sizeof(struct rtattr);
					a->rta_type = swap16(a->rta_type);
					break;
				}
				if (a->rta_len < sizeof(struct rtattr) || a->rta_len > len)
					break;
				if (outgoing && u32_type && a->rta_type == u32_type && a->rta_len == RTA_LENGTH(4))
					swap_u32_at(RTA_DATA(a));
				if (outgoing && h->nlmsg_type == RTM_NEWROUTE && a->rta_type == RTA_METRICS)
					metrics_to_host(RTA_DATA(a), a->rta_len - RTA_LENGTH(0));
				size_t step = RTA_ALIGN(a->rta_len);
				if (step >= len)
					break;
				p += step;
				len -= step;
			}
		}
		size_t step = NLMSG_ALIGN(h->nlmsg_len);
		if (step >= left)
			return;
		buf += step;
		left -= step;
	}
}

/*
 * The calls into the C library. Preloaded into a dynamic binary (cross/build.sh), the shim
 * defines recvfrom and its siblings and finds the C library's own through dlsym. Linked
 * into a static binary (cross/static.sh: compiled with -DNTM_SHIM_WRAP and linked with
 * -Wl,--wrap=recvfrom,...), it defines __wrap_recvfrom and the linker hands it the C
 * library's as __real_recvfrom.
 */
#ifdef NTM_SHIM_WRAP
#define SHIM(name) __wrap_##name
#define REAL(name) __real_##name
ssize_t __real_recvfrom(int, void *, size_t, int, struct sockaddr *, socklen_t *);
ssize_t __real_recvmsg(int, struct msghdr *, int);
ssize_t __real_sendto(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
ssize_t SHIM(recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
ssize_t SHIM(recv)(int, void *, size_t, int);
ssize_t SHIM(recvmsg)(int, struct msghdr *, int);
ssize_t SHIM(sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
ssize_t SHIM(send)(int, const void *, size_t, int);
#else
#define SHIM(name) name
#define REAL(name) real_##name
static ssize_t real_recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen)
{
	static ssize_t (*real)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
	if (!real)
		real = (ssize_t (*)(int, void *, size_t, int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "recvfrom");
	return real(fd, buf, len, flags, from, fromlen);
}

static ssize_t real_recvmsg(int fd, struct msghdr *msg, int flags)
{
	static ssize_t (*real)(int, struct msghdr *, int);
	if (!real)
		real = (ssize_t (*)(int, struct msghdr *, int))dlsym(RTLD_NEXT, "recvmsg");
	return real(fd, msg, flags);
}

static ssize_t real_sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen)
{
	static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
	if (!real)
		real = (ssize_t (*)(int, const void *, size_t, int, const struct sockaddr *, socklen_t))dlsym(
			RTLD_NEXT, "sendto");
	return real(fd, buf, len, flags, to, tolen);
}
#endif

ssize_t SHIM(recvfrom)(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen)
{
	ssize_t n = REAL(recvfrom)(fd, buf, len, flags, from, fromlen);
	/* With MSG_TRUNC, n may be the datagram's length rather than what was stored. */
	if (n > 0 && (size_t)n <= len && is_netlink(fd))
		walk(buf, (size_t)n, 0);
	return n;
}

ssize_t SHIM(recv)(int fd, void *buf, size_t len, int flags)
{
	return SHIM(recvfrom)(fd, buf, len, flags, NULL, NULL);
}

ssize_t SHIM(recvmsg)(int fd, struct msghdr *msg, int flags)
{
	ssize_t n = REAL(recvmsg)(fd, msg, flags);
	/* Only the simple case: one buffer that holds the whole datagram. */
	if (n > 0 && msg->msg_iovlen == 1 && (size_t)n <= msg->msg_iov[0].iov_len && is_netlink(fd))
		walk(msg->msg_iov[0].iov_base, (size_t)n, 0);
	return n;
}

ssize_t SHIM(sendto)(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen)
{
	if (len == 0 || len > 65536 || !is_netlink(fd))
		return REAL(sendto)(fd, buf, len, flags, to, tolen);
	unsigned char *copy = malloc(len);
	if (!copy)
		return REAL(sendto)(fd, buf, len, flags, to, tolen);
	memcpy(copy, buf, len);
	walk(copy, len, 1);
	ssize_t n = REAL(sendto)(fd, copy, len, flags, to, tolen);
	free(copy);
	return n;
}

ssize_t SHIM(send)(int fd, const void *buf, size_t len, int flags)
{
	return SHIM(sendto)(fd, buf, len, flags, NULL, 0);
}
