/*
 * upstream.c - talking to the real resolvers through c-ares, driven from
 * hard's libev loop: forwarding the queries hard does not answer, and
 * resolving candidate host names.  It owns the health of each upstream
 * nameserver.
 *
 * hard, not c-ares, decides which nameserver a query goes to.  Each
 * nameserver has c-ares channels of its own (one over UDP, one over TCP)
 * that know only that server and try it once; a forwarded query is sent to
 * the first nameserver that answers, and when it stays silent for
 * resolver_timeout, to the next, while the earlier try may still answer.
 * The client gets the first reply, or SERVFAIL once resolver_total_timeout
 * has passed, however many nameservers there are.
 *
 * A nameserver that times out (or refuses the connection) is marked down
 * and tried after the others, so a dead first nameserver costs one
 * timeout, not one per query.  Once a second, the next query is also sent
 * to each down nameserver, as a probe that the client does not wait for;
 * any reply marks the server up again.
 *
 * RFC 5452: every query leaves with a random ID of hard's own (c-ares 1.18
 * keeps the ID it is given) and the reply is matched on ID and question by
 * c-ares before the client's ID is put back.  A channel opens a new socket,
 * so a new source port, whenever it has no query in flight, and is retired
 * after UPSTREAM_QUERIES_PER_CHANNEL queries, so even a busy channel moves
 * to a new port at least that often.  A retired channel is destroyed once
 * its last query has finished: c-ares cannot drop a channel with queries
 * in flight.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <ares.h>
#include <arpa/nameser.h>

#include "har.h"

/* Queries a channel sends before a new one (a new source port) replaces
 * it: creating a channel costs about 25 microseconds, under a
 * microsecond a query when spread over this many. */
#define UPSTREAM_QUERIES_PER_CHANNEL 32
/* How often a down nameserver gets a query to see if it is back. */
#define UPSTREAM_PROBE_INTERVAL 1.0
/* hard's own limit on the nameservers it tracks per query. */
#define UPSTREAM_MAX_SERVERS 32
/* Forwarded queries held at once (each about 1 KB with c-ares's copy);
 * beyond it a client gets SERVFAIL at once, so a flood against a silent
 * upstream cannot grow memory without bound. */
#define UPSTREAM_MAX_FORWARDS 4096
/* The weight of a new reply time in a nameserver's smoothed RTT, as
 * TCP's (RFC 6298). */
#define UPSTREAM_RTT_WEIGHT 0.125

struct socket_watch {
	ev_io io;
	struct upstream_channel *channel;
	struct socket_watch *next;
};

struct upstream_server {
	struct endpoint endpoint;
	int up;			/* 0 from a timeout until it answers again */
	double probe_at;	/* when a down server gets its next probe */
	int pending;		/* tries in flight */
	struct upstream_channel *channels[2];	/* [0] UDP, [1] TCP */
	struct upstream_server *next_retired;
	/* For monitoring (upstream_get_counters); kept across reloads. */
	uint64_t queries;
	uint64_t replies[16];	/* by rcode */
	uint64_t timeouts;
	uint64_t errors;
	double srtt;		/* NAN until the first reply */
};

struct upstream_channel {
	ares_channel ares;
	struct upstream_server *server;
	int pending;		/* our queries in flight on this channel */
	int sent;
	ev_timer timer;
	struct socket_watch *watches;
	struct upstream_channel *next_retired;
};

/* One query from a client (or a candidate lookup) on its way upstream. */
struct forward {
	upstream_reply_fn *done;	/* NULL once the client has its reply */
	void *context;
	int over_tcp;
	int in_flight;		/* tries sent and not yet called back */
	int holds;		/* functions up the stack using it: not freed */
	unsigned generation;	/* of the server list `tried` refers to */
	uint32_t tried;		/* bit i: servers[i] has had this query */
	struct upstream_server *last_tried;
	double deadline;
	ev_timer timer;		/* the next try, or the deadline */
	uint16_t client_id;
	size_t query_len;
	uint8_t query[];
};

/* One send of a forward to one nameserver. */
struct try {
	struct forward *forward;
	struct upstream_channel *channel;
	double sent;		/* monotonic seconds, for the server's RTT */
};

struct lookup {
	upstream_addresses_fn *done;
	void *context;
	int family;
};

static struct ev_loop *upstream_loop;
static struct upstream_server *servers[UPSTREAM_MAX_SERVERS];
static int server_count;
static unsigned server_generation;
static double try_timeout;	/* resolver_timeout */
static double total_timeout;	/* resolver_total_timeout */
static struct upstream_channel *retired_channels;
static struct upstream_server *retired_servers;
static int callback_depth;	/* inside ares_process_fd: nothing is freed */
static int forward_count;	/* allocated, until their last try ends */
static struct log_streak overload_streak;
static struct log_streak upstream_streak;
static uint8_t relay_buffer[DNS_MAX_UDP];

/* ----------------------------------------------------------- IDs */

/* Query IDs from the kernel's random source, fetched in batches. */
static uint16_t
random_id(void)
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

/* ------------------------------------------------------- channels */

static void
channel_update_timer(struct upstream_channel *channel)
{
	struct timeval wait, *next;

	ev_timer_stop(upstream_loop, &channel->timer);
	next = ares_timeout(channel->ares, NULL, &wait);
	if (!next)
		return;
	ev_timer_set(&channel->timer, (double)next->tv_sec +
		     (double)next->tv_usec / 1e6, 0);
	ev_timer_start(upstream_loop, &channel->timer);
}

static void
channel_destroy(struct upstream_channel *channel)
{
	ev_timer_stop(upstream_loop, &channel->timer);
	ares_destroy(channel->ares);	/* closes sockets: watches go */
	while (channel->watches) {
		struct socket_watch *watch = channel->watches;

		channel->watches = watch->next;
		ev_io_stop(upstream_loop, &watch->io);
		free(watch);
	}
	free(channel);
}

static void
channel_retire(struct upstream_channel *channel)
{
	channel->next_retired = retired_channels;
	retired_channels = channel;
}

/*
 * Retired channels and servers go once nothing of ours is left in them,
 * and never from inside a c-ares callback: the channel calling back may
 * be one of them.
 */
static void
reap_retired(void)
{
	struct upstream_channel **link = &retired_channels;
	struct upstream_server **server_link = &retired_servers;

	if (callback_depth > 0)
		return;
	while (*link) {
		struct upstream_channel *channel = *link;

		if (channel->pending > 0) {
			link = &channel->next_retired;
			continue;
		}
		*link = channel->next_retired;
		channel_destroy(channel);
	}
	while (*server_link) {
		struct upstream_server *server = *server_link;

		if (server->pending > 0) {
			server_link = &server->next_retired;
			continue;
		}
		*server_link = server->next_retired;
		free(server);
	}
}

static void
channel_process(struct upstream_channel *channel, ares_socket_t readable,
		ares_socket_t writable)
{
	callback_depth++;
	ares_process_fd(channel->ares, readable, writable);
	callback_depth--;
	channel_update_timer(channel);
	reap_retired();
}

static void
channel_io(struct ev_loop *loop, ev_io *io, int revents)
{
	struct socket_watch *watch = io->data;
	int fd = io->fd;

	(void)loop;
	channel_process(watch->channel,
			(revents & EV_READ) ? fd : ARES_SOCKET_BAD,
			(revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
}

static void
channel_timeout(struct ev_loop *loop, ev_timer *timer, int revents)
{
	(void)loop;
	(void)revents;
	channel_process(timer->data, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
}

/* c-ares says which of its sockets want watching, and for what. */
static void
channel_socket_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct upstream_channel *channel = data;
	struct socket_watch **link = &channel->watches, *watch;

	while (*link && (*link)->io.fd != fd)
		link = &(*link)->next;
	watch = *link;
	if (!readable && !writable) {
		if (watch) {
			ev_io_stop(upstream_loop, &watch->io);
			*link = watch->next;
			free(watch);
		}
		return;
	}
	if (!watch) {
		watch = calloc(1, sizeof(*watch));
		if (!watch) {
			log_error("out of memory watching an upstream socket");
			return;
		}
		watch->channel = channel;
		watch->next = channel->watches;
		channel->watches = watch;
		ev_io_init(&watch->io, channel_io, fd, 0);
		watch->io.data = watch;
	}
	ev_io_stop(upstream_loop, &watch->io);
	ev_io_set(&watch->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
	ev_io_start(upstream_loop, &watch->io);
}

/*
 * A channel that knows one server and tries it once; hard moves on to the
 * next server itself.  c-ares's own timeout is the whole budget, so a try
 * that hard has stopped waiting for can still be answered late.  Every
 * option c-ares would otherwise read from /etc/resolv.conf is given, so
 * making a channel touches no file.
 */
static struct upstream_channel *
channel_create(struct upstream_server *server, int over_tcp)
{
	struct upstream_channel *channel = calloc(1, sizeof(*channel));
	struct ares_options options;
	struct in_addr placeholder = { 0 };
	int status;

	if (!channel) {
		log_error("out of memory creating an upstream channel");
		return NULL;
	}
	memset(&options, 0, sizeof(options));
	/* Relay the upstream's SERVFAIL or REFUSED as it is, rather than
	 * turning it into a try of the next server and our own SERVFAIL.
	 * No STAYOPEN: an idle channel closes its socket, and its next
	 * query leaves from a new port. */
	options.flags = ARES_FLAG_NOCHECKRESP | (over_tcp ? ARES_FLAG_USEVC : 0);
	options.timeout = (int)(total_timeout * 1000);
	if (options.timeout < 1)
		options.timeout = 1;
	options.tries = 1;
	options.ndots = 1;
	options.lookups = "b";
	options.servers = &placeholder;	/* replaced just below */
	options.nservers = 1;
	options.sock_state_cb = channel_socket_state;
	options.sock_state_cb_data = channel;
	status = ares_init_options(&channel->ares, &options,
				   ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS |
				   ARES_OPT_TRIES | ARES_OPT_NDOTS |
				   ARES_OPT_LOOKUPS | ARES_OPT_DOMAINS |
				   ARES_OPT_SORTLIST | ARES_OPT_SERVERS |
				   ARES_OPT_SOCK_STATE_CB);
	if (status == ARES_SUCCESS)
		status = ares_set_servers_ports_csv(channel->ares,
						    server->endpoint.text);
	if (status != ARES_SUCCESS) {
		log_error("cannot set up a channel to nameserver %s: %s",
			  server->endpoint.text, ares_strerror(status));
		if (channel->ares)
			ares_destroy(channel->ares);
		free(channel);
		return NULL;
	}
	channel->server = server;
	ev_timer_init(&channel->timer, channel_timeout, 0, 0);
	channel->timer.data = channel;
	return channel;
}

/* The channel for the next query to server, a new one when it is used up. */
static struct upstream_channel *
channel_for(struct upstream_server *server, int over_tcp)
{
	struct upstream_channel **slot = &server->channels[over_tcp ? 1 : 0];

	if (*slot && (*slot)->sent >= UPSTREAM_QUERIES_PER_CHANNEL) {
		channel_retire(*slot);
		*slot = NULL;
	}
	if (!*slot)
		*slot = channel_create(server, over_tcp);
	return *slot;
}

static void
server_retire(struct upstream_server *server)
{
	for (int i = 0; i < 2; i++) {
		if (server->channels[i])
			channel_retire(server->channels[i]);
		server->channels[i] = NULL;
	}
	server->next_retired = retired_servers;
	retired_servers = server;
}

/* ------------------------------------------------- server health */

static void
server_mark_up(struct upstream_server *server)
{
	if (server->up)
		return;
	server->up = 1;
	log_info("nameserver %s answering again", server->endpoint.text);
}

static void
server_mark_down(struct upstream_server *server, const char *why)
{
	if (!server->up)
		return;
	server->up = 0;
	server->probe_at = ev_now(upstream_loop) + UPSTREAM_PROBE_INTERVAL;
	log_warning("nameserver %s %s; asking the other nameservers first "
		    "until it answers again", server->endpoint.text, why);
}

/* A try's end, in the server's counters: plain increments and one clock read. */
static void
server_count_result(struct upstream_server *server, int status,
		    const unsigned char *answer, int answer_len, double sent)
{
	double rtt;

	if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED)
		return;
	if (status == ARES_ETIMEOUT) {
		server->timeouts++;
		return;
	}
	if (status != ARES_SUCCESS || !answer || answer_len < 12) {
		server->errors++;
		return;
	}
	server->replies[answer[3] & 0x0f]++;
	rtt = monotonic_now() - sent;
	server->srtt = isnan(server->srtt) ? rtt :
	    server->srtt + UPSTREAM_RTT_WEIGHT * (rtt - server->srtt);
}

/*
 * The next server a forward should try: the first up server it has not
 * tried, else the first down one.  When every server has had it and
 * new_round is set (a try timed out, it was not refused), the round
 * starts again: a lost datagram is sent again, as a stub resolver would.
 * -1 when there is none.
 */
static int
next_server(struct forward *forward, int new_round)
{
	int fallback = -1;

	/* A reload changed the list: start afresh on the new one (a server
	 * that stayed may be asked twice, which does no harm). */
	if (forward->generation != server_generation) {
		forward->generation = server_generation;
		forward->tried = 0;
		forward->last_tried = NULL;
	}
	for (int i = 0; i < server_count; i++) {
		if (forward->tried & (1u << i))
			continue;
		if (servers[i]->up)
			return i;
		if (fallback < 0)
			fallback = i;
	}
	if (fallback < 0 && new_round && server_count > 0) {
		forward->tried = 0;
		return next_server(forward, 0);
	}
	return fallback;
}

/* ------------------------------------------------------ forwarding */

static void forward_send(struct forward *forward, int index, int probe);

static void forward_finish(struct forward *forward, const uint8_t *reply,
			   size_t reply_len);

/*
 * A try can end inside ares_send (a socket that cannot be opened), so
 * sending, a try's end and a timeout can nest: each holds the forward
 * while it works, and the last release frees it.  With no try left in
 * flight the client can have no reply but SERVFAIL.
 */
static void
forward_hold(struct forward *forward)
{
	forward->holds++;
}

static void
forward_release(struct forward *forward)
{
	if (--forward->holds > 0)
		return;
	if (forward->in_flight == 0 && forward->done)
		forward_finish(forward, NULL, 0);
	if (forward->done || forward->in_flight > 0)
		return;
	ev_timer_stop(upstream_loop, &forward->timer);
	free(forward);
	forward_count--;
}

static void
note_upstream_result(int ok)
{
	unsigned long failures;

	if (ok) {
		failures = log_streak_ok(&upstream_streak);
		if (failures)
			log_info("upstream answering again after %lu queries "
				 "answered SERVFAIL", failures);
		return;
	}
	if (log_streak_fail(&upstream_streak))
		log_warning("no nameserver answered within %.1f s; answering "
			    "SERVFAIL until one does", total_timeout);
}

/* The client's reply: the upstream's (with the client's ID) or, for NULL, failure. */
static void
forward_finish(struct forward *forward, const uint8_t *reply, size_t reply_len)
{
	upstream_reply_fn *done = forward->done;

	if (!done)
		return;
	forward->done = NULL;
	ev_timer_stop(upstream_loop, &forward->timer);
	note_upstream_result(reply != NULL);
	if (!reply || reply_len > sizeof(relay_buffer)) {
		done(forward->context, NULL, 0);
		return;
	}
	memcpy(relay_buffer, reply, reply_len);
	relay_buffer[0] = (uint8_t)(forward->client_id >> 8);
	relay_buffer[1] = (uint8_t)forward->client_id;
	done(forward->context, relay_buffer, reply_len);
}

static void
forward_arm(struct forward *forward, double wait)
{
	double left = forward->deadline - ev_now(upstream_loop);

	if (wait > left)
		wait = left;
	if (wait < 0)
		wait = 0;
	ev_timer_stop(upstream_loop, &forward->timer);
	ev_timer_set(&forward->timer, wait, 0);
	ev_timer_start(upstream_loop, &forward->timer);
}

/* Moves on to the next server, or waits out the budget when none is left. */
static void
forward_try_next(struct forward *forward, int new_round)
{
	int index = next_server(forward, new_round);

	if (index >= 0) {
		forward_send(forward, index, 0);
		return;
	}
	if (forward->in_flight == 0) {
		forward_finish(forward, NULL, 0);
		return;
	}
	forward_arm(forward, HUGE_VAL);	/* a late reply may still come */
}

static void
forward_timeout(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct forward *forward = timer->data;

	(void)loop;
	(void)revents;
	forward_hold(forward);
	if (ev_now(upstream_loop) >= forward->deadline - 0.001) {
		forward_finish(forward, NULL, 0);
	} else {
		/* After a reload last_tried may be gone: leave it be. */
		if (forward->last_tried &&
		    forward->generation == server_generation)
			server_mark_down(forward->last_tried, "did not answer in time");
		forward_try_next(forward, 1);
	}
	forward_release(forward);
}

static void
try_done(void *arg, int status, int timeouts, unsigned char *answer,
	 int answer_len)
{
	struct try *try = arg;
	struct forward *forward = try->forward;
	struct upstream_server *server = try->channel->server;
	double sent = try->sent;
	double waited = monotonic_now() - sent;

	(void)timeouts;
	forward_hold(forward);
	try->channel->pending--;
	server->pending--;
	forward->in_flight--;
	free(try);
	server_count_result(server, status, answer, answer_len, sent);
	if (status == ARES_SUCCESS && answer && answer_len >= 12) {
		/* A reply later than resolver_timeout is used, but a server
		 * that is that slow stays behind the others. */
		if (waited <= try_timeout)
			server_mark_up(server);
		forward_finish(forward, answer, (size_t)answer_len);
	} else if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
		/* shutting down: released below, SERVFAIL once none is left */
	} else {
		/* Refused or broken at once: no need to wait out the try. */
		if (status != ARES_ETIMEOUT)
			server_mark_down(server, ares_strerror(status));
		if (forward->done && (server == forward->last_tried ||
				      forward->in_flight == 0))
			forward_try_next(forward, 0);
	}
	forward_release(forward);
}

/*
 * Sends the forward to servers[index]; a server that cannot be asked is
 * skipped at once.  A probe of a down server runs beside the real tries:
 * the client's wait does not depend on it.
 */
static void
forward_send(struct forward *forward, int index, int probe)
{
	struct upstream_server *server = servers[index];
	struct upstream_channel *channel = channel_for(server, forward->over_tcp);
	struct try *try = channel ? malloc(sizeof(*try)) : NULL;
	uint16_t id = random_id();

	forward->tried |= 1u << index;
	if (!try) {
		if (channel)
			log_error("out of memory forwarding a query");
		if (!probe)
			forward_try_next(forward, 0);
		return;
	}
	try->forward = forward;
	try->channel = channel;
	try->sent = monotonic_now();
	server->queries++;
	forward->query[0] = (uint8_t)(id >> 8);
	forward->query[1] = (uint8_t)id;
	forward->in_flight++;
	channel->pending++;
	channel->sent++;
	server->pending++;
	if (!probe) {
		forward->last_tried = server;
		forward_arm(forward, try_timeout);
	}
	/* c-ares keeps the ID it is given and matches the reply's ID and
	 * question before calling try_done, which may happen right here:
	 * nothing may be freed meanwhile. */
	forward_hold(forward);
	callback_depth++;
	ares_send(channel->ares, forward->query, (int)forward->query_len,
		  try_done, try);
	callback_depth--;
	channel_update_timer(channel);
	forward_release(forward);
}

/* While a first choice is up, each down server due a probe gets this
 * query too; whichever answers first answers the client. */
static void
forward_probe_down_servers(struct forward *forward)
{
	double now = ev_now(upstream_loop);

	for (int i = 0; i < server_count && forward->done; i++) {
		struct upstream_server *server = servers[i];

		if (server->up || server->probe_at > now ||
		    (forward->tried & (1u << i)))
			continue;
		server->probe_at = now + UPSTREAM_PROBE_INTERVAL;
		log_debug("probing nameserver %s", server->endpoint.text);
		forward_send(forward, i, 1);
	}
}

static struct forward *
forward_create(const uint8_t *query, size_t query_len, int over_tcp,
	       upstream_reply_fn *done, void *context)
{
	struct forward *forward = malloc(sizeof(*forward) + query_len);

	if (!forward)
		return NULL;
	forward_count++;
	memset(forward, 0, sizeof(*forward));
	forward->done = done;
	forward->context = context;
	forward->over_tcp = over_tcp;
	forward->generation = server_generation;
	forward->deadline = ev_now(upstream_loop) + total_timeout;
	forward->client_id = (uint16_t)(query[0] << 8 | query[1]);
	forward->query_len = query_len;
	memcpy(forward->query, query, query_len);
	ev_init(&forward->timer, forward_timeout);
	forward->timer.data = forward;
	return forward;
}

/* done may be called before this returns; it is called exactly once. */
static int
forward_start(const uint8_t *query, size_t query_len, int over_tcp,
	      upstream_reply_fn *done, void *context)
{
	struct forward *forward;
	int first;

	if (server_count == 0 || query_len < 12 || query_len > 65535)
		return -1;
	forward = forward_create(query, query_len, over_tcp, done, context);
	if (!forward) {
		log_error("out of memory forwarding a query");
		return -1;
	}
	forward_hold(forward);
	first = next_server(forward, 0);
	forward_send(forward, first, 0);
	if (servers[first]->up)
		forward_probe_down_servers(forward);
	forward_release(forward);
	reap_retired();
	return 0;
}

/*
 * Per nameserver, the current UDP channel (with a TCP socket for a
 * truncated reply) and TCP channel; beyond them, channels retired with
 * tries still in flight, one per UPSTREAM_QUERIES_PER_CHANNEL tries, each
 * with its UDP and perhaps a TCP socket.  A forward makes a try each
 * resolver_timeout until resolver_total_timeout, and may carry a probe.
 */
int
upstream_descriptors_needed(const struct config *config)
{
	double rounds = ceil(config->resolver_total_timeout /
			     config->resolver_timeout);
	int tries = (int)(rounds < 1 ? 1 : rounds > 64 ? 64 : rounds) + 1;

	return 3 * config->nameserver_count +
	    2 * UPSTREAM_MAX_FORWARDS * tries / UPSTREAM_QUERIES_PER_CHANNEL;
}

/* A client's query; candidate lookups do not count against the limit. */
int
upstream_forward(const uint8_t *query, size_t query_len, int over_tcp,
		 upstream_reply_fn *done, void *context)
{
	unsigned long refused;

	if (forward_count >= UPSTREAM_MAX_FORWARDS) {
		if (log_streak_fail(&overload_streak))
			log_warning("%d forwarded queries in flight; answering "
				    "SERVFAIL to more until some finish",
				    UPSTREAM_MAX_FORWARDS);
		return -1;
	}
	refused = log_streak_ok(&overload_streak);
	if (refused)
		log_info("forwarding again after %lu queries answered SERVFAIL "
			 "for too many in flight", refused);
	return forward_start(query, query_len, over_tcp, done, context);
}

/* ------------------------------------------------ set-up and reload */

static struct upstream_server *
find_server(struct upstream_server **list, int count, const char *text)
{
	for (int i = 0; i < count; i++)
		if (list[i] && strcmp(list[i]->endpoint.text, text) == 0)
			return list[i];
	return NULL;
}

/* The configured nameservers, each once, at most UPSTREAM_MAX_SERVERS. */
static int
distinct_nameservers(const struct config *config,
		     const struct endpoint **list)
{
	int count = 0;

	for (int i = 0; i < config->nameserver_count; i++) {
		const struct endpoint *endpoint = &config->nameservers[i];
		int seen = 0;

		for (int j = 0; j < count && !seen; j++)
			seen = strcmp(list[j]->text, endpoint->text) == 0;
		if (seen)
			continue;
		if (count == UPSTREAM_MAX_SERVERS) {
			log_warning("using only the first %d nameservers",
				    UPSTREAM_MAX_SERVERS);
			break;
		}
		list[count++] = endpoint;
	}
	return count;
}

/* Takes servers[i] out of the list to keep it, with fresh channels. */
static struct upstream_server *
take_server(const char *text)
{
	for (int i = 0; i < server_count; i++) {
		struct upstream_server *server = servers[i];

		if (!server || strcmp(server->endpoint.text, text) != 0)
			continue;
		servers[i] = NULL;
		for (int c = 0; c < 2; c++) {
			if (server->channels[c])
				channel_retire(server->channels[c]);
			server->channels[c] = NULL;
		}
		return server;
	}
	return NULL;
}

/*
 * Takes the configuration's nameservers.  A server that stays keeps its
 * health; every channel is made anew (the timeouts may have changed).
 * Nothing changes unless every new server could be made.
 */
static int
servers_configure(const struct config *config)
{
	const struct endpoint *wanted[UPSTREAM_MAX_SERVERS];
	struct upstream_server *fresh[UPSTREAM_MAX_SERVERS] = { 0 };
	int count = distinct_nameservers(config, wanted);

	for (int i = 0; i < count; i++) {
		if (find_server(servers, server_count, wanted[i]->text))
			continue;
		fresh[i] = calloc(1, sizeof(*fresh[i]));
		if (!fresh[i]) {
			log_error("out of memory for nameserver %s", wanted[i]->text);
			for (int j = 0; j < i; j++)
				free(fresh[j]);
			return -1;
		}
		fresh[i]->endpoint = *wanted[i];
		fresh[i]->up = 1;
		fresh[i]->srtt = NAN;
	}
	for (int i = 0; i < count; i++)
		if (!fresh[i])
			fresh[i] = take_server(wanted[i]->text);
	for (int i = 0; i < server_count; i++)
		if (servers[i])
			server_retire(servers[i]);
	memcpy(servers, fresh, sizeof(servers));
	server_count = count;
	server_generation++;
	try_timeout = config->resolver_timeout;
	total_timeout = config->resolver_total_timeout;
	return 0;
}

int
upstream_start(struct ev_loop *loop, const struct config *config)
{
	int status = ares_library_init(ARES_LIB_INIT_ALL);

	if (status != ARES_SUCCESS) {
		log_error("cannot initialise c-ares: %s", ares_strerror(status));
		return -1;
	}
	upstream_loop = loop;
	return servers_configure(config);
}

int
upstream_reconfigure(const struct config *config)
{
	int result = servers_configure(config);

	reap_retired();
	return result;
}

void
upstream_stop(void)
{
	/* Destroying a channel calls back every query still in flight
	 * (with ARES_EDESTRUCTION), so nothing of ours is left behind. */
	for (int i = 0; i < server_count; i++)
		server_retire(servers[i]);
	server_count = 0;
	server_generation++;
	while (retired_channels) {
		struct upstream_channel *channel = retired_channels;

		retired_channels = channel->next_retired;
		channel_destroy(channel);
	}
	reap_retired();
	ares_library_cleanup();
}

int
upstream_get_counters(struct upstream_counters *out, int max)
{
	int count = server_count < max ? server_count : max;

	for (int i = 0; i < count; i++) {
		const struct upstream_server *server = servers[i];

		memset(&out[i], 0, sizeof(out[i]));
		snprintf(out[i].nameserver, sizeof(out[i].nameserver), "%s",
			 server->endpoint.text);
		out[i].up = server->up;
		out[i].queries = server->queries;
		memcpy(out[i].replies, server->replies, sizeof(out[i].replies));
		out[i].timeouts = server->timeouts;
		out[i].errors = server->errors;
		out[i].srtt = server->srtt;
	}
	return count;
}

/* ------------------------------------------------ candidate lookups */

#define LOOKUP_MAX_ADDRESSES 64

/* The rcode of a reply as the c-ares status ares_query would give. */
static int
reply_status(const uint8_t *reply, size_t reply_len)
{
	if (!reply || reply_len < 12)
		return ARES_ECONNREFUSED;
	switch (reply[3] & 0x0f) {
	case ns_r_noerror: return ARES_SUCCESS;
	case ns_r_nxdomain: return ARES_ENOTFOUND;
	case ns_r_servfail: return ARES_ESERVFAIL;
	case ns_r_refused: return ARES_EREFUSED;
	default: return ARES_EBADRESP;
	}
}

static int
parse_addresses(const uint8_t *reply, size_t reply_len, int family,
		struct ip_address *ips, int *count, double *ttl)
{
	int status;

	if (family == AF_INET) {
		struct ares_addrttl found[LOOKUP_MAX_ADDRESSES];

		status = ares_parse_a_reply(reply, (int)reply_len, NULL, found, count);
		for (int i = 0; status == ARES_SUCCESS && i < *count; i++) {
			ips[i].family = AF_INET;
			memcpy(ips[i].bytes, &found[i].ipaddr, 4);
			*ttl = found[i].ttl < *ttl ? found[i].ttl : *ttl;
		}
		return status;
	}
	struct ares_addr6ttl found[LOOKUP_MAX_ADDRESSES];

	status = ares_parse_aaaa_reply(reply, (int)reply_len, NULL, found, count);
	for (int i = 0; status == ARES_SUCCESS && i < *count; i++) {
		ips[i].family = AF_INET6;
		memcpy(ips[i].bytes, &found[i].ip6addr, 16);
		*ttl = found[i].ttl < *ttl ? found[i].ttl : *ttl;
	}
	return status;
}

static void
lookup_done(void *context, uint8_t *reply, size_t reply_len)
{
	struct lookup *lookup = context;
	struct ip_address ips[LOOKUP_MAX_ADDRESSES];
	int count = LOOKUP_MAX_ADDRESSES;
	double ttl = 3600;
	int status = reply_status(reply, reply_len);

	if (status == ARES_SUCCESS)
		status = parse_addresses(reply, reply_len, lookup->family,
					 ips, &count, &ttl);
	if (status == ARES_ENODATA) {	/* the name has none of this family */
		status = ARES_SUCCESS;
		count = 0;
	}
	if (status != ARES_SUCCESS)
		count = 0;
	log_debug("lookup of a candidate host (%s): %s, %d addresses",
		  lookup->family == AF_INET ? "A" : "AAAA",
		  ares_strerror(status), count);
	lookup->done(lookup->context, status == ARES_SUCCESS, ips, count, ttl);
	free(lookup);
}

void
upstream_resolve(const char *host, int family, upstream_addresses_fn *done,
		 void *context)
{
	struct lookup *lookup = malloc(sizeof(*lookup));
	unsigned char *query = NULL;
	int query_len = 0;

	if (!lookup || ares_create_query(host, ns_c_in,
					 family == AF_INET ? ns_t_a : ns_t_aaaa,
					 0, 1, &query, &query_len, 0) != ARES_SUCCESS) {
		log_error("cannot make a query for %s", host);
		free(lookup);
		done(context, 0, NULL, 0, 0);
		return;
	}
	lookup->done = done;
	lookup->context = context;
	lookup->family = family;
	if (forward_start(query, (size_t)query_len, 0, lookup_done, lookup) != 0)
		lookup_done(lookup, NULL, 0);
	ares_free_string(query);
}
