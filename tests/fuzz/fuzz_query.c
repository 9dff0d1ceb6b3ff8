/*
 * fuzz_query.c - libFuzzer harness for the answer path: every input is a
 * query (or an upstream reply) handed to dns_answer() over UDP and TCP,
 * to dns_error_reply(), dns_truncate_reply() and dns_reply_rcode().  The registry is
 * built once from a config with names of every selection method and
 * failure mode, IPv4 and IPv6 addresses, some up, some down.
 *
 * Beyond the sanitizers it checks what a client relies on: a reply is a
 * well-formed DNS message (ldns reads it) with the query's ID and QR set,
 * and a UDP reply never exceeds the client's size.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ldns/ldns.h>

#include "har.h"

static struct config *config;
static struct registry *registry;
static uint8_t response[DNS_MAX_UDP];
static uint8_t copy[DNS_MAX_UDP + 1];

static void
report(const char *message)
{
	fprintf(stderr, "fuzz_query config: %s\n", message);
}

static void
fail(const char *what, size_t len)
{
	fprintf(stderr, "fuzz_query: %s (reply length %zu)\n", what, len);
	abort();
}

/* Health by name: some up with RTTs, some down, some never checked. */
static void
set_health(struct name *name, int index)
{
	const char *title = name->config->title;
	int health = HEALTH_UP;

	if (strncmp(title, "down", 4) == 0 || strncmp(title, "servfail", 8) == 0 ||
	    strncmp(title, "failall", 7) == 0)
		health = HEALTH_DOWN;
	else if (strncmp(title, "unknown", 7) == 0)
		return;
	for (int i = 0; i < name->candidate_count; i++)
		for (int j = 0; j < name->candidates[i].address_count; j++) {
			struct address *address = name->candidates[i].addresses[j];

			address->health = health;
			address->srtt = (index + i + j) % 5 == 4 ? NAN :
			    0.01 * ((index + 3 * i + 7 * j) % 9 + 1);
		}
	select_update_all(name);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char text[16384];
	size_t at;

	(void)argc;
	(void)argv;
	at = (size_t)snprintf(text, sizeof(text),
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    ttl = 300\n"
	    "    candidate a { address = { 192.0.2.1, 2001:db8::1 } }\n"
	    "    candidate b { address = { 192.0.2.2, 2001:db8::2 } }\n"
	    "}\n"
	    "name rr.example.com {\n"
	    "    selection_method = group_rtt_rr\n"
	    "    group_rtt_threshold = 0.05\n"
	    "    candidate a { address = { 192.0.2.21, 192.0.2.22, 2001:db8::21 } }\n"
	    "    candidate b { address = { 192.0.2.23, 2001:db8::23 } }\n"
	    "}\n"
	    "name servfail.example.com {\n"
	    "    failure_mode = servfail\n"
	    "    candidate a { address = { 192.0.2.31, 2001:db8::31 } }\n"
	    "}\n"
	    "name failall.example.com {\n"
	    "    failure_mode = all\n"
	    "    selection_method = group_rtt_rr\n"
	    "    candidate a { address = { 192.0.2.41, 192.0.2.42 } }\n"
	    "    candidate b { address = { 2001:db8::41 } }\n"
	    "}\n"
	    "name down.example.com {\n"
	    "    candidate a { address = { 192.0.2.51, 2001:db8::51 } }\n"
	    "}\n"
	    "name unknown.example.com {\n"
	    "    failure_mode = servfail\n"
	    "    candidate a { address = { 192.0.2.52 } }\n"
	    "}\n"
	    "name v4.example.com {\n"
	    "    ttl = 60\n"
	    "    rtt_mode = connect\n"
	    "    max_rtt = 0.05\n"
	    "    candidate a { address = { 192.0.2.61, 192.0.2.62 } }\n"
	    "}\n"
	    "name v6.example.com {\n"
	    "    candidate a { check_address = \"http://[2001:db8::61]/\" }\n"
	    "}\n"
	    "name dns.example.com {\n"
	    "    candidate a { check_address = \"http://a.example.net/\" }\n"
	    "}\n"
	    "name a {\n"
	    "    candidate a { address = { 127.0.0.1, ::1 } }\n"
	    "}\n"
	    "name many.example.com {\n"
	    "    selection_method = all\n"
	    "    candidate a { address = { 198.51.100.1");
	for (int i = 2; i <= 40; i++)
		at += (size_t)snprintf(text + at, sizeof(text) - at,
				       ", 198.51.100.%d, 2001:db8::1:%d", i, i);
	snprintf(text + at, sizeof(text) - at, " } }\n}\n");

	config = config_load_string(text, "/dev/null", report);
	if (!config) {
		fprintf(stderr, "fuzz_query: the built-in config does not load\n");
		abort();
	}
	registry = registry_create(config);
	for (int i = 0; i < registry->name_count; i++)
		set_health(&registry->names[i], i);
	return 0;
}

/* A reply a client can use: parses, carries the ID, says it is a reply. */
static void
check_reply(const uint8_t *query, size_t query_len, const uint8_t *reply,
	    size_t reply_len)
{
	ldns_pkt *pkt = NULL;

	if (reply_len < 12)
		fail("reply shorter than a header", reply_len);
	if (query_len >= 2 && memcmp(reply, query, 2) != 0)
		fail("reply ID is not the query's", reply_len);
	if (!(reply[2] & 0x80))
		fail("reply without QR", reply_len);
	if (ldns_wire2pkt(&pkt, reply, reply_len) != LDNS_STATUS_OK)
		fail("reply does not parse", reply_len);
	ldns_pkt_free(pkt);
}

static void
answer(const uint8_t *data, size_t size, int over_tcp)
{
	size_t len = 0, limit = 0;
	enum dns_verdict verdict;

	verdict = dns_answer(registry, data, size, over_tcp, response,
			     sizeof(response), &len, &limit);
	if (limit < 512 || limit > DNS_MAX_UDP)
		fail("client limit out of range", limit);
	switch (verdict) {
	case DNS_REPLY:
		check_reply(data, size, response, len);
		if (!over_tcp && len > limit)
			fail("UDP reply bigger than the client's limit", len);
		break;
	case DNS_DROP:
	case DNS_FORWARD:
		if (len != 0)
			fail("a reply length without a reply", len);
		break;
	default:
		fail("unknown verdict", len);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t len;

	answer(data, size, 0);
	answer(data, size, 1);

	len = dns_error_reply(data, size, 2, response, sizeof(response));
	if (len)
		check_reply(data, size, response, len);

	/*
	 * As an upstream reply relayed to a UDP client (the caller only cuts
	 * replies longer than the limit, which is at least 512).
	 */
	if (size >= 12 && size <= DNS_MAX_UDP) {
		static const size_t limits[] = { 512, 512, 1232, 1232 };
		int rcode = dns_reply_rcode(data, size);

		/* the header's four bits, under at most eight of OPT's */
		if (rcode < 0 || rcode > 0xfff || (rcode & 0x0f) != (data[3] & 0x0f))
			fail("12-bit rcode out of its range", (size_t)rcode);

		for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
			memcpy(copy, data, size);
			len = dns_truncate_reply(copy, size, limits[i], (int)(i & 1));
			if (size <= limits[i] ? len != size : len > limits[i])
				fail("truncated reply does not fit", len);
			if (len < 12 || memcmp(copy, data, 2) != 0)
				fail("truncated reply lost its header", len);
			if (size > limits[i] && !(copy[2] & 0x02))
				fail("truncated reply without TC", len);
		}
	}
	return 0;
}
