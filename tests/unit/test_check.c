/*
 * test_check.c - check.c's schedule: the phases that spread one hard's
 * checks, the jittered grid, first checks of unknown and restored
 * addresses, rechecks while rise or fall is under way, and idle names.
 * No network, no event loop: the schedule's arithmetic only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "har.h"
#include "unit.h"
#include "fixture.h"

static void
quiet(const char *message)
{
	(void)message;
}

static struct address *
first_address(struct fixture *f)
{
	return f->registry->names[0].candidates[0].addresses[0];
}

/* A deterministic uniform [0, 1) for the tests. */
static double
test_unit(unsigned *state)
{
	*state = *state * 1103515245u + 12345u;
	return (double)((*state >> 8) & 0xffffff) / 16777216.0;
}

/* How many of count values in [0, span) fall in each of buckets. */
static void
bucket_counts(const double *values, int count, double span, int *buckets,
	      int bucket_count)
{
	memset(buckets, 0, sizeof(int) * (size_t)bucket_count);
	for (int i = 0; i < count; i++) {
		int b = (int)(values[i] / span * bucket_count);

		if (b >= 0 && b < bucket_count)
			buckets[b]++;
	}
}

/* Any run of consecutive phases is spread evenly, whatever the turn. */
static void
test_phases_even(void)
{
	double phases[1000];
	int buckets[10];

	for (int run = 0; run < 3; run++) {
		double rotation = 0.37 * run;
		unsigned long start = 500ul * (unsigned long)run;

		for (int i = 0; i < 1000; i++) {
			phases[i] = schedule_phase_of(start + (unsigned long)i,
						      rotation);
			CHECK(phases[i] >= 0 && phases[i] < 1);
		}
		bucket_counts(phases, 1000, 1.0, buckets, 10);
		for (int b = 0; b < 10; b++)
			CHECK(buckets[b] >= 97 && buckets[b] <= 103);
		/* 20 consecutive ones (one name's addresses): no two within
		 * a third of their even spacing. */
		for (int i = 0; i < 20; i++)
			for (int j = 0; j < i; j++) {
				double gap = fabs(phases[i] - phases[j]);

				CHECK(fmin(gap, 1 - gap) > 1.0 / 60);
			}
	}
	/* Another process turns them: not in step. */
	CHECK(fabs(schedule_phase_of(7, 0.1) - schedule_phase_of(7, 0.6)) > 0.4);
}

/*
 * Unknown health: at once, within min(1 s, check_frequency); restored:
 * over the whole check_frequency.  1000 addresses, 10 buckets each.
 */
static void
test_first_delays(void)
{
	double unknown[1000], restored[1000], fast[1000];
	int buckets[10];

	for (int i = 0; i < 1000; i++) {
		double phase = schedule_phase_of((unsigned long)i, 0.25);

		unknown[i] = schedule_first_delay(phase, 30, 0);
		restored[i] = schedule_first_delay(phase, 30, 1);
		fast[i] = schedule_first_delay(phase, 0.25, 0);
		CHECK(unknown[i] >= 0 && unknown[i] < 1);
		CHECK(restored[i] >= 0 && restored[i] < 30);
		CHECK(fast[i] >= 0 && fast[i] < 0.25);
	}
	bucket_counts(unknown, 1000, 1.0, buckets, 10);
	for (int b = 0; b < 10; b++)
		CHECK(buckets[b] >= 95 && buckets[b] <= 105);
	bucket_counts(restored, 1000, 30.0, buckets, 10);
	for (int b = 0; b < 10; b++)
		CHECK(buckets[b] >= 95 && buckets[b] <= 105);
}

/*
 * Steady state: every interval within [f(1 - j/2), f(1 + j/2)), the mean
 * f, and the checks never drift off their grid.
 */
static void
test_jitter_bounds(void)
{
	const double f = 2, jitters[] = { 0.1, 0.5, 1, 0 };
	unsigned seed = 12345;

	for (size_t n = 0; n < sizeof(jitters) / sizeof(jitters[0]); n++) {
		double j = jitters[n], origin = 1000, phase = 0.3;
		double started = origin + phase * f, sum = 0, low = INFINITY,
		    high = 0;
		int count = 20000, varied = 0;

		for (int i = 0; i < count; i++) {
			double next = schedule_grid_start(origin, phase, f,
			    started + f / 2, j, test_unit(&seed));
			double interval = next - started;

			CHECK(interval >= f * (1 - j / 2) - 1e-9);
			CHECK(interval < f * (1 + j / 2) + 1e-9);
			varied += fabs(interval - f) > 1e-6;
			low = fmin(low, interval);
			high = fmax(high, interval);
			sum += interval;
			started = next;
		}
		CHECK(fabs(sum / count - f) < 1e-3 * f);
		/* Anchored to the grid: the last check is near its slot. */
		CHECK(fabs(fmod(started - origin - phase * f + f / 2, f) - f / 2)
		      <= j * f / 4 + 1e-9);
		if (j > 0) {
			CHECK(varied > count * 9 / 10);
			CHECK(low < f * (1 - j / 2.5) && high > f * (1 + j / 2.5));
		} else {
			CHECK_INT(varied, 0);
		}
	}
}

/* 1000 addresses at 2 s for 100 s: every second within 10% of the mean. */
static void
test_steady_spread(void)
{
	enum { COUNT = 1000, SECONDS = 100 };
	static double next[COUNT];
	int per_second[SECONDS] = { 0 };
	unsigned seed = 99;
	double origin = 50, f = 2;

	for (int i = 0; i < COUNT; i++)
		next[i] = origin + schedule_first_delay(
		    schedule_phase_of((unsigned long)i, 0.8), f, 0);
	for (int i = 0; i < COUNT; i++) {
		double phase = schedule_phase_of((unsigned long)i, 0.8);
		double at = next[i];

		while (at < origin + SECONDS + 10) {
			int second = (int)(at - origin) - 10;

			if (second >= 0 && second < SECONDS)
				per_second[second]++;
			at = schedule_grid_start(origin, phase, f, at + f / 2,
						 0.1, test_unit(&seed));
		}
	}
	for (int s = 0; s < SECONDS; s++)
		CHECK(per_second[s] >= 450 && per_second[s] <= 550);
}

/*
 * After an unknown address's first check (in the first second) the next
 * lands at its phase, half an interval to one and a half later: the
 * first round's bunch spreads evenly over the interval.
 */
static void
test_unknown_then_grid(void)
{
	int buckets[10];
	double second_round[1000];
	double origin = 0, f = 10;

	for (int i = 0; i < 1000; i++) {
		double phase = schedule_phase_of((unsigned long)i, 0.5);
		double first = origin + schedule_first_delay(phase, f, 0);
		double next = schedule_grid_start(origin, phase, f, first + f / 2,
						  0, 0.5);

		CHECK(next - first >= f / 2 && next - first < 1.5 * f);
		second_round[i] = fmod(next - origin, f);
	}
	bucket_counts(second_round, 1000, f, buckets, 10);
	for (int b = 0; b < 10; b++)
		CHECK(buckets[b] >= 95 && buckets[b] <= 105);
}

static const char recheck_config[] =
    "name a.example.com {\n check_frequency = 30\n fall = 3\n rise = 2\n"
    " check_jitter = 0\n"
    " candidate a { address = 127.0.0.2 }\n}\n";

static double
record(struct address *address, int success, double started)
{
	select_record_result(address, success ? 200 : STATUS_CONNECT_ERROR,
			     success, 0.001, 0.002, started);
	return schedule_next_start(address, success, started, 0, 0.5);
}

/*
 * recheck_frequency (default min(1, check_frequency)) follows a check
 * that disagrees with health, until fall or rise is reached or the
 * checks agree again.
 */
static void
test_recheck_transitions(void)
{
	struct fixture f;
	struct address *a;
	double t = 0.3 * 30, next;

	if (!CHECK(fixture_load(&f, recheck_config)))
		return;
	CHECK_DOUBLE(f.config->names[0].recheck_frequency, 1);
	a = first_address(&f);
	a->phase = 0.3;
	a->has_phase = 1;
	/* Unknown: the first result decides, no recheck. */
	next = record(a, 1, t);
	CHECK_INT(a->health, HEALTH_UP);
	CHECK(!a->rechecking);
	CHECK_DOUBLE(next, t + 30);
	t = next;
	/* Up, failing: rechecked every second until fall (3) is reached. */
	next = record(a, 0, t);
	CHECK(a->rechecking);
	CHECK_DOUBLE(next, t + 1);
	t = next;
	next = record(a, 0, t);
	CHECK(a->rechecking);
	CHECK_INT(a->health, HEALTH_UP);
	t = next;
	next = record(a, 0, t);
	CHECK_INT(a->health, HEALTH_DOWN);
	CHECK(!a->rechecking);
	/* Back on its grid: 0.3 of the interval. */
	CHECK_DOUBLE(fmod(next, 30), 9);
	CHECK(next - t >= 15);
	t = next;
	/* Down, one success: rechecked; a failure agrees again. */
	next = record(a, 1, t);
	CHECK(a->rechecking);
	CHECK_DOUBLE(next, t + 1);
	t = next;
	next = record(a, 0, t);
	CHECK(!a->rechecking);
	CHECK_INT(a->health, HEALTH_DOWN);
	t = next;
	/* Down, two successes: up after one recheck (rise 2). */
	next = record(a, 1, t);
	CHECK(a->rechecking);
	t = next;
	next = record(a, 1, t);
	CHECK_INT(a->health, HEALTH_UP);
	CHECK(!a->rechecking);
	/* Failover: from the first failed check, fall 3 takes 2 rechecks:
	 * f + (fall - 1) * r at most, not fall * f. */
	t = next;
	next = record(a, 0, t);
	next = record(a, 0, next);
	next = record(a, 0, next);
	CHECK_INT(a->health, HEALTH_DOWN);
	fixture_free(&f);
}

/* fall 1: the failure agrees at once (down), so no recheck. */
static void
test_recheck_fall_one(void)
{
	struct fixture f;
	struct address *a;

	if (!CHECK(fixture_load(&f, "name a.example.com {\n"
	    " check_frequency = 0.5\n candidate a { address = 127.0.0.2 }\n}\n")))
		return;
	CHECK_DOUBLE(f.config->names[0].recheck_frequency, 0.5);
	a = first_address(&f);
	a->has_phase = 1;
	record(a, 1, 0);
	record(a, 0, 1);
	CHECK_INT(a->health, HEALTH_DOWN);
	CHECK(!a->rechecking);
	fixture_free(&f);
}

static const char idle_config[] =
    "name a.example.com {\n check_frequency = 2\n idle_after = 10\n"
    " idle_check_frequency = 5\n check_jitter = 0\n"
    " candidate a { address = 127.0.0.2 }\n}\n"
    "name b.example.com {\n candidate a { address = 127.0.0.3 }\n}\n"
    "name c.example.com {\n idle_after = 0\n"
    " candidate a { address = 127.0.0.4 }\n}\n";

/* Idle after idle_after without a query; a query wakes it. */
static void
test_idle_and_wake(void)
{
	struct fixture f;
	struct name *a, *b, *c;
	struct address *address;
	double next;

	if (!CHECK(fixture_load(&f, idle_config)))
		return;
	a = &f.registry->names[0];
	b = &f.registry->names[1];
	c = &f.registry->names[2];
	CHECK_DOUBLE(b->config->idle_after, 3600);
	CHECK_DOUBLE(b->config->idle_check_frequency, 60);
	CHECK_DOUBLE(b->config->check_jitter, 0.1);
	CHECK_DOUBLE(c->config->idle_check_frequency, 60);
	CHECK_INT(check_name_activity(a, 1000), ACTIVITY_SAME);
	CHECK_DOUBLE(a->quiet_since, 1000);
	CHECK(isnan(a->last_query_time));
	CHECK_INT(check_name_activity(a, 1009.9), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(a, 1010), ACTIVITY_IDLED);
	CHECK(a->idle);
	CHECK(a->store_dirty);
	CHECK_INT(check_name_activity(a, 1011), ACTIVITY_SAME);
	/* Idle: the next check comes at idle_check_frequency's grid. */
	address = a->candidates[0].addresses[0];
	address->phase = 0.2;
	address->has_phase = 1;
	select_record_result(address, 200, 1, 0.001, 0.001, 1011);
	CHECK_DOUBLE(schedule_period(a), 5);
	next = schedule_next_start(address, 1, 1001, 0, 0.5);
	CHECK_DOUBLE(next, 1006);	/* 0.2 * 5 + 201 * 5 */
	CHECK_DOUBLE(address->scheduled_period, 5);
	/* A query wakes it, and is its last query time. */
	a->queried = 1;
	CHECK_INT(check_name_activity(a, 1020.5), ACTIVITY_WOKEN);
	CHECK(!a->idle);
	CHECK(!a->queried);
	CHECK_DOUBLE(a->last_query_time, 1020.5);
	CHECK_DOUBLE(schedule_period(a), 2);
	/* Queries keep it awake. */
	a->queried = 1;
	CHECK_INT(check_name_activity(a, 1029), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(a, 1038.9), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(a, 1039), ACTIVITY_IDLED);
	/* idle_after 0 never idles; the default takes an hour. */
	CHECK_INT(check_name_activity(c, 0), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(c, 1e9), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(b, 0), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(b, 3599), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(b, 3600), ACTIVITY_IDLED);
	fixture_free(&f);
}

/* A last query known from the data file counts from then. */
static void
test_idle_restored(void)
{
	struct fixture f;
	struct name *a;

	if (!CHECK(fixture_load(&f, idle_config)))
		return;
	a = &f.registry->names[0];
	a->last_query_time = 500;
	CHECK_INT(check_name_activity(a, 1000), ACTIVITY_IDLED);
	fixture_free(&f);
	if (!CHECK(fixture_load(&f, idle_config)))
		return;
	a = &f.registry->names[0];
	a->last_query_time = 995;
	CHECK_INT(check_name_activity(a, 1000), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(a, 1005), ACTIVITY_IDLED);
	fixture_free(&f);
}

/* A reload raising idle_after, or setting it to 0, wakes an idle name. */
static void
test_idle_after_changed(void)
{
	struct fixture f;
	struct name *a;

	if (!CHECK(fixture_load(&f, idle_config)))
		return;
	a = &f.registry->names[0];
	CHECK_INT(check_name_activity(a, 0), ACTIVITY_SAME);
	CHECK_INT(check_name_activity(a, 10), ACTIVITY_IDLED);
	((struct config_name *)a->config)->idle_after = 0;
	CHECK_INT(check_name_activity(a, 11), ACTIVITY_WOKEN);
	CHECK(isnan(a->last_query_time));
	fixture_free(&f);
}

/* Ranges, defaults, and check_frequency bounding the two paces. */
static void
test_schedule_options(void)
{
	static const char *const bad[] = {
	    "check_jitter = 1.5", "check_jitter = -0.1",
	    "recheck_frequency = 0", "idle_after = -1",
	    "idle_check_frequency = 0.001",
	};
	char text[256];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct config *config;

		snprintf(text, sizeof(text), "name a.example.com {\n %s\n"
			 " candidate a { address = 127.0.0.2 }\n}\n", bad[i]);
		config = config_load_string(text, "/dev/null", quiet);
		if (!CHECK(config == NULL))
			fprintf(stderr, "    accepted: %s\n", bad[i]);
		config_free(config);
	}
	{
		struct config *config = config_load_string(
		    "name a.example.com {\n check_frequency = 120\n"
		    " check_jitter = 0\n idle_after = 0\n"
		    " candidate a { address = 127.0.0.2 }\n}\n",
		    "/dev/null", report);

		if (CHECK(config != NULL)) {
			CHECK_DOUBLE(config->names[0].recheck_frequency, 1);
			CHECK_DOUBLE(config->names[0].idle_check_frequency, 120);
			CHECK_DOUBLE(config->names[0].check_jitter, 0);
			CHECK_DOUBLE(config->names[0].idle_after, 0);
		}
		config_free(config);
	}
	/* check_frequency bounds both paces: a recheck is never slower than
	 * a normal check, an idle name never checked more often; nor does
	 * a name idle sooner than one check_frequency (0 still never). */
	{
		struct config *config = config_load_string(
		    "name a.example.com {\n check_frequency = 5\n"
		    " recheck_frequency = 6\n idle_check_frequency = 2\n"
		    " idle_after = 1\n"
		    " candidate a { address = 127.0.0.2 }\n}\n"
		    "name b.example.com {\n check_frequency = 5\n"
		    " recheck_frequency = 0.5\n idle_check_frequency = 20\n"
		    " idle_after = 7\n"
		    " candidate a { address = 127.0.0.2 }\n}\n",
		    "/dev/null", report);

		if (CHECK(config != NULL)) {
			CHECK_DOUBLE(config->names[0].recheck_frequency, 5);
			CHECK_DOUBLE(config->names[0].idle_check_frequency, 5);
			CHECK_DOUBLE(config->names[1].recheck_frequency, 0.5);
			CHECK_DOUBLE(config->names[1].idle_check_frequency, 20);
			CHECK_DOUBLE(config->names[0].idle_after, 5);
			CHECK_DOUBLE(config->names[1].idle_after, 7);
		}
		config_free(config);
	}
}

int
main(void)
{
	RUN(test_phases_even);
	RUN(test_first_delays);
	RUN(test_jitter_bounds);
	RUN(test_steady_spread);
	RUN(test_unknown_then_grid);
	RUN(test_recheck_transitions);
	RUN(test_recheck_fall_one);
	RUN(test_idle_and_wake);
	RUN(test_idle_restored);
	RUN(test_idle_after_changed);
	RUN(test_schedule_options);
	return UNIT_SUMMARY();
}
