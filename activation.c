/*
 * activation.c - listening sockets handed over by the service manager
 * (socket activation, sd_listen_fds(3)): systemd binds the addresses of
 * har.socket itself and starts hard with them open as descriptors 3, 4,
 * ..., saying how many in LISTEN_FDS, for which process in LISTEN_PID,
 * and their names in LISTEN_FDNAMES (':'-separated).  The protocol is
 * read here without libsystemd, as notify.c speaks sd_notify(3).
 *
 * The manager keeps its own copy of each socket while hard stops and
 * starts again, so the kernel holds the queries of a restart or an
 * upgrade in the sockets' buffers and the next hard answers them: none is
 * refused.  And hard binds nothing, so it needs no privilege for port 53.
 *
 * server.c asks for each configured listener's UDP and TCP socket here
 * first, by address (getsockname) and type (SOCK_DGRAM, SOCK_STREAM); a
 * listener no socket was passed for is bound by hard itself.  A passed IP
 * socket that no listener matches is kept open, unread, for a reload that
 * configures its address (the manager holds it, so hard could not bind
 * that address itself), and logged; a descriptor that is not a UDP or TCP
 * socket on an IP address is closed, and logged.  A socket a reload stops
 * using comes back here open, for the same reason.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "har.h"

#define FIRST_PASSED_FD 3	/* SD_LISTEN_FDS_START */

struct passed_socket {
	int fd;
	int type;		/* SOCK_DGRAM or SOCK_STREAM */
	int in_use;		/* a listener has it */
	struct sockaddr_storage addr;
	char text[128];		/* "127.0.0.1:53 (UDP, har.socket)" */
};

static struct passed_socket *passed;
static int passed_count;

/* The count in LISTEN_FDS when it is for this process; 0 otherwise. */
static int
passed_for_us(void)
{
	const char *fds = getenv("LISTEN_FDS");
	const char *pid = getenv("LISTEN_PID");
	char *end;
	long count, for_pid;

	if (!fds || !*fds)
		return 0;
	errno = 0;
	for_pid = pid ? strtol(pid, &end, 10) : 0;
	if (!pid || errno || *end || for_pid != (long)getpid()) {
		log_debug("LISTEN_FDS is set for process %s, not this one (%ld): "
			  "its sockets are not taken", pid ? pid : "(none)",
			  (long)getpid());
		return 0;
	}
	errno = 0;
	count = strtol(fds, &end, 10);
	if (errno || *end || count < 0 || count > INT_MAX - FIRST_PASSED_FD) {
		log_warning("LISTEN_FDS=\"%s\" is not a number of descriptors; "
			    "taking no socket from the service manager", fds);
		return 0;
	}
	return (int)count;
}

/* The index-th name of LISTEN_FDNAMES, or "". */
static void
passed_name(const char *names, int index, char *out, size_t size)
{
	const char *start = names;

	out[0] = '\0';
	for (int i = 0; start && i < index; i++) {
		start = strchr(start, ':');
		if (start)
			start++;
	}
	if (start)
		snprintf(out, size, "%.*s", (int)strcspn(start, ":"), start);
}

static void
describe(struct passed_socket *socket_info, const char *name)
{
	const struct sockaddr_storage *addr = &socket_info->addr;
	const char *type = socket_info->type == SOCK_DGRAM ? "UDP" : "TCP";
	char host[INET6_ADDRSTRLEN] = "?";
	int port;

	if (addr->ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		port = ntohs(sin->sin_port);
		snprintf(socket_info->text, sizeof(socket_info->text),
			 "%s:%d (%s%s%s)", host, port, type, *name ? ", " : "",
			 name);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		port = ntohs(sin6->sin6_port);
		snprintf(socket_info->text, sizeof(socket_info->text),
			 "[%s]:%d (%s%s%s)", host, port, type, *name ? ", " : "",
			 name);
	}
}

/*
 * A UDP or TCP socket on an IP address, ready for the loop: non-blocking,
 * and a stream socket listening (systemd's always are; another manager's
 * may not be).  0 when fd is one; -1 with the reason otherwise.
 */
static int
examine(int fd, struct passed_socket *out, const char **why)
{
	socklen_t length = sizeof(out->type);
	int listening = 0, flags;

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &out->type, &length) != 0) {
		*why = errno == ENOTSOCK ? "not a socket" : strerror(errno);
		return -1;
	}
	length = sizeof(out->addr);
	if (getsockname(fd, (struct sockaddr *)&out->addr, &length) != 0) {
		*why = strerror(errno);
		return -1;
	}
	if ((out->addr.ss_family != AF_INET && out->addr.ss_family != AF_INET6) ||
	    (out->type != SOCK_DGRAM && out->type != SOCK_STREAM)) {
		*why = "not a UDP or TCP socket on an IP address";
		return -1;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
		*why = strerror(errno);
		return -1;
	}
	length = sizeof(listening);
	if (out->type == SOCK_STREAM &&
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0 &&
	    !listening && listen(fd, SOMAXCONN) != 0) {
		*why = strerror(errno);
		return -1;
	}
	out->fd = fd;
	return 0;
}

/*
 * Like sd_listen_fds(3) with unset_environment: the three variables go
 * whatever they held, and the descriptors are closed on exec, so nothing
 * hard might start inherits them.
 */
void
activation_read(void)
{
	const char *names = getenv("LISTEN_FDNAMES");
	int count = passed_for_us();

	if (count > 0)
		passed = calloc((size_t)count, sizeof(*passed));
	if (count > 0 && !passed) {
		log_error("out of memory taking the service manager's sockets");
		count = 0;
	}
	for (int i = 0; i < count; i++) {
		int fd = FIRST_PASSED_FD + i;
		struct passed_socket *socket_info = &passed[passed_count];
		const char *why = NULL;
		char name[64];

		passed_name(names, i, name, sizeof(name));
		if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
			log_warning("LISTEN_FDS: descriptor %d%s%s%s is not open",
				    fd, *name ? " (" : "", name, *name ? ")" : "");
			continue;
		}
		if (examine(fd, socket_info, &why) != 0) {
			log_warning("LISTEN_FDS: descriptor %d%s%s%s: %s; closed", fd,
				    *name ? " (" : "", name, *name ? ")" : "", why);
			close(fd);
			continue;
		}
		describe(socket_info, name);
		log_info("socket %s passed by the service manager", socket_info->text);
		passed_count++;
	}
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
}

static int
same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	const struct sockaddr_in *a4 = (const struct sockaddr_in *)a;
	const struct sockaddr_in *b4 = (const struct sockaddr_in *)b;
	const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)a;
	const struct sockaddr_in6 *b6 = (const struct sockaddr_in6 *)b;

	if (a->ss_family != b->ss_family)
		return 0;
	if (a->ss_family == AF_INET)
		return a4->sin_port == b4->sin_port &&
		    a4->sin_addr.s_addr == b4->sin_addr.s_addr;
	return a6->sin6_port == b6->sin6_port &&
	    a6->sin6_scope_id == b6->sin6_scope_id &&
	    memcmp(&a6->sin6_addr, &b6->sin6_addr, sizeof(a6->sin6_addr)) == 0;
}

int
activation_take(const struct endpoint *endpoint, int type)
{
	for (int i = 0; i < passed_count; i++) {
		struct passed_socket *socket_info = &passed[i];

		if (socket_info->in_use || socket_info->type != type ||
		    !same_address(&socket_info->addr, &endpoint->addr))
			continue;
		socket_info->in_use = 1;
		return socket_info->fd;
	}
	return -1;
}

int
activation_give_back(int fd)
{
	for (int i = 0; i < passed_count; i++)
		if (passed[i].fd == fd) {
			passed[i].in_use = 0;
			return 1;
		}
	return 0;
}

void
activation_log_unused(void)
{
	for (int i = 0; i < passed_count; i++)
		if (!passed[i].in_use)
			log_warning("socket %s passed by the service manager is not "
				    "a configured listener (dns_bind_interfaces, "
				    "dns_listen_port): kept open but not read",
				    passed[i].text);
}

void
activation_close(void)
{
	for (int i = 0; i < passed_count; i++)
		close(passed[i].fd);
	free(passed);
	passed = NULL;
	passed_count = 0;
}
