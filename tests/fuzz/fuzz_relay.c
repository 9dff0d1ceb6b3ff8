/*
 * fuzz_relay.c - libFuzzer harness for relay.c: every input is an
 * upstream reply handed to relay_reply() as for a UDP and a TCP client,
 * then cut to a UDP client's size as server.c does.  The registry is built
 * once with names of each failure mode and selection method, some up,
 * some down, one with IPv4 only.
 *
 * Beyond the sanitizers it checks what relay.c promises: the client's ID
 * is kept; a reply relay.c changed is a well-formed DNS message; in a
 * reply that ldns can read, no A or AAAA record and no SVCB hint of a
 * name hard answers itself names an address that is not one of the
 * name's own; no edns-tcp-keepalive over UDP, and hard's over TCP.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ldns/ldns.h>

#include "har.h"

#define IDLE_TIMEOUT 7.5	/* tcp_idle_timeout: 75 in RFC 7828 units */

static struct registry *registry;
static uint8_t reply[DNS_MAX_UDP];

static void
report(const char *message)
{
	fprintf(stderr, "fuzz_relay config: %s\n", message);
}

static void
fail(const char *what, size_t len)
{
	fprintf(stderr, "fuzz_relay: %s (reply length %zu)\n", what, len);
	abort();
}

/* Up (with RTTs) unless the name's title says down. */
static void
set_health(struct name *name, int index)
{
	int health = strncmp(name->config->title, "down", 4) == 0 ?
	    HEALTH_DOWN : HEALTH_UP;

	for (int i = 0; i < name->candidate_count; i++)
		for (int j = 0; j < name->candidates[i].address_count; j++) {
			struct address *address = name->candidates[i].addresses[j];

			address->health = health;
			address->srtt = 0.01 * ((index + 3 * i + 7 * j) % 9 + 1);
		}
	select_update_all(name);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char text[] =
	    "nameservers = { 192.0.2.53 }\n"
	    "name api.test {\n"
	    "    ttl = 33\n"
	    "    candidate a { address = { 192.0.2.1, 2001:db8::1 } }\n"
	    "    candidate b { address = { 192.0.2.2, 2001:db8::2 } }\n"
	    "}\n"
	    "name rr.test {\n"
	    "    selection_method = group_rtt_rr\n"
	    "    candidate a { address = { 192.0.2.21, 192.0.2.22, 2001:db8::21 } }\n"
	    "}\n"
	    "name v4.test {\n"
	    "    selection_method = all\n"
	    "    candidate a { address = { 192.0.2.31, 192.0.2.32 } }\n"
	    "}\n"
	    "name down-servfail.test {\n"
	    "    failure_mode = servfail\n"
	    "    candidate a { address = { 192.0.2.41, 2001:db8::41 } }\n"
	    "}\n"
	    "name down-all.test {\n"
	    "    failure_mode = all\n"
	    "    candidate a { address = { 192.0.2.51, 2001:db8::51 } }\n"
	    "}\n"
	    "name down-none.test {\n"
	    "    candidate a { address = { 192.0.2.61 } }\n"
	    "}\n"
	    "name a {\n"
	    "    candidate a { address = { 127.0.0.1, ::1 } }\n"
	    "}\n";
	struct config *config;

	(void)argc;
	(void)argv;
	config = config_load_string(text, "/dev/null", report);
	if (!config) {
		fprintf(stderr, "fuzz_relay: the built-in config does not load\n");
		abort();
	}
	registry = registry_create(config);
	for (int i = 0; i < registry->name_count; i++)
		set_health(&registry->names[i], i);
	return 0;
}

/* Where the record at `at` ends by its RDLENGTH, as clients skip it. */
static size_t
record_end(const uint8_t *msg, size_t len, size_t at, int question)
{
	while (at < len && msg[at] != 0 && (msg[at] & 0xc0) != 0xc0)
		at += 1 + (size_t)msg[at];
	if (at >= len)
		return 0;
	at += (msg[at] & 0xc0) == 0xc0 ? 2 : 1;
	if (question)
		return at + 4 <= len ? at + 4 : 0;
	if (at + 10 > len)
		return 0;
	at += 10 + (size_t)(msg[at + 8] << 8 | msg[at + 9]);
	return at <= len ? at : 0;
}

/*
 * The message read record by record (not ldns_wire2pkt: see dns.c), or
 * NULL when ldns reads it otherwise than by the record lengths.
 */
static ldns_rr_list *
read_message(const uint8_t *msg, size_t len)
{
	static const ldns_pkt_section sections[] = {
		LDNS_SECTION_QUESTION, LDNS_SECTION_ANSWER,
		LDNS_SECTION_AUTHORITY, LDNS_SECTION_ADDITIONAL,
	};
	ldns_rr_list *records = ldns_rr_list_new();
	size_t at = 12;

	if (len < 12)
		goto fail;
	for (int s = 0; s < 4; s++)
		for (int i = 0; i < (msg[4 + 2 * s] << 8 | msg[5 + 2 * s]); i++) {
			ldns_rr *rr = NULL;
			size_t end = record_end(msg, len, at, s == 0);

			if (!end || ldns_wire2rr(&rr, msg, len, &at, sections[s]) !=
			    LDNS_STATUS_OK)
				goto fail;
			ldns_rr_set_question(rr, s == 0);
			if (!ldns_rr_list_push_rr(records, rr)) {
				ldns_rr_free(rr);
				goto fail;
			}
			if (at != end)	/* read otherwise than by RDLENGTH */
				goto fail;
		}
	if (at == len)
		return records;
fail:
	ldns_rr_list_deep_free(records);
	return NULL;
}

static struct name *
configured(const ldns_rdf *dname)
{
	uint8_t wire[DNS_MAX_NAME + 1];
	size_t size = ldns_rdf_size(dname);

	if (size > DNS_MAX_NAME)
		return NULL;
	for (size_t i = 0; i < size; i++) {
		uint8_t c = ldns_rdf_data(dname)[i];

		wire[i] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
	}
	return registry_lookup(registry, wire, (int)size);
}

/* Whether ip (4 or 16 bytes) is one of the name's own addresses. */
static int
owns(const struct name *name, const uint8_t *ip, size_t len)
{
	for (int i = 0; i < name->candidate_count; i++)
		for (int j = 0; j < name->candidates[i].address_count; j++) {
			const struct ip_address *own =
			    &name->candidates[i].addresses[j]->ip;

			if ((own->family == AF_INET ? 4u : 16u) == len &&
			    memcmp(own->bytes, ip, len) == 0)
				return 1;
		}
	return 0;
}

static int
hard_answers(const struct name *name, ldns_rr_type type)
{
	int index = type == LDNS_RR_TYPE_AAAA ? 1 : 0;

	return name->answers[index].kind != ANSWER_FORWARD;
}

/* An SVCB record's hints, when its target (or owner) is configured. */
static void
check_hints(const ldns_rr *rr, size_t len)
{
	const ldns_rdf *target, *params;
	const uint8_t *p;
	struct name *name;
	size_t size, at = 0;

	if (ldns_rr_rd_count(rr) < 3)
		return;
	target = ldns_rr_rdf(rr, 1);
	params = ldns_rr_rdf(rr, 2);
	if (ldns_rdf_get_type(target) != LDNS_RDF_TYPE_DNAME)
		return;
	name = configured(ldns_rdf_size(target) == 1 ? ldns_rr_owner(rr) : target);
	if (!name && !configured(ldns_rr_owner(rr)))
		return;
	p = ldns_rdf_data(params);
	size = ldns_rdf_size(params);
	while (at + 4 <= size) {
		unsigned key = (unsigned)(p[at] << 8 | p[at + 1]);
		size_t value = (size_t)(p[at + 2] << 8 | p[at + 3]), width;

		if (at + 4 + value > size)
			return;
		width = key == 4 ? 4 : key == 6 ? 16 : 0;
		for (size_t i = 0; width && i + width <= value; i += width)
			if (!name || !owns(name, p + at + 4 + i, width))
				fail("a hint of a configured name hard did not give",
				     len);
		at += 4 + value;
	}
}

/* Nothing of a configured name in the reply that hard would not answer. */
static void
check_addresses(const ldns_rr_list *records, size_t len)
{
	for (size_t i = 0; i < ldns_rr_list_rr_count(records); i++) {
		const ldns_rr *rr = ldns_rr_list_rr(records, i);
		ldns_rr_type type = ldns_rr_get_type(rr);
		struct name *name;

		if (ldns_rr_is_question(rr))
			continue;
		if (type == LDNS_RR_TYPE_SVCB || type == LDNS_RR_TYPE_HTTPS) {
			check_hints(rr, len);
			continue;
		}
		if ((type != LDNS_RR_TYPE_A && type != LDNS_RR_TYPE_AAAA) ||
		    ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN ||
		    ldns_rr_rd_count(rr) != 1)
			continue;
		name = configured(ldns_rr_owner(rr));
		if (name && hard_answers(name, type) &&
		    !owns(name, ldns_rdf_data(ldns_rr_rdf(rr, 0)),
			  ldns_rdf_size(ldns_rr_rdf(rr, 0))))
			fail("an address of a configured name hard did not give",
			     len);
	}
}

/* edns-tcp-keepalive: none over UDP, hard's timeout over TCP. */
static void
check_keepalive(const ldns_rr_list *records, size_t additional, int over_tcp,
		size_t len)
{
	for (size_t i = 0; i < ldns_rr_list_rr_count(records); i++) {
		const ldns_rr *rr = ldns_rr_list_rr(records, i);
		const uint8_t *p;
		size_t size, at = 0;

		/* RFC 6891: an OPT record elsewhere is not one */
		if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_OPT ||
		    ldns_rr_rd_count(rr) != 1 ||
		    i < ldns_rr_list_rr_count(records) - additional)
			continue;
		p = ldns_rdf_data(ldns_rr_rdf(rr, 0));
		size = ldns_rdf_size(ldns_rr_rdf(rr, 0));
		while (at + 4 <= size) {
			size_t value = (size_t)(p[at + 2] << 8 | p[at + 3]);

			if (at + 4 + value > size)
				break;
			if ((p[at] << 8 | p[at + 1]) == 11 &&
			    (!over_tcp || value != 2 ||
			     (p[at + 4] << 8 | p[at + 5]) != 75))
				fail("edns-tcp-keepalive not hard's", len);
			at += 4 + value;
		}
	}
}

static void
relay(const uint8_t *data, size_t size, int over_tcp)
{
	ldns_rr_list *records;
	uint8_t *out;
	size_t len = size;

	memcpy(reply, data, size);
	out = relay_reply(registry, reply, &len, over_tcp, IDLE_TIMEOUT);
	if (len > DNS_MAX_UDP || (size >= 12 && len < 12))
		fail("reply length out of range", len);
	if (size >= 2 && memcmp(out, data, 2) != 0)
		fail("reply ID is not the client's", len);
	records = read_message(out, len);
	if (!records && relay_last.rewritten)
		fail("a rewritten reply does not parse", len);
	if (records) {
		check_addresses(records, len);
		check_keepalive(records, (size_t)(out[10] << 8 | out[11]),
				over_tcp, len);
		ldns_rr_list_deep_free(records);
	}
	if (!over_tcp && out != reply)
		memcpy(reply, out, len);
	if (!over_tcp && len >= 12 &&
	    dns_truncate_reply(reply, len, 512, 1) > 512)
		fail("relayed reply does not fit 512 bytes once cut", len);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > DNS_MAX_UDP)
		return 0;
	relay(data, size, 0);
	relay(data, size, 1);
	return 0;
}
