/*
 * server.c - the DNS listeners: UDP and TCP sockets on every
 * dns_bind_interfaces address (those the service manager passed, or
 * else bound here: activation.c), the per-connection state of DNS over TCP
 * (RFC 7766) with the bounds that keep a client from growing hard's
 * memory or spinning its loop, and the hand-off of queries dns.c does not
 * answer to upstream.c and back.
 *
 * UDP is read and written in batches (recvmmsg/sendmmsg): one system call
 * for many queries is most of what makes a loopback resolver fast.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "har.h"

#define UDP_BATCH 32
#define UDP_RECEIVE_SIZE 4096
#define UDP_BATCHES_PER_WAKEUP 8
#define TCP_BACKLOG 64

/*
 * The bounds of DNS over TCP (hard.8 documents them).  A query longer
 * than a UDP one is refused, so the input buffer holds one partial query
 * and room to read the next.  Above TCP_OUTPUT_LIMIT unsent bytes, or
 * TCP_PENDING_LIMIT forwarded queries in flight, a connection's queries
 * wait (its input is not read) until it drains: one maximum-size DNS
 * message, more than a reading client ever leaves behind, since the
 * kernel's socket buffer takes the normal flow.  TCP_OUTPUT_TOTAL bounds
 * the output buffers of all connections together.
 */
#define TCP_QUERY_MAX UDP_RECEIVE_SIZE
#define TCP_INPUT_SIZE (2 * (2 + TCP_QUERY_MAX))
#define TCP_OUTPUT_LIMIT (64 * 1024)
#define TCP_OUTPUT_TOTAL (16 * 1024 * 1024)
#define TCP_OUTPUT_KEPT 4096	/* a larger buffer is freed when empty */
#define TCP_PENDING_LIMIT 32
/* A client that has ended its input and whose window is full is looked at
 * this often, to close the connection once the kernel has sent the rest. */
#define TCP_DRAIN_POLL 0.05
/* Out of descriptors, accepting is tried again after this or a close. */
#define ACCEPT_RETRY 0.1
/* Accepting works again once it has for this long without a failure: as
 * descriptors come back one by one, accept works and fails by turns, and
 * that is one streak in the log, not one per connection. */
#define ACCEPT_RECOVERED 1.0

struct listener {
	struct endpoint endpoint;
	int udp_fd;
	int tcp_fd;
	int reused;		/* carried over from the previous server */
	int pending;		/* forwarded queries to answer from udp_fd */
	int closed;		/* in draining_listeners; freed when pending is 0 */
	ev_io udp_io;
	ev_io tcp_io;
	struct dns_server *server;
	struct listener *next;
};

struct tcp_connection {
	int fd;
	struct sockaddr_storage peer;	/* for the query log */
	ev_io read_io;		/* stopped while over its bound */
	ev_io write_io;
	ev_timer idle;
	double last_active;
	uint8_t *input;		/* TCP_INPUT_SIZE bytes, from the first read */
	size_t input_len;
	uint8_t *output;
	size_t output_len;
	size_t output_size;
	int pending;		/* forwarded queries not yet answered */
	int busy;		/* a function up the stack uses it: not freed */
	int input_ended;	/* the client shut down its sending side */
	int closed;		/* socket gone; freed when pending reaches 0 */
	struct dns_server *server;
	struct tcp_connection *prev, *next;
};

struct dns_server {
	struct ev_loop *loop;
	struct listener *listeners;
	struct tcp_connection *connections;
	int connection_count;
	int max_connections;
	double idle_timeout;
	size_t output_total;	/* bytes of every connection's output buffer */
	struct log_streak shed_streak;	/* connections closed over the total */
	int shedding;		/* in tcp_shed: the streak goes on */
	int accept_paused;	/* out of descriptors: waiting for one */
	ev_timer accept_retry;
	struct log_streak accept_streak;
	ev_timer accept_recovered;	/* a quiet second ends the streak */
};

/* A forwarded query's way back to its client. */
struct pending_reply {
	struct listener *listener;		/* NULL for TCP */
	struct sockaddr_storage client;
	socklen_t client_len;
	size_t client_limit;
	int client_opt;				/* the query had OPT */
	struct tcp_connection *connection;	/* NULL for UDP */
	enum dns_outcome outcome;		/* why it was forwarded */
	size_t query_len;
	uint8_t query[];			/* for SERVFAIL on failure */
};

static struct registry *server_registry;
/* Enough of a query to echo its question in a SERVFAIL. */
#define PENDING_QUERY_KEPT 512

void
dns_server_set_registry(struct registry *registry)
{
	server_registry = registry;
}

/* ------------------------------------------------------------ UDP */

static uint8_t udp_input[UDP_BATCH][UDP_RECEIVE_SIZE];
static uint8_t udp_output[UDP_BATCH][DNS_MAX_UDP];
static struct sockaddr_storage udp_peers[UDP_BATCH];

static void forward_query(struct listener *listener,
			  const struct sockaddr_storage *client,
			  socklen_t client_len, struct tcp_connection *connection,
			  const uint8_t *query, size_t query_len, size_t limit);

static void
udp_send_one(int fd, const uint8_t *reply, size_t len,
	     const struct sockaddr_storage *client, socklen_t client_len)
{
	if (sendto(fd, reply, len, 0, (const struct sockaddr *)client,
		   client_len) < 0)
		log_debug("cannot send a UDP reply: %s", strerror(errno));
}

static struct mmsghdr udp_in[UDP_BATCH], udp_out[UDP_BATCH];
static struct iovec udp_in_iov[UDP_BATCH], udp_out_iov[UDP_BATCH];

/* The receive side of the batch never changes but for the peer's length. */
static void
udp_batch_init(void)
{
	static int done;

	if (done)
		return;
	for (int i = 0; i < UDP_BATCH; i++) {
		udp_in_iov[i].iov_base = udp_input[i];
		udp_in_iov[i].iov_len = UDP_RECEIVE_SIZE;
		udp_in[i].msg_hdr.msg_iov = &udp_in_iov[i];
		udp_in[i].msg_hdr.msg_iovlen = 1;
		udp_in[i].msg_hdr.msg_name = &udp_peers[i];
		udp_out_iov[i].iov_base = udp_output[i];
		udp_out[i].msg_hdr.msg_iov = &udp_out_iov[i];
		udp_out[i].msg_hdr.msg_iovlen = 1;
	}
	done = 1;
}

/* Answers one batch; returns how many datagrams it read. */
static int
udp_batch(struct listener *listener)
{
	int received, replies = 0;

	for (int i = 0; i < UDP_BATCH; i++)
		udp_in[i].msg_hdr.msg_namelen = sizeof(udp_peers[i]);
	received = recvmmsg(listener->udp_fd, udp_in, UDP_BATCH, MSG_DONTWAIT, NULL);
	if (received <= 0)
		return 0;
	for (int i = 0; i < received; i++) {
		struct msghdr *in = &udp_in[i].msg_hdr;
		size_t len = udp_in[i].msg_len, reply_len, limit;
		enum dns_verdict verdict;

		if (in->msg_flags & MSG_TRUNC) {	/* larger than any sane query */
			totals.queries[0]++;
			totals.dropped[DROP_OVERSIZE]++;
			continue;
		}
		verdict = dns_answer(server_registry, udp_input[i], len, 0,
				     udp_output[replies], DNS_MAX_UDP,
				     &reply_len, &limit);
		if (query_log_enabled && verdict != DNS_FORWARD)
			query_log_write(&udp_peers[i], 0, udp_input[i], len,
					dns_last.outcome, verdict == DNS_REPLY ?
					udp_output[replies] : NULL, reply_len);
		if (verdict == DNS_FORWARD) {
			forward_query(listener, &udp_peers[i], in->msg_namelen,
				      NULL, udp_input[i], len, limit);
			continue;
		}
		if (verdict != DNS_REPLY)
			continue;
		udp_out_iov[replies].iov_len = reply_len;
		udp_out[replies].msg_hdr.msg_name = &udp_peers[i];
		udp_out[replies].msg_hdr.msg_namelen = in->msg_namelen;
		replies++;
	}
	for (int sent = 0; sent < replies;) {
		int result = sendmmsg(listener->udp_fd, udp_out + sent,
				      (unsigned)(replies - sent), 0);

		if (result <= 0) {
			/* A full socket buffer: the client will retry. */
			log_debug("cannot send UDP replies: %s", strerror(errno));
			break;
		}
		sent += result;
	}
	return received;
}

static void
udp_readable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct listener *listener = io->data;

	(void)loop;
	(void)revents;
	/* Bounded, so TCP clients and timers get their turn under a flood. */
	for (int i = 0; i < UDP_BATCHES_PER_WAKEUP; i++)
		if (udp_batch(listener) < UDP_BATCH)
			break;
}

/* ------------------------------------------------------------ TCP */

static void tcp_connection_close(struct tcp_connection *connection);
static void tcp_process(struct tcp_connection *connection);
static void accept_resume(struct dns_server *server);
static void listener_free(struct listener *listener);

/* Frees a closed connection once nothing refers to it any more. */
static void
tcp_connection_release(struct tcp_connection *connection)
{
	if (connection->closed && connection->pending == 0 &&
	    connection->busy == 0)
		free(connection);
}

/* The shedding (tcp_shed) has stopped once the total is well under the cap. */
static void
tcp_shed_streak_end(struct dns_server *server)
{
	unsigned long closed;

	if (!server->shed_streak.active ||
	    server->output_total >= TCP_OUTPUT_TOTAL / 2)
		return;
	closed = log_streak_ok(&server->shed_streak);
	log_info("TCP output back under %d MiB after closing %lu connections",
		 TCP_OUTPUT_TOTAL / 1024 / 1024, closed);
}

static void
tcp_output_free(struct tcp_connection *connection)
{
	struct dns_server *server = connection->server;

	server->output_total -= connection->output_size;
	free(connection->output);
	connection->output = NULL;
	connection->output_len = 0;
	connection->output_size = 0;
	if (!server->shedding)
		tcp_shed_streak_end(server);
}

static int
tcp_output_reserve(struct tcp_connection *connection, size_t needed)
{
	size_t new_size = connection->output_size ? connection->output_size : 512;
	uint8_t *grown;

	if (needed <= connection->output_size)
		return 0;
	while (new_size < needed)
		new_size *= 2;
	grown = realloc(connection->output, new_size);
	if (!grown)
		return -1;
	connection->server->output_total += new_size - connection->output_size;
	connection->output = grown;
	connection->output_size = new_size;
	return 0;
}

/* Over its bound, a connection's further queries wait. */
static int
tcp_over_bound(const struct tcp_connection *connection)
{
	return connection->output_len >= TCP_OUTPUT_LIMIT ||
	    connection->pending >= TCP_PENDING_LIMIT;
}

/*
 * A client that does not take what is queued for it gets a reset, so the
 * kernel drops its queue at once instead of keeping it for a peer that
 * does not read.
 */
static void
tcp_connection_abort(struct tcp_connection *connection)
{
	struct linger linger = { .l_onoff = 1, .l_linger = 0 };

	if (connection->closed)
		return;
	if (setsockopt(connection->fd, SOL_SOCKET, SO_LINGER, &linger,
		       sizeof(linger)) != 0)
		log_debug("cannot reset a TCP connection: %s", strerror(errno));
	tcp_connection_close(connection);
}

/*
 * Over the total, the connection with the most unsent output goes: it is
 * the client that does not read its answers, and closing it frees most.
 * Clients that read keep being served.
 */
static void
tcp_shed(struct dns_server *server)
{
	server->shedding = 1;
	while (server->output_total > TCP_OUTPUT_TOTAL) {
		struct tcp_connection *worst = NULL;

		for (struct tcp_connection *c = server->connections; c; c = c->next)
			if (c->output_len > 0 &&
			    (!worst || c->output_len > worst->output_len))
				worst = c;
		if (!worst)
			break;	/* only the buffers kept for clients that read */
		if (log_streak_fail(&server->shed_streak))
			log_warning("TCP output buffered for all clients is over %d MiB: "
				    "closing the connections with the most unsent output",
				    TCP_OUTPUT_TOTAL / 1024 / 1024);
		totals.tcp_closed[TCP_CLOSED_SHED]++;
		tcp_connection_abort(worst);
	}
	server->shedding = 0;
}

/* Writes what the socket takes; the caller checks closed afterwards. */
static void
tcp_flush(struct tcp_connection *connection)
{
	struct dns_server *server = connection->server;
	size_t done = 0;

	while (done < connection->output_len) {
		ssize_t written = write(connection->fd, connection->output + done,
					connection->output_len - done);

		if (written < 0 && errno == EINTR)
			continue;
		if (written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (written <= 0) {
			tcp_connection_close(connection);
			return;
		}
		done += (size_t)written;
	}
	if (done > 0) {
		memmove(connection->output, connection->output + done,
			connection->output_len - done);
		connection->output_len -= done;
	}
	if (connection->output_len > 0) {
		ev_io_start(server->loop, &connection->write_io);
		return;
	}
	ev_io_stop(server->loop, &connection->write_io);
	if (connection->output_size > TCP_OUTPUT_KEPT)
		tcp_output_free(connection);
}

/* Appends one length-prefixed reply; written by the caller's flush. */
static void
tcp_send(struct tcp_connection *connection, const uint8_t *reply, size_t len)
{
	size_t needed = connection->output_len + 2 + len;

	if (connection->closed)
		return;
	if (tcp_output_reserve(connection, needed) != 0) {
		log_error("out of memory for a TCP reply");
		tcp_connection_close(connection);
		return;
	}
	connection->output[connection->output_len] = (uint8_t)(len >> 8);
	connection->output[connection->output_len + 1] = (uint8_t)len;
	memcpy(connection->output + connection->output_len + 2, reply, len);
	connection->output_len = needed;
	if (connection->server->output_total > TCP_OUTPUT_TOTAL)
		tcp_shed(connection->server);
}

static void
tcp_touch(struct tcp_connection *connection)
{
	connection->last_active = ev_now(connection->server->loop);
	ev_timer_again(connection->server->loop, &connection->idle);
}

static void
tcp_query(struct tcp_connection *connection, const uint8_t *query, size_t len)
{
	static uint8_t reply[DNS_MAX_UDP];
	size_t reply_len, limit;
	enum dns_verdict verdict;

	verdict = dns_answer(server_registry, query, len, 1, reply,
			     sizeof(reply), &reply_len, &limit);
	if (query_log_enabled && verdict != DNS_FORWARD)
		query_log_write(&connection->peer, 1, query, len,
				dns_last.outcome, verdict == DNS_REPLY ?
				reply : NULL, reply_len);
	if (verdict == DNS_REPLY)
		tcp_send(connection, reply, reply_len);
	else if (verdict == DNS_FORWARD)
		forward_query(NULL, NULL, 0, connection,
			      query, len, limit);
}

/* The length of the message at the start of bytes; 0 if it is refused. */
static size_t
tcp_message_length(const uint8_t *bytes)
{
	size_t len = (size_t)(bytes[0] << 8 | bytes[1]);

	if (len < 12) {
		log_debug("TCP client sent a message shorter than a header");
		return 0;
	}
	if (len > TCP_QUERY_MAX) {
		log_debug("TCP client sent a %zu-byte message; queries are at most %d",
			  len, TCP_QUERY_MAX);
		return 0;
	}
	return len;
}

/* Answers the complete queries in the input while under the bound. */
static void
tcp_answer_input(struct tcp_connection *connection)
{
	size_t at = 0;

	while (!connection->closed && !tcp_over_bound(connection) &&
	       connection->input_len - at >= 2) {
		size_t len = tcp_message_length(connection->input + at);

		if (len == 0) {
			totals.queries[1]++;
			totals.dropped[DROP_TCP_LENGTH]++;
			tcp_connection_close(connection);
			return;
		}
		if (connection->input_len - at < 2 + len)
			break;
		tcp_query(connection, connection->input + at + 2, len);
		at += 2 + len;
	}
	if (connection->closed || at == 0)
		return;
	memmove(connection->input, connection->input + at,
		connection->input_len - at);
	connection->input_len -= at;
}

/* A whole query waits in the input. */
static int
tcp_query_waiting(const struct tcp_connection *connection)
{
	return connection->input_len >= 2 &&
	    connection->input_len >= 2 + (size_t)(connection->input[0] << 8 |
						  connection->input[1]);
}

/* Nothing read from the client is still to be answered or written. */
static int
tcp_all_answered(const struct tcp_connection *connection)
{
	return connection->pending == 0 && connection->output_len == 0 &&
	    !tcp_query_waiting(connection);
}

/* Bytes the kernel holds because the client's window has no room for them. */
static int
tcp_kernel_unsent(const struct tcp_connection *connection)
{
	int unsent = 0;

	if (ioctl(connection->fd, SIOCOUTQNSD, &unsent) != 0)
		return 0;
	return unsent;
}

/*
 * After the client's EOF, once the last answer is written: the connection
 * closes when the kernel has sent what it holds.  Closing before would
 * leave the kernel keeping answers for a client that does not read them,
 * past the idle timeout that resets such a client; so until then it is
 * looked at every TCP_DRAIN_POLL, and reset tcp_idle_timeout after its
 * last activity.
 */
static void
tcp_finish(struct tcp_connection *connection)
{
	struct dns_server *server = connection->server;

	if (tcp_kernel_unsent(connection) == 0) {
		tcp_connection_close(connection);
		return;
	}
	if (ev_now(server->loop) - connection->last_active >=
	    server->idle_timeout) {
		totals.tcp_closed[TCP_CLOSED_IDLE]++;
		tcp_connection_abort(connection);
		return;
	}
	connection->idle.repeat = TCP_DRAIN_POLL;
	ev_timer_again(server->loop, &connection->idle);
}

/*
 * Reads on while under the bound.  After the client's EOF there is nothing
 * more to read: the connection finishes once every answer is written.
 */
static void
tcp_read_on_or_finish(struct tcp_connection *connection)
{
	struct ev_loop *loop = connection->server->loop;

	if (connection->closed)
		return;
	if (connection->input_ended) {
		if (tcp_all_answered(connection))
			tcp_finish(connection);
		return;
	}
	if (tcp_over_bound(connection))
		ev_io_stop(loop, &connection->read_io);
	else
		ev_io_start(loop, &connection->read_io);
}

/*
 * Answers and writes until the connection is over its bound or has no
 * whole query left, and reads on only while under it: a client that does
 * not read its answers stops being read.
 */
static void
tcp_process(struct tcp_connection *connection)
{
	connection->busy++;
	do {
		tcp_answer_input(connection);
		if (!connection->closed)
			tcp_flush(connection);
	} while (!connection->closed && !tcp_over_bound(connection) &&
		 tcp_query_waiting(connection));
	tcp_read_on_or_finish(connection);
	connection->busy--;
	tcp_connection_release(connection);
}

/*
 * A client that shuts down its sending side (shutdown(SHUT_WR)) still
 * waits for the answers to what it sent: the queries read before its EOF
 * are answered, forwarded ones when their reply comes, and the connection
 * closes once the last answer is sent (tcp_finish).  A client that does
 * not read them is still reset by the idle timeout or the output caps.
 */
static void
tcp_input_end(struct tcp_connection *connection)
{
	connection->input_ended = 1;
	ev_io_stop(connection->server->loop, &connection->read_io);
	if (connection->input_len > 0 && !tcp_query_waiting(connection))
		log_debug("TCP client ended its input in the middle of a message");
	tcp_process(connection);
}

static void
tcp_readable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct tcp_connection *connection = io->data;
	size_t room;
	ssize_t got;

	(void)revents;
	if (!connection->input) {
		connection->input = malloc(TCP_INPUT_SIZE);
		if (!connection->input) {
			log_error("out of memory for a TCP connection");
			tcp_connection_close(connection);
			return;
		}
	}
	/* Never full while read: a partial query is at most half of it. */
	room = TCP_INPUT_SIZE - connection->input_len;
	if (room == 0) {
		ev_io_stop(loop, io);
		return;
	}
	got = read(connection->fd, connection->input + connection->input_len,
		   room);
	if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (got == 0) {
		tcp_input_end(connection);
		return;
	}
	if (got < 0) {
		tcp_connection_close(connection);
		return;
	}
	connection->input_len += (size_t)got;
	tcp_touch(connection);
	tcp_process(connection);
}

static void
tcp_writable(struct ev_loop *loop, ev_io *io, int revents)
{
	struct tcp_connection *connection = io->data;

	(void)loop;
	(void)revents;
	connection->busy++;
	tcp_flush(connection);
	if (!connection->closed) {
		/* A client that takes its answers is not idle. */
		tcp_touch(connection);
		/* Drained under its bound: the queries that waited go on. */
		if (!ev_is_active(&connection->read_io))
			tcp_process(connection);
	}
	connection->busy--;
	tcp_connection_release(connection);
}

/* Answers the client has not taken, here or in the socket's queue. */
static int
tcp_unsent(const struct tcp_connection *connection)
{
	int queued = 0;

	if (connection->output_len > 0)
		return 1;
	if (ioctl(connection->fd, SIOCOUTQ, &queued) != 0)
		return 0;
	return queued > 0;
}

static void
tcp_idle(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct tcp_connection *connection = timer->data;

	(void)loop;
	(void)revents;
	/* A client with answers still to come is waiting, not idle. */
	if (connection->pending > 0) {
		tcp_touch(connection);
		return;
	}
	if (connection->input_ended && tcp_all_answered(connection)) {
		tcp_finish(connection);
		return;
	}
	totals.tcp_closed[TCP_CLOSED_IDLE]++;
	if (tcp_unsent(connection))
		tcp_connection_abort(connection);
	else
		tcp_connection_close(connection);
}

/* The buffers go at once; the rest when its last forwarded reply is in. */
static void
tcp_connection_close(struct tcp_connection *connection)
{
	struct dns_server *server = connection->server;

	if (connection->closed)
		return;
	connection->closed = 1;
	ev_io_stop(server->loop, &connection->read_io);
	ev_io_stop(server->loop, &connection->write_io);
	ev_timer_stop(server->loop, &connection->idle);
	close(connection->fd);
	connection->fd = -1;
	if (connection->prev)
		connection->prev->next = connection->next;
	else
		server->connections = connection->next;
	if (connection->next)
		connection->next->prev = connection->prev;
	server->connection_count--;
	totals.tcp_open--;
	tcp_output_free(connection);
	free(connection->input);
	connection->input = NULL;
	connection->input_len = 0;
	accept_resume(server);	/* a descriptor is free again */
	tcp_connection_release(connection);
}

/* At the cap, the connection quiet for longest makes room (RFC 7766 6.2.3). */
static void
tcp_make_room(struct dns_server *server)
{
	struct tcp_connection *oldest = NULL;

	for (struct tcp_connection *c = server->connections; c; c = c->next)
		if (!oldest || c->last_active < oldest->last_active)
			oldest = c;
	if (oldest) {
		log_debug("TCP connection cap (%d) reached; closing the idlest",
			  server->max_connections);
		totals.tcp_closed[TCP_CLOSED_LIMIT]++;
		tcp_connection_close(oldest);
	}
}

/* ------------------------------------------------------------ accept */

static void
accept_resume(struct dns_server *server)
{
	if (!server->accept_paused)
		return;
	server->accept_paused = 0;
	ev_timer_stop(server->loop, &server->accept_retry);
	for (struct listener *l = server->listeners; l; l = l->next)
		ev_io_start(server->loop, &l->tcp_io);
}

static void
accept_retry(struct ev_loop *loop, ev_timer *timer, int revents)
{
	(void)loop;
	(void)revents;
	accept_resume(timer->data);
}

/*
 * A connection the listener cannot take (out of descriptors or memory)
 * stays in the backlog and the listener stays readable: accepting pauses
 * until a connection closes or ACCEPT_RETRY passes, instead of spinning.
 */
static void
accept_failed(struct listener *listener, int error)
{
	struct dns_server *server = listener->server;

	if (error == EAGAIN || error == EWOULDBLOCK || error == EINTR ||
	    error == ECONNABORTED)
		return;
	totals.tcp_refused++;
	ev_timer_stop(server->loop, &server->accept_recovered);
	if (log_streak_fail(&server->accept_streak))
		log_warning("cannot accept TCP connections on %s: %s; trying again "
			    "when a connection closes or every %.1f s",
			    listener->endpoint.text, strerror(error), ACCEPT_RETRY);
	for (struct listener *l = server->listeners; l; l = l->next)
		ev_io_stop(server->loop, &l->tcp_io);
	if (server->accept_paused)
		return;
	server->accept_paused = 1;
	ev_timer_set(&server->accept_retry, ACCEPT_RETRY, 0.);
	ev_timer_start(server->loop, &server->accept_retry);
}

static void
accept_recovered(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct dns_server *server = timer->data;
	unsigned long failures;

	(void)loop;
	(void)revents;
	if (!server->accept_streak.active)
		return;
	failures = log_streak_ok(&server->accept_streak);
	log_info("accepting TCP connections again after %lu failed attempt%s",
		 failures, failures == 1 ? "" : "s");
}

static void
accept_succeeded(struct dns_server *server)
{
	if (!server->accept_streak.active ||
	    ev_is_active(&server->accept_recovered))
		return;
	ev_timer_set(&server->accept_recovered, ACCEPT_RECOVERED, 0.);
	ev_timer_start(server->loop, &server->accept_recovered);
}

static void
tcp_accept(struct ev_loop *loop, ev_io *io, int revents)
{
	struct listener *listener = io->data;
	struct dns_server *server = listener->server;
	struct tcp_connection *connection;
	struct sockaddr_storage peer;
	socklen_t peer_len = sizeof(peer);
	int fd;

	(void)revents;
	fd = accept4(listener->tcp_fd, (struct sockaddr *)&peer, &peer_len,
		     SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		accept_failed(listener, errno);
		return;
	}
	accept_succeeded(server);
	/* Several when a reload lowered the cap. */
	while (server->connection_count >= server->max_connections &&
	       server->connections)
		tcp_make_room(server);
	connection = calloc(1, sizeof(*connection));
	if (!connection) {
		log_error("out of memory for a TCP connection");
		totals.tcp_refused++;
		close(fd);
		return;
	}
	totals.tcp_accepted++;
	totals.tcp_open++;
	connection->fd = fd;
	connection->peer = peer;
	connection->server = server;
	ev_io_init(&connection->read_io, tcp_readable, fd, EV_READ);
	connection->read_io.data = connection;
	ev_io_init(&connection->write_io, tcp_writable, fd, EV_WRITE);
	connection->write_io.data = connection;
	ev_init(&connection->idle, tcp_idle);
	connection->idle.repeat = server->idle_timeout;
	connection->idle.data = connection;
	connection->next = server->connections;
	if (server->connections)
		server->connections->prev = connection;
	server->connections = connection;
	server->connection_count++;
	ev_io_start(loop, &connection->read_io);
	tcp_touch(connection);
}

/* ------------------------------------------------------- forwarding */

/*
 * A TCP reply is appended even over the connection's bound: the client
 * waits for it, and TCP_PENDING_LIMIT bounds how many can come.
 */
static void
forward_reply_tcp(struct tcp_connection *connection, const uint8_t *reply,
		  size_t reply_len)
{
	connection->pending--;
	connection->busy++;
	if (reply)
		tcp_send(connection, reply, reply_len);
	/* Called back from within tcp_process, that one writes and reads. */
	if (!connection->closed && connection->busy == 1)
		tcp_process(connection);
	connection->busy--;
	tcp_connection_release(connection);
}

static void
forward_reply(void *context, uint8_t *reply, size_t reply_len)
{
	struct pending_reply *pending = context;
	uint8_t servfail[DNS_MAX_NAME + 64];
	int upstream_failed = reply == NULL;

	if (!reply) {
		totals.forward_failures++;
		reply_len = dns_error_reply(pending->query, pending->query_len, 2,
					    servfail, sizeof(servfail));
		reply = reply_len ? servfail : NULL;
	}
	if (!upstream_failed)
		reply = relay_reply(server_registry, reply, &reply_len,
				    pending->connection != NULL,
				    pending->connection ?
				    pending->connection->server->idle_timeout : 0);
	/* After the rewrite: what the client gets must fit its size. */
	if (reply && !pending->connection)
		reply_len = dns_truncate_reply(reply, reply_len,
					       pending->client_limit,
					       pending->client_opt);
	if (query_log_enabled)
		query_log_write(&pending->client, pending->connection != NULL,
				pending->query, pending->query_len,
				pending->outcome, upstream_failed ? NULL : reply,
				reply_len);
	if (pending->connection)
		forward_reply_tcp(pending->connection, reply, reply_len);
	else if (reply)
		udp_send_one(pending->listener->udp_fd, reply, reply_len,
			     &pending->client, pending->client_len);
	if (pending->listener && --pending->listener->pending == 0 &&
	    pending->listener->closed)
		listener_free(pending->listener);
	free(pending);
}

static void
forward_query(struct listener *listener,
	      const struct sockaddr_storage *client, socklen_t client_len,
	      struct tcp_connection *connection, const uint8_t *query,
	      size_t query_len, size_t limit)
{
	struct pending_reply *pending;
	size_t kept = query_len < PENDING_QUERY_KEPT ? query_len :
	    PENDING_QUERY_KEPT;

	/* The query is kept for the SERVFAIL reply. */
	pending = malloc(sizeof(*pending) + kept);
	if (!pending) {
		log_error("out of memory forwarding a query");
		return;
	}
	totals.forwarded++;
	pending->listener = listener;
	if (client)
		memcpy(&pending->client, client, client_len);
	else if (connection)
		pending->client = connection->peer;
	pending->client_len = client_len;
	pending->outcome = dns_last.outcome;
	pending->client_limit = limit;
	pending->client_opt = dns_last.had_opt;
	pending->connection = connection;
	pending->query_len = kept;
	memcpy(pending->query, query, kept);
	if (connection)
		connection->pending++;
	if (listener)
		listener->pending++;
	if (upstream_forward(query, query_len, connection != NULL,
			     forward_reply, pending) != 0)
		forward_reply(pending, NULL, 0);
}


/* ------------------------------------------------------- listeners */

static int
open_socket(const struct endpoint *endpoint, int type)
{
	int family = endpoint->addr.ss_family, on = 1;
	int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
	if (type == SOCK_STREAM)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
	if (bind(fd, (const struct sockaddr *)&endpoint->addr,
		 endpoint->addr_len) != 0 ||
	    (type == SOCK_STREAM && listen(fd, TCP_BACKLOG) != 0)) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/*
 * The socket the service manager passed for endpoint and type (socket
 * activation), or else one hard binds itself.
 */
static int
listener_socket(const struct endpoint *endpoint, int type)
{
	int fd = activation_take(endpoint, type);

	return fd >= 0 ? fd : open_socket(endpoint, type);
}

/* A passed socket stays open: the manager holds its address. */
static void
listener_socket_close(int fd)
{
	if (!activation_give_back(fd))
		close(fd);
}

/*
 * Listeners a reload has closed whose UDP socket still has forwarded
 * queries to answer.  They belong to no server: a reload may replace the
 * server, and at a stop the last replies come after it is gone.
 */
static struct listener *draining_listeners;

static int
same_endpoint(const struct endpoint *a, const struct endpoint *b)
{
	return a->addr_len == b->addr_len &&
	    memcmp(&a->addr, &b->addr, a->addr_len) == 0;
}

static void
listener_free(struct listener *listener)
{
	for (struct listener **link = &draining_listeners; *link;
	     link = &(*link)->next)
		if (*link == listener) {
			*link = listener->next;
			break;
		}
	listener_socket_close(listener->udp_fd);
	free(listener);
}

/*
 * The UDP socket outlives the listener while forwarded queries still
 * have to be answered from it (a reload that moves the port): their
 * replies must leave from the address the client asked.
 */
static void
listener_close(struct dns_server *server, struct listener *listener)
{
	ev_io_stop(server->loop, &listener->udp_io);
	ev_io_stop(server->loop, &listener->tcp_io);
	listener_socket_close(listener->tcp_fd);
	listener->tcp_fd = -1;
	listener->closed = 1;
	if (listener->pending == 0) {
		listener_free(listener);
		return;
	}
	listener->next = draining_listeners;
	draining_listeners = listener;
}

/*
 * While a cold start waits for its first round of checks (har.c), the
 * listeners are bound but not read: the kernel keeps the queries, and
 * they are answered from the whole round once dns_server_release runs.
 */
static int listeners_held;

static void
listener_watch(struct dns_server *server, struct listener *listener)
{
	udp_batch_init();
	listener->server = server;
	ev_io_init(&listener->udp_io, udp_readable, listener->udp_fd, EV_READ);
	listener->udp_io.data = listener;
	ev_io_init(&listener->tcp_io, tcp_accept, listener->tcp_fd, EV_READ);
	listener->tcp_io.data = listener;
	if (listeners_held)
		return;
	ev_io_start(server->loop, &listener->udp_io);
	ev_io_start(server->loop, &listener->tcp_io);
}

void
dns_server_hold(void)
{
	listeners_held = 1;
}

void
dns_server_release(struct dns_server *server)
{
	listeners_held = 0;
	for (struct listener *l = server->listeners; l; l = l->next) {
		ev_io_start(server->loop, &l->udp_io);
		ev_io_start(server->loop, &l->tcp_io);
	}
}

static struct listener *
listener_open(const struct endpoint *endpoint)
{
	struct listener *listener = calloc(1, sizeof(*listener));

	if (!listener)
		return NULL;
	listener->endpoint = *endpoint;
	listener->udp_fd = listener_socket(endpoint, SOCK_DGRAM);
	if (listener->udp_fd < 0) {
		log_error("cannot listen on %s (UDP): %s", endpoint->text,
			  strerror(errno));
		free(listener);
		return NULL;
	}
	listener->tcp_fd = listener_socket(endpoint, SOCK_STREAM);
	if (listener->tcp_fd < 0) {
		log_error("cannot listen on %s (TCP): %s", endpoint->text,
			  strerror(errno));
		listener_socket_close(listener->udp_fd);
		free(listener);
		return NULL;
	}
	return listener;
}

/* Takes the previous server's listener on the same address and port. */
static struct listener *
listener_reuse(struct dns_server *previous, const struct endpoint *endpoint)
{
	struct listener **link;

	if (!previous)
		return NULL;
	for (link = &previous->listeners; *link; link = &(*link)->next) {
		struct listener *listener = *link;

		if (same_endpoint(&listener->endpoint, endpoint)) {
			*link = listener->next;
			ev_io_stop(previous->loop, &listener->udp_io);
			ev_io_stop(previous->loop, &listener->tcp_io);
			listener->reused = 1;
			return listener;
		}
	}
	return NULL;
}

/* Where draining_listeners holds a listener on endpoint; NULL if none. */
static struct listener **
draining_find(const struct endpoint *endpoint)
{
	for (struct listener **link = &draining_listeners; *link;
	     link = &(*link)->next)
		if (same_endpoint(&(*link)->endpoint, endpoint))
			return link;
	return NULL;
}

/*
 * A reload that moves the port back while replies are still due from the
 * old socket takes that socket back (a second one cannot be bound to its
 * address); only its TCP socket, closed with it, is opened anew.  The
 * replies still leave from it, as their clients expect.
 */
static struct listener *
listener_revive(struct listener **link)
{
	struct listener *listener = *link;

	listener->tcp_fd = listener_socket(&listener->endpoint, SOCK_STREAM);
	if (listener->tcp_fd < 0) {
		log_error("cannot listen on %s (TCP): %s",
			  listener->endpoint.text, strerror(errno));
		return NULL;
	}
	*link = listener->next;
	listener->next = NULL;
	listener->closed = 0;
	return listener;
}

/* The previous server's listener on endpoint, one draining, or a new one. */
static struct listener *
listener_get(struct dns_server *previous, const struct endpoint *endpoint)
{
	struct listener *listener = listener_reuse(previous, endpoint);
	struct listener **draining;

	if (listener)
		return listener;
	draining = draining_find(endpoint);
	if (draining)
		return listener_revive(draining);
	return listener_open(endpoint);
}

static void
server_close_listeners(struct dns_server *server)
{
	while (server->listeners) {
		struct listener *listener = server->listeners;

		server->listeners = listener->next;
		listener_close(server, listener);
	}
}

/* ------------------------------------------------------------ server */

/*
 * Listens on every configured address, with the socket the service
 * manager passed for it or one bound here.  On a reload the previous server's
 * sockets on unchanged addresses are carried over (a socket cannot be
 * bound twice) and the rest are opened before the old ones are closed, so
 * no query finds the port shut.  Returns NULL if any address fails; the
 * previous server then keeps every socket it had.
 */
struct dns_server *
dns_server_start(struct ev_loop *loop, const struct config *config,
		 struct dns_server *previous)
{
	struct dns_server *server = calloc(1, sizeof(*server));
	struct endpoint *endpoints;
	int count = config->bind_interface_count;

	if (!server)
		return NULL;
	server->loop = loop;
	server->max_connections = previous ? previous->max_connections :
	    descriptors_check(config);
	server->idle_timeout = config->tcp_idle_timeout;
	ev_init(&server->accept_retry, accept_retry);
	server->accept_retry.data = server;
	ev_init(&server->accept_recovered, accept_recovered);
	server->accept_recovered.data = server;
	endpoints = calloc((size_t)count, sizeof(*endpoints));
	if (!endpoints) {
		free(server);
		return NULL;
	}
	for (int i = 0; i < count; i++) {
		char text[80];

		if (strchr(config->bind_interfaces[i], ':'))
			snprintf(text, sizeof(text), "[%s]:%d",
				 config->bind_interfaces[i], config->listen_port);
		else
			snprintf(text, sizeof(text), "%s:%d",
				 config->bind_interfaces[i], config->listen_port);
		if (endpoint_parse(text, config->listen_port, &endpoints[i]) != 0) {
			log_error("cannot listen on %s: not an IP address",
				  config->bind_interfaces[i]);
			goto fail;
		}
	}
	for (int i = 0; i < count; i++) {
		struct listener *listener = NULL;

		for (struct listener *l = server->listeners; l; l = l->next)
			if (same_endpoint(&l->endpoint, &endpoints[i]))
				listener = l;
		if (listener)
			continue;	/* listed twice */
		listener = listener_get(previous, &endpoints[i]);
		if (!listener)
			goto fail;
		listener->next = server->listeners;
		server->listeners = listener;
		listener_watch(server, listener);
	}
	free(endpoints);
	for (struct listener *l = server->listeners; l; l = l->next)
		l->reused = 0;
	if (previous) {
		/* The connections of the old server stay with the new one. */
		server->connections = previous->connections;
		server->connection_count = previous->connection_count;
		server->output_total = previous->output_total;
		server->shed_streak = previous->shed_streak;
		server->accept_streak = previous->accept_streak;
		for (struct tcp_connection *c = server->connections; c; c = c->next)
			c->server = server;
		previous->connections = NULL;
		previous->connection_count = 0;
		ev_timer_stop(loop, &previous->accept_retry);
		ev_timer_stop(loop, &previous->accept_recovered);
		server_close_listeners(previous);
		free(previous);
	}
	return server;
fail:
	free(endpoints);
	/* Reused sockets go back, so the old server keeps serving. */
	while (server->listeners) {
		struct listener *listener = server->listeners;

		server->listeners = listener->next;
		if (listener->reused) {
			ev_io_stop(loop, &listener->udp_io);
			ev_io_stop(loop, &listener->tcp_io);
			listener->reused = 0;
			listener->next = previous->listeners;
			previous->listeners = listener;
			listener_watch(previous, listener);
		} else {
			listener_close(server, listener);
		}
	}
	free(server);
	return NULL;
}

/* TCP limits apply to existing connections from the next event on. */
void
dns_server_configure(struct dns_server *server, const struct config *config)
{
	server->max_connections = descriptors_check(config);
	server->idle_timeout = config->tcp_idle_timeout;
	for (struct tcp_connection *c = server->connections; c; c = c->next)
		c->idle.repeat = server->idle_timeout;
}

void
dns_server_stop(struct dns_server *server)
{
	if (!server)
		return;
	ev_timer_stop(server->loop, &server->accept_retry);
	ev_timer_stop(server->loop, &server->accept_recovered);
	server->accept_paused = 0;
	while (server->connections)
		tcp_connection_close(server->connections);
	server_close_listeners(server);
	free(server);
}
