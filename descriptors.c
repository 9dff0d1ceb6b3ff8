/*
 * descriptors.c - how many open files hard needs, and how many TCP clients
 * it may serve at once: the soft limit is raised for the configuration,
 * and when the hard limit does not allow enough, the checks and forwarding
 * keep a reserve that TCP clients cannot take (server.c caps its clients
 * at what descriptors_check returns).
 */
#include <errno.h>
#include <string.h>
#include <sys/resource.h>

#include "har.h"

/*
 * What hard needs besides its TCP clients and listeners, with room to
 * spare: standard streams, the event loop and its signals, syslog, the
 * data file (SQLite's database and journal), curl's and c-ares's own,
 * and one more client accepted at the cap before the idlest is closed.
 */
#define DESCRIPTORS_BASE 32
/* A candidate whose host is resolved: a guess at its address count. */
#define DESCRIPTORS_PER_RESOLVED_CANDIDATE 4

/* What hard needs for everything but its TCP clients: its reserve. */
static rlim_t
descriptors_reserved(const struct config *config)
{
	rlim_t needed = DESCRIPTORS_BASE +
	    2 * (rlim_t)config->bind_interface_count +
	    (rlim_t)upstream_descriptors_needed(config);

	/* The metrics listener, its scrapers, and one more at the cap. */
	if (config->metrics_listen.addr_len)
		needed += METRICS_MAX_CONNECTIONS + 2;

	/* A check in flight holds a socket: one per address at most. */
	for (int i = 0; i < config->name_count; i++) {
		const struct config_name *name = &config->names[i];

		for (int j = 0; j < name->candidate_count; j++) {
			int count = name->candidates[j].address_count;

			needed += count ? (rlim_t)count :
			    DESCRIPTORS_PER_RESOLVED_CANDIDATE;
		}
	}
	return needed;
}

/* The soft limit raised to wanted, or as far as the hard limit allows. */
static void
descriptors_raise(struct rlimit *limit, rlim_t wanted,
		  const struct config *config)
{
	rlim_t previous = limit->rlim_cur;

	if (limit->rlim_max != RLIM_INFINITY && limit->rlim_max < wanted)
		wanted = limit->rlim_max;
	if (wanted <= previous)
		return;
	limit->rlim_cur = wanted;
	if (setrlimit(RLIMIT_NOFILE, limit) != 0) {
		log_warning("cannot raise the open file limit to %llu: %s",
			    (unsigned long long)wanted, strerror(errno));
		limit->rlim_cur = previous;
		return;
	}
	log_info("raised the open file limit from %llu to %llu for "
		 "tcp_max_connections = %d", (unsigned long long)previous,
		 (unsigned long long)wanted, config->tcp_max_connections);
}

/*
 * The most TCP clients served at once.  Out of descriptors, it is the
 * checks and forwarding that would fail (a check without a socket is
 * postponed, see check_postpone, but never made), so the soft limit is
 * raised to what the configuration needs, or as far as the hard limit
 * allows; when that is not enough, TCP clients get what the limit leaves
 * after hard's reserve, though never less than half of it (the reserve
 * counts every forward that could be in flight, which is rarely so), and
 * the operator is told what to raise.  At the cap a new client is served
 * by closing the idlest, as at tcp_max_connections.
 */
int
descriptors_check(const struct config *config)
{
	rlim_t reserved = descriptors_reserved(config);
	rlim_t needed = reserved + (rlim_t)config->tcp_max_connections;
	struct rlimit limit;
	rlim_t clients;

	if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
		log_warning("cannot read the open file limit: %s", strerror(errno));
		return config->tcp_max_connections;
	}
	if (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= needed)
		return config->tcp_max_connections;
	descriptors_raise(&limit, needed, config);
	if (limit.rlim_cur >= needed)
		return config->tcp_max_connections;
	clients = limit.rlim_cur / 2;
	if (limit.rlim_cur > reserved && limit.rlim_cur - reserved > clients)
		clients = limit.rlim_cur - reserved;
	if (clients > (rlim_t)config->tcp_max_connections)
		clients = (rlim_t)config->tcp_max_connections;
	if (clients < 1)
		clients = 1;
	log_warning("tcp_max_connections = %d and the checks and forwarding "
		    "need about %llu open files, but the limit is %llu (hard "
		    "limit %llu): at most %llu TCP clients are served at once, "
		    "the idlest closed to make room, so that the checks and "
		    "forwarding keep the rest; raise the limit (LimitNOFILE= "
		    "in the systemd unit, ulimit -n) or lower "
		    "tcp_max_connections", config->tcp_max_connections,
		    (unsigned long long)needed, (unsigned long long)limit.rlim_cur,
		    (unsigned long long)limit.rlim_max, (unsigned long long)clients);
	return (int)clients;
}
