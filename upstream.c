/*
 * upstream.c - talking to the real resolvers, driven from hard's libev
 * loop: forwarding the queries hard does not answer, and resolving
 * candidate host names.  It owns the health of each upstream nameserver.
 *
 * hard, not c-ares, decides which nameserver a query goes to and when.
 * Over UDP a try leaves from hard's own sockets (upstream_udp.c: ports,
 * IDs, matching replies); over TCP each nameserver has a c-ares channel
 * that knows only that server, tries it once and keeps one connection
 * while queries are in flight.
 *
 * A forwarded query goes to the first nameserver that is up, and when it
 * stays silent for resolver_timeout, to the next, while the earlier try
 * may still answer; once every server has had it, the round starts again
 * (a lost datagram is sent again).  It is sent UPSTREAM_TRIES times at
 * most, or once to each server when there are more, so a silent or slow
 * nameserver gets a small fixed number of queries per client query
 * whatever the timeouts.  The client gets the first reply, or SERVFAIL
 * once resolver_total_timeout has passed.
 *
 * A nameserver that refuses, or times out without answering any other
 * query meanwhile (that was a lost datagram), is marked down and tried
 * after the others, so a dead first nameserver costs one timeout, not one
 * per query.  A refusal ends at once every try in flight to that server:
 * each query moves on to the next server, or to SERVFAIL.  Once a second
 * the next query is also sent to each down nameserver, as a probe that the
 * client does not wait for; a reply within resolver_timeout marks it up.
 * While every nameserver is down a query waits resolver_timeout at most:
 * the probes go on, and the first timely reply ends that.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>
#include <arpa/nameser.h>

#include "har.h"

/* How long a UDP reply vouches for a nameserver that refuses TCP. */
#define UPSTREAM_UDP_ONLY_GRACE 60.0
/* How often a down nameserver gets a query to see if it is back. */
#define UPSTREAM_PROBE_INTERVAL 1.0
/* hard's own limit on the nameservers it tracks per query. */
#define UPSTREAM_MAX_SERVERS 32
/* Forwarded queries held at once (each about 1 KB with its tries);
 * beyond it a client gets SERVFAIL at once, so a flood against a silent
 * upstream cannot grow memory without bound. */
#define UPSTREAM_MAX_FORWARDS 4096
/* The weight of a new reply time in a nameserver's smoothed RTT, as
 * TCP's (RFC 6298). */
#define UPSTREAM_RTT_WEIGHT 0.125
/* The sends of a forwarded query, probes aside, when there are this many
 * nameservers or fewer; with more, one each. */
#define UPSTREAM_TRIES 3

struct socket_watch {
	ev_io io;
	struct upstream_channel *channel;
	struct socket_watch *next;
};

/* A c-ares channel to one nameserver, over TCP. */
struct upstream_channel {
	ares_channel ares;
	struct upstream_server *server;
	int pending;		/* our queries in flight on this channel */
	ev_timer timer;
	struct socket_watch *watches;
	struct upstream_channel *next_retired;
};

struct upstream_server {
	struct endpoint endpoint;
	int up;			/* 0 from a timeout until it answers again */
	double probe_at;	/* when a down server gets its next probe */
	double answered_at;	/* monotonic: its last reply in time */
	int pending;		/* tries in flight, UDP and TCP */
	struct udp_link udp;
	struct upstream_channel *tcp;	/* made for the first TCP try */
	struct upstream_server *next_retired;
	/* For monitoring (upstream_get_counters); kept across reloads. */
	uint64_t queries;
	uint64_t replies[DNS_RCODE_BUCKETS];
	uint64_t timeouts;
	uint64_t errors;
	double srtt;		/* NAN until the first reply */
};

/* How a try ended. */
enum try_end {
	TRY_REPLY,
	TRY_TIMEOUT,		/* no reply by the forward's deadline */
	TRY_REFUSED,		/* the server cannot be asked: marked down */
	TRY_FAILED,		/* hard could not send it */
	TRY_CANCELLED,		/* hard is stopping */
};

/* One query from a client (or a candidate lookup) on its way upstream. */
struct forward {
	upstream_reply_fn *done;	/* NULL once the client has its reply */
	void *context;
	int over_tcp;
	int in_flight;		/* tries sent and not yet ended */
	int holds;		/* functions up the stack using it: not freed */
	int tries;		/* sent, probes aside */
	struct try *flying;	/* the tries in flight */
	unsigned generation;	/* of the server list `tried` refers to */
	uint32_t tried;		/* bit i: servers[i] has had this query */
	struct upstream_server *last_tried;
	double last_sent;	/* monotonic: the send to last_tried */
	double deadline;
	ev_timer timer;		/* the next try, or the deadline */
	uint16_t client_id;
	size_t question_len;
	size_t query_len;
	uint8_t query[];
};

/* One send of a forward to one nameserver. */
struct try {
	struct forward *forward;
	struct upstream_server *server;
	struct upstream_channel *channel;	/* over TCP; NULL over UDP */
	struct udp_try udp;			/* over UDP */
	struct try *next;			/* the forward's in flight */
	double sent;		/* monotonic seconds, for the server's RTT */
};

static struct ev_loop *upstream_loop;
static struct upstream_server *servers[UPSTREAM_MAX_SERVERS];
static int server_count;
static unsigned server_generation;
static double try_timeout;	/* resolver_timeout */
static double total_timeout;	/* resolver_total_timeout */
static struct upstream_channel *retired_channels;
static struct upstream_server *retired_servers;
static int callback_depth;	/* in a try's end: nothing retired is freed */
static int forward_count;	/* allocated, until their last try ends */
static struct log_streak overload_streak;
static struct log_streak upstream_streak;
static uint8_t relay_buffer[DNS_MAX_UDP];

/* --------------------------------------------------- TCP channels */

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
		udp_link_close(&server->udp);
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
 * A TCP channel that knows one server and tries it once; hard moves on
 * to the next server itself.  c-ares's own timeout is the whole budget,
 * so a try that hard has stopped waiting for can still be answered late.
 * Every option c-ares would otherwise read from /etc/resolv.conf is
 * given, so making a channel touches no file.
 */
static struct upstream_channel *
channel_create(struct upstream_server *server)
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
	 * No STAYOPEN: the connection closes when no query is in flight. */
	options.flags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_USEVC;
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

static void
server_retire(struct upstream_server *server)
{
	if (server->tcp)
		channel_retire(server->tcp);
	server->tcp = NULL;
	server->next_retired = retired_servers;
	retired_servers = server;
}

/* ------------------------------------------------- server health */

static int
any_server_up(void)
{
	for (int i = 0; i < server_count; i++)
		if (servers[i]->up)
			return 1;
	return 0;
}

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
	log_warning("nameserver %s %s; %s until it answers again",
		    server->endpoint.text, why, server_count > 1 ?
		    "asking the other nameservers first" :
		    "marked down, and probed every second,");
}

/* A try's end, in the server's counters: plain increments. */
static void
server_count_result(struct upstream_server *server, enum try_end end,
		    const uint8_t *reply, size_t reply_len, double rtt)
{
	int rcode;

	switch (end) {
	case TRY_REPLY:
		rcode = dns_reply_rcode(reply, reply_len);
		server->replies[rcode < DNS_RCODE_BUCKETS ? rcode :
				DNS_RCODE_BUCKETS - 1]++;
		server->srtt = isnan(server->srtt) ? rtt :
		    server->srtt + UPSTREAM_RTT_WEIGHT * (rtt - server->srtt);
		break;
	case TRY_TIMEOUT:
		server->timeouts++;
		break;
	case TRY_REFUSED:
		server->errors++;
		break;
	case TRY_FAILED:
	case TRY_CANCELLED:
		break;
	}
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
 * A try can end inside its own send (a socket that cannot be opened), so
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
		log_warning("no nameserver answered a forwarded query (each "
			    "refused it, or stayed silent until its time was "
			    "up); answering SERVFAIL until one does");
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

static int
forward_has_udp_tries(const struct forward *forward)
{
	for (const struct try *try = forward->flying; try; try = try->next)
		if (!try->channel)
			return 1;
	return 0;
}

/*
 * The client's reply: the upstream's (with the client's ID) or, for NULL,
 * failure.  The tries still in flight wait until the deadline: a probe's
 * reply, or a late one, still says whether its server is up.
 */
static void
forward_finish(struct forward *forward, const uint8_t *reply, size_t reply_len)
{
	upstream_reply_fn *done = forward->done;

	if (!done)
		return;
	forward->done = NULL;
	ev_timer_stop(upstream_loop, &forward->timer);
	if (forward_has_udp_tries(forward))
		forward_arm(forward, HUGE_VAL);
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

static int
try_budget(void)
{
	return server_count > UPSTREAM_TRIES ? server_count : UPSTREAM_TRIES;
}

/*
 * Moves on to the next server.  With none left (or the budget spent) the
 * forward waits for a late reply until its deadline; after a refusal the
 * timeout of the try before it is still due.
 */
static void
forward_try_next(struct forward *forward, int new_round)
{
	int index = forward->tries < try_budget() ?
	    next_server(forward, new_round) : -1;

	if (index >= 0) {
		forward_send(forward, index, 0);
		return;
	}
	if (forward->in_flight == 0) {
		forward_finish(forward, NULL, 0);
		return;
	}
	if (new_round)
		forward_arm(forward, HUGE_VAL);
}

static void
try_unlink(struct try *try)
{
	struct forward *forward = try->forward;
	struct try **at = &forward->flying;

	while (*at != try)
		at = &(*at)->next;
	*at = try->next;
	forward->in_flight--;
	try->server->pending--;
	if (try->channel)
		try->channel->pending--;
}

/* A try is over: its reply goes to the client; a refusal moves on at once. */
static void
try_end(struct try *try, enum try_end end, const char *why,
	const uint8_t *reply, size_t reply_len)
{
	struct forward *forward = try->forward;
	struct upstream_server *server = try->server;
	double waited = monotonic_now() - try->sent;

	forward_hold(forward);
	try_unlink(try);
	free(try);
	server_count_result(server, end, reply, reply_len, waited);
	switch (end) {
	case TRY_REPLY:
		/* A reply later than resolver_timeout is used, but a server
		 * that is that slow stays behind the others. */
		if (waited <= try_timeout) {
			server->answered_at = monotonic_now();
			server_mark_up(server);
		}
		forward_finish(forward, reply, reply_len);
		break;
	case TRY_REFUSED:
		server_mark_down(server, why);
		/* fall through */
	case TRY_FAILED:
		if (forward->done && (server == forward->last_tried ||
				      forward->in_flight == 0))
			forward_try_next(forward, 0);
		break;
	case TRY_TIMEOUT:
	case TRY_CANCELLED:
		break;
	}
	forward_release(forward);
}

/* At the deadline the UDP tries end; TCP ones end with c-ares's timeout. */
static void
forward_expire(struct forward *forward)
{
	struct try *try = forward->flying, *next;

	for (; try; try = next) {
		next = try->next;
		if (try->channel)
			continue;
		udp_cancel(&try->udp);
		try_end(try, TRY_TIMEOUT, NULL, NULL, 0);
	}
	ev_timer_stop(upstream_loop, &forward->timer);
}

static void
forward_timeout(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct forward *forward = timer->data;

	(void)loop;
	(void)revents;
	forward_hold(forward);
	if (!forward->done ||
	    ev_now(upstream_loop) >= forward->deadline - 0.001) {
		forward_finish(forward, NULL, 0);
		forward_expire(forward);
	} else {
		struct upstream_server *silent = forward->last_tried;

		/* After a reload last_tried may be gone: leave it be.  One
		 * that answered other queries meanwhile lost a datagram: it
		 * is not down. */
		if (silent && forward->generation == server_generation &&
		    silent->answered_at < forward->last_sent)
			server_mark_down(silent, "did not answer in time");
		forward_try_next(forward, 1);
	}
	forward_release(forward);
}

void
upstream_udp_done(struct udp_try *udp, int error, const uint8_t *reply,
		  size_t reply_len)
{
	struct try *try = udp->owner;

	/* Nothing retired is freed meanwhile: the socket calling back may
	 * be the last of a server a reload dropped. */
	callback_depth++;
	if (error == 0)
		try_end(try, TRY_REPLY, NULL, reply, reply_len);
	else if (error == ECANCELED)
		try_end(try, TRY_CANCELLED, NULL, NULL, 0);
	else
		try_end(try, TRY_REFUSED, strerror(error), NULL, 0);
	callback_depth--;
}

/*
 * A nameserver that answered over UDP lately and refuses TCP serves UDP
 * only: a client's TCP query (after a truncated reply) fails, at once,
 * but the server is not down for the UDP queries it answers.
 */
static int
answers_udp_only(const struct upstream_server *server)
{
	return server->answered_at > 0 &&
	    monotonic_now() - server->answered_at < UPSTREAM_UDP_ONLY_GRACE;
}

static void
tcp_try_done(void *arg, int status, int timeouts, unsigned char *answer,
	     int answer_len)
{
	struct try *try = arg;

	(void)timeouts;
	if (status == ARES_SUCCESS && answer && answer_len >= 12)
		try_end(try, TRY_REPLY, NULL, answer, (size_t)answer_len);
	else if (status == ARES_ETIMEOUT)
		try_end(try, TRY_TIMEOUT, NULL, NULL, 0);
	else if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED)
		try_end(try, TRY_CANCELLED, NULL, NULL, 0);
	else if (status == ARES_ENOMEM)
		try_end(try, TRY_FAILED, NULL, NULL, 0);
	else if (answers_udp_only(try->server))
		try_end(try, TRY_FAILED, NULL, NULL, 0);
	else	/* refused, reset, a broken reply */
		try_end(try, TRY_REFUSED, ares_strerror(status), NULL, 0);
}

static void
send_udp(struct try *try)
{
	struct forward *forward = try->forward;
	int error;

	try->udp.owner = try;
	try->udp.question = forward->query + 12;
	try->udp.question_len = forward->question_len;
	error = udp_send(&try->server->udp, &try->udp, forward->query,
			 forward->query_len);
	if (error == 0)
		try->server->queries++;
	else if (error > 0)
		try_end(try, TRY_REFUSED, strerror(error), NULL, 0);
	else
		try_end(try, TRY_FAILED, NULL, NULL, 0);
}

/* c-ares keeps the ID it is given and matches the reply's ID and question
 * before calling tcp_try_done, which may happen right here. */
static void
send_tcp(struct try *try)
{
	struct forward *forward = try->forward;
	struct upstream_server *server = try->server;
	struct upstream_channel *channel = server->tcp;
	uint16_t id = upstream_random_id();

	if (!channel)
		channel = server->tcp = channel_create(server);
	if (!channel) {
		try_end(try, TRY_FAILED, NULL, NULL, 0);
		return;
	}
	try->channel = channel;
	channel->pending++;
	server->queries++;
	forward->query[0] = (uint8_t)(id >> 8);
	forward->query[1] = (uint8_t)id;
	callback_depth++;
	ares_send(channel->ares, forward->query, (int)forward->query_len,
		  tcp_try_done, try);
	callback_depth--;
	channel_update_timer(channel);
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
	struct try *try = calloc(1, sizeof(*try));

	forward->tried |= 1u << index;
	if (!probe) {
		forward->tries++;
		forward->last_tried = server;
		forward->last_sent = monotonic_now();
		forward_arm(forward, try_timeout);
	}
	if (!try) {
		log_error("out of memory forwarding a query");
		if (!probe)
			forward_try_next(forward, 0);
		return;
	}
	try->forward = forward;
	try->server = server;
	try->sent = monotonic_now();
	try->next = forward->flying;
	forward->flying = try;
	forward->in_flight++;
	server->pending++;
	forward_hold(forward);
	if (forward->over_tcp)
		send_tcp(try);
	else
		send_udp(try);
	forward_release(forward);
}

/* Each down server due a probe gets this query too; whichever answers
 * first answers the client. */
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

/* The length of the query's question (name, type, class); 0: none whole. */
static size_t
question_length(const uint8_t *query, size_t query_len)
{
	size_t at = 12;

	if (query_len < 12 || query[4] != 0 || query[5] != 1)
		return 0;
	while (at < query_len && query[at] != 0) {
		if (query[at] > 63)
			return 0;
		at += 1 + (size_t)query[at];
	}
	return at + 5 <= query_len ? at + 5 - 12 : 0;
}

/* While every nameserver is down, a query waits resolver_timeout at most. */
static struct forward *
forward_create(const uint8_t *query, size_t query_len, int over_tcp,
	       upstream_reply_fn *done, void *context)
{
	struct forward *forward = malloc(sizeof(*forward) + query_len);
	double budget = any_server_up() || try_timeout > total_timeout ?
	    total_timeout : try_timeout;

	if (!forward)
		return NULL;
	forward_count++;
	memset(forward, 0, sizeof(*forward));
	forward->done = done;
	forward->context = context;
	forward->over_tcp = over_tcp;
	forward->generation = server_generation;
	forward->deadline = ev_now(upstream_loop) + budget;
	forward->client_id = (uint16_t)(query[0] << 8 | query[1]);
	forward->question_len = question_length(query, query_len);
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

	if (server_count == 0 || query_len > 65535 ||
	    question_length(query, query_len) == 0)
		return -1;
	forward = forward_create(query, query_len, over_tcp, done, context);
	if (!forward) {
		log_error("out of memory forwarding a query");
		return -1;
	}
	forward_hold(forward);
	forward_send(forward, next_server(forward, 0), 0);
	forward_probe_down_servers(forward);
	forward_release(forward);
	reap_retired();
	return 0;
}

/*
 * The UDP sockets (UPSTREAM_UDP_SOCKETS_MAX, one more for each
 * nameserver that has none then) and a TCP connection per nameserver,
 * and one per nameserver a reload dropped while its queries end.
 */
int
upstream_descriptors_needed(const struct config *config)
{
	return UPSTREAM_UDP_SOCKETS_MAX + 3 * config->nameserver_count;
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

/* Takes servers[i] out of the list to keep it, with a fresh TCP channel
 * (the timeouts may have changed); its UDP sockets carry on. */
static struct upstream_server *
take_server(const char *text)
{
	for (int i = 0; i < server_count; i++) {
		struct upstream_server *server = servers[i];

		if (!server || strcmp(server->endpoint.text, text) != 0)
			continue;
		servers[i] = NULL;
		if (server->tcp)
			channel_retire(server->tcp);
		server->tcp = NULL;
		return server;
	}
	return NULL;
}

static struct upstream_server *
server_create(const struct endpoint *endpoint)
{
	struct upstream_server *server = calloc(1, sizeof(*server));

	if (!server) {
		log_error("out of memory for nameserver %s", endpoint->text);
		return NULL;
	}
	server->endpoint = *endpoint;
	server->up = 1;
	server->srtt = NAN;
	udp_link_init(&server->udp, &server->endpoint);
	return server;
}

/*
 * Takes the configuration's nameservers.  A server that stays keeps its
 * health.  Nothing changes unless every new server could be made.
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
		fresh[i] = server_create(wanted[i]);
		if (!fresh[i]) {
			for (int j = 0; j < i; j++)
				free(fresh[j]);
			return -1;
		}
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
	udp_start(loop);
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
	/* Every try still in flight is called back (ECANCELED, or c-ares's
	 * ARES_EDESTRUCTION), so nothing of ours is left behind. */
	for (int i = 0; i < server_count; i++)
		server_retire(servers[i]);
	server_count = 0;
	server_generation++;
	for (struct upstream_server *s = retired_servers; s; s = s->next_retired)
		udp_link_cancel_all(&s->udp);
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

struct lookup {
	upstream_addresses_fn *done;
	void *context;
	int family;
	int over_tcp;
	size_t query_len;
	uint8_t query[];	/* for asking again over TCP */
};

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

	/* Truncated over UDP: every address is wanted, so ask over TCP. */
	if (status == ARES_SUCCESS && (reply[2] & 0x02) && !lookup->over_tcp) {
		lookup->over_tcp = 1;
		if (forward_start(lookup->query, lookup->query_len, 1,
				  lookup_done, lookup) == 0)
			return;
	}
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
	unsigned char *query = NULL;
	int query_len = 0;
	struct lookup *lookup;

	if (ares_create_query(host, ns_c_in, family == AF_INET ? ns_t_a : ns_t_aaaa,
			      0, 1, &query, &query_len, 0) != ARES_SUCCESS) {
		log_error("cannot make a query for %s", host);
		done(context, 0, NULL, 0, 0);
		return;
	}
	lookup = malloc(sizeof(*lookup) + (size_t)query_len);
	if (!lookup) {
		log_error("out of memory looking up %s", host);
		ares_free_string(query);
		done(context, 0, NULL, 0, 0);
		return;
	}
	lookup->done = done;
	lookup->context = context;
	lookup->family = family;
	lookup->over_tcp = 0;
	lookup->query_len = (size_t)query_len;
	memcpy(lookup->query, query, (size_t)query_len);
	ares_free_string(query);
	if (forward_start(lookup->query, lookup->query_len, 0, lookup_done,
			  lookup) != 0)
		lookup_done(lookup, NULL, 0);
}
