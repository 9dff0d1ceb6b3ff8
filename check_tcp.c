/*
 * check_tcp.c - TCP checks: a nonblocking connect() to the address and
 * port, watched by libev.  The check succeeds when the connection is
 * established within check_timeout; the connect time is its RTT.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "har.h"

struct tcp_probe {
	ev_io io;
	ev_timer timeout;
	int fd;
	struct check *check;
	struct ev_loop *loop;
};

static void
probe_close(struct tcp_probe *probe)
{
	ev_io_stop(probe->loop, &probe->io);
	ev_timer_stop(probe->loop, &probe->timeout);
	close(probe->fd);
	probe->check->transport = NULL;
	free(probe);
}

static void
probe_finish(struct tcp_probe *probe, int status, int success)
{
	struct check *check = probe->check;
	double elapsed = monotonic_now() - check->started;

	probe_close(probe);
	check_done(check, status, success, elapsed, elapsed);
}

/*
 * The connection proved what it had to: close it with a reset rather
 * than the FIN exchange, which leaves neither side a TIME_WAIT socket nor
 * the packets of a graceful close to process.
 */
static void
reset_on_close(int fd)
{
	struct linger linger = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
}

static void
probe_writable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct tcp_probe *probe = io->data;
	int error = 0;
	socklen_t length = sizeof(error);

	(void)loop;
	(void)revents;
	if (getsockopt(probe->fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0)
		error = errno;
	if (error == 0) {
		reset_on_close(probe->fd);
		probe_finish(probe, 0, 1);
		return;
	}
	log_debug("tcp check of %s: %s", probe->check->address->text,
		  strerror(error));
	probe_finish(probe, error == ETIMEDOUT ? STATUS_TIMEOUT :
		     STATUS_CONNECT_ERROR, 0);
}

static void
probe_timeout(struct ev_loop *loop, ev_timer *timer, int revents)
{
	(void)loop;
	(void)revents;
	probe_finish(timer->data, STATUS_TIMEOUT, 0);
}

static socklen_t
probe_address(const struct check *check, struct sockaddr_storage *out)
{
	const struct address *address = check->address;
	uint16_t port = htons((uint16_t)address->candidate->config->port);

	memset(out, 0, sizeof(*out));
	if (address->ip.family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)out;

		sin->sin_family = AF_INET;
		sin->sin_port = port;
		memcpy(&sin->sin_addr, address->ip.bytes, 4);
		return sizeof(*sin);
	}
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;

	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = port;
	memcpy(&sin6->sin6_addr, address->ip.bytes, 16);
	return sizeof(*sin6);
}

int
check_tcp_start(struct ev_loop *loop, struct check *check)
{
	const struct config_name *config = check->address->candidate->name->config;
	struct sockaddr_storage target;
	socklen_t target_len = probe_address(check, &target);
	struct tcp_probe *probe;
	int fd;

	fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 && check_short_of_sockets(errno)) {
		check_postpone(check, errno);
		return 0;
	}
	if (fd < 0) {
		log_warning("cannot open a socket for a tcp check: %s",
			    strerror(errno));
		return STATUS_OTHER_ERROR;
	}
	if (connect(fd, (struct sockaddr *)&target, target_len) != 0 &&
	    errno != EINPROGRESS) {
		log_debug("tcp check of %s: %s", check->address->text,
			  strerror(errno));
		close(fd);
		return STATUS_CONNECT_ERROR;	/* refused at once: loopback */
	}
	probe = calloc(1, sizeof(*probe));
	if (!probe) {
		close(fd);
		return STATUS_OTHER_ERROR;
	}
	probe->fd = fd;
	probe->check = check;
	probe->loop = loop;
	check->transport_kind = CHECK_TCP;
	check->transport = probe;
	/* Writable means the connect finished, one way or the other. */
	ev_io_init(&probe->io, probe_writable, fd, EV_WRITE);
	probe->io.data = probe;
	ev_timer_init(&probe->timeout, probe_timeout, config->check_timeout, 0);
	probe->timeout.data = probe;
	ev_io_start(loop, &probe->io);
	ev_timer_start(loop, &probe->timeout);
	return 0;
}

void
check_tcp_cancel(struct ev_loop *loop, struct check *check)
{
	struct tcp_probe *probe = check->transport;

	(void)loop;
	if (probe)
		probe_close(probe);
}
