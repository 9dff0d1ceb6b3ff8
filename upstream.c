/*
 * upstream.c - talking to the real resolvers through c-ares, driven from
 * hard's libev loop: forwarding the queries hard does not answer, and
 * resolving candidate host names.
 *
 * There are two c-ares channels, one over UDP and one that always uses
 * TCP (for clients that asked over TCP).  A reload that changes the
 * nameservers or the timeout makes a new pair and retires the old one,
 * which is destroyed once its last query has finished: c-ares cannot
 * change the servers of a channel with queries in flight.
 */
#include <stdlib.h>
#include <string.h>

#include <ares.h>
#include <arpa/nameser.h>

#include "har.h"

struct socket_watch {
	ev_io io;
	struct upstream_channel *channel;
	struct socket_watch *next;
};

struct upstream_channel {
	ares_channel ares;
	int pending;		/* our queries in flight on this channel */
	int retired;
	ev_timer timer;
	struct socket_watch *watches;
	struct upstream_channel *next_retired;
};

struct forward {
	struct upstream_channel *channel;
	upstream_reply_fn *done;
	void *context;
	uint16_t client_id;
};

struct lookup {
	struct upstream_channel *channel;
	upstream_addresses_fn *done;
	void *context;
	int family;
};

static struct ev_loop *upstream_loop;
static struct upstream_channel *udp_channel;
static struct upstream_channel *tcp_channel;
static struct upstream_channel *retired_channels;
static struct log_streak upstream_streak;
static uint8_t relay_buffer[DNS_MAX_UDP];

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

/* A retired channel goes once nothing of ours is left in it. */
static void
reap_retired(void)
{
	struct upstream_channel **link = &retired_channels;

	while (*link) {
		struct upstream_channel *channel = *link;

		if (channel->pending > 0) {
			link = &channel->next_retired;
			continue;
		}
		*link = channel->next_retired;
		channel_destroy(channel);
	}
}

static void
channel_io(struct ev_loop *loop, ev_io *io, int revents)
{
	struct socket_watch *watch = io->data;
	struct upstream_channel *channel = watch->channel;
	int fd = io->fd;

	(void)loop;
	ares_process_fd(channel->ares,
			(revents & EV_READ) ? fd : ARES_SOCKET_BAD,
			(revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	channel_update_timer(channel);
	if (retired_channels)
		reap_retired();
}

static void
channel_timeout(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct upstream_channel *channel = timer->data;

	(void)loop;
	(void)revents;
	ares_process_fd(channel->ares, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	channel_update_timer(channel);
	if (retired_channels)
		reap_retired();
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

static char *
servers_csv(const struct config *config)
{
	size_t size = (size_t)config->nameserver_count * sizeof(config->nameservers[0].text) + 1;
	char *csv = calloc(1, size);

	if (!csv)
		return NULL;
	for (int i = 0; i < config->nameserver_count; i++) {
		if (i > 0)
			strcat(csv, ",");
		strcat(csv, config->nameservers[i].text);
	}
	return csv;
}

static struct upstream_channel *
channel_create(const struct config *config, int over_tcp)
{
	struct upstream_channel *channel = calloc(1, sizeof(*channel));
	struct ares_options options;
	char *csv = servers_csv(config);
	int status;

	if (!channel || !csv) {
		log_error("out of memory creating the upstream channel");
		free(channel);
		free(csv);
		return NULL;
	}
	memset(&options, 0, sizeof(options));
	/* Relay the upstream's SERVFAIL or REFUSED as it is, rather than
	 * turning it into a try of the next server and our own SERVFAIL. */
	options.flags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_STAYOPEN |
	    (over_tcp ? ARES_FLAG_USEVC : 0);
	options.timeout = (int)(config->resolver_timeout * 1000);
	if (options.timeout < 1)
		options.timeout = 1;
	options.tries = 2;
	options.sock_state_cb = channel_socket_state;
	options.sock_state_cb_data = channel;
	status = ares_init_options(&channel->ares, &options,
				   ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS |
				   ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB);
	if (status == ARES_SUCCESS)
		status = ares_set_servers_ports_csv(channel->ares, csv);
	free(csv);
	if (status != ARES_SUCCESS) {
		log_error("cannot set up the upstream resolver: %s",
			  ares_strerror(status));
		if (channel->ares)
			ares_destroy(channel->ares);
		free(channel);
		return NULL;
	}
	ev_timer_init(&channel->timer, channel_timeout, 0, 0);
	channel->timer.data = channel;
	return channel;
}

static int
channels_create(const struct config *config)
{
	struct upstream_channel *udp = channel_create(config, 0);
	struct upstream_channel *tcp = udp ? channel_create(config, 1) : NULL;

	if (!tcp) {
		if (udp)
			channel_destroy(udp);
		return -1;
	}
	udp_channel = udp;
	tcp_channel = tcp;
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
	return channels_create(config);
}

static void
retire(struct upstream_channel *channel)
{
	channel->retired = 1;
	channel->next_retired = retired_channels;
	retired_channels = channel;
}

int
upstream_reconfigure(const struct config *config)
{
	struct upstream_channel *old_udp = udp_channel, *old_tcp = tcp_channel;

	if (channels_create(config) != 0) {
		udp_channel = old_udp;
		tcp_channel = old_tcp;
		return -1;
	}
	retire(old_udp);
	retire(old_tcp);
	reap_retired();
	return 0;
}

void
upstream_stop(void)
{
	/* Destroying a channel calls back every query still in flight
	 * (with ARES_EDESTRUCTION), so nothing of ours is left behind. */
	if (udp_channel)
		retire(udp_channel);
	if (tcp_channel)
		retire(tcp_channel);
	udp_channel = tcp_channel = NULL;
	while (retired_channels) {
		struct upstream_channel *channel = retired_channels;

		retired_channels = channel->next_retired;
		channel_destroy(channel);
	}
	ares_library_cleanup();
}

static void
note_upstream_result(int status)
{
	unsigned long failures;

	if (status == ARES_SUCCESS) {
		failures = log_streak_ok(&upstream_streak);
		if (failures)
			log_info("upstream answering again after %lu failed queries",
				 failures);
		return;
	}
	if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED)
		return;
	if (log_streak_fail(&upstream_streak))
		log_warning("upstream query failed (%s); answering SERVFAIL "
			    "until upstream recovers", ares_strerror(status));
}

static void
forward_done(void *arg, int status, int timeouts, unsigned char *answer,
	     int answer_len)
{
	struct forward *forward = arg;

	(void)timeouts;
	forward->channel->pending--;
	note_upstream_result(status);
	if (status == ARES_SUCCESS && answer && answer_len >= 12 &&
	    (size_t)answer_len <= sizeof(relay_buffer)) {
		memcpy(relay_buffer, answer, (size_t)answer_len);
		relay_buffer[0] = (uint8_t)(forward->client_id >> 8);
		relay_buffer[1] = (uint8_t)forward->client_id;
		forward->done(forward->context, relay_buffer, (size_t)answer_len);
	} else {
		forward->done(forward->context, NULL, 0);
	}
	free(forward);
}

int
upstream_forward(const uint8_t *query, size_t query_len, int over_tcp,
		 upstream_reply_fn *done, void *context)
{
	struct upstream_channel *channel = over_tcp ? tcp_channel : udp_channel;
	struct forward *forward;

	if (!channel || query_len < 12)
		return -1;
	forward = malloc(sizeof(*forward));
	if (!forward)
		return -1;
	forward->channel = channel;
	forward->done = done;
	forward->context = context;
	forward->client_id = (uint16_t)(query[0] << 8 | query[1]);
	channel->pending++;
	/* c-ares gives the query its own random ID and checks that the
	 * reply's ID and question match before calling forward_done. */
	ares_send(channel->ares, query, (int)query_len, forward_done, forward);
	channel_update_timer(channel);
	return 0;
}

#define LOOKUP_MAX_ADDRESSES 64

static void
lookup_done(void *arg, int status, int timeouts, unsigned char *answer,
	    int answer_len)
{
	struct lookup *lookup = arg;
	struct ip_address ips[LOOKUP_MAX_ADDRESSES];
	int count = LOOKUP_MAX_ADDRESSES, ok = 0;
	double ttl = 3600;

	(void)timeouts;
	lookup->channel->pending--;
	if (status == ARES_SUCCESS && lookup->family == AF_INET) {
		struct ares_addrttl found[LOOKUP_MAX_ADDRESSES];

		status = ares_parse_a_reply(answer, answer_len, NULL, found, &count);
		for (int i = 0; status == ARES_SUCCESS && i < count; i++) {
			ips[i].family = AF_INET;
			memcpy(ips[i].bytes, &found[i].ipaddr, 4);
			ttl = found[i].ttl < ttl ? found[i].ttl : ttl;
		}
	} else if (status == ARES_SUCCESS) {
		struct ares_addr6ttl found[LOOKUP_MAX_ADDRESSES];

		status = ares_parse_aaaa_reply(answer, answer_len, NULL, found, &count);
		for (int i = 0; status == ARES_SUCCESS && i < count; i++) {
			ips[i].family = AF_INET6;
			memcpy(ips[i].bytes, &found[i].ip6addr, 16);
			ttl = found[i].ttl < ttl ? found[i].ttl : ttl;
		}
	}
	if (status == ARES_ENODATA) {	/* the name has none of this family */
		status = ARES_SUCCESS;
		count = 0;
	}
	ok = status == ARES_SUCCESS;
	if (!ok)
		count = 0;
	if (status != ARES_EDESTRUCTION && status != ARES_ECANCELLED)
		log_debug("lookup of a candidate host (%s): %s, %d addresses",
			  lookup->family == AF_INET ? "A" : "AAAA",
			  ares_strerror(status), count);
	lookup->done(lookup->context, ok, ips, count, ttl);
	free(lookup);
}

void
upstream_resolve(const char *host, int family, upstream_addresses_fn *done,
		 void *context)
{
	struct lookup *lookup = malloc(sizeof(*lookup));
	struct upstream_channel *channel = udp_channel;

	if (!lookup || !channel) {
		free(lookup);
		done(context, 0, NULL, 0, 0);
		return;
	}
	lookup->channel = channel;
	lookup->done = done;
	lookup->context = context;
	lookup->family = family;
	channel->pending++;
	ares_query(channel->ares, host, ns_c_in,
		   family == AF_INET ? ns_t_a : ns_t_aaaa, lookup_done, lookup);
	channel_update_timer(channel);
}
