/*
 * upstream_udp.c - the UDP sockets forwarded queries leave from: source
 * ports, query IDs, matching a reply to its try, and refusals.
 *
 * Each nameserver has sockets of its own, each connected to it, so the
 * kernel delivers only that server's datagrams and reports its ICMP
 * errors.  A try goes out from the nameserver's current socket with a
 * random ID (RFC 5452) that no other try on that socket has; a reply is
 * the try's when its ID and question match the try's (the name regardless
 * of case).  A socket opens for the first try after an idle spell, so a
 * quiet host sends each query from a new port, is replaced after
 * UPSTREAM_QUERIES_PER_SOCKET tries, so a busy one changes port at least
 * that often, and closes once no try is left in flight on it.  At most
 * UPSTREAM_UDP_SOCKETS_MAX are open at once, whatever the load and the
 * timeouts.
 *
 * Any reply up to 65,535 bytes is taken: the client's query goes out
 * as it came, OPT and its UDP size included, so the nameserver fits its
 * reply to the client.  A truncated reply is the try's reply too.
 *
 * An error on a socket (ICMP port unreachable: the server refuses) is
 * reported by the kernel to whichever call on that socket comes next, not
 * to the query it was for, and a host limits the ICMP errors it sends:
 * so every try in flight to that nameserver ends with it, at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "har.h"

/* Datagrams read from one socket per wake-up, so one busy nameserver
 * leaves the loop to the others now and then. */
#define UDP_READS_PER_WAKEUP 64

struct udp_socket {
	int fd;
	ev_io io;
	struct udp_link *link;	/* NULL once detached from it */
	int sent;		/* tries sent from it */
	int busy;		/* a function up the stack uses it: not closed */
	struct udp_try *tries;	/* in flight */
	struct udp_socket *next;	/* the link's */
};

static struct ev_loop *udp_loop;
static int open_sockets;
static struct log_streak socket_streak;
static uint8_t reply_buffer[65536];

/* ------------------------------------------------------------- IDs */

/* Query IDs from the kernel's random source, fetched in batches. */
uint16_t
upstream_random_id(void)
{
	static uint16_t pool[256];
	static size_t left;

	if (left == 0) {
		size_t got = 0;

		while (got < sizeof(pool)) {
			ssize_t n = getrandom((uint8_t *)pool + got,
					      sizeof(pool) - got, 0);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				/* Never happens on Linux >= 3.17 with a
				 * seeded pool; fail closed, not predictable. */
				log_error("getrandom: %s", strerror(errno));
				abort();
			}
			got += (size_t)n;
		}
		left = sizeof(pool) / sizeof(pool[0]);
	}
	return pool[--left];
}

static int
id_in_use(const struct udp_socket *sock, uint16_t id)
{
	for (const struct udp_try *try = sock->tries; try; try = try->next)
		if (try->id == id)
			return 1;
	return 0;
}

/* ------------------------------------------------------ sockets */

static void socket_readable(struct ev_loop *loop, ev_io *io, int revents);

static void
socket_detach(struct udp_socket *sock)
{
	struct udp_link *link = sock->link;
	struct udp_socket **at;

	if (!link)
		return;
	for (at = &link->sockets; *at != sock; at = &(*at)->next)
		;
	*at = sock->next;
	if (link->current == sock)
		link->current = NULL;
	sock->link = NULL;
}

static void
socket_close(struct udp_socket *sock)
{
	socket_detach(sock);
	ev_io_stop(udp_loop, &sock->io);
	close(sock->fd);
	free(sock);
	open_sockets--;
}

/* A socket goes once no try is left on it and nothing up the stack uses it. */
static void
socket_release(struct udp_socket *sock)
{
	if (!sock->tries && sock->busy == 0)
		socket_close(sock);
}

static void
try_unlink(struct udp_try *try)
{
	struct udp_socket *sock = try->sock;

	if (try->prev)
		try->prev->next = try->next;
	else
		sock->tries = try->next;
	if (try->next)
		try->next->prev = try->prev;
	try->sock = NULL;
	try->prev = try->next = NULL;
}

/* Hard's own shortage (the query did not leave), or the nameserver's. */
static int
send_error(int error)
{
	switch (error) {
	case EAGAIN:
	case ENOBUFS:
	case ENOMEM:
	case EINTR:
		return -error;
	default:
		return error;
	}
}

/* A new socket connected to the link's nameserver; NULL with *error set. */
static struct udp_socket *
socket_open(struct udp_link *link, int *error)
{
	const struct endpoint *endpoint = link->endpoint;
	struct udp_socket *sock = calloc(1, sizeof(*sock));
	int fd = sock ? socket(endpoint->addr.ss_family,
				  SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) : -1;
	unsigned long failures;

	if (fd < 0) {
		*error = -(sock ? errno : ENOMEM);
		if (log_streak_fail(&socket_streak))
			log_error("cannot open a socket to a nameserver: %s; "
				  "those queries get SERVFAIL", strerror(-*error));
		free(sock);
		return NULL;
	}
	failures = log_streak_ok(&socket_streak);
	if (failures)
		log_info("sockets to the nameservers open again after %lu failures",
			 failures);
	if (connect(fd, (const struct sockaddr *)&endpoint->addr,
		    endpoint->addr_len) != 0) {
		/* No route, a broadcast address: the server's lot, not
		 * hard's, but for a shortage of ports. */
		*error = send_error(errno);
		close(fd);
		free(sock);
		return NULL;
	}
	sock->fd = fd;
	sock->link = link;
	sock->next = link->sockets;
	link->sockets = sock;
	ev_io_init(&sock->io, socket_readable, fd, EV_READ);
	sock->io.data = sock;
	ev_io_start(udp_loop, &sock->io);
	open_sockets++;
	return sock;
}

/* The socket for the link's next try, a new one when the current is used up. */
static struct udp_socket *
socket_for(struct udp_link *link, int *error)
{
	struct udp_socket *current = link->current;

	if (current && current->sent >= UPSTREAM_QUERIES_PER_SOCKET &&
	    open_sockets < UPSTREAM_UDP_SOCKETS_MAX)
		current = link->current = NULL;	/* stays open for its tries */
	if (!current && link->sockets && open_sockets >= UPSTREAM_UDP_SOCKETS_MAX)
		current = link->current = link->sockets;
	if (!current)
		current = link->current = socket_open(link, error);
	return current;
}

/* ------------------------------------------------- sending, failing */

static void link_refused(struct ev_loop *loop, ev_timer *timer, int revents);

void
udp_start(struct ev_loop *loop)
{
	udp_loop = loop;
}

void
udp_link_init(struct udp_link *link, const struct endpoint *endpoint)
{
	memset(link, 0, sizeof(*link));
	link->endpoint = endpoint;
	ev_timer_init(&link->refuse_event, link_refused, 0, 0);
	link->refuse_event.data = link;
}

/*
 * Every try in flight to the link's nameserver ends with error.  Its
 * sockets are taken off the link first, so a try that a callback sends
 * meanwhile leaves from a new one.
 */
static void
link_fail(struct udp_link *link, int error)
{
	struct udp_socket *failing = link->sockets;

	link->refused = 0;	/* a refuse_event fed meanwhile has no more to do */
	link->sockets = link->current = NULL;
	for (struct udp_socket *s = failing; s; s = s->next) {
		s->link = NULL;
		s->busy++;
	}
	for (struct udp_socket *s = failing; s; s = s->next) {
		while (s->tries) {
			struct udp_try *try = s->tries;

			try_unlink(try);
			upstream_udp_done(try, error, NULL, 0);
		}
	}
	while (failing) {
		struct udp_socket *s = failing;

		failing = s->next;
		s->busy--;
		socket_release(s);
	}
}

static void
link_refused(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct udp_link *link = timer->data;

	(void)loop;
	(void)revents;
	if (link->refused)
		link_fail(link, link->refused);
}

int
udp_send(struct udp_link *link, struct udp_try *try, uint8_t *query,
	 size_t query_len)
{
	int error = 0;
	struct udp_socket *sock = socket_for(link, &error);
	uint16_t id;

	if (!sock)
		return error;
	do
		id = upstream_random_id();
	while (id_in_use(sock, id));
	query[0] = (uint8_t)(id >> 8);
	query[1] = (uint8_t)id;
	if (send(sock->fd, query, query_len, 0) < 0) {
		error = send_error(errno);
		socket_release(sock);
		if (error > 0 && !link->refused) {
			/* The error another query earned: theirs too, as
			 * soon as this event's callback has returned (a
			 * timer could be 25 ms late: check.c batches them). */
			link->refused = error;
			ev_feed_event(udp_loop, &link->refuse_event, EV_TIMER);
		}
		return error;
	}
	sock->sent++;
	try->id = id;
	try->sock = sock;
	try->prev = NULL;
	try->next = sock->tries;
	if (sock->tries)
		sock->tries->prev = try;
	sock->tries = try;
	return 0;
}

void
udp_cancel(struct udp_try *try)
{
	struct udp_socket *sock = try->sock;

	if (!sock)
		return;
	try_unlink(try);
	socket_release(sock);
}

void
udp_link_cancel_all(struct udp_link *link)
{
	link_fail(link, ECANCELED);
}

void
udp_link_close(struct udp_link *link)
{
	ev_clear_pending(udp_loop, &link->refuse_event);
	while (link->sockets)	/* none with a try in flight: none at all */
		socket_close(link->sockets);
}

/* ------------------------------------------------------ receiving */

/* The reply's question is the try's: same labels (any case), type, class. */
static int
same_question(const struct udp_try *try, const uint8_t *reply, size_t len)
{
	const uint8_t *question = try->question;

	if (len < 12 + try->question_len || reply[4] != 0 || reply[5] != 1)
		return 0;
	reply += 12;
	for (size_t i = 0; i < try->question_len; i++) {
		uint8_t a = question[i], b = reply[i];

		if (a >= 'A' && a <= 'Z')
			a = (uint8_t)(a + 'a' - 'A');
		if (b >= 'A' && b <= 'Z')
			b = (uint8_t)(b + 'a' - 'A');
		if (a != b)
			return 0;
	}
	return 1;
}

/*
 * Folding case over the whole question also folds its length bytes and
 * type and class, which is harmless: a length byte is at most 63, below
 * 'A', and a type or class that differs only there is not one a server
 * would send back for ours.
 */
static struct udp_try *
find_try(struct udp_socket *sock, const uint8_t *reply, size_t len)
{
	uint16_t id;

	if (len < 12 || !(reply[2] & 0x80))	/* not a response */
		return NULL;
	id = (uint16_t)(reply[0] << 8 | reply[1]);
	for (struct udp_try *try = sock->tries; try; try = try->next)
		if (try->id == id && same_question(try, reply, len))
			return try;
	return NULL;
}

/* Hands a reply to its try; 0 when the socket is gone afterwards. */
static int
deliver(struct udp_socket *sock, const uint8_t *reply, size_t len)
{
	struct udp_try *try = find_try(sock, reply, len);

	if (!try)
		return 1;	/* late, duplicated or spoofed */
	try_unlink(try);
	sock->busy++;
	upstream_udp_done(try, 0, reply, len);
	sock->busy--;
	if (sock->tries || sock->busy)
		return 1;
	socket_close(sock);
	return 0;
}

static void
socket_readable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct udp_socket *sock = io->data;

	(void)loop;
	(void)revents;
	for (int i = 0; i < UDP_READS_PER_WAKEUP; i++) {
		ssize_t got = recv(sock->fd, reply_buffer, sizeof(reply_buffer), 0);

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (got < 0) {
			link_fail(sock->link, errno);
			return;
		}
		if (!deliver(sock, reply_buffer, (size_t)got))
			return;
	}
}
