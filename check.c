/*
 * check.c - when each address is checked and what happens with the
 * result; and when each candidate's host name is resolved again.
 *
 * Every address has its own libev timer.  A check starts when it fires;
 * when the check ends the next one is set for check_frequency after this
 * one's start, so a check never overlaps the one before it.  The HTTP and
 * TCP mechanics are in check_http.c and check_tcp.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "har.h"

#define RESOLVE_RETRY 5.0
#define RESOLVE_MIN_TTL 1.0
#define RESOLVE_MAX_TTL 3600.0
#define STALE_INTERVAL 0.1

static struct ev_loop *check_loop;
static struct registry *check_registry;
static ev_timer stale_timer;

double
monotonic_now(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

double
wall_now(void)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static const struct config_name *
address_config(const struct address *address)
{
	return address->candidate->name->config;
}

static const char *
status_text(int status, char *buffer, size_t size)
{
	switch (status) {
	case STATUS_TIMEOUT:
		return "timeout";
	case STATUS_CONNECT_ERROR:
		return "connection failed";
	case STATUS_RESPONSE_ERROR:
		return "bad response";
	case STATUS_TLS_ERROR:
		return "TLS error";
	case STATUS_RESOLVE_ERROR:
		return "resolution failed";
	case STATUS_OTHER_ERROR:
		return "error";
	case STATUS_BODY_MISMATCH:
		return "expect_body not found";
	}
	if (status == 0)
		return "connected";
	snprintf(buffer, size, "HTTP %d", status);
	return buffer;
}

static void
log_health_change(const struct address *address)
{
	char buffer[32];
	const char *why = status_text(address->last_status, buffer, sizeof(buffer));

	if (address->health == HEALTH_UP)
		log_info("%s candidate %s address %s is up (%s, RTT %.1f ms)",
			 address_config(address)->title,
			 address->candidate->config->title, address->text, why,
			 address->last_rtt * 1000);
	else
		log_info("%s candidate %s address %s is down (%s)",
			 address_config(address)->title,
			 address->candidate->config->title, address->text, why);
}

static void
log_drain_change(const struct address *address)
{
	if (address->draining)
		log_info("%s candidate %s address %s is draining (HTTP %d): "
			 "answered only when no healthy address remains",
			 address_config(address)->title,
			 address->candidate->config->title, address->text,
			 address->last_status);
	else
		log_info("%s candidate %s address %s is no longer draining "
			 "(HTTP %d)", address_config(address)->title,
			 address->candidate->config->title, address->text,
			 address->last_status);
}

/*
 * A new RTT alone rarely changes an answer, and re-ranking a big name
 * after every check would cost more than the checks, so such names are
 * marked stale and re-ranked together a few times a second.  A change
 * of health re-ranks at once: that is failover.
 */
static void
stale_names(struct ev_loop *loop, ev_timer *timer, int revents)
{
	(void)loop;
	(void)timer;
	(void)revents;
	if (!check_registry)
		return;
	for (int i = 0; i < check_registry->name_count; i++)
		if (check_registry->names[i].stale)
			select_update_all(&check_registry->names[i]);
}

static void check_fire(struct ev_loop *loop, ev_timer *timer, int revents);

static void
check_schedule_address(struct address *address, double delay)
{
	ev_timer_stop(check_loop, &address->timer);
	ev_timer_init(&address->timer, check_fire, delay > 0 ? delay : 0, 0);
	address->timer.data = address;
	ev_timer_start(check_loop, &address->timer);
}

void
check_done(struct check *check, int status, int success,
	   double connect_time, double total_time)
{
	struct address *address = check->address;
	const struct config_name *config = address_config(address);
	double elapsed = monotonic_now() - check->started;
	double delay = config->check_frequency - elapsed;
	int was_draining = address->draining;
	int health_changed;

	address->check = NULL;
	free(check);
	/* The server works and asks for a drain: see select_record_result. */
	if (select_drain_status(config, status))
		success = 1;
	log_debug("check of %s %s: status %d, %s, %.1f ms",
		  address->candidate->config->title, address->text, status,
		  success ? "success" : "failure", total_time * 1000);
	health_changed = select_record_result(address, status, success,
					      connect_time, total_time,
					      wall_now());
	if (health_changed)
		log_health_change(address);
	if (address->draining != was_draining)
		log_drain_change(address);
	if (health_changed || address->draining != was_draining)
		select_update_all(address->candidate->name);
	else
		address->candidate->name->stale = 1;
	store_record_check(address, success);
	check_schedule_address(address, delay);
}

static void
check_fire(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct address *address = timer->data;
	struct check *check;
	int status;

	(void)revents;
	if (address->check)	/* still running: never overlap */
		return;
	check = calloc(1, sizeof(*check));
	if (!check) {
		log_error("out of memory starting a check");
		check_schedule_address(address, 1.0);
		return;
	}
	check->address = address;
	check->started = monotonic_now();
	address->check = check;
	if (address_config(address)->check_method == CHECK_TCP)
		status = check_tcp_start(loop, check);
	else
		status = check_http_start(check);
	if (status != 0)	/* failed before it could start */
		check_done(check, status, 0, 0, 0);
}

void
check_cancel(struct address *address)
{
	struct check *check = address->check;

	if (check_loop)
		ev_timer_stop(check_loop, &address->timer);
	if (!check)
		return;
	if (check->transport_kind == CHECK_TCP)
		check_tcp_cancel(check_loop, check);
	else
		check_http_cancel(check);
	address->check = NULL;
	free(check);
}

void
check_restart(struct address *address)
{
	check_cancel(address);
	if (check_loop)
		check_schedule_address(address, 0);
}

/* The first round is spread evenly over up to a second. */
static void
schedule_new_addresses(struct candidate *candidate, int *index, int total)
{
	double window = candidate->name->config->check_frequency;

	if (window > 1.0)
		window = 1.0;
	for (int i = 0; i < candidate->address_count; i++) {
		struct address *address = candidate->addresses[i];

		if (ev_is_active(&address->timer) || address->check)
			continue;
		check_schedule_address(address,
		    total > 0 ? window * (*index)++ / total : 0);
	}
}

static int
registry_address_count(const struct registry *registry)
{
	int total = 0;

	for (int i = 0; i < registry->name_count; i++)
		for (int j = 0; j < registry->names[i].candidate_count; j++)
			total += registry->names[i].candidates[j].address_count;
	return total;
}

/*
 * Starts checking every address of the registry that is not already
 * scheduled (after a reload, the carried-over ones are), and resolving
 * every candidate that takes its addresses from DNS.
 */
int
check_start_all(struct ev_loop *loop, struct registry *registry)
{
	int index = 0, total = registry_address_count(registry);

	if (!check_loop) {
		check_loop = loop;
		ev_timer_init(&stale_timer, stale_names, STALE_INTERVAL,
			      STALE_INTERVAL);
		ev_timer_start(loop, &stale_timer);
		if (check_http_init(loop) != 0)
			return -1;
	}
	check_registry = registry;
	for (int i = 0; i < registry->name_count; i++) {
		struct name *name = &registry->names[i];

		for (int j = 0; j < name->candidate_count; j++) {
			struct candidate *candidate = &name->candidates[j];

			schedule_new_addresses(candidate, &index, total);
			if (candidate->config->address_count == 0)
				resolve_start(candidate, 0);
		}
	}
	return 0;
}

void
check_stop(void)
{
	if (!check_loop)
		return;
	ev_timer_stop(check_loop, &stale_timer);
	check_registry = NULL;
	check_http_cleanup();
}

/* ------------------------------------------------------- resolution */

/*
 * One resolution of a candidate's host: an A and an AAAA lookup.  It
 * outlives the candidate if a reload removes it mid-flight, so the
 * lookups' callbacks have something to land on.
 */
struct resolution;

struct resolution_lookup {
	struct resolution *resolution;
	int family_index;
};

struct resolution {
	struct candidate *candidate;	/* NULL once cancelled */
	int pending;
	struct resolution_lookup lookups[2];	/* A, AAAA */
	int failed[2];
	struct ip_address ips[128];
	int count;
	double ttl;
};

/* Keeps the previous addresses of a family whose lookup failed. */
static void
keep_previous(struct resolution *resolution, int family)
{
	struct candidate *candidate = resolution->candidate;
	int size = (int)(sizeof(resolution->ips) / sizeof(resolution->ips[0]));

	for (int i = 0; i < candidate->address_count; i++)
		if (candidate->addresses[i]->ip.family == family &&
		    resolution->count < size)
			resolution->ips[resolution->count++] =
			    candidate->addresses[i]->ip;
}

static void
resolution_finish(struct resolution *resolution)
{
	struct candidate *candidate = resolution->candidate;
	int both_failed = resolution->failed[0] && resolution->failed[1];
	double next;
	unsigned long failures;
	int index = 0;

	candidate->resolution = NULL;
	for (int i = 0; i < 2; i++)
		if (!resolution->failed[i])
			candidate->known[i] = 1;
	if (both_failed || resolution->count == 0) {
		select_update_all(candidate->name);
		if (log_streak_fail(&candidate->resolve_streak))
			log_warning("%s candidate %s: cannot resolve %s; keeping "
				    "its %d previous addresses, retrying every %.0f s",
				    candidate->name->config->title,
				    candidate->config->title,
				    candidate->config->host,
				    candidate->address_count, RESOLVE_RETRY);
		resolve_start(candidate, RESOLVE_RETRY);
		return;
	}
	failures = log_streak_ok(&candidate->resolve_streak);
	if (failures)
		log_info("%s candidate %s: %s resolves again",
			 candidate->name->config->title,
			 candidate->config->title, candidate->config->host);
	if (resolution->failed[0])
		keep_previous(resolution, AF_INET);
	if (resolution->failed[1])
		keep_previous(resolution, AF_INET6);
	candidate_set_addresses(candidate, resolution->ips, resolution->count);
	schedule_new_addresses(candidate, &index, candidate->address_count);
	select_update_all(candidate->name);
	store_note_addresses_changed();
	next = resolution->ttl;
	if (resolution->failed[0] || resolution->failed[1])
		next = RESOLVE_RETRY;
	if (next < RESOLVE_MIN_TTL)
		next = RESOLVE_MIN_TTL;
	if (next > RESOLVE_MAX_TTL)
		next = RESOLVE_MAX_TTL;
	resolve_start(candidate, next);
}

static void
lookup_finished(void *context, int ok, const struct ip_address *ips,
		int count, double ttl)
{
	struct resolution_lookup *lookup = context;
	struct resolution *resolution = lookup->resolution;
	int size = (int)(sizeof(resolution->ips) / sizeof(resolution->ips[0]));

	resolution->pending--;
	if (!ok)
		resolution->failed[lookup->family_index] = 1;
	for (int i = 0; ok && i < count && resolution->count < size; i++)
		resolution->ips[resolution->count++] = ips[i];
	if (ok && count > 0 && ttl < resolution->ttl)
		resolution->ttl = ttl;
	if (resolution->pending > 0)
		return;
	if (resolution->candidate)
		resolution_finish(resolution);
	free(resolution);
}

static void
resolve_fire(struct ev_loop *loop, ev_timer *timer, int revents)
{
	struct candidate *candidate = timer->data;
	struct resolution *resolution = calloc(1, sizeof(*resolution));

	(void)loop;
	(void)revents;
	if (!resolution) {
		log_error("out of memory resolving %s", candidate->config->host);
		resolve_start(candidate, RESOLVE_RETRY);
		return;
	}
	resolution->candidate = candidate;
	resolution->ttl = RESOLVE_MAX_TTL;
	resolution->pending = 2;
	candidate->resolution = resolution;
	for (int i = 0; i < 2; i++) {
		resolution->lookups[i].resolution = resolution;
		resolution->lookups[i].family_index = i;
	}
	upstream_resolve(candidate->config->host, AF_INET, lookup_finished,
			 &resolution->lookups[0]);
	upstream_resolve(candidate->config->host, AF_INET6, lookup_finished,
			 &resolution->lookups[1]);
}

void
resolve_start(struct candidate *candidate, double delay)
{
	ev_timer_stop(check_loop, &candidate->resolve_timer);
	ev_timer_init(&candidate->resolve_timer, resolve_fire, delay, 0);
	candidate->resolve_timer.data = candidate;
	ev_timer_start(check_loop, &candidate->resolve_timer);
}

void
resolve_cancel(struct candidate *candidate)
{
	if (check_loop)
		ev_timer_stop(check_loop, &candidate->resolve_timer);
	if (candidate->resolution) {
		candidate->resolution->candidate = NULL;
		candidate->resolution = NULL;
	}
}
