/*
 * test_select.c - select.c: health bookkeeping of check results
 * (rise/fall, counters, smoothed RTT) and the choice of answers per
 * selection method, failure mode and family; plus the registry pieces
 * selection relies on.  No network, no event loop.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "har.h"
#include "unit.h"
#include "fixture.h"

static struct name *
find_name(struct fixture *f, const char *title)
{
	for (int i = 0; i < f->registry->name_count; i++)
		if (strcmp(f->registry->names[i].config->title, title) == 0)
			return &f->registry->names[i];
	return NULL;
}

/* The config behind a name, writable: tests tune options in place. */
static struct config_name *
name_config(struct name *name)
{
	return (struct config_name *)name->config;
}

static struct address *
find_address(struct name *name, const char *text)
{
	if (!name)
		return NULL;
	for (int i = 0; i < name->candidate_count; i++)
		for (int j = 0; j < name->candidates[i].address_count; j++)
			if (strcmp(name->candidates[i].addresses[j]->text, text) == 0)
				return name->candidates[i].addresses[j];
	return NULL;
}

static void
set_up(struct name *name, const char *text, double srtt)
{
	struct address *address = find_address(name, text);

	if (!address) {
		fprintf(stderr, "no address %s\n", text);
		abort();
	}
	address->health = HEALTH_UP;
	address->srtt = srtt;
}

static void
set_health(struct name *name, const char *text, int health)
{
	struct address *address = find_address(name, text);

	if (!address) {
		fprintf(stderr, "no address %s\n", text);
		abort();
	}
	address->health = health;
}

/* The answer set's address i as text, or "" */
static const char *
answer_text(struct name *name, int family, int i)
{
	static char text[8][INET6_ADDRSTRLEN];
	static int next;
	struct answer_set *set = &name->answers[family_index(family)];
	char *out = text[next++ % 8];

	out[0] = '\0';
	if (i < set->count)
		ip_address_format(&set->ips[i], out, INET6_ADDRSTRLEN);
	return out;
}

static struct answer_set *
answers(struct name *name, int family)
{
	return &name->answers[family_index(family)];
}

static const char one_name[] =
	"nameservers = { 192.0.2.53 }\n"
	"name www.example.com {\n"
	"    candidate a { address = { 192.0.2.1, 2001:db8::1 } }\n"
	"    candidate b { address = { 192.0.2.2, 2001:db8::2 } }\n"
	"    candidate c { address = { 192.0.2.3 } }\n"
	"    candidate d { address = { 192.0.2.4 } }\n"
	"}\n";

/* ------------------------------------------------ select_record_result */

static void
test_first_result_decides(void)
{
	struct fixture f;
	struct name *name;
	struct address *up, *down;

	if (!CHECK(fixture_load(&f, one_name)))
		return;
	name = find_name(&f, "www.example.com");
	name_config(name)->rise = 3;
	name_config(name)->fall = 3;
	up = find_address(name, "192.0.2.1");
	down = find_address(name, "192.0.2.2");
	CHECK_INT(up->health, HEALTH_UNKNOWN);
	CHECK(isnan(up->srtt));
	CHECK(!address_available(up));

	CHECK_INT(select_record_result(up, 200, 1, 0.01, 0.05, 1000.0), 1);
	CHECK_INT(up->health, HEALTH_UP);
	CHECK_INT(up->last_status, 200);
	CHECK_DOUBLE(up->srtt, 0.05);
	CHECK_DOUBLE(up->last_rtt, 0.05);
	CHECK_DOUBLE(up->connect_time, 0.01);
	CHECK_DOUBLE(up->response_time, 0.05);
	CHECK_DOUBLE(up->last_check_time, 1000.0);
	CHECK_DOUBLE(up->last_success_time, 1000.0);
	CHECK(isnan(up->last_failure_time));
	CHECK_INT(up->successes, 1);
	CHECK_INT(up->check_count, 1);
	CHECK(address_available(up));

	CHECK_INT(select_record_result(down, STATUS_TIMEOUT, 0, 0, 0, 1001.0), 1);
	CHECK_INT(down->health, HEALTH_DOWN);
	CHECK_INT(down->last_status, STATUS_TIMEOUT);
	CHECK_DOUBLE(down->last_failure_time, 1001.0);
	CHECK(isnan(down->last_success_time));
	CHECK(isnan(down->srtt));
	CHECK_INT(down->timeouts, 1);
	CHECK_INT(down->check_count, 1);
	CHECK(!address_available(down));

	/* No change: 0. */
	CHECK_INT(select_record_result(up, 200, 1, 0.01, 0.05, 1002.0), 0);
	CHECK_INT(select_record_result(down, STATUS_TIMEOUT, 0, 0, 0, 1002.0), 0);
	fixture_free(&f);
}

static void
test_rise(void)
{
	struct fixture f;
	struct name *name;
	struct address *address;

	if (!CHECK(fixture_load(&f, one_name)))
		return;
	name = find_name(&f, "www.example.com");
	name_config(name)->rise = 3;
	address = find_address(name, "192.0.2.1");
	CHECK_INT(select_record_result(address, -2, 0, 0, 0, 1), 1);
	CHECK_INT(address->health, HEALTH_DOWN);
	CHECK_INT(select_record_result(address, 200, 1, .1, .2, 2), 0);
	CHECK_INT(select_record_result(address, 200, 1, .1, .2, 3), 0);
	CHECK_INT(address->health, HEALTH_DOWN);
	/* A failure in between starts the count again. */
	CHECK_INT(select_record_result(address, -1, 0, 0, 0, 4), 0);
	CHECK_INT(select_record_result(address, 200, 1, .1, .2, 5), 0);
	CHECK_INT(select_record_result(address, 200, 1, .1, .2, 6), 0);
	CHECK_INT(address->health, HEALTH_DOWN);
	CHECK_INT(select_record_result(address, 200, 1, .1, .2, 7), 1);
	CHECK_INT(address->health, HEALTH_UP);
	CHECK_INT(address->successes, 5);
	CHECK_INT(address->check_count, 7);
	fixture_free(&f);
}

static void
test_fall(void)
{
	struct fixture f;
	struct name *name;
	struct address *address;

	if (!CHECK(fixture_load(&f, one_name)))
		return;
	name = find_name(&f, "www.example.com");
	name_config(name)->fall = 2;
	address = find_address(name, "192.0.2.1");
	CHECK_INT(select_record_result(address, 200, 1, .1, .2, 1), 1);
	CHECK_INT(select_record_result(address, -1, 0, 0, 0, 2), 0);
	CHECK_INT(address->health, HEALTH_UP);
	/* A success in between starts the count again. */
	CHECK_INT(select_record_result(address, 200, 1, .1, .2, 3), 0);
	CHECK_INT(select_record_result(address, 503, 0, 0, 0, 4), 0);
	CHECK_INT(address->health, HEALTH_UP);
	CHECK_INT(select_record_result(address, 503, 0, 0, 0, 5), 1);
	CHECK_INT(address->health, HEALTH_DOWN);
	/* rise 1 (default): one success brings it back. */
	CHECK_INT(select_record_result(address, 200, 1, .1, .2, 6), 1);
	CHECK_INT(address->health, HEALTH_UP);
	fixture_free(&f);
}

static void
test_counters(void)
{
	struct fixture f;
	struct name *name;
	struct address *address;
	double srtt;

	if (!CHECK(fixture_load(&f, one_name)))
		return;
	name = find_name(&f, "www.example.com");
	address = find_address(name, "192.0.2.1");
	select_record_result(address, 200, 1, .1, .2, 1);
	srtt = address->srtt;
	select_record_result(address, STATUS_TIMEOUT, 0, 0, 0, 2);
	select_record_result(address, STATUS_TIMEOUT, 0, 0, 0, 3);
	select_record_result(address, STATUS_CONNECT_ERROR, 0, 0, 0, 4);
	select_record_result(address, STATUS_RESPONSE_ERROR, 0, 0, 0, 5);
	select_record_result(address, 404, 0, 0, 0, 6);
	select_record_result(address, 500, 0, 0, 0, 7);
	select_record_result(address, STATUS_TLS_ERROR, 0, 0, 0, 8);
	select_record_result(address, STATUS_RESOLVE_ERROR, 0, 0, 0, 9);
	select_record_result(address, STATUS_OTHER_ERROR, 0, 0, 0, 10);
	select_record_result(address, 0, 1, .1, .2, 11);	/* tcp success */
	CHECK_INT(address->successes, 2);
	CHECK_INT(address->timeouts, 2);
	CHECK_INT(address->connect_errors, 1);
	CHECK_INT(address->response_errors, 3);
	CHECK_INT(address->other_errors, 3);
	CHECK_INT(address->check_count, 11);
	CHECK_INT(address->last_status, 0);
	CHECK_DOUBLE(address->last_failure_time, 10);
	CHECK_DOUBLE(address->last_success_time, 11);
	CHECK_DOUBLE(address->last_check_time, 11);
	/* Failures leave the smoothed RTT alone. */
	CHECK_DOUBLE(srtt, 0.2);
	CHECK_DOUBLE(address->srtt, 0.7 * 0.2 + 0.3 * 0.2);
	fixture_free(&f);
}

static void
test_smoothed_rtt(void)
{
	struct fixture f;
	struct name *name;
	struct address *address;
	double expected;

	CHECK_DOUBLE(select_rtt_weight, 0.3);
	if (!CHECK(fixture_load(&f, one_name)))
		return;
	name = find_name(&f, "www.example.com");
	address = find_address(name, "192.0.2.1");
	select_record_result(address, 200, 1, 0.01, 0.1, 1);
	CHECK_DOUBLE(address->srtt, 0.1);
	select_record_result(address, 200, 1, 0.01, 0.2, 2);
	expected = 0.7 * 0.1 + 0.3 * 0.2;
	CHECK_DOUBLE(address->srtt, expected);
	CHECK_DOUBLE(address->last_rtt, 0.2);
	select_record_result(address, -1, 0, 0, 0, 3);
	CHECK_DOUBLE(address->srtt, expected);
	select_record_result(address, 200, 1, 0.01, 0.4, 4);
	expected = 0.7 * expected + 0.3 * 0.4;
	CHECK_DOUBLE(address->srtt, expected);
	CHECK_DOUBLE(address->srtt, 0.211);
	fixture_free(&f);
}

static void
test_rtt_mode_connect(void)
{
	struct fixture f;
	struct name *name;
	struct address *address;

	if (!CHECK(fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    rtt_mode = connect\n"
	    "    candidate a { address = { 192.0.2.1 } }\n"
	    "}\n")))
		return;
	name = find_name(&f, "www.example.com");
	CHECK_INT(name->config->rtt_mode, RTT_CONNECT);
	address = find_address(name, "192.0.2.1");
	select_record_result(address, 200, 1, 0.02, 0.5, 1);
	CHECK_DOUBLE(address->srtt, 0.02);
	CHECK_DOUBLE(address->last_rtt, 0.02);
	CHECK_DOUBLE(address->connect_time, 0.02);
	CHECK_DOUBLE(address->response_time, 0.5);
	select_record_result(address, 200, 1, 0.04, 0.1, 2);
	CHECK_DOUBLE(address->srtt, 0.7 * 0.02 + 0.3 * 0.04);
	fixture_free(&f);
}

/* ------------------------------------------------------- select_update */

static void
test_best_rtt(void)
{
	struct fixture f;
	struct name *name;

	if (!CHECK(fixture_load(&f, one_name)))
		return;
	name = find_name(&f, "www.example.com");
	CHECK_INT(name->config->selection_method, SELECT_BEST_RTT);
	set_up(name, "192.0.2.1", 0.3);
	set_up(name, "192.0.2.2", 0.1);
	set_up(name, "192.0.2.3", 0.2);
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_INT(answers(name, AF_INET)->count, 1);
	CHECK_INT(answers(name, AF_INET)->rotate, 0);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.2");

	/* Ties go to the lowest address text. */
	set_up(name, "192.0.2.4", 0.1);
	set_up(name, "192.0.2.2", 0.1);
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.2");
	set_up(name, "192.0.2.1", 0.1);
	select_update(name, AF_INET);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");

	/* Down and unknown addresses are never chosen. */
	set_health(name, "192.0.2.1", HEALTH_DOWN);
	set_health(name, "192.0.2.2", HEALTH_UNKNOWN);
	select_update(name, AF_INET);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.4");
	fixture_free(&f);
}

static void
test_all(void)
{
	struct fixture f;
	struct name *name;

	if (!CHECK(fixture_load(&f, one_name)))
		return;
	name = find_name(&f, "www.example.com");
	name_config(name)->selection_method = SELECT_ALL;
	set_up(name, "192.0.2.1", 0.4);
	set_up(name, "192.0.2.2", 0.1);
	set_up(name, "192.0.2.3", 0.3);
	set_health(name, "192.0.2.4", HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_INT(answers(name, AF_INET)->count, 3);
	CHECK_INT(answers(name, AF_INET)->rotate, 0);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.2");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.3");
	CHECK_STR(answer_text(name, AF_INET, 2), "192.0.2.1");
	fixture_free(&f);
}

static void
test_group_rtt_rr(void)
{
	struct fixture f;
	struct name *name;
	struct answer_set *set;

	if (!CHECK(fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    selection_method = group_rtt_rr\n"
	    "    group_rtt_threshold = 0.05\n"
	    "    candidate a { address = { 192.0.2.1, 192.0.2.2 } }\n"
	    "    candidate b { address = { 192.0.2.3, 192.0.2.4 } }\n"
	    "}\n")))
		return;
	name = find_name(&f, "www.example.com");
	set = answers(name, AF_INET);
	CHECK_INT(name->config->selection_method, SELECT_GROUP_RTT_RR);
	CHECK_DOUBLE(name->config->group_rtt_threshold, 0.05);
	set_up(name, "192.0.2.1", 0.140);
	set_up(name, "192.0.2.2", 0.200);
	set_up(name, "192.0.2.3", 0.100);
	set_up(name, "192.0.2.4", 0.120);
	select_update(name, AF_INET);
	CHECK_INT(set->kind, ANSWER_ADDRESSES);
	CHECK_INT(set->rotate, 1);
	CHECK_INT(set->count, 3);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.3");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.4");
	CHECK_STR(answer_text(name, AF_INET, 2), "192.0.2.1");

	/* An infinite threshold takes every available address. */
	name_config(name)->group_rtt_threshold = INFINITY;
	select_update(name, AF_INET);
	CHECK_INT(set->count, 4);
	CHECK_STR(answer_text(name, AF_INET, 3), "192.0.2.2");

	/* A zero threshold: the best and its exact ties. */
	name_config(name)->group_rtt_threshold = 0;
	set_up(name, "192.0.2.4", 0.100);
	select_update(name, AF_INET);
	CHECK_INT(set->count, 2);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.3");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.4");

	/* One available: still a rotation of one. */
	set_health(name, "192.0.2.1", HEALTH_DOWN);
	set_health(name, "192.0.2.2", HEALTH_DOWN);
	set_health(name, "192.0.2.3", HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(set->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.4");
	fixture_free(&f);
}

static void
test_max_rtt(void)
{
	struct fixture f;
	struct name *name;
	struct address *slow, *no_rtt;

	if (!CHECK(fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    selection_method = all\n"
	    "    max_rtt = 0.15\n"
	    "    candidate a { address = { 192.0.2.1, 192.0.2.2, 192.0.2.3 } }\n"
	    "}\n")))
		return;
	name = find_name(&f, "www.example.com");
	CHECK_DOUBLE(name->config->max_rtt, 0.15);
	set_up(name, "192.0.2.1", 0.2);
	set_up(name, "192.0.2.2", 0.1);
	set_up(name, "192.0.2.3", 0.15);	/* at the limit: still in */
	slow = find_address(name, "192.0.2.1");
	CHECK(!address_available(slow));
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_INT(answers(name, AF_INET)->count, 2);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.2");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.3");

	/* Up but without an RTT: not available under a finite max_rtt... */
	no_rtt = find_address(name, "192.0.2.2");
	no_rtt->srtt = NAN;
	CHECK(!address_available(no_rtt));
	/* ...and available without one. */
	name_config(name)->max_rtt = INFINITY;
	CHECK(address_available(no_rtt));
	CHECK(address_available(slow));
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->count, 3);
	/* No RTT ranks last. */
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.3");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.1");
	CHECK_STR(answer_text(name, AF_INET, 2), "192.0.2.2");

	/* Every address too slow: the failure mode (none: forward). */
	name_config(name)->max_rtt = 0.01;
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->kind, ANSWER_FORWARD);
	CHECK_INT(answers(name, AF_INET)->count, 0);
	fixture_free(&f);
}

static void
test_failure_modes(void)
{
	struct fixture f;
	struct name *name;
	struct answer_set *v4, *v6;

	if (!CHECK(fixture_load(&f, one_name)))
		return;
	name = find_name(&f, "www.example.com");
	v4 = answers(name, AF_INET);
	v6 = answers(name, AF_INET6);
	/* Fresh: every address unknown, failure_mode none. */
	CHECK_INT(name->config->failure_mode, FAILURE_NONE);
	CHECK_INT(v4->kind, ANSWER_FORWARD);
	CHECK_INT(v6->kind, ANSWER_FORWARD);
	CHECK_INT(v4->count, 0);

	set_health(name, "192.0.2.1", HEALTH_DOWN);
	set_health(name, "192.0.2.2", HEALTH_DOWN);
	name_config(name)->failure_mode = FAILURE_SERVFAIL;
	select_update_all(name);
	CHECK_INT(v4->kind, ANSWER_SERVFAIL);
	CHECK_INT(v6->kind, ANSWER_SERVFAIL);
	CHECK_INT(v4->count, 0);

	name_config(name)->failure_mode = FAILURE_ALL;
	select_update_all(name);
	CHECK_INT(v4->kind, ANSWER_ADDRESSES);
	CHECK_INT(v4->count, 4);
	CHECK_INT(v4->rotate, 0);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.2");
	CHECK_STR(answer_text(name, AF_INET, 2), "192.0.2.3");
	CHECK_STR(answer_text(name, AF_INET, 3), "192.0.2.4");
	CHECK_INT(v6->kind, ANSWER_ADDRESSES);
	CHECK_INT(v6->count, 2);
	CHECK_STR(answer_text(name, AF_INET6, 0), "2001:db8::1");
	CHECK_STR(answer_text(name, AF_INET6, 1), "2001:db8::2");

	/* group_rtt_rr fails open with every address, not a rotation. */
	name_config(name)->selection_method = SELECT_GROUP_RTT_RR;
	select_update_all(name);
	CHECK_INT(v4->count, 4);
	CHECK_INT(v4->rotate, 0);

	/* One address comes up: back to normal selection. */
	set_up(name, "192.0.2.3", 0.1);
	select_update_all(name);
	CHECK_INT(v4->kind, ANSWER_ADDRESSES);
	CHECK_INT(v4->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.3");
	CHECK_INT(v6->count, 2);	/* AAAA still fails open */
	fixture_free(&f);
}

static void
test_families(void)
{
	struct fixture f;
	struct name *name, *v4only, *v6only, *unresolved;
	struct name *unresolved_servfail, *unresolved_all;

	if (!CHECK(fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    selection_method = all\n"
	    "    candidate a { address = { 192.0.2.1, 2001:db8::1 } }\n"
	    "    candidate b { address = { 2001:db8::2, 192.0.2.2 } }\n"
	    "}\n"
	    "name v4.example.com {\n"
	    "    failure_mode = all\n"
	    "    candidate a { address = { 192.0.2.1 } }\n"
	    "}\n"
	    "name v6.example.com {\n"
	    "    failure_mode = servfail\n"
	    "    candidate a { check_address = \"http://[2001:db8::6]/\" }\n"
	    "}\n"
	    "name dns.example.com {\n"
	    "    candidate a { check_address = \"http://a.example.net/\" }\n"
	    "}\n"
	    "name dnsfail.example.com {\n"
	    "    failure_mode = servfail\n"
	    "    candidate a { check_address = \"http://a.example.net/\" }\n"
	    "}\n"
	    "name dnsall.example.com {\n"
	    "    failure_mode = all\n"
	    "    candidate a { check_address = \"http://a.example.net/\" }\n"
	    "    candidate b { address = { 192.0.2.9 } }\n"
	    "}\n")))
		return;
	name = find_name(&f, "www.example.com");
	v4only = find_name(&f, "v4.example.com");
	v6only = find_name(&f, "v6.example.com");
	unresolved = find_name(&f, "dns.example.com");
	unresolved_servfail = find_name(&f, "dnsfail.example.com");
	unresolved_all = find_name(&f, "dnsall.example.com");

	set_up(name, "192.0.2.1", 0.2);
	set_up(name, "2001:db8::1", 0.3);
	set_up(name, "2001:db8::2", 0.1);
	select_update_all(name);
	CHECK_INT(answers(name, AF_INET)->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");
	CHECK_INT(answers(name, AF_INET6)->count, 2);
	CHECK_STR(answer_text(name, AF_INET6, 0), "2001:db8::2");
	CHECK_STR(answer_text(name, AF_INET6, 1), "2001:db8::1");

	/*
	 * No address of a family: NODATA while the other family answers
	 * (or fails open); SERVFAIL while the other family's failure_mode
	 * says SERVFAIL, so that the name fails as a whole (a stub asks
	 * both families at once).
	 */
	CHECK_INT(answers(v4only, AF_INET6)->kind, ANSWER_NODATA);
	CHECK_INT(answers(v4only, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_INT(answers(v6only, AF_INET)->kind, ANSWER_SERVFAIL);
	CHECK_INT(answers(v6only, AF_INET)->failure_mode, 1);
	CHECK_INT(answers(v6only, AF_INET6)->kind, ANSWER_SERVFAIL);
	set_up(v6only, "2001:db8::6", 0.1);
	select_update_all(v6only);
	CHECK_INT(answers(v6only, AF_INET6)->kind, ANSWER_ADDRESSES);
	CHECK_STR(answer_text(v6only, AF_INET6, 0), "2001:db8::6");
	CHECK_INT(answers(v6only, AF_INET)->kind, ANSWER_NODATA);
	CHECK_INT(answers(v6only, AF_INET)->failure_mode, 0);
	v6only->candidates[0].addresses[0]->health = HEALTH_DOWN;
	select_update_all(v6only);
	CHECK_INT(answers(v6only, AF_INET)->kind, ANSWER_SERVFAIL);
	CHECK_INT(answers(v6only, AF_INET6)->kind, ANSWER_SERVFAIL);
	v4only->candidates[0].addresses[0]->health = HEALTH_DOWN;
	select_update_all(v4only);
	CHECK_INT(answers(v4only, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_INT(answers(v4only, AF_INET6)->kind, ANSWER_NODATA);
	/* failure_mode all with every known address set down is SERVFAIL:
	 * the name fails as a whole there too. */
	((struct config_candidate *)v4only->candidates[0].config)->admin_state =
	    ADMIN_DOWN;
	select_update_all(v4only);
	CHECK_INT(answers(v4only, AF_INET)->kind, ANSWER_SERVFAIL);
	CHECK_INT(answers(v4only, AF_INET6)->kind, ANSWER_SERVFAIL);
	((struct config_candidate *)v4only->candidates[0].config)->admin_state =
	    ADMIN_AUTO;
	select_update_all(v4only);
	CHECK_INT(answers(v4only, AF_INET6)->kind, ANSWER_NODATA);
	/*
	 * Not resolved yet (or never resolvable): its addresses are unknown,
	 * not absent, so failure_mode decides; NODATA would be a lie.
	 */
	CHECK_INT(unresolved->candidates[0].address_count, 0);
	CHECK_INT(answers(unresolved, AF_INET)->kind, ANSWER_FORWARD);
	CHECK_INT(answers(unresolved, AF_INET6)->kind, ANSWER_FORWARD);
	CHECK_INT(answers(unresolved_servfail, AF_INET)->kind, ANSWER_SERVFAIL);
	CHECK_INT(answers(unresolved_servfail, AF_INET6)->kind, ANSWER_SERVFAIL);
	/* all: the known addresses (down or not); none known: forwarded. */
	CHECK_INT(answers(unresolved_all, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_STR(answer_text(unresolved_all, AF_INET, 0), "192.0.2.9");
	CHECK_INT(answers(unresolved_all, AF_INET6)->kind, ANSWER_FORWARD);
	/* Resolved, to no address of a family: now that is NODATA. */
	unresolved->candidates[0].known[1] = 1;
	select_update_all(unresolved);
	CHECK_INT(answers(unresolved, AF_INET)->kind, ANSWER_FORWARD);
	CHECK_INT(answers(unresolved, AF_INET6)->kind, ANSWER_NODATA);
	unresolved_all->candidates[0].known[1] = 1;
	select_update_all(unresolved_all);
	CHECK_INT(answers(unresolved_all, AF_INET6)->kind, ANSWER_NODATA);

	name->stale = 1;
	select_update_all(name);
	CHECK_INT(name->stale, 0);
	fixture_free(&f);
}

/* ------------------------------------------------------------ registry */

static void
test_registry(void)
{
	struct fixture f;
	struct name *name;
	struct candidate *candidate;
	struct address *kept;
	struct ip_address ips[3];
	uint8_t wire[DNS_MAX_NAME + 1];
	int wire_len;

	if (!CHECK(fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    candidate a { address = { 192.0.2.1, 192.0.2.2 } }\n"
	    "}\n"
	    "name other.example.com {\n"
	    "    candidate a { check_address = \"http://a.example.net/\" }\n"
	    "}\n")))
		return;
	name = find_name(&f, "www.example.com");
	CHECK_INT(f.registry->name_count, 2);
	CHECK(dns_name_to_wire("WWW.Example.COM.", wire, &wire_len) == 0);
	CHECK(registry_lookup(f.registry, wire, wire_len) == name);
	CHECK(dns_name_to_wire("example.com", wire, &wire_len) == 0);
	CHECK(registry_lookup(f.registry, wire, wire_len) == NULL);

	candidate = &name->candidates[0];
	CHECK_INT(candidate->address_count, 2);
	CHECK_INT(family_index(AF_INET), 0);
	CHECK_INT(family_index(AF_INET6), 1);

	/* A new list keeps the addresses that stay, with their state. */
	set_up(name, "192.0.2.2", 0.1);
	kept = find_address(name, "192.0.2.2");
	kept->successes = 7;
	ip_address_parse("192.0.2.3", &ips[0]);
	ip_address_parse("192.0.2.2", &ips[1]);
	ip_address_parse("2001:db8::3", &ips[2]);
	candidate = &find_name(&f, "other.example.com")->candidates[0];
	candidate_set_addresses(&name->candidates[0], ips, 3);
	CHECK_INT(name->candidates[0].address_count, 3);
	CHECK(find_address(name, "192.0.2.2") == kept);
	CHECK_INT(kept->successes, 7);
	CHECK_INT(kept->health, HEALTH_UP);
	CHECK(find_address(name, "192.0.2.1") == NULL);
	CHECK_INT(find_address(name, "192.0.2.3")->health, HEALTH_UNKNOWN);
	CHECK(find_address(name, "192.0.2.3")->candidate == &name->candidates[0]);

	/* A resolved candidate receives its addresses. */
	candidate_set_addresses(candidate, ips, 2);
	CHECK_INT(candidate->address_count, 2);
	candidate_set_addresses(candidate, ips, 0);
	CHECK_INT(candidate->address_count, 0);
	fixture_free(&f);
}

/*
 * A duplicate in a candidate's address list is one address.  Run in a
 * child: a crash there fails this check instead of ending the program.
 */
static int
duplicate_addresses_child(void)
{
	struct fixture f;
	struct name *name;
	struct ip_address ips[4];
	int ok = 1;

	if (!fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    candidate a { address = { 192.0.2.1, 192.0.2.1, 192.0.2.2 } }\n"
	    "}\n"))
		return 0;
	name = find_name(&f, "www.example.com");
	ok &= name->candidates[0].address_count == 2;
	for (int i = 0; i < name->candidates[0].address_count; i++)
		ok &= name->candidates[0].addresses[i] != NULL;
	/* The same through a resolution's result. */
	ip_address_parse("192.0.2.7", &ips[0]);
	ip_address_parse("192.0.2.8", &ips[1]);
	ip_address_parse("192.0.2.7", &ips[2]);
	ip_address_parse("192.0.2.7", &ips[3]);
	candidate_set_addresses(&name->candidates[0], ips, 4);
	ok &= name->candidates[0].address_count == 2;
	for (int i = 0; i < name->candidates[0].address_count; i++)
		ok &= name->candidates[0].addresses[i] != NULL;
	if (ok) {
		select_update_all(name);
		ok &= find_address(name, "192.0.2.7") != NULL;
		ok &= find_address(name, "192.0.2.8") != NULL;
	}
	fixture_free(&f);
	return ok;
}

static void
test_duplicate_addresses(void)
{
	CHECK(run_in_child(duplicate_addresses_child));
}

static void
test_take_over(void)
{
	struct fixture old, fresh;
	struct name *before, *after;
	struct address *address;

	if (!CHECK(fixture_load(&old,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    candidate a { address = { 192.0.2.1, 192.0.2.2 } }\n"
	    "    candidate gone { address = { 192.0.2.9 } }\n"
	    "}\n")))
		return;
	if (!CHECK(fixture_load(&fresh,
	    "nameservers = { 192.0.2.53 }\n"
	    "name WWW.example.com. {\n"
	    "    candidate a { address = { 192.0.2.2, 192.0.2.3 } }\n"
	    "}\n"
	    "name new.example.com {\n"
	    "    candidate a { address = { 192.0.2.2 } }\n"
	    "}\n"))) {
		fixture_free(&old);
		return;
	}
	before = find_name(&old, "www.example.com");
	before->queries = 42;
	set_up(before, "192.0.2.2", 0.25);
	address = find_address(before, "192.0.2.2");
	registry_take_over(fresh.registry, old.registry);
	old.registry = NULL;
	after = find_name(&fresh, "www.example.com");
	CHECK_INT(after->queries, 42);
	CHECK(find_address(after, "192.0.2.2") == address);
	CHECK(address->candidate == &after->candidates[0]);
	CHECK_INT(address->health, HEALTH_UP);
	CHECK_INT(find_address(after, "192.0.2.3")->health, HEALTH_UNKNOWN);
	CHECK(find_address(after, "192.0.2.1") == NULL);
	/* The answers were recomputed from the kept state. */
	CHECK_INT(answers(after, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_STR(answer_text(after, AF_INET, 0), "192.0.2.2");
	CHECK_INT(find_address(find_name(&fresh, "new.example.com"),
			       "192.0.2.2")->health, HEALTH_UNKNOWN);
	fixture_free(&old);
	fixture_free(&fresh);
}

/*
 * Two candidates sharing an address: one record, at its best rank, one
 * share of the round-robin (RFC 2181 section 5).
 */
static void
test_shared_address(void)
{
	struct fixture f;
	struct name *name;
	struct address *first, *second;

	if (!CHECK(fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    selection_method = all\n"
	    "    candidate a { address = { 192.0.2.1, 2001:db8::1 } }\n"
	    "    candidate b { address = { 192.0.2.1, 2001:db8::1 } }\n"
	    "    candidate c { address = { 192.0.2.2 } }\n"
	    "}\n")))
		return;
	name = find_name(&f, "www.example.com");
	first = name->candidates[0].addresses[0];
	second = name->candidates[1].addresses[0];
	CHECK(first != second);
	first->health = second->health = HEALTH_UP;
	first->srtt = 0.3;
	second->srtt = 0.1;
	set_up(name, "192.0.2.2", 0.2);
	select_update_all(name);
	CHECK_INT(answers(name, AF_INET)->count, 2);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.2");

	/* group_rtt_rr: each address once in the rotation. */
	name_config(name)->selection_method = SELECT_GROUP_RTT_RR;
	select_update_all(name);
	CHECK_INT(answers(name, AF_INET)->count, 2);
	CHECK(answers(name, AF_INET)->rotate);

	/* Up through one candidate, down through the other: answered once. */
	second->health = HEALTH_DOWN;
	name_config(name)->selection_method = SELECT_ALL;
	select_update_all(name);
	CHECK_INT(answers(name, AF_INET)->count, 2);
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.1");

	/* failure_mode all: every address once. */
	first->health = HEALTH_DOWN;
	set_health(name, "192.0.2.2", HEALTH_DOWN);
	name_config(name)->failure_mode = FAILURE_ALL;
	select_update_all(name);
	CHECK_INT(answers(name, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_INT(answers(name, AF_INET)->count, 2);
	CHECK_INT(answers(name, AF_INET6)->count, 1);
	fixture_free(&f);
}

/*
 * A reload that changes how an address is checked: the address keeps its
 * health until the new check's first result, which decides at once.
 */
static void
test_take_over_changed_check(void)
{
	struct fixture old, fresh;
	struct name *after;
	struct address *address, *same;

	if (!CHECK(fixture_load(&old,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    fall = 3\n"
	    "    candidate a { address = { 192.0.2.1 } }\n"
	    "    candidate b { address = { 192.0.2.2 } }\n"
	    "}\n")))
		return;
	if (!CHECK(fixture_load(&fresh,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    fall = 3\n"
	    "    candidate a { address = { 192.0.2.1 }\n"
	    "                  check_address = \"http://a:8080/\" }\n"
	    "    candidate b { address = { 192.0.2.2 } }\n"
	    "}\n"))) {
		fixture_free(&old);
		return;
	}
	set_up(find_name(&old, "www.example.com"), "192.0.2.1", 0.25);
	set_up(find_name(&old, "www.example.com"), "192.0.2.2", 0.25);
	address = find_address(find_name(&old, "www.example.com"), "192.0.2.1");
	same = find_address(find_name(&old, "www.example.com"), "192.0.2.2");
	address->successes_in_row = same->successes_in_row = 5;
	registry_take_over(fresh.registry, old.registry);
	old.registry = NULL;
	after = find_name(&fresh, "www.example.com");
	CHECK(find_address(after, "192.0.2.1") == address);
	CHECK_INT(address->check_changed, 1);
	CHECK_INT(address->health, HEALTH_UP);	/* until the new check says */
	CHECK_INT(address->successes_in_row, 0);
	CHECK_INT(same->check_changed, 0);
	CHECK_INT(same->successes_in_row, 5);

	/* One failure of the new check is enough; fall applies after. */
	CHECK_INT(select_record_result(address, STATUS_CONNECT_ERROR, 0, 0, 0,
				       2000.0), 1);
	CHECK_INT(address->health, HEALTH_DOWN);
	CHECK_INT(address->check_changed, 0);
	CHECK_INT(select_record_result(same, STATUS_CONNECT_ERROR, 0, 0, 0,
				       2000.0), 0);
	CHECK_INT(same->health, HEALTH_UP);

	/* The RTT of a changed check starts again from its first sample. */
	address->check_changed = 1;
	CHECK_INT(select_record_result(address, 200, 1, 0.001, 0.002, 2001.0), 1);
	CHECK_INT(address->health, HEALTH_UP);
	CHECK_DOUBLE(address->srtt, 0.002);
	fixture_free(&old);
	fixture_free(&fresh);
}

/* Which settings count as a changed check. */
static int
changes_check(const char *before, const char *after)
{
	struct fixture old, fresh;
	char text[2][512];
	int changed;

	snprintf(text[0], sizeof(text[0]),
		 "nameservers = { 192.0.2.53 }\nname www.example.com {\n%s\n"
		 "    candidate a { address = { 192.0.2.1 } }\n}\n", before);
	snprintf(text[1], sizeof(text[1]),
		 "nameservers = { 192.0.2.53 }\nname www.example.com {\n%s\n"
		 "    candidate a { address = { 192.0.2.1 } }\n}\n", after);
	if (!fixture_load(&old, text[0]))
		return -1;
	if (!fixture_load(&fresh, text[1])) {
		fixture_free(&old);
		return -1;
	}
	registry_take_over(fresh.registry, old.registry);
	old.registry = NULL;
	changed = find_address(find_name(&fresh, "www.example.com"),
			       "192.0.2.1")->check_changed;
	fixture_free(&old);
	fixture_free(&fresh);
	return changed;
}

static void
test_changed_check_settings(void)
{
	CHECK_INT(changes_check("", ""), 0);
	CHECK_INT(changes_check("ttl = 5", "ttl = 6 rise = 4 fall = 4"), 0);
	CHECK_INT(changes_check("check_frequency = 20", "check_frequency = 30"), 0);
	/* the default check_timeout follows check_frequency below 10 s */
	CHECK_INT(changes_check("check_frequency = 5", "check_frequency = 6"), 1);
	CHECK_INT(changes_check("", "check_method = tcp"), 1);
	CHECK_INT(changes_check("", "check_timeout = 3"), 1);
	CHECK_INT(changes_check("", "expect_status = { 200, 204 }"), 1);
	CHECK_INT(changes_check("expect_status = { 200, 204 }",
				"expect_status = { 204, 200 }"), 0);
	CHECK_INT(changes_check("", "ca_file = \"/etc/ssl/certs/ca-certificates.crt\""), 1);
	CHECK_INT(changes_check("", "expect_status = { 200-299 }"), 1);
	CHECK_INT(changes_check("expect_status = { 200, 201-299 }",
				"expect_status = { \"200-299\" }"), 0);
	CHECK_INT(changes_check("", "http_method = HEAD"), 1);
	CHECK_INT(changes_check("", "http_method = GET"), 0);
	CHECK_INT(changes_check("", "expect_body = \"ok\""), 1);
	CHECK_INT(changes_check("expect_body = \"ok\"", "expect_body = \"OK\""), 1);
	CHECK_INT(changes_check("", "http_headers = { \"X-A: 1\" }"), 1);
	CHECK_INT(changes_check("http_headers = { \"X-A: 1\" }",
				"http_headers = { \"X-A: 2\" }"), 1);
	CHECK_INT(changes_check("http_headers = { \"X-A: 1\" }",
				"http_headers = { \"X-A: 1\" }"), 0);
}

/* ------------------------------------------------ admin_state, drains */

static const char admin_names[] =
	"nameservers = { 192.0.2.53 }\n"
	"name www.example.com {\n"
	"    selection_method = all\n"
	"    drain_status = { 503, 418 }\n"
	"    candidate a { address = { 192.0.2.1 } }\n"
	"    candidate b { address = { 192.0.2.2 } admin_state = drain }\n"
	"    candidate c { address = { 192.0.2.3 } admin_state = down }\n"
	"    candidate d { address = { 192.0.2.4 } admin_state = up }\n"
	"}\n";

static void
set_admin(struct name *name, const char *candidate, enum admin_state state)
{
	((struct config_candidate *)name_find_candidate(name, candidate)->config)
	    ->admin_state = state;
}

/* The addresses answered for family, as "a b c" in answer order. */
static const char *
answered(struct name *name, int family)
{
	static char text[256];
	struct answer_set *set = answers(name, family);

	text[0] = '\0';
	if (set->kind != ANSWER_ADDRESSES)
		return set->kind == ANSWER_SERVFAIL ? "SERVFAIL" :
		    set->kind == ANSWER_NODATA ? "NODATA" : "FORWARD";
	for (int i = 0; i < set->count; i++) {
		strcat(text, i ? " " : "");
		strcat(text, answer_text(name, family, i));
	}
	return text;
}

/*
 * Two candidates listing one IP (two check URLs on one server): the
 * operator's word on it holds wherever it appears.  Down anywhere is
 * down, in the selection, the spill and failure_mode all alike; drain
 * anywhere is drain unless another says down; up counts only alone.
 */
static void
test_shared_address_admin_state(void)
{
	struct fixture f;
	struct name *name;

	if (!CHECK(fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    selection_method = all\n"
	    "    candidate a { address = { 192.0.2.1 } }\n"
	    "    candidate b { address = { 192.0.2.1 } }\n"
	    "    candidate c { address = { 192.0.2.2 } }\n"
	    "}\n")))
		return;
	name = find_name(&f, "www.example.com");
	name->candidates[0].addresses[0]->health = HEALTH_UP;
	name->candidates[0].addresses[0]->srtt = 0.1;
	name->candidates[1].addresses[0]->health = HEALTH_UP;
	name->candidates[1].addresses[0]->srtt = 0.1;
	set_up(name, "192.0.2.2", 0.2);
	select_update_all(name);
	CHECK_STR(answered(name, AF_INET), "192.0.2.1 192.0.2.2");

	for (int drained_by = 0; drained_by < 2; drained_by++) {
		const char *says = drained_by ? "b" : "a";
		const char *other = drained_by ? "a" : "b";

		set_admin(name, says, ADMIN_DOWN);
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "192.0.2.2");
		CHECK_INT(address_tier(name_find_candidate(name, other)
				       ->addresses[0]), TIER_ADMIN_DOWN);
		/* up elsewhere does not undo a down */
		set_admin(name, other, ADMIN_UP);
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "192.0.2.2");
		set_admin(name, other, ADMIN_AUTO);

		set_admin(name, says, ADMIN_DRAIN);
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "192.0.2.2");
		CHECK_INT(address_tier(name_find_candidate(name, other)
				       ->addresses[0]), TIER_DRAINING);
		/* the drained IP is the last resort, as a drain is */
		set_health(name, "192.0.2.2", HEALTH_DOWN);
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "192.0.2.1");
		CHECK_INT(answers(name, AF_INET)->count, 1);	/* once */
		/* drain and down: down */
		set_admin(name, other, ADMIN_DOWN);
		name_config(name)->failure_mode = FAILURE_SERVFAIL;
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "SERVFAIL");
		/* failure_mode all leaves it out too: only c, which is down */
		name_config(name)->failure_mode = FAILURE_ALL;
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "192.0.2.2");
		set_admin(name, other, ADMIN_AUTO);
		set_admin(name, says, ADMIN_DOWN);
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "192.0.2.2");
		/* with spill: down in every group it is in */
		set_up(name, "192.0.2.2", 0.2);
		name_config(name)->overprovisioning = 1.5;
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "192.0.2.2");
		CHECK_DOUBLE(name->candidates[0].addresses[0]->share, 0);
		CHECK_DOUBLE(name->candidates[1].addresses[0]->share, 0);
		name_config(name)->overprovisioning = 0;
		name_config(name)->failure_mode = FAILURE_NONE;
		set_admin(name, says, ADMIN_AUTO);
		select_update_all(name);
		CHECK_STR(answered(name, AF_INET), "192.0.2.1 192.0.2.2");
	}
	/* up alone, on an IP whose checks fail: answered, as up is */
	name->candidates[0].addresses[0]->health = HEALTH_DOWN;
	name->candidates[1].addresses[0]->health = HEALTH_DOWN;
	set_admin(name, "a", ADMIN_UP);
	select_update_all(name);
	CHECK_STR(answered(name, AF_INET), "192.0.2.1 192.0.2.2");
	fixture_free(&f);
}

static void
test_admin_state_config(void)
{
	struct fixture f;
	struct name *name;

	if (!CHECK(fixture_load(&f, admin_names)))
		return;
	name = find_name(&f, "www.example.com");
	CHECK_INT(name_find_candidate(name, "a")->config->admin_state, ADMIN_AUTO);
	CHECK_INT(name_find_candidate(name, "b")->config->admin_state, ADMIN_DRAIN);
	CHECK_INT(name_find_candidate(name, "c")->config->admin_state, ADMIN_DOWN);
	CHECK_INT(name_find_candidate(name, "d")->config->admin_state, ADMIN_UP);
	CHECK_INT(name->config->drain_status_count, 2);
	CHECK(select_drain_status(name->config, 503));
	CHECK(select_drain_status(name->config, 418));
	CHECK(!select_drain_status(name->config, 200));
	CHECK(!select_drain_status(name->config, STATUS_TIMEOUT));
	fixture_free(&f);
}

/*
 * Healthy before draining before failure_mode; admin down never; admin
 * up always, as healthy.
 */
static void
test_admin_tiers(void)
{
	struct fixture f;
	struct name *name;
	struct answer_set *v4;

	if (!CHECK(fixture_load(&f, admin_names)))
		return;
	name = find_name(&f, "www.example.com");
	v4 = answers(name, AF_INET);
	/* Nothing checked yet: only admin up is answered. */
	CHECK_INT(v4->kind, ANSWER_ADDRESSES);
	CHECK_INT(v4->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.4");
	CHECK_INT(address_tier(find_address(name, "192.0.2.4")), TIER_HEALTHY);

	set_up(name, "192.0.2.1", 0.3);
	set_up(name, "192.0.2.2", 0.1);
	set_up(name, "192.0.2.3", 0.05);
	set_health(name, "192.0.2.4", HEALTH_DOWN);
	select_update_all(name);
	CHECK_INT(address_tier(find_address(name, "192.0.2.1")), TIER_HEALTHY);
	CHECK_INT(address_tier(find_address(name, "192.0.2.2")), TIER_DRAINING);
	CHECK_INT(address_tier(find_address(name, "192.0.2.3")), TIER_ADMIN_DOWN);
	CHECK_INT(address_tier(find_address(name, "192.0.2.4")), TIER_HEALTHY);
	/* a and d (up, though its checks fail); not b (draining), not c. */
	CHECK_INT(v4->count, 2);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.4");
	CHECK_INT(v4->failure_mode, 0);

	/* d back to auto, and down: a alone. */
	set_admin(name, "d", ADMIN_AUTO);
	select_update_all(name);
	CHECK_INT(address_tier(find_address(name, "192.0.2.4")), TIER_UNAVAILABLE);
	CHECK_INT(v4->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");

	/* a down: the draining b is answered, before any failure_mode. */
	set_health(name, "192.0.2.1", HEALTH_DOWN);
	name_config(name)->failure_mode = FAILURE_ALL;
	select_update_all(name);
	CHECK_INT(v4->kind, ANSWER_ADDRESSES);
	CHECK_INT(v4->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.2");
	CHECK_INT(v4->failure_mode, 0);

	/* b down too: failure_mode all answers every address but c. */
	set_health(name, "192.0.2.2", HEALTH_DOWN);
	select_update_all(name);
	CHECK_INT(v4->kind, ANSWER_ADDRESSES);
	CHECK_INT(v4->failure_mode, 1);
	CHECK_INT(v4->count, 3);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");
	CHECK_STR(answer_text(name, AF_INET, 1), "192.0.2.2");
	CHECK_STR(answer_text(name, AF_INET, 2), "192.0.2.4");

	name_config(name)->failure_mode = FAILURE_SERVFAIL;
	select_update_all(name);
	CHECK_INT(v4->kind, ANSWER_SERVFAIL);

	/* Every address down by the operator: SERVFAIL, since the upstream's
	 * records would bring them back. */
	name_config(name)->failure_mode = FAILURE_ALL;
	set_admin(name, "a", ADMIN_DOWN);
	set_admin(name, "b", ADMIN_DOWN);
	set_admin(name, "d", ADMIN_DOWN);
	select_update_all(name);
	CHECK_INT(v4->kind, ANSWER_SERVFAIL);
	CHECK_INT(v4->count, 0);
	fixture_free(&f);
}

/* Within a tier the selection method applies as usual. */
static void
test_draining_tier_selection(void)
{
	struct fixture f;
	struct name *name;
	struct answer_set *v4;

	if (!CHECK(fixture_load(&f, admin_names)))
		return;
	name = find_name(&f, "www.example.com");
	v4 = answers(name, AF_INET);
	name_config(name)->selection_method = SELECT_BEST_RTT;
	set_admin(name, "a", ADMIN_DRAIN);
	set_admin(name, "d", ADMIN_AUTO);
	set_up(name, "192.0.2.1", 0.3);
	set_up(name, "192.0.2.2", 0.1);
	set_up(name, "192.0.2.4", 0.9);
	select_update_all(name);
	/* d is slowest but the only healthy one. */
	CHECK_INT(v4->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.4");
	set_health(name, "192.0.2.4", HEALTH_DOWN);
	select_update_all(name);
	CHECK_INT(v4->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.2");
	fixture_free(&f);
}

/* admin up overrules max_rtt too; drain does not. */
static void
test_admin_up_and_max_rtt(void)
{
	struct fixture f;
	struct name *name;

	if (!CHECK(fixture_load(&f, admin_names)))
		return;
	name = find_name(&f, "www.example.com");
	name_config(name)->max_rtt = 0.1;
	set_up(name, "192.0.2.4", 0.5);
	set_up(name, "192.0.2.2", 0.5);
	CHECK_INT(address_tier(find_address(name, "192.0.2.4")), TIER_HEALTHY);
	CHECK_INT(address_tier(find_address(name, "192.0.2.2")), TIER_UNAVAILABLE);
	fixture_free(&f);
}

/*
 * A drain status is a success that drains at once; a success without
 * one ends the drain; a failure leaves it as it is.
 */
static void
test_drain_status_results(void)
{
	struct fixture f;
	struct name *name;
	struct address *address, *other;

	if (!CHECK(fixture_load(&f, admin_names)))
		return;
	name = find_name(&f, "www.example.com");
	name_config(name)->fall = 2;
	address = find_address(name, "192.0.2.1");
	other = find_address(name, "192.0.2.4");
	set_admin(name, "d", ADMIN_AUTO);
	set_up(name, "192.0.2.4", 0.2);

	CHECK_INT(select_record_result(address, 503, 1, 0.01, 0.05, 1), 1);
	CHECK_INT(address->health, HEALTH_UP);
	CHECK_INT(address->draining, 1);
	CHECK_DOUBLE(address->srtt, 0.05);
	CHECK_INT(address->successes, 1);
	CHECK_INT(address->response_errors, 0);
	CHECK_INT(address_tier(address), TIER_DRAINING);
	select_update_all(name);
	CHECK_INT(answers(name, AF_INET)->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.4");

	/* Fails once (fall 2): still up, still drained. */
	CHECK_INT(select_record_result(address, STATUS_CONNECT_ERROR, 0, 0, 0, 2), 0);
	CHECK_INT(address->draining, 1);
	CHECK_INT(address_tier(address), TIER_DRAINING);
	/* The server says all is well again. */
	CHECK_INT(select_record_result(address, 200, 1, 0.01, 0.05, 3), 0);
	CHECK_INT(address->draining, 0);
	CHECK_INT(address_tier(address), TIER_HEALTHY);
	/* Drained, then last one: answered. */
	CHECK_INT(select_record_result(address, 418, 1, 0.01, 0.05, 4), 0);
	CHECK_INT(address->draining, 1);
	other->health = HEALTH_DOWN;
	select_update_all(name);
	CHECK_INT(answers(name, AF_INET)->kind, ANSWER_ADDRESSES);
	CHECK_INT(answers(name, AF_INET)->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");
	fixture_free(&f);
}

/*
 * A reload that changes only admin_state keeps health and RTT and
 * checks nothing again; a changed drain_status is a changed check.
 */
static void
test_take_over_admin_state(void)
{
	static const char before[] =
		"nameservers = { 192.0.2.53 }\n"
		"name www.example.com {\n"
		"    candidate a { address = { 192.0.2.1 } }\n"
		"    candidate b { address = { 192.0.2.2 } }\n"
		"}\n";
	static const char after[] =
		"nameservers = { 192.0.2.53 }\n"
		"name www.example.com {\n"
		"    candidate a { address = { 192.0.2.1 } admin_state = drain }\n"
		"    candidate b { address = { 192.0.2.2 } }\n"
		"}\n";
	static const char drain[] =
		"nameservers = { 192.0.2.53 }\n"
		"name www.example.com {\n"
		"    drain_status = 503\n"
		"    candidate a { address = { 192.0.2.1 } admin_state = drain }\n"
		"    candidate b { address = { 192.0.2.2 } }\n"
		"}\n";
	struct fixture old, fresh, third;
	struct name *name;
	struct address *a, *moved;

	if (!CHECK(fixture_load(&old, before)) || !CHECK(fixture_load(&fresh, after)) ||
	    !CHECK(fixture_load(&third, drain)))
		return;
	name = find_name(&old, "www.example.com");
	a = find_address(name, "192.0.2.1");
	CHECK_INT(select_record_result(a, 200, 1, 0.01, 0.04, 1), 1);
	set_up(name, "192.0.2.2", 0.08);
	select_update_all(name);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");

	registry_take_over(fresh.registry, old.registry);
	old.registry = NULL;
	name = find_name(&fresh, "www.example.com");
	moved = find_address(name, "192.0.2.1");
	CHECK(moved == a);
	CHECK_INT(moved->health, HEALTH_UP);
	CHECK_DOUBLE(moved->srtt, 0.04);
	CHECK_INT(moved->check_changed, 0);
	CHECK_INT(moved->check_count, 1);
	CHECK_INT(moved->store_dirty, 1);	/* its row shows the new state */
	CHECK_INT(answers(name, AF_INET)->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.2");

	registry_take_over(third.registry, fresh.registry);
	fresh.registry = NULL;
	name = find_name(&third, "www.example.com");
	CHECK_INT(find_address(name, "192.0.2.1")->check_changed, 1);
	CHECK_INT(find_address(name, "192.0.2.1")->health, HEALTH_UP);
	fixture_free(&old);
	fixture_free(&fresh);
	fixture_free(&third);
}

/* ------------------------------------------------------------ spill */

/*
 * Ten candidates of one address each: n1-n4 near (1-4 ms), f1-f4 far
 * (25-28 ms), t1-t2 farther still (60, 61 ms); a group_rtt_threshold of
 * 10 ms makes three latency groups of them.
 */
static const char spill_name[] =
	"nameservers = { 192.0.2.53 }\n"
	"name www.example.com {\n"
	"    selection_method = group_rtt_rr\n"
	"    group_rtt_threshold = 0.010\n"
	"    overprovisioning = 1.4\n"
	"    candidate n1 { address = { 192.0.2.1, 2001:db8::1 } }\n"
	"    candidate n2 { address = { 192.0.2.2, 2001:db8::2 } }\n"
	"    candidate n3 { address = { 192.0.2.3 } }\n"
	"    candidate n4 { address = { 192.0.2.4 } }\n"
	"    candidate f1 { address = { 192.0.2.11, 2001:db8::11 } }\n"
	"    candidate f2 { address = { 192.0.2.12 } }\n"
	"    candidate f3 { address = { 192.0.2.13 } }\n"
	"    candidate f4 { address = { 192.0.2.14 } }\n"
	"    candidate t1 { address = { 192.0.2.21 } }\n"
	"    candidate t2 { address = { 192.0.2.22 } }\n"
	"}\n";

static const char *const near_ips[] = {
	"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4" };
static const char *const far_ips[] = {
	"192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14" };
static const char *const farther_ips[] = { "192.0.2.21", "192.0.2.22" };

/* Every address up at its RTT: near 1-4 ms, far 25-28, farther 60-61. */
static struct name *
spill_fixture(struct fixture *f)
{
	struct name *name;

	if (!fixture_load(f, spill_name))
		return NULL;
	name = find_name(f, "www.example.com");
	for (int i = 0; i < 4; i++) {
		set_up(name, near_ips[i], 0.001 * (i + 1));
		set_up(name, far_ips[i], 0.025 + 0.001 * i);
	}
	set_up(name, farther_ips[0], 0.060);
	set_up(name, farther_ips[1], 0.061);
	set_up(name, "2001:db8::1", 0.001);
	set_up(name, "2001:db8::2", 0.002);
	set_up(name, "2001:db8::11", 0.025);
	return name;
}

static double
share_of(struct name *name, const char *ip)
{
	return find_address(name, ip)->share;
}

static int
group_of(struct name *name, const char *ip)
{
	return find_address(name, ip)->latency_group;
}

/* Queries answered with each address, over count queries of family. */
static void
tally_answers(struct name *name, int family, int count, const char *const *ips,
	      int ip_count, int *tally)
{
	struct answer_set *set = answers(name, family);

	for (int i = 0; i < ip_count; i++)
		tally[i] = 0;
	for (int q = 0; q < count; q++) {
		int first, answered = select_answer(set, &first);

		for (int k = first; k < first + answered; k++)
			for (int i = 0; i < ip_count; i++)
				if (strcmp(answer_text(name, family, k), ips[i]) == 0)
					tally[i]++;
	}
}

/* The worked example of har.conf.5: one near survivor of four keeps 35%. */
static void
test_spill_shares(void)
{
	static const char *const watched[] = {
		"192.0.2.1", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14" };
	struct fixture f;
	struct name *name = spill_fixture(&f);
	struct answer_set *set;
	int tally[5];

	if (!CHECK(name))
		return;
	set = answers(name, AF_INET);
	/* Every address up: the near group keeps every answer. */
	select_update(name, AF_INET);
	CHECK_INT(set->group_count, 1);
	CHECK_INT(set->count, 4);
	for (int i = 0; i < 4; i++) {
		CHECK_INT(group_of(name, near_ips[i]), 1);
		CHECK_DOUBLE(share_of(name, near_ips[i]), 0.25);
		CHECK_INT(group_of(name, far_ips[i]), 2);
		CHECK_DOUBLE(share_of(name, far_ips[i]), 0);
	}
	CHECK_INT(group_of(name, farther_ips[1]), 3);

	/* Three near down: min(1, 1/4 x 1.4) = 35% near, 65% far. */
	for (int i = 1; i < 4; i++)
		set_health(name, near_ips[i], HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(set->kind, ANSWER_ADDRESSES);
	CHECK_INT(set->rotate, 1);
	CHECK_INT(set->group_count, 2);
	CHECK_INT(set->groups[0].count, 1);
	CHECK_INT(set->groups[1].count, 4);
	CHECK_STR(answer_text(name, AF_INET, set->groups[0].first), "192.0.2.1");
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0.35);
	CHECK_INT(group_of(name, "192.0.2.2"), 1);	/* down, still its group */
	CHECK_DOUBLE(share_of(name, "192.0.2.2"), 0);
	for (int i = 0; i < 4; i++)
		CHECK_DOUBLE(share_of(name, far_ips[i]), 0.65 / 4);
	CHECK_DOUBLE(share_of(name, farther_ips[0]), 0);
	/*
	 * Over 10000 queries each address gets its share within 0.1
	 * points: 3500 near and 1625 for each far one, give or take 10.
	 */
	tally_answers(name, AF_INET, 10000, watched, 5, tally);
	CHECK(abs(tally[0] - 3500) <= 10);
	for (int i = 1; i < 5; i++)
		CHECK(abs(tally[i] - 1625) <= 10);
	/* Two near up: min(1, 2/4 x 1.4) = 70%; three: 1.05, no spill. */
	set_health(name, near_ips[1], HEALTH_UP);
	select_update(name, AF_INET);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0.35);
	CHECK_DOUBLE(share_of(name, "192.0.2.2"), 0.35);
	CHECK_DOUBLE(share_of(name, "192.0.2.11"), 0.3 / 4);
	set_health(name, near_ips[2], HEALTH_UP);
	select_update(name, AF_INET);
	CHECK_INT(set->group_count, 1);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 1.0 / 3);
	CHECK_DOUBLE(share_of(name, "192.0.2.11"), 0);
	fixture_free(&f);
}

/* Down the groups: each keeps its part of what reaches it. */
static void
test_spill_cascade(void)
{
	struct fixture f;
	struct name *name = spill_fixture(&f);

	if (!CHECK(name))
		return;
	for (int i = 1; i < 4; i++)
		set_health(name, near_ips[i], HEALTH_DOWN);
	set_health(name, far_ips[2], HEALTH_DOWN);
	set_health(name, far_ips[3], HEALTH_DOWN);
	select_update(name, AF_INET);
	/* near 0.35; far min(1, 2/4 x 1.4) = 0.7 of 0.65; farther the rest */
	CHECK_INT(answers(name, AF_INET)->group_count, 3);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0.35);
	CHECK_DOUBLE(share_of(name, far_ips[0]), 0.65 * 0.7 / 2);
	CHECK_DOUBLE(share_of(name, far_ips[1]), 0.65 * 0.7 / 2);
	CHECK_DOUBLE(share_of(name, farther_ips[0]), 0.65 * 0.3 / 2);
	CHECK_DOUBLE(share_of(name, farther_ips[1]), 0.65 * 0.3 / 2);
	CHECK_INT(answers(name, AF_INET)->groups[2].below, UINT64_C(1) << 32);

	/* The last group partly down too: it keeps all that reaches it. */
	set_health(name, farther_ips[0], HEALTH_DOWN);
	set_health(name, farther_ips[1], HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->group_count, 2);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0.35);
	CHECK_DOUBLE(share_of(name, far_ips[0]), 0.65 / 2);

	/* The nearest group all down: the next one as if it were first. */
	set_health(name, near_ips[0], HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->group_count, 1);
	CHECK_DOUBLE(share_of(name, far_ips[0]), 0.5);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0);

	/* Every group partly down and a larger overprovisioning: near keeps
	 * min(1, 1/4 x 3) = 75%. */
	set_health(name, near_ips[0], HEALTH_UP);
	name_config(name)->overprovisioning = 3;
	select_update(name, AF_INET);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0.75);
	CHECK_DOUBLE(share_of(name, far_ips[0]), 0.125);
	fixture_free(&f);
}

/* overprovisioning 0 is the original rule: the near survivor alone. */
static void
test_spill_off(void)
{
	struct fixture f;
	struct name *name = spill_fixture(&f);
	struct answer_set *set;

	if (!CHECK(name))
		return;
	set = answers(name, AF_INET);
	name_config(name)->overprovisioning = 0;
	for (int i = 1; i < 4; i++)
		set_health(name, near_ips[i], HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(set->group_count, 1);
	CHECK_INT(set->count, 1);
	CHECK_STR(answer_text(name, AF_INET, 0), "192.0.2.1");
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 1);
	CHECK_INT(group_of(name, "192.0.2.1"), 0);
	CHECK_DOUBLE(share_of(name, "192.0.2.11"), 0);
	for (int q = 0; q < 5; q++) {
		int first;

		CHECK_INT(select_answer(set, &first), 1);
		CHECK_INT(first, 0);
	}
	/* all without spill: every healthy address, share 1 each. */
	name_config(name)->selection_method = SELECT_ALL;
	select_update(name, AF_INET);
	CHECK_INT(set->count, 7);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 1);
	CHECK_DOUBLE(share_of(name, "192.0.2.22"), 1);
	fixture_free(&f);
}

/* With `all`, an answer carries every available address of its group. */
static void
test_spill_all(void)
{
	struct fixture f;
	struct name *name = spill_fixture(&f);
	struct answer_set *set;
	int near = 0, far = 0;

	if (!CHECK(name))
		return;
	set = answers(name, AF_INET);
	name_config(name)->selection_method = SELECT_ALL;
	for (int i = 1; i < 4; i++)
		set_health(name, near_ips[i], HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(set->rotate, 0);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0.35);
	CHECK_DOUBLE(share_of(name, "192.0.2.11"), 0.65);
	for (int q = 0; q < 1000; q++) {
		int first, count = select_answer(set, &first);

		if (count == 1 && strcmp(answer_text(name, AF_INET, first),
					 "192.0.2.1") == 0)
			near++;
		else if (count == 4 && strcmp(answer_text(name, AF_INET, first),
					      "192.0.2.11") == 0)
			far++;	/* the far group, lowest RTT first */
	}
	CHECK_INT(near + far, 1000);
	CHECK(abs(near - 350) <= 5);
	fixture_free(&f);
}

/*
 * Draining and set-down addresses are capacity their group lacks; with
 * no healthy address at all, the draining ones are the available ones.
 */
static void
test_spill_tiers(void)
{
	struct fixture f;
	struct name *name = spill_fixture(&f);

	if (!CHECK(name))
		return;
	find_address(name, "192.0.2.2")->draining = 1;
	((struct config_candidate *)find_address(name, "192.0.2.3")->candidate->config)
	    ->admin_state = ADMIN_DOWN;
	set_health(name, "192.0.2.4", HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0.35);
	CHECK_DOUBLE(share_of(name, "192.0.2.2"), 0);
	CHECK_DOUBLE(share_of(name, "192.0.2.3"), 0);
	CHECK_INT(group_of(name, "192.0.2.3"), 1);
	CHECK_DOUBLE(share_of(name, "192.0.2.11"), 0.65 / 4);

	/* Only draining addresses left: 192.0.2.2 and 192.0.2.12. */
	for (int i = 0; i < 4; i++)
		set_health(name, far_ips[i], HEALTH_DOWN);
	set_health(name, "192.0.2.1", HEALTH_DOWN);
	set_health(name, farther_ips[0], HEALTH_DOWN);
	set_health(name, farther_ips[1], HEALTH_DOWN);
	set_health(name, "192.0.2.12", HEALTH_UP);
	find_address(name, "192.0.2.12")->draining = 1;
	select_update(name, AF_INET);
	CHECK_DOUBLE(share_of(name, "192.0.2.2"), 0.35);
	CHECK_DOUBLE(share_of(name, "192.0.2.12"), 0.65);

	/* Nothing available: failure_mode (none: forward), no groups. */
	set_health(name, "192.0.2.2", HEALTH_DOWN);
	set_health(name, "192.0.2.12", HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(answers(name, AF_INET)->kind, ANSWER_FORWARD);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 0);
	CHECK_INT(group_of(name, "192.0.2.1"), 0);
	fixture_free(&f);
}

/*
 * An address never measured has no latency to group by: it is in a last
 * group of its own, and does not count against the near group.
 */
static void
test_spill_unmeasured(void)
{
	struct fixture f;
	struct name *name = spill_fixture(&f);
	struct address *never;

	if (!CHECK(name))
		return;
	never = find_address(name, "192.0.2.4");
	never->health = HEALTH_DOWN;
	never->srtt = NAN;
	set_health(name, "192.0.2.3", HEALTH_DOWN);
	set_health(name, "192.0.2.2", HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_INT(group_of(name, "192.0.2.4"), 4);
	/* near is 1 of 3: min(1, 1/3 x 1.4) */
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 1.4 / 3);

	/* Up but never measured (admin_state up): takes what reaches it;
	 * the near group is still the three measured ones. */
	((struct config_candidate *)never->candidate->config)->admin_state =
	    ADMIN_UP;
	for (int i = 0; i < 4; i++)
		set_health(name, far_ips[i], HEALTH_DOWN);
	set_health(name, farther_ips[0], HEALTH_DOWN);
	set_health(name, farther_ips[1], HEALTH_DOWN);
	select_update(name, AF_INET);
	CHECK_DOUBLE(share_of(name, "192.0.2.1"), 1.4 / 3);
	CHECK_DOUBLE(share_of(name, "192.0.2.4"), 1 - 1.4 / 3);
	fixture_free(&f);
}

/*
 * Each family separately; an IP two candidates share counts once in its
 * group, and both its entries show its share; a moved share is written.
 */
static void
test_spill_families_and_shared(void)
{
	struct fixture f;
	struct name *name;

	if (!CHECK(fixture_load(&f,
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    selection_method = group_rtt_rr\n"
	    "    group_rtt_threshold = 0.010\n"
	    "    overprovisioning = 1.4\n"
	    "    candidate a { address = { 192.0.2.1, 2001:db8::1 } }\n"
	    "    candidate b { address = { 192.0.2.2, 2001:db8::2 } }\n"
	    "    candidate c { address = { 192.0.2.1 } check_address = \"http://x/\" }\n"
	    "    candidate d { address = { 192.0.2.11, 2001:db8::11 } }\n"
	    "}\n")))
		return;
	name = find_name(&f, "www.example.com");
	set_up(name, "192.0.2.1", 0.001);
	set_up(name, "192.0.2.2", 0.002);
	set_up(name, "192.0.2.11", 0.030);
	set_up(name, "2001:db8::1", 0.001);
	set_up(name, "2001:db8::2", 0.002);
	set_up(name, "2001:db8::11", 0.030);
	name->candidates[2].addresses[0]->health = HEALTH_UP;
	name->candidates[2].addresses[0]->srtt = 0.001;
	select_update_all(name);
	set_health(name, "2001:db8::2", HEALTH_DOWN);
	for (int i = 0; i < 4; i++)
		name->candidates[i].addresses[0]->store_dirty = 0;
	select_update_all(name);
	/* A: near is 192.0.2.1 (twice) and .2, both up: no spill */
	CHECK_DOUBLE(name->candidates[0].addresses[0]->share, 0.5);
	CHECK_DOUBLE(name->candidates[2].addresses[0]->share, 0.5);
	CHECK_INT(name->candidates[2].addresses[0]->latency_group, 1);
	CHECK_INT(name->candidates[0].addresses[0]->store_dirty, 0);
	/* AAAA: 1 of 2 near up: min(1, 0.5 x 1.4) = 70% */
	CHECK_DOUBLE(share_of(name, "2001:db8::1"), 0.7);
	CHECK_DOUBLE(share_of(name, "2001:db8::11"), 0.3);
	CHECK_INT(find_address(name, "2001:db8::1")->store_dirty, 1);
	/* the shared IP down by one candidate only: still available */
	name->candidates[2].addresses[0]->health = HEALTH_DOWN;
	select_update(name, AF_INET);
	CHECK_DOUBLE(name->candidates[0].addresses[0]->share, 0.5);
	CHECK_DOUBLE(name->candidates[2].addresses[0]->share, 0.5);
	fixture_free(&f);
}

int
main(void)
{
	RUN(test_first_result_decides);
	RUN(test_rise);
	RUN(test_fall);
	RUN(test_counters);
	RUN(test_smoothed_rtt);
	RUN(test_rtt_mode_connect);
	RUN(test_best_rtt);
	RUN(test_all);
	RUN(test_group_rtt_rr);
	RUN(test_max_rtt);
	RUN(test_failure_modes);
	RUN(test_families);
	RUN(test_registry);
	RUN(test_duplicate_addresses);
	RUN(test_take_over);
	RUN(test_shared_address);
	RUN(test_shared_address_admin_state);
	RUN(test_take_over_changed_check);
	RUN(test_changed_check_settings);
	RUN(test_admin_state_config);
	RUN(test_admin_tiers);
	RUN(test_draining_tier_selection);
	RUN(test_admin_up_and_max_rtt);
	RUN(test_drain_status_results);
	RUN(test_take_over_admin_state);
	RUN(test_spill_shares);
	RUN(test_spill_cascade);
	RUN(test_spill_off);
	RUN(test_spill_all);
	RUN(test_spill_tiers);
	RUN(test_spill_unmeasured);
	RUN(test_spill_families_and_shared);
	return UNIT_SUMMARY();
}
