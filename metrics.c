/*
 * metrics.c - owns hard's metrics listener: the TCP socket of
 * metrics_listen, the scrapers' connections to it and the little HTTP they
 * speak (GET or HEAD /metrics; 404 for another path, 405 for another
 * method), all on hard's one loop.  The text itself is metrics_text.c's.
 *
 * Nothing here may hold up an answer.  The sockets are non-blocking and
 * the watchers run at the loop's lowest priority, so queries ready in the
 * same turn go first.  A response is written a part at a time
 * (METRICS_PART bytes, whole names), one part a turn, as the socket takes
 * it, and the socket's own buffer is kept small (METRICS_SEND_BUFFER).
 * A request must come whole within METRICS_REQUEST_TIMEOUT and fit in
 * METRICS_REQUEST_MAX bytes; a response that makes no progress for
 * METRICS_WRITE_TIMEOUT is dropped; at most METRICS_MAX_CONNECTIONS are
 * open at once, and at the cap a new one takes the place of the oldest
 * still sending its request.  One request is served per connection.  A
 * listener that cannot be bound does not stop hard: it is logged and tried
 * again every METRICS_RETRY seconds.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "har.h"

#define METRICS_BACKLOG 16
#define METRICS_REQUEST_MAX 4096
#define METRICS_REQUEST_TIMEOUT 5.0
#define METRICS_WRITE_TIMEOUT 10.0
#define METRICS_PART 16384
/* The kernel's buffer for one scrape's response (it doubles this): what a
 * client that stops reading holds of the kernel's memory, where the
 * loopback's own would grow to 4 MB.  The text waits in hard, a part at a
 * time, instead. */
#define METRICS_SEND_BUFFER 65536
/* A connection whose response is sent waits this long at most for its
 * client to close: what the client sent on is read and dropped meanwhile,
 * so the close does not reset the connection and lose the response. */
#define METRICS_LINGER 2.0
#define METRICS_RETRY 5.0
/* Out of descriptors, accepting is tried again after this. */
#define METRICS_ACCEPT_RETRY 1.0

enum connection_state { READING, WRITING, LINGERING };

struct connection {
	int fd;
	enum connection_state state;
	ev_io io;
	ev_timer timer;		/* the request's deadline, write progress, linger */
	char request[METRICS_REQUEST_MAX];
	size_t request_length;
	struct metrics_buffer out;
	size_t sent;
	int streaming;		/* the text is still being written */
	unsigned generation;	/* the registry's when the text began */
	struct metrics_text text;
	struct connection *prev, *next;	/* oldest first */
};

static struct ev_loop *metrics_loop;
static struct registry *metrics_registry;
static unsigned registry_generation;
static struct endpoint wanted;	/* metrics_listen; addr_len 0: none */
static int listen_fd = -1;
static ev_io accept_io;
static ev_timer retry_timer;	/* binding, or accepting, again */
static struct log_streak bind_streak;
static struct connection *oldest, *newest;
static int connection_count;

void
metrics_set_registry(struct registry *registry)
{
	metrics_registry = registry;
	registry_generation++;
}

/* ---------------------------------------------------------- connections */

static void
connection_close(struct connection *c)
{
	ev_io_stop(metrics_loop, &c->io);
	ev_timer_stop(metrics_loop, &c->timer);
	close(c->fd);
	free(c->out.data);
	metrics_text_end(&c->text);
	if (c->prev)
		c->prev->next = c->next;
	else
		oldest = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		newest = c->prev;
	connection_count--;
	free(c);
	/* Accepting paused for want of descriptors: one is free again. */
	if (listen_fd >= 0 && !ev_is_active(&accept_io)) {
		ev_timer_stop(metrics_loop, &retry_timer);
		ev_io_start(metrics_loop, &accept_io);
	}
}

/*
 * A text cut short ends in a reset, not a close: its body is delimited by
 * the close, and a scraper that saw a clean end would take the part it
 * got for the whole.
 */
static void
connection_abort(struct connection *c)
{
	struct linger linger = { .l_onoff = 1, .l_linger = 0 };

	if (setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger)) != 0)
		log_debug("metrics: cannot reset a connection: %s", strerror(errno));
	connection_close(c);
}

static void
watch(struct connection *c, int events)
{
	if (ev_is_active(&c->io) && (c->io.events & (EV_READ | EV_WRITE)) == events)
		return;
	ev_io_stop(metrics_loop, &c->io);
	ev_io_set(&c->io, c->fd, events);
	ev_io_start(metrics_loop, &c->io);
}

/* The next part of the text into the emptied buffer (none once the
 * text has ended); -1 when the scrape cannot go on: the text so far
 * would be taken for the whole. */
static int
next_part(struct connection *c)
{
	c->out.length = c->sent = 0;
	/* The names of the text so far are gone with the old registry. */
	if (c->generation != registry_generation) {
		log_debug("metrics: a scrape overtaken by a reload is cut short");
		return -1;
	}
	if (metrics_text_next(&c->text, metrics_registry, &c->out, METRICS_PART))
		c->streaming = 0;
	if (c->out.failed) {
		log_error("metrics: out of memory writing a scrape");
		return -1;
	}
	return 0;
}

/* The response is sent: the client is told so, and closes its end. */
static void
linger(struct connection *c)
{
	c->state = LINGERING;
	shutdown(c->fd, SHUT_WR);
	watch(c, EV_READ);
	ev_timer_stop(metrics_loop, &c->timer);
	ev_timer_set(&c->timer, METRICS_LINGER, 0.);
	ev_timer_start(metrics_loop, &c->timer);
}

static void
drain(struct connection *c)
{
	char discard[4096];
	ssize_t n;

	while ((n = recv(c->fd, discard, sizeof(discard), 0)) > 0)
		;
	if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
		connection_close(c);
}

/*
 * Sends what the buffer holds, then one more part of the text at most,
 * and leaves the rest to the next turn of the loop, so that the queries
 * that came meanwhile are answered first.
 */
static void
send_response(struct connection *c)
{
	int part_taken = 0;

	for (;;) {
		ssize_t n;

		if (c->sent == c->out.length) {
			if (!c->streaming) {
				linger(c);
				return;
			}
			if (part_taken) {
				watch(c, EV_WRITE);
				return;
			}
			if (next_part(c) != 0) {
				connection_abort(c);
				return;
			}
			part_taken = 1;
			continue;
		}
		n = send(c->fd, c->out.data + c->sent, c->out.length - c->sent,
			 MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			watch(c, EV_WRITE);
			return;
		}
		if (n <= 0) {
			connection_close(c);
			return;
		}
		c->sent += (size_t)n;
		ev_timer_again(metrics_loop, &c->timer);
	}
}

static void
start_response(struct connection *c)
{
	c->state = WRITING;
	ev_timer_stop(metrics_loop, &c->timer);
	ev_timer_set(&c->timer, 0., METRICS_WRITE_TIMEOUT);
	ev_timer_again(metrics_loop, &c->timer);
	send_response(c);
}

static void
respond_error(struct connection *c, const char *status, const char *extra,
	      const char *body, int head_only)
{
	char response[512];
	int length = snprintf(response, sizeof(response),
			      "HTTP/1.1 %s\r\nContent-Type: text/plain; "
			      "charset=utf-8\r\nContent-Length: %zu\r\n%s"
			      "Connection: close\r\n\r\n%s", status,
			      strlen(body), extra, head_only ? "" : body);
	char *copy = malloc((size_t)length);

	if (!copy) {
		connection_close(c);
		return;
	}
	memcpy(copy, response, (size_t)length);
	c->out = (struct metrics_buffer){ .data = copy, .length = (size_t)length,
		.capacity = (size_t)length };
	start_response(c);
}

static void
respond_metrics(struct connection *c, int head_only)
{
	static const char header[] =
	    "HTTP/1.1 200 OK\r\n"
	    "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
	    "Cache-Control: no-store\r\n"
	    "Connection: close\r\n\r\n";

	if (metrics_text_begin(&c->text) != 0) {
		respond_error(c, "500 Internal Server Error", "",
			      "out of memory\n", head_only);
		return;
	}
	c->out.data = malloc(sizeof(header));
	if (!c->out.data) {
		connection_close(c);
		return;
	}
	memcpy(c->out.data, header, sizeof(header) - 1);
	c->out.length = sizeof(header) - 1;
	c->out.capacity = sizeof(header);
	c->streaming = !head_only;
	c->generation = registry_generation;
	start_response(c);
}

/* "GET /metrics HTTP/1.1": what the request line asks for. */
static void
answer_request(struct connection *c, const char *line)
{
	char method[16], target[256], version[16];
	int head_only;
	size_t path_length;

	if (sscanf(line, "%15[^ ] %255[^ ] %15[^ \r\n]", method, target,
		   version) != 3 || strncmp(version, "HTTP/1.", 7) != 0) {
		respond_error(c, "400 Bad Request", "", "bad request\n", 0);
		return;
	}
	head_only = strcmp(method, "HEAD") == 0;
	path_length = strcspn(target, "?#");
	if (path_length != strlen("/metrics") ||
	    strncmp(target, "/metrics", path_length) != 0) {
		respond_error(c, "404 Not Found", "",
			      "not found: the metrics are at /metrics\n", head_only);
		return;
	}
	if (!head_only && strcmp(method, "GET") != 0) {
		respond_error(c, "405 Method Not Allowed", "Allow: GET, HEAD\r\n",
			      "method not allowed: GET /metrics\n", 0);
		return;
	}
	respond_metrics(c, head_only);
}

/* Reads until the request's headers are all in; their content is not
 * needed, only the request line. */
static void
read_request(struct connection *c)
{
	ssize_t n = recv(c->fd, c->request + c->request_length,
			 sizeof(c->request) - 1 - c->request_length, 0);

	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0) {
		connection_close(c);
		return;
	}
	c->request_length += (size_t)n;
	c->request[c->request_length] = '\0';
	if (strlen(c->request) != c->request_length)
		respond_error(c, "400 Bad Request", "", "bad request\n", 0);
	else if (strstr(c->request, "\r\n\r\n") || strstr(c->request, "\n\n"))
		answer_request(c, c->request);
	else if (c->request_length == sizeof(c->request) - 1)
		respond_error(c, "431 Request Header Fields Too Large", "",
			      "request too large\n", 0);
}

static void
on_connection(struct ev_loop *loop, ev_io *io, int revents)
{
	struct connection *c = io->data;

	(void)loop;
	(void)revents;
	if (c->state == READING)
		read_request(c);
	else if (c->state == WRITING)
		send_response(c);
	else
		drain(c);
}

static void
on_connection_timeout(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct connection *c = timer->data;

	(void)loop;
	(void)revents;
	if (c->state == LINGERING) {
		connection_close(c);
		return;
	}
	log_debug("metrics: closed a connection that %s",
		  c->state == READING ? "sent no whole request within 5 s" :
		  "took nothing of its response for 10 s");
	if (c->state == WRITING)
		connection_abort(c);
	else
		connection_close(c);
}

/* At the cap: the oldest still sending its request (or done with its
 * response) makes room, or else the newcomer is not served. */
static int
make_room(void)
{
	for (struct connection *c = oldest; c; c = c->next)
		if (c->state != WRITING) {
			log_debug("metrics: %d connections open; closing the "
				  "oldest not being sent a response",
				  connection_count);
			connection_close(c);
			return 0;
		}
	return -1;
}

static void
connection_open(int fd)
{
	struct connection *c;

	if (connection_count >= METRICS_MAX_CONNECTIONS && make_room() != 0) {
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &(int){ METRICS_SEND_BUFFER },
		   sizeof(int));
	c->fd = fd;
	ev_io_init(&c->io, on_connection, fd, EV_READ);
	ev_set_priority(&c->io, EV_MINPRI);
	c->io.data = c;
	ev_timer_init(&c->timer, on_connection_timeout, METRICS_REQUEST_TIMEOUT, 0.);
	ev_set_priority(&c->timer, EV_MINPRI);
	c->timer.data = c;
	c->prev = newest;
	if (newest)
		newest->next = c;
	else
		oldest = c;
	newest = c;
	connection_count++;
	ev_io_start(metrics_loop, &c->io);
	ev_timer_start(metrics_loop, &c->timer);
}

/* ------------------------------------------------------------ listener */

static void
on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
	(void)revents;
	for (int i = 0; i < METRICS_MAX_CONNECTIONS; i++) {
		int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd >= 0) {
			connection_open(fd);
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
		    errno == ECONNABORTED)
			return;
		/* Out of descriptors: the scraper waits in the backlog. */
		log_debug("metrics: cannot accept: %s", strerror(errno));
		ev_io_stop(loop, io);
		ev_timer_set(&retry_timer, METRICS_ACCEPT_RETRY, 0.);
		ev_timer_start(loop, &retry_timer);
		return;
	}
}

static int
open_listener(const struct endpoint *endpoint)
{
	int family = endpoint->addr.ss_family, on = 1;
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	if (bind(fd, (const struct sockaddr *)&endpoint->addr,
		 endpoint->addr_len) != 0 || listen(fd, METRICS_BACKLOG) != 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static void
listen_try(void)
{
	unsigned long failures;

	if (wanted.addr_len == 0 || listen_fd >= 0)
		return;
	listen_fd = open_listener(&wanted);
	if (listen_fd < 0) {
		if (log_streak_fail(&bind_streak))
			log_error("cannot listen for metrics on %s: %s; trying "
				  "again every %.0f s", wanted.text,
				  strerror(errno), METRICS_RETRY);
		ev_timer_set(&retry_timer, METRICS_RETRY, 0.);
		ev_timer_start(metrics_loop, &retry_timer);
		return;
	}
	failures = log_streak_ok(&bind_streak);
	log_info("serving metrics on http://%s/metrics%s", wanted.text,
		 failures ? " (the listener is bound at last)" : "");
	if (!endpoint_is_loopback(&wanted))
		log_warning("metrics_listen %s is not a loopback address: every "
			    "host that can reach it can read the metrics",
			    wanted.text);
	ev_io_set(&accept_io, listen_fd, EV_READ);
	ev_io_start(metrics_loop, &accept_io);
}

static void
on_retry(struct ev_loop *loop, ev_timer *timer, int revents)
{
	(void)timer;
	(void)revents;
	if (listen_fd >= 0)
		ev_io_start(loop, &accept_io);
	else
		listen_try();
}

/* Scrapes under way finish on their own connections. */
static void
listener_close(void)
{
	ev_timer_stop(metrics_loop, &retry_timer);
	if (listen_fd < 0)
		return;
	ev_io_stop(metrics_loop, &accept_io);
	close(listen_fd);
	listen_fd = -1;
	log_info("no longer serving metrics on http://%s/metrics", wanted.text);
}

static int
same_endpoint(const struct endpoint *a, const struct endpoint *b)
{
	return a->addr_len == b->addr_len &&
	    memcmp(&a->addr, &b->addr, a->addr_len) == 0;
}

void
metrics_start(struct ev_loop *loop, const struct config *config)
{
	metrics_loop = loop;
	ev_init(&accept_io, on_accept);
	ev_set_priority(&accept_io, EV_MINPRI);
	ev_init(&retry_timer, on_retry);
	wanted = config->metrics_listen;
	listen_try();
}

/* A new endpoint is bound after the old one is closed: the two may
 * share a port (a wildcard and one address). */
void
metrics_reconfigure(const struct config *config)
{
	if (same_endpoint(&wanted, &config->metrics_listen))
		return;
	listener_close();
	memset(&bind_streak, 0, sizeof(bind_streak));
	wanted = config->metrics_listen;
	listen_try();
}

void
metrics_stop(void)
{
	while (oldest) {
		if (oldest->state == WRITING)
			connection_abort(oldest);
		else
			connection_close(oldest);
	}
	listener_close();
	wanted.addr_len = 0;
}
