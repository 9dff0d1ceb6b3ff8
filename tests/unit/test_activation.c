/*
 * test_activation.c - activation.c: the sockets a service manager passes
 * (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES) are taken only when they are
 * for this process, the variables are gone afterwards, the descriptors
 * are closed on exec, and each socket goes to the listener of its address
 * and type, and comes back open.  Loopback sockets only, no event loop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "har.h"
#include "unit.h"

/* A socket bound on 127.0.0.1:port (0: any port), moved to descriptor at. */
static int
socket_at(int at, int type, int port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	int fd = socket(AF_INET, type, 0), high;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons((uint16_t)port);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0)
		return -1;
	if (type == SOCK_STREAM && listen(fd, 8) != 0)
		return -1;
	high = fcntl(fd, F_DUPFD, 100);
	close(fd);
	if (dup2(high, at) != at)
		return -1;
	close(high);
	return at;
}

static int
port_of(int fd)
{
	struct sockaddr_in sin;
	socklen_t length = sizeof(sin);

	getsockname(fd, (struct sockaddr *)&sin, &length);
	return ntohs(sin.sin_port);
}

static struct endpoint
loopback(int port)
{
	struct endpoint endpoint;
	char text[32];

	snprintf(text, sizeof(text), "127.0.0.1:%d", port);
	endpoint_parse(text, port, &endpoint);
	return endpoint;
}

static void
pass(const char *pid, const char *count, const char *names)
{
	setenv("LISTEN_PID", pid, 1);
	setenv("LISTEN_FDS", count, 1);
	setenv("LISTEN_FDNAMES", names, 1);
}

static void
test_sockets_for_this_process(void)
{
	int pipe_ends[2], port;
	char pid[32];
	struct endpoint here, elsewhere;

	CHECK_INT(socket_at(3, SOCK_DGRAM, 0), 3);
	port = port_of(3);
	CHECK_INT(socket_at(4, SOCK_STREAM, port), 4);
	CHECK(pipe(pipe_ends) == 0);	/* not a socket */
	CHECK_INT(dup2(pipe_ends[0], 100), 100);
	close(pipe_ends[0]);
	close(pipe_ends[1]);
	CHECK_INT(dup2(100, 5), 5);
	close(100);
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	pass(pid, "3", "udp:tcp:pipe");
	activation_read();
	CHECK(getenv("LISTEN_PID") == NULL);
	CHECK(getenv("LISTEN_FDS") == NULL);
	CHECK(getenv("LISTEN_FDNAMES") == NULL);
	CHECK(fcntl(3, F_GETFD) & FD_CLOEXEC);
	CHECK(fcntl(4, F_GETFD) & FD_CLOEXEC);
	CHECK(fcntl(4, F_GETFL) & O_NONBLOCK);
	CHECK(fcntl(5, F_GETFD) < 0 && errno == EBADF);	/* not a socket: closed */
	here = loopback(port);
	elsewhere = loopback(port == 65535 ? 1 : port + 1);
	CHECK_INT(activation_take(&elsewhere, SOCK_DGRAM), -1);
	CHECK_INT(activation_take(&here, SOCK_DGRAM), 3);
	CHECK_INT(activation_take(&here, SOCK_DGRAM), -1);	/* in use */
	CHECK_INT(activation_take(&here, SOCK_STREAM), 4);
	CHECK_INT(activation_give_back(3), 1);
	CHECK(fcntl(3, F_GETFD) >= 0);	/* given back open */
	CHECK_INT(activation_take(&here, SOCK_DGRAM), 3);
	CHECK_INT(activation_give_back(99), 0);
	activation_close();
	CHECK(fcntl(3, F_GETFD) < 0 && fcntl(4, F_GETFD) < 0);
}

static void
test_sockets_for_another_process(void)
{
	struct endpoint here;

	CHECK_INT(socket_at(3, SOCK_DGRAM, 0), 3);
	here = loopback(port_of(3));
	pass("1", "1", "har.socket");
	activation_read();
	CHECK(getenv("LISTEN_PID") == NULL && getenv("LISTEN_FDS") == NULL);
	CHECK_INT(activation_take(&here, SOCK_DGRAM), -1);
	CHECK(!(fcntl(3, F_GETFD) & FD_CLOEXEC));	/* left alone */
	pass("", "1", "");
	activation_read();
	CHECK_INT(activation_take(&here, SOCK_DGRAM), -1);
	close(3);
}

static void
test_count_that_is_not_a_number(void)
{
	char pid[32];

	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	pass(pid, "3x", "");
	activation_read();
	CHECK(getenv("LISTEN_FDS") == NULL);
	pass(pid, "-1", "");
	activation_read();
	activation_close();
	CHECK(getenv("LISTEN_PID") == NULL);
}

int
main(void)
{
	log_init("test_activation", 1, 0);
	RUN(test_sockets_for_this_process);
	RUN(test_sockets_for_another_process);
	RUN(test_count_that_is_not_a_number);
	return UNIT_SUMMARY();
}
