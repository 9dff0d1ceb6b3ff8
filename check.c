/*
 * check.c - when each address is checked and what happens with the
 * result; which names are idle; and when each candidate's host name is
 * resolved again.
 *
 * Every address has its own libev timer.  A check starts when it fires;
 * when the check ends the next one is set, so a check never overlaps the
 * one before it.  The HTTP and TCP mechanics are in check_http.c and
 * check_tcp.c.
 *
 * The schedule.  Each address gets a phase, a fraction of the interval,
 * when it is first scheduled: the n-th address ever scheduled gets
 * frac(rotation + n / golden ratio), a sequence of which any run of
 * consecutive members is spread evenly, and rotation is random per
 * process.  So one hard's checks are spread evenly over every interval
 * (a name's addresses are consecutive, and so is the whole registry),
 * and two hards with the same configuration are not in step.  Checks are
 * due on a grid: origin + (phase + k) * interval.  After a check that
 * started at s the next is at the first grid time at least half an
 * interval after s, moved by a random offset of up to a quarter of
 * check_jitter's share of the interval either way.  The offsets average
 * out and never add up, so the spread stays even for good, while every
 * interval differs; the grid, not the previous check, anchors each one.
 * An address with unknown health is checked at once (spread over at most
 * a second by its phase) and joins the grid after that; one restored
 * from the data file is first checked at its grid time, unless its last
 * check is older than the interval, when it is checked at once too.  A check that
 * disagrees with the address's health (see schedule_disagrees) is
 * followed by a recheck after recheck_frequency instead.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "har.h"

#define RESOLVE_RETRY 5.0
#define RESOLVE_MIN_TTL 1.0
#define RESOLVE_MAX_TTL 3600.0
#define SWEEP_INTERVAL 0.1

/*
 * An even schedule wakes hard for every check alone, and on a virtual
 * machine a wake-up from idle costs more than a plain check: spread
 * evenly, 250 checks a second cost 1.3 to 1.7 times the CPU of the same
 * checks sent in one burst.  So libev may let the loop sleep up to this
 * long while timers fall due, and the checks due in that time start (and
 * their connections complete) together.  Every second still gets its
 * even share.  It applies to all of the loop's timers, which fire at
 * most this late; sockets, and so queries, are not delayed at all.
 */
#define TIMER_BATCH 0.025

/* 1 / golden ratio: the step of the phase sequence. */
#define PHASE_STEP 0.6180339887498949

/*
 * A check postponed for want of a socket is tried again after this
 * (give or take half, so postponed checks do not retry in step); the
 * shortage is over once no check has been postponed for a second.
 */
#define POSTPONE_DELAY 0.25
#define SHORTAGE_OVER 1.0

static struct ev_loop *check_loop;
static struct registry *check_registry;
static ev_timer sweep_timer;
static double check_origin;	/* monotonic: where every grid starts */
static double check_rotation;	/* this process's turn of the phases */
static unsigned long phase_sequence;	/* addresses given a phase so far */
/* First checks scheduled by this check_start_all: of addresses with a
 * restored health, and of those older than their interval. */
static int first_restored, first_restored_old;
static uint64_t random_state;
static struct log_streak shortage_streak;	/* checks postponed */
static ev_timer shortage_timer;

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

/* ------------------------------------------------------ randomness */

/*
 * Seeded once from the kernel, not from the clock: a fleet started by one
 * command in the same second must not share its phases or its jitter.
 */
static void
random_seed(void)
{
	if (getrandom(&random_state, sizeof(random_state), GRND_NONBLOCK) ==
	    (ssize_t)sizeof(random_state))
		return;
	/* No entropy yet (early boot): the pid and the clocks still differ
	 * from one process and host to the next. */
	log_debug("getrandom failed; seeding the check schedule from the clock");
	random_state = (uint64_t)getpid() * 0x9e3779b97f4a7c15u ^
	    (uint64_t)(wall_now() * 1e9) ^ (uint64_t)(monotonic_now() * 1e9);
}

/* Uniform in [0, 1): splitmix64, plenty for spreading checks. */
static double
random_unit(void)
{
	uint64_t z = (random_state += 0x9e3779b97f4a7c15u);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	z ^= z >> 31;
	return (double)(z >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------ the schedule's rules */

double
schedule_phase_of(unsigned long sequence, double rotation)
{
	double phase = fmod(rotation + (double)sequence * PHASE_STEP, 1.0);

	return phase < 0 ? phase + 1 : phase;
}

double
schedule_first_delay(double phase, double frequency, int restored)
{
	return phase * (restored ? frequency : fmin(frequency, 1.0));
}

double
schedule_grid_start(double origin, double phase, double period,
		    double not_before, double jitter, double u)
{
	double k = ceil((not_before - origin) / period - phase);
	double slot = origin + (phase + k) * period;

	if (slot < not_before)	/* rounding */
		slot += period;
	return slot + jitter * period * (u - 0.5) / 2;
}

double
schedule_period(const struct name *name)
{
	return name->idle ? name->config->idle_check_frequency :
	    name->config->check_frequency;
}

/*
 * A failure of an up address or a success of a down one: rise or fall
 * is under way, and the next check should confirm it soon.  Unknown
 * health never disagrees: the first result decides it by itself.
 */
int
schedule_disagrees(const struct address *address, int success)
{
	return (address->health == HEALTH_UP && !success) ||
	    (address->health == HEALTH_DOWN && success);
}

double
schedule_next_start(struct address *address, int success, double started,
		    double origin, double u)
{
	const struct name *name = address->candidate->name;
	double period = schedule_period(name);

	address->scheduled_period = period;
	address->rechecking = schedule_disagrees(address, success);
	if (address->rechecking)
		return started + name->config->recheck_frequency;
	return schedule_grid_start(origin, address->phase, period,
				   started + period / 2,
				   name->config->check_jitter, u);
}

/*
 * A name is idle once no query has come for idle_after seconds since its
 * last query or, when none is known, since hard first looked.  A query
 * wakes it; so does a reload that makes it no longer quiet enough.
 */
enum activity_change
check_name_activity(struct name *name, double now)
{
	double idle_after = name->config->idle_after;
	int quiet;

	if (name->queried) {
		name->queried = 0;
		name->last_query_time = now;
		name->quiet_since = now;
		name->store_dirty = 1;
	}
	if (isnan(name->quiet_since))
		name->quiet_since = isnan(name->last_query_time) ? now :
		    name->last_query_time;
	quiet = idle_after > 0 && now - name->quiet_since >= idle_after;
	if (quiet == name->idle)
		return ACTIVITY_SAME;
	name->idle = quiet;
	name->store_dirty = 1;
	return quiet ? ACTIVITY_IDLED : ACTIVITY_WOKEN;
}

/* ------------------------------------------------------ the sweep */

static void check_schedule_address(struct address *address, double delay);

/*
 * The first place on the address's grid of period that is at least half
 * a period after its last check and not before now.
 */
static double
grid_after_last(const struct address *address, double period, double now)
{
	return schedule_grid_start(check_origin, address->phase, period,
				   fmax(address->last_started + period / 2, now),
				   address_config(address)->check_jitter,
				   random_unit());
}

/*
 * Where an address's next check goes when its name wakes: at once
 * (spread over at most a second) if it has not been checked in the last
 * check_frequency, else its place on the awake grid.  Checking the
 * recently checked ones again would turn every query of a name that
 * idles quickly into a round of checks.  Returns 1 if checked at once.
 */
static int
wake_address(struct address *address, double frequency, double now)
{
	if (address->check || !address->has_phase || address->rechecking)
		return 0;	/* its end, its first check or its recheck comes */
	address->scheduled_period = frequency;
	if (address->last_started == 0 ||
	    now - address->last_started > frequency) {
		check_schedule_address(address,
		    schedule_first_delay(address->phase, frequency, 0));
		return 1;
	}
	check_schedule_address(address,
	    grid_after_last(address, frequency, now) - now);
	return 0;
}

static void
wake_name(struct name *name, const char *why)
{
	const struct config_name *config = name->config;
	int count = 0, now_count = 0;
	double now;

	ev_now_update(check_loop);
	now = monotonic_now();
	for (int i = 0; i < name->candidate_count; i++)
		for (int j = 0; j < name->candidates[i].address_count; j++) {
			count++;
			now_count += wake_address(name->candidates[i].addresses[j],
						  config->check_frequency, now);
		}
	log_info("%s is no longer idle (%s): checking %d of its %d addresses "
		 "now and all every %g s", config->title, why, now_count, count,
		 config->check_frequency);
}

static void
sweep_activity(struct name *name, double now)
{
	const struct config_name *config = name->config;

	switch (check_name_activity(name, now)) {
	case ACTIVITY_SAME:
		return;
	case ACTIVITY_IDLED:
		log_info("%s is idle: no query for %.0f s; checking its "
			 "addresses every %g s until it is queried",
			 config->title, now - name->quiet_since,
			 config->idle_check_frequency);
		return;
	case ACTIVITY_WOKEN:
		wake_name(name, name->last_query_time == now ? "queried" :
			  "idle_after changed");
		return;
	}
}

/*
 * A new RTT alone rarely changes an answer, and re-ranking a big name
 * after every check would cost more than the checks, so such names are
 * marked stale and re-ranked together a few times a second.  A change
 * of health re-ranks at once: that is failover.  The same sweep turns
 * the answer path's query marks into activity, so the answer path only
 * stores a flag.
 */
static void
sweep_names(struct ev_loop *loop, ev_timer *timer, int revents)
{
	double now;

	(void)loop;
	(void)timer;
	(void)revents;
	if (!check_registry)
		return;
	now = wall_now();
	for (int i = 0; i < check_registry->name_count; i++) {
		struct name *name = &check_registry->names[i];

		if (name->stale)
			select_update_all(name);
		sweep_activity(name, now);
	}
}

static void check_fire(struct ev_loop *loop, ev_timer *timer, int revents);
static void first_round_follow(void);

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
	double started = check->started;
	double next;
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
	store_record_check(address, success,
			   health_changed || address->draining != was_draining);
	address->last_started = started;
	next = schedule_next_start(address, success, started, check_origin,
				   random_unit());
	if (address->rechecking)
		log_debug("recheck of %s %s in %g s: %s but %s",
			  address->candidate->config->title, address->text,
			  config->recheck_frequency,
			  success ? "success" : "failure",
			  address->health == HEALTH_UP ? "up" : "down");
	/* Timers count from the loop's cached time, which lags the clock by
	 * as long as this iteration has run so far: catch it up, or the
	 * check comes that much before its grid time. */
	ev_now_update(check_loop);
	check_schedule_address(address, next - monotonic_now());
	first_round_follow();
}

int
check_short_of_sockets(int error)
{
	return error == EMFILE || error == ENFILE || error == ENOBUFS ||
	    error == ENOMEM;
}

static void
shortage_over(struct ev_loop *loop, ev_timer *timer, int revents)
{
	unsigned long postponed = log_streak_ok(&shortage_streak);

	(void)loop;
	(void)timer;
	(void)revents;
	log_info("checks get sockets again, after %lu postponed for want of one",
		 postponed);
}

/*
 * hard itself is out of descriptors (or of memory for a socket): the
 * check proves nothing about the server.  It is not recorded, and the
 * address keeps its health and is checked again shortly.  One warning
 * for a run of such checks, and one line with their count when it ends.
 */
void
check_postpone(struct check *check, int error)
{
	struct address *address = check->address;

	address->check = NULL;
	free(check);
	if (log_streak_fail(&shortage_streak))
		log_warning("cannot open a socket for a check of %s %s: %s; hard "
			    "itself is short of them, so checks are postponed, "
			    "not counted against their servers, and tried again "
			    "every %g s or so", address->candidate->config->title,
			    address->text, strerror(error), POSTPONE_DELAY);
	ev_timer_stop(check_loop, &shortage_timer);
	ev_timer_set(&shortage_timer, SHORTAGE_OVER, 0);
	ev_timer_start(check_loop, &shortage_timer);
	ev_now_update(check_loop);
	check_schedule_address(address, POSTPONE_DELAY * (0.5 + random_unit()));
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
	address->rechecking = 0;
	address->scheduled_period = schedule_period(address->candidate->name);
	if (check_loop)
		check_schedule_address(address, 0);
}

static void
assign_phase(struct address *address)
{
	if (address->has_phase)
		return;
	address->phase = schedule_phase_of(phase_sequence++, check_rotation);
	address->has_phase = 1;
}

/*
 * State restored from a check older than the interval (hard stopped for
 * longer, a reboot, a clock that went back) says nothing of the server
 * now: a server that died or came back meanwhile would be answered
 * wrongly until its grid time, up to a whole interval after the start.
 */
static int
restored_recently(const struct address *address, double period)
{
	double age = wall_now() - address->last_check_time;

	return address->health != HEALTH_UNKNOWN && age >= 0 && age <= period;
}

/*
 * Unknown, or restored from an old check: at once (spread over at most a
 * second by the phase); restored from a recent one: at its grid time, so
 * a fleet restarted together still checks evenly.
 */
static void
schedule_first_check(struct address *address)
{
	const struct name *name = address->candidate->name;
	double period = schedule_period(name);
	int restored = restored_recently(address, period);

	assign_phase(address);
	address->rechecking = 0;
	address->scheduled_period = period;
	if (address->health != HEALTH_UNKNOWN) {
		first_restored++;
		first_restored_old += !restored;
	}
	check_schedule_address(address,
	    schedule_first_delay(address->phase, restored ? period :
				 name->config->check_frequency, restored));
}

/*
 * How many restored addresses a start checks at once: after a restart,
 * those whose turn came while no hard was running, a share of them about
 * the restart's gap divided by check_frequency.
 */
static void
log_restored_old(void)
{
	if (first_restored_old > 0)
		log_info("%d of %d restored addresses were last checked longer "
			 "ago than their check_frequency: checking them now "
			 "(within a second)", first_restored_old, first_restored);
	first_restored = first_restored_old = 0;
}

/* ------------------------------------------------------ first round */

/*
 * A cold start holds its listeners until every address has been checked
 * once (or its state restored from a recent check), so that the first
 * answers come from a whole round, not from whichever checks ended first:
 * no SERVFAIL for a name whose servers are up, no far server before the
 * near one has been seen.  har.c caps the wait at a second.
 */
static void (*first_round_done)(void);

static int
address_settled(const struct address *address)
{
	return address->last_started != 0 ||
	    restored_recently(address, schedule_period(address->candidate->name));
}

/* A host name whose first lookup has not answered has no addresses yet. */
static int
candidate_settled(const struct candidate *candidate)
{
	if (candidate->address_count == 0)
		return candidate->config->address_count > 0 ||
		    candidate->known[0] || candidate->known[1];
	for (int i = 0; i < candidate->address_count; i++)
		if (!address_settled(candidate->addresses[i]))
			return 0;
	return 1;
}

static int
first_round_finished(void)
{
	for (int i = 0; check_registry && i < check_registry->name_count; i++) {
		const struct name *name = &check_registry->names[i];

		for (int j = 0; j < name->candidate_count; j++)
			if (!candidate_settled(&name->candidates[j]))
				return 0;
	}
	return 1;
}

int
check_first_round_wait(void (*done)(void))
{
	if (first_round_finished())
		return 0;
	first_round_done = done;
	return 1;
}

void
check_first_round_forget(void)
{
	first_round_done = NULL;
}

/* After each check and lookup, while a start waits: cheap enough for
 * the second it may last. */
static void
first_round_follow(void)
{
	void (*done)(void) = first_round_done;

	if (!done || !first_round_finished())
		return;
	first_round_done = NULL;
	done();
}

/*
 * A reload that changed an address's interval (check_frequency, or
 * idle_check_frequency of an idle name) moves its pending check onto
 * the new grid: at least half a new interval after the last check, and
 * not before now.  A first check of an address restored from the data
 * file (there is no last check) moves to its first place on the new grid
 * if that is sooner.  A recheck, or the first check of an unknown
 * address (within a second), stays.
 */
static void
reschedule_changed_period(struct address *address)
{
	double period = schedule_period(address->candidate->name);
	double now, next;

	if (address->rechecking || address->scheduled_period == period)
		return;
	address->scheduled_period = period;
	if (address->last_started == 0 && address->health == HEALTH_UNKNOWN)
		return;
	ev_now_update(check_loop);
	now = monotonic_now();
	if (address->last_started == 0)
		next = fmin(now + ev_timer_remaining(check_loop, &address->timer),
			    schedule_grid_start(check_origin, address->phase,
				period, now, address_config(address)->check_jitter,
				random_unit()));
	else
		next = grid_after_last(address, period, now);
	check_schedule_address(address, next - now);
}

/* Addresses scheduled already (carried over a reload) keep their place. */
static void
schedule_addresses(struct candidate *candidate)
{
	for (int i = 0; i < candidate->address_count; i++) {
		struct address *address = candidate->addresses[i];

		if (address->check)	/* its end schedules the next */
			continue;
		if (ev_is_active(&address->timer))
			reschedule_changed_period(address);
		else
			schedule_first_check(address);
	}
}

/*
 * Starts checking every address of the registry that is not already
 * scheduled (after a reload, the carried-over ones are), and resolving
 * every candidate that takes its addresses from DNS.
 */
int
check_start_all(struct ev_loop *loop, struct registry *registry)
{
	if (!check_loop) {
		check_loop = loop;
		check_origin = monotonic_now();
		random_seed();
		check_rotation = random_unit();
		ev_timer_init(&sweep_timer, sweep_names, SWEEP_INTERVAL,
			      SWEEP_INTERVAL);
		ev_timer_start(loop, &sweep_timer);
		ev_init(&shortage_timer, shortage_over);
		ev_set_timeout_collect_interval(loop, TIMER_BATCH);
		if (check_http_init(loop) != 0)
			return -1;
	} else {
		check_http_reloaded();
	}
	check_registry = registry;
	for (int i = 0; i < registry->name_count; i++) {
		struct name *name = &registry->names[i];

		for (int j = 0; j < name->candidate_count; j++) {
			struct candidate *candidate = &name->candidates[j];

			schedule_addresses(candidate);
			if (candidate->config->address_count == 0)
				resolve_start(candidate, 0);
		}
	}
	log_restored_old();
	return 0;
}

void
check_stop(void)
{
	if (!check_loop)
		return;
	ev_timer_stop(check_loop, &sweep_timer);
	ev_timer_stop(check_loop, &shortage_timer);
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
	struct ip_address ips[CANDIDATE_RESOLVED_MAX];
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
	schedule_addresses(candidate);
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
	first_round_follow();
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
