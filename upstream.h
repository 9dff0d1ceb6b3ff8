/*
 * upstream.h - what upstream.c (which nameserver, when, how often) and
 * upstream_udp.c (the UDP sockets a try leaves from) share.  Nothing
 * else includes it.
 */
#ifndef HAR_UPSTREAM_H
#define HAR_UPSTREAM_H

#include "har.h"

/* Tries a UDP socket sends before the next one goes from a new socket
 * (a new source port). */
#define UPSTREAM_QUERIES_PER_SOCKET 32
/* The UDP sockets forwarding holds at once, every nameserver together.
 * At the limit a nameserver's current socket takes more than
 * UPSTREAM_QUERIES_PER_SOCKET tries rather than a new one being opened;
 * a nameserver without a socket may always open one. */
#define UPSTREAM_UDP_SOCKETS_MAX 256

struct try;		/* upstream.c: one send of a query to one nameserver */
struct udp_socket;	/* upstream_udp.c */

/* A try's place on a UDP socket, while it is in flight. */
struct udp_try {
	struct try *owner;
	struct udp_socket *sock;	/* NULL when not in flight */
	struct udp_try *prev, *next;	/* the socket's tries in flight */
	const uint8_t *question;	/* the query's, for matching the reply */
	size_t question_len;		/* name, type and class */
	uint16_t id;
};

/* The UDP sockets to one nameserver. */
struct udp_link {
	const struct endpoint *endpoint;
	struct udp_socket *current;	/* takes the next try; NULL: opens one */
	struct udp_socket *sockets;	/* every open one, current included */
	int refused;			/* an errno a send got, for refuse_event */
	ev_timer refuse_event;		/* fed, never started: fails the tries */
};

/* A random query ID (RFC 5452), from the kernel's random source. */
uint16_t upstream_random_id(void);

void udp_start(struct ev_loop *loop);
void udp_link_init(struct udp_link *link, const struct endpoint *endpoint);
/* Once no try of the link is in flight (none is then open). */
void udp_link_close(struct udp_link *link);
/*
 * Sends query from one of the link's sockets, with an ID of its own
 * written into the query.  0: in flight until upstream_udp_done or
 * udp_cancel.  Otherwise nothing is in flight: a negative errno when hard
 * itself could not send (no socket: logged here), a positive one when the
 * nameserver cannot be reached.
 */
int udp_send(struct udp_link *link, struct udp_try *try, uint8_t *query,
	     size_t query_len);
/* Takes a try out of flight without a call of upstream_udp_done. */
void udp_cancel(struct udp_try *try);
/* Ends every try of the link with ECANCELED (hard is stopping). */
void udp_link_cancel_all(struct udp_link *link);

/*
 * upstream.c: the end of a UDP try, out of flight by now: its reply
 * (error 0), ECANCELED, or the error the socket got, which every try in
 * flight to that nameserver gets at once (an ICMP port unreachable is
 * reported to one socket call, whichever query it was for).
 */
void upstream_udp_done(struct udp_try *try, int error, const uint8_t *reply,
		       size_t reply_len);

#endif
