/*
 * test_config.c - config.c: defaults, the original har.conf.example
 * block, names and check targets, nameservers (given or from a
 * resolv.conf), the forwarding-loop guard, and every kind of error
 * reported as "(string):LINE: reason".  No network; the only file
 * written is a temporary resolv.conf.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "har.h"
#include "unit.h"

#define MAX_REPORTS 64

static char reports[MAX_REPORTS][1024];
static int report_count;
static char resolv_conf[64];	/* nameserver 192.0.2.99, ... */
static char loopback_resolv_conf[64];	/* nameserver 127.0.0.1 */

static void
collect(const char *message)
{
	if (report_count < MAX_REPORTS)
		snprintf(reports[report_count], sizeof(reports[0]), "%s",
			 message);
	report_count++;
}

static struct config *
load(const char *text)
{
	report_count = 0;
	return config_load_string(text, resolv_conf, collect);
}

static void
print_reports(void)
{
	if (report_count == 0)
		fprintf(stderr, "    (nothing reported)\n");
	for (int i = 0; i < report_count && i < MAX_REPORTS; i++)
		fprintf(stderr, "    reported: %s\n", reports[i]);
}

/* Some report names line (one of lines, 0-terminated) and contains reason. */
static int
reported_at(const int *lines, const char *reason)
{
	for (int i = 0; i < report_count && i < MAX_REPORTS; i++) {
		for (int j = 0; lines[j]; j++) {
			char where[32];

			snprintf(where, sizeof(where), "(string):%d: ", lines[j]);
			if (strncmp(reports[i], where, strlen(where)) == 0 &&
			    strstr(reports[i] + strlen(where), reason) &&
			    strlen(reports[i]) > strlen(where))
				return 1;
		}
	}
	return 0;
}

/*
 * TEXT is rejected, and a report names one of LINES (0-terminated) and
 * contains REASON.
 */
static void
check_rejected(const char *file, int line, const char *text, const int *lines,
	       const char *reason)
{
	struct config *config = load(text);
	char what[256];
	int ok;

	snprintf(what, sizeof(what), "rejected: %s", reason);
	ok = unit_result(config == NULL, file, line, what);
	snprintf(what, sizeof(what), "reported at line %d%s: %s", lines[0],
		 lines[1] ? " (or another)" : "", reason);
	ok &= unit_result(reported_at(lines, reason), file, line, what);
	if (!ok) {
		fprintf(stderr, "    in config:\n");
		for (int n = 1; *text; n++) {
			const char *end = strchr(text, '\n');
			int length = end ? (int)(end - text) : (int)strlen(text);

			fprintf(stderr, "    %3d| %.*s\n", n, length, text);
			text += length + (end ? 1 : 0);
		}
		print_reports();
	}
	config_free(config);
}

#define CHECK_REJECTED(text, line, reason)				\
	check_rejected(__FILE__, __LINE__, (text), (int[]){ (line), 0 },	\
		       (reason))

/* The same, for errors that may fairly point at one of several lines. */
#define CHECK_REJECTED_AT(text, lines, reason)				\
	check_rejected(__FILE__, __LINE__, (text), (lines), (reason))

#define CHECK_ACCEPTED(config) do {					\
	if (!CHECK((config) != NULL))					\
		print_reports();					\
} while (0)

static const struct config_name *
find_name(const struct config *config, const char *title)
{
	for (int i = 0; config && i < config->name_count; i++)
		if (strcmp(config->names[i].title, title) == 0)
			return &config->names[i];
	return NULL;
}

static const char *
address_text(const struct ip_address *ip)
{
	static char text[4][INET6_ADDRSTRLEN];
	static int next;
	char *out = text[next++ % 4];

	ip_address_format(ip, out, INET6_ADDRSTRLEN);
	return out;
}

static int
endpoint_port(const struct endpoint *endpoint)
{
	const struct sockaddr *sa = (const struct sockaddr *)&endpoint->addr;

	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
}

static int
endpoint_family(const struct endpoint *endpoint)
{
	return ((const struct sockaddr *)&endpoint->addr)->sa_family;
}

static const char minimal[] =
	"nameservers = { 192.0.2.53 }\n"
	"name www.example.com {\n"
	"    candidate www1.example.com {}\n"
	"}\n";

/* ------------------------------------------------------------ defaults */

static void
test_defaults(void)
{
	struct config *config = load(minimal);
	const struct config_name *name;
	const struct config_candidate *candidate;

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	CHECK_INT(report_count, 0);
	CHECK_STR(config->file, "(string)");
	CHECK_INT(config->nameserver_count, 1);
	CHECK_STR(config->nameservers[0].text, "192.0.2.53:53");
	CHECK_INT(config->nameservers_from_resolv_conf, 0);
	CHECK_INT(config->bind_interface_count, 2);
	if (config->bind_interface_count == 2) {
		CHECK_STR(config->bind_interfaces[0], "127.0.0.1");
		CHECK_STR(config->bind_interfaces[1], "::1");
	}
	CHECK_INT(config->listen_port, 53);
	CHECK_DOUBLE(config->resolver_timeout, 1.0);
	CHECK_DOUBLE(config->resolver_total_timeout, 3.0);
	CHECK_INT(config->log_queries, 0);
	CHECK_STR(config->data_file, "/var/lib/har/har.db");
	CHECK_DOUBLE(config->data_file_interval, 60);
	CHECK_INT(config->data_file_bytes_per_check, 150);
	CHECK(config->user == NULL);
	CHECK_INT(config->check_history, 1000);
	CHECK_DOUBLE(config->tcp_idle_timeout, 10);
	CHECK_DOUBLE(config->first_round_wait, 1);
	CHECK_INT(config->tcp_max_connections, 128);

	CHECK_INT(config->name_count, 1);
	name = &config->names[0];
	CHECK_STR(name->title, "www.example.com");
	CHECK_INT(name->wire_len, 17);
	CHECK(memcmp(name->wire, "\003www\007example\003com", 17) == 0);
	CHECK_INT(name->check_method, CHECK_HTTP);
	CHECK_DOUBLE(name->check_frequency, 60);
	CHECK_DOUBLE(name->check_timeout, 10);
	CHECK_INT(name->rise, 1);
	CHECK_INT(name->fall, 1);
	CHECK_INT(name->expect_status_count, 1);
	if (name->expect_status_count == 1) {
		CHECK_INT(name->expect_status[0].low, 200);
		CHECK_INT(name->expect_status[0].high, 200);
	}
	CHECK_INT(name->drain_status_count, 0);
	CHECK_INT(name->selection_method, SELECT_BEST_RTT);
	CHECK_INT(name->rtt_mode, RTT_TOTAL);
	CHECK(isinf(name->max_rtt) && name->max_rtt > 0);
	CHECK(isinf(name->group_rtt_threshold) && name->group_rtt_threshold > 0);
	CHECK_DOUBLE(name->overprovisioning, 0);
	CHECK_INT(name->failure_mode, FAILURE_NONE);
	CHECK_INT(name->ttl, 0);
	CHECK(name->ca_file == NULL);
	CHECK_INT(name->line, 2);

	CHECK_INT(name->candidate_count, 1);
	candidate = &name->candidates[0];
	CHECK_STR(candidate->title, "www1.example.com");
	CHECK_STR(candidate->check_address, "http://www1.example.com/");
	CHECK_STR(candidate->scheme, "http");
	CHECK_STR(candidate->host, "www1.example.com");
	CHECK_INT(candidate->port, 80);
	CHECK_STR(candidate->url, "http://www1.example.com/");
	CHECK_INT(candidate->address_count, 0);
	CHECK_INT(candidate->admin_state, ADMIN_AUTO);
	CHECK_INT(candidate->line, 3);
	config_free(config);
}

static void
test_check_timeout_default(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53 }\n"
	    "name a.example.com { check_frequency = 3\n candidate a {} }\n"
	    "name b.example.com { check_frequency = 0.25\n candidate a {} }\n"
	    "name c.example.com { check_frequency = 30\n candidate a {} }\n"
	    "name d.example.com { check_frequency = 30\n check_timeout = 2.5\n"
	    "    candidate a {} }\n"
	    "name e.example.com { check_timeout = 20\n candidate a {} }\n");

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	CHECK_DOUBLE(find_name(config, "a.example.com")->check_frequency, 3);
	CHECK_DOUBLE(find_name(config, "a.example.com")->check_timeout, 3);
	CHECK_DOUBLE(find_name(config, "b.example.com")->check_frequency, 0.25);
	CHECK_DOUBLE(find_name(config, "b.example.com")->check_timeout, 0.25);
	CHECK_DOUBLE(find_name(config, "c.example.com")->check_timeout, 10);
	CHECK_DOUBLE(find_name(config, "d.example.com")->check_timeout, 2.5);
	CHECK_DOUBLE(find_name(config, "e.example.com")->check_frequency, 60);
	CHECK_DOUBLE(find_name(config, "e.example.com")->check_timeout, 20);
	config_free(config);
}

static void
test_every_option(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53, 192.0.2.54:5300 }\n"
	    "dns_bind_interfaces = { 127.0.0.53 }\n"
	    "dns_listen_port = 5353\n"
	    "resolver_timeout = 0.5\n"
	    "resolver_total_timeout = 2\n"
	    "log_queries = yes\n"
	    "data_file = \"\"\n"
	    "data_file_interval = 5\n"
	    "data_file_bytes_per_check = 0\n"
	    "user = \"nobody\"\n"
	    "check_history = 10\n"
	    "tcp_idle_timeout = 2.5\n"
	    "first_round_wait = 0\n"
	    "tcp_max_connections = 4\n"
	    "name api.example.com {\n"
	    "    check_method = http\n"
	    "    check_frequency = 10\n"
	    "    check_timeout = 2\n"
	    "    rise = 2\n"
	    "    fall = 3\n"
	    "    expect_status = { 200, 204, 301 }\n"
	    "    selection_method = all\n"
	    "    rtt_mode = connect\n"
	    "    max_rtt = 0.25\n"
	    "    group_rtt_threshold = 0.005\n"
	    "    failure_mode = servfail\n"
	    "    ttl = 30\n"
	    "    ca_file = \"/etc/passwd\"\n"	/* any readable file */
	    "    candidate api1 {\n"
	    "        check_address = \"https://api1.example.com:8443/healthz?x=1\"\n"
	    "    }\n"
	    "}\n"
	    "name rr.example.com {\n"
	    "    selection_method = group_rtt_rr\n"
	    "    failure_mode = all\n"
	    "    candidate a { check_address = \"https://a.example.com\" }\n"
	    "}\n");
	const struct config_name *name;
	const struct config_candidate *candidate;

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	CHECK_INT(config->nameserver_count, 2);
	CHECK_STR(config->nameservers[1].text, "192.0.2.54:5300");
	CHECK_INT(config->bind_interface_count, 1);
	CHECK_STR(config->bind_interfaces[0], "127.0.0.53");
	CHECK_INT(config->listen_port, 5353);
	CHECK_DOUBLE(config->resolver_timeout, 0.5);
	CHECK_DOUBLE(config->resolver_total_timeout, 2);
	CHECK_INT(config->log_queries, 1);
	CHECK_STR(config->data_file, "");
	CHECK_DOUBLE(config->data_file_interval, 5);
	CHECK_INT(config->data_file_bytes_per_check, 0);
	CHECK_STR(config->user, "nobody");
	CHECK_INT(config->check_history, 10);
	CHECK_DOUBLE(config->tcp_idle_timeout, 2.5);
	CHECK_DOUBLE(config->first_round_wait, 0);
	CHECK_INT(config->tcp_max_connections, 4);
	name = find_name(config, "api.example.com");
	if (!CHECK(name != NULL))
		goto out;
	CHECK_INT(name->check_method, CHECK_HTTP);
	CHECK_DOUBLE(name->check_frequency, 10);
	CHECK_DOUBLE(name->check_timeout, 2);
	CHECK_INT(name->rise, 2);
	CHECK_INT(name->fall, 3);
	CHECK_INT(name->expect_status_count, 3);
	if (name->expect_status_count == 3) {
		CHECK_INT(name->expect_status[0].low, 200);
		CHECK_INT(name->expect_status[0].high, 200);
		CHECK_INT(name->expect_status[1].low, 204);
		CHECK_INT(name->expect_status[1].high, 204);
		CHECK_INT(name->expect_status[2].low, 301);
		CHECK_INT(name->expect_status[2].high, 301);
	}
	CHECK_INT(name->selection_method, SELECT_ALL);
	CHECK_INT(name->rtt_mode, RTT_CONNECT);
	CHECK_DOUBLE(name->max_rtt, 0.25);
	CHECK_DOUBLE(name->group_rtt_threshold, 0.005);
	CHECK_INT(name->failure_mode, FAILURE_SERVFAIL);
	CHECK_INT(name->ttl, 30);
	CHECK_STR(name->ca_file, "/etc/passwd");
	candidate = &name->candidates[0];
	CHECK_STR(candidate->scheme, "https");
	CHECK_STR(candidate->host, "api1.example.com");
	CHECK_INT(candidate->port, 8443);
	CHECK_STR(candidate->url, "https://api1.example.com:8443/healthz?x=1");
	name = find_name(config, "rr.example.com");
	if (!CHECK(name != NULL))
		goto out;
	CHECK_INT(name->selection_method, SELECT_GROUP_RTT_RR);
	CHECK_INT(name->failure_mode, FAILURE_ALL);
	CHECK_STR(name->candidates[0].scheme, "https");
	CHECK_INT(name->candidates[0].port, 443);
out:
	config_free(config);
}

/* The block from the original har.conf.example (SPEC section 3). */
static void
test_original_example(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53 }\n"
	    "dns_bind_interfaces = { 127.0.0.1, ::1 }\n"
	    "name www.example.com {\n"
	    "    check_frequency = 30\n"
	    "    selection_method = group_rtt_rr\n"
	    "    failure_mode = all\n"
	    "    candidate www1.east.example.com {\n"
	    "        check_address = \"http://www1.east.example.com/\"\n"
	    "    }\n"
	    "    candidate www1.west.example.com {\n"
	    "        check_address = \"http://www1.west.example.com/\"\n"
	    "    }\n"
	    "}\n");
	const struct config_name *name;

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	CHECK_INT(report_count, 0);
	CHECK_INT(config->nameserver_count, 1);
	CHECK_STR(config->nameservers[0].text, "192.0.2.53:53");
	CHECK_INT(config->bind_interface_count, 2);
	CHECK_INT(config->name_count, 1);
	name = &config->names[0];
	CHECK_STR(name->title, "www.example.com");
	CHECK_DOUBLE(name->check_frequency, 30);
	CHECK_DOUBLE(name->check_timeout, 10);
	CHECK_INT(name->selection_method, SELECT_GROUP_RTT_RR);
	CHECK_INT(name->failure_mode, FAILURE_ALL);
	CHECK_INT(name->candidate_count, 2);
	if (name->candidate_count == 2) {
		CHECK_STR(name->candidates[0].title, "www1.east.example.com");
		CHECK_STR(name->candidates[0].host, "www1.east.example.com");
		CHECK_STR(name->candidates[0].url, "http://www1.east.example.com/");
		CHECK_INT(name->candidates[0].port, 80);
		CHECK_INT(name->candidates[0].address_count, 0);
		CHECK_STR(name->candidates[1].title, "www1.west.example.com");
		CHECK_STR(name->candidates[1].host, "www1.west.example.com");
	}
	config_free(config);
}

/* The shipped example, when the test runs from the top directory. */
static void
test_example_file(void)
{
	const struct config_name *www, *api, *db;
	struct config *config;

	if (access("har.conf.example", R_OK) != 0)
		return;
	report_count = 0;
	config = config_load("har.conf.example", resolv_conf, collect);
	CHECK_ACCEPTED(config);
	if (!config)
		return;
	CHECK_STR(config->file, "har.conf.example");
	CHECK(config->name_count >= 1);
	CHECK(find_name(config, "www.example.com") != NULL);
	/* What its comments say the defaults section does. */
	www = find_name(config, "www.example.com");
	api = find_name(config, "api.example.com");
	db = find_name(config, "db.example.com");
	if (www && api && db) {
		CHECK_DOUBLE(www->check_frequency, 30);
		CHECK_DOUBLE(www->check_timeout, 2);
		CHECK_DOUBLE(api->check_frequency, 10);
		CHECK_DOUBLE(api->check_timeout, 2);
		CHECK_INT(api->http_header_count, 1);
		CHECK_INT(www->http_header_count, 1);
		CHECK_INT(db->check_method, CHECK_TCP);
		CHECK_INT(db->http_header_count, 0);
		CHECK_DOUBLE(db->check_frequency, 5);
	}
	config_free(config);
}

static void
test_load_file_errors(void)
{
	struct config *config;

	report_count = 0;
	config = config_load("/nonexistent/har.conf", resolv_conf, collect);
	CHECK(config == NULL);
	CHECK(report_count >= 1);
	CHECK_CONTAINS(reports[0], "/nonexistent/har.conf");
	config_free(config);
}

/* ---------------------------------------------------- names, targets */

static void
test_names_canonical(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53 }\n"
	    "name WWW.Example.COM. {\n"
	    "    candidate WWW1.East.Example.com. {}\n"
	    "}\n");
	const struct config_name *name;

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	name = &config->names[0];
	CHECK_STR(name->title, "www.example.com");
	CHECK_INT(name->wire_len, 17);
	CHECK(memcmp(name->wire, "\003www\007example\003com", 17) == 0);
	CHECK_STR(name->candidates[0].title, "www1.east.example.com");
	CHECK_STR(name->candidates[0].check_address,
		  "http://www1.east.example.com/");
	CHECK_STR(name->candidates[0].host, "www1.east.example.com");
	config_free(config);
}

static void
test_dns_name_to_wire(void)
{
	uint8_t wire[DNS_MAX_NAME + 1];
	int len = 0;
	char long_label[80], long_name[400];

	CHECK(dns_name_to_wire("Www.Example.com.", wire, &len) == 0);
	CHECK_INT(len, 17);
	CHECK(memcmp(wire, "\003www\007example\003com", 17) == 0);
	CHECK(dns_name_to_wire("a", wire, &len) == 0);
	CHECK_INT(len, 3);
	CHECK(dns_name_to_wire("_srv.a-b.example", wire, &len) == 0);
	CHECK(dns_name_to_wire("", wire, &len) != 0);
	CHECK(dns_name_to_wire(".", wire, &len) != 0);
	CHECK(dns_name_to_wire("a..b", wire, &len) != 0);
	CHECK(dns_name_to_wire(".a", wire, &len) != 0);
	CHECK(dns_name_to_wire("a b.example", wire, &len) != 0);
	memset(long_label, 'a', 64);
	long_label[64] = '\0';
	CHECK(dns_name_to_wire(long_label, wire, &len) != 0);
	long_label[63] = '\0';
	CHECK(dns_name_to_wire(long_label, wire, &len) == 0);
	/* 4 labels of 63: 4 * 64 + 1 = 257 octets, too long. */
	snprintf(long_name, sizeof(long_name), "%s.%s.%s.%s", long_label,
		 long_label, long_label, long_label);
	CHECK(dns_name_to_wire(long_name, wire, &len) != 0);
	/* 3 of 63 and one of 61: 255 octets, the most there can be. */
	long_name[63 * 4 + 3 - 2] = '\0';
	CHECK(dns_name_to_wire(long_name, wire, &len) == 0);
	CHECK_INT(len, 255);
}

static void
test_ip_literals_and_addresses(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    candidate v4 { check_address = \"http://192.0.2.5:8080/\" }\n"
	    "    candidate v6 { check_address = \"https://[2001:db8::5]/x\" }\n"
	    "    candidate listed {\n"
	    "        check_address = \"http://www.example.net/\"\n"
	    "        address = { 192.0.2.6, 2001:db8::6, \"192.0.2.7\" }\n"
	    "    }\n"
	    "    candidate 192.0.2.8 {}\n"
	    "}\n");
	const struct config_name *name;

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	name = &config->names[0];
	CHECK_INT(name->candidate_count, 4);
	if (name->candidate_count != 4)
		goto out;
	CHECK_STR(name->candidates[0].host, "192.0.2.5");
	CHECK_INT(name->candidates[0].port, 8080);
	CHECK_INT(name->candidates[0].address_count, 1);
	CHECK_INT(name->candidates[0].addresses[0].family, AF_INET);
	CHECK_STR(address_text(&name->candidates[0].addresses[0]), "192.0.2.5");
	CHECK_STR(name->candidates[1].host, "2001:db8::5");
	CHECK_INT(name->candidates[1].port, 443);
	CHECK_INT(name->candidates[1].address_count, 1);
	CHECK_INT(name->candidates[1].addresses[0].family, AF_INET6);
	CHECK_STR(address_text(&name->candidates[1].addresses[0]), "2001:db8::5");
	CHECK_STR(name->candidates[2].host, "www.example.net");
	CHECK_INT(name->candidates[2].address_count, 3);
	if (name->candidates[2].address_count == 3) {
		CHECK_STR(address_text(&name->candidates[2].addresses[0]), "192.0.2.6");
		CHECK_STR(address_text(&name->candidates[2].addresses[1]), "2001:db8::6");
		CHECK_STR(address_text(&name->candidates[2].addresses[2]), "192.0.2.7");
	}
	CHECK_STR(name->candidates[3].url, "http://192.0.2.8/");
	CHECK_INT(name->candidates[3].address_count, 1);
out:
	config_free(config);
}

static void
test_tcp_targets(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53 }\n"
	    "name db.example.com {\n"
	    "    check_method = tcp\n"
	    "    candidate a { check_address = \"tcp://db1.example.com:5432\" }\n"
	    "    candidate b { check_address = \"192.0.2.41:5432\" }\n"
	    "    candidate c { check_address = \"[::1]:53\" }\n"
	    "    candidate d { check_address = \"db2.example.com:5433\" }\n"
	    "    candidate e { check_address = \"tcp://[2001:db8::7]:7\" }\n"
	    "    candidate f {\n"
	    "        check_address = \"tcp://db3.example.com:1\"\n"
	    "        address = { 192.0.2.9 }\n"
	    "    }\n"
	    "}\n");
	const struct config_name *name;
	const struct config_candidate *c;

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	name = &config->names[0];
	CHECK_INT(name->check_method, CHECK_TCP);
	CHECK_INT(name->candidate_count, 6);
	if (name->candidate_count != 6)
		goto out;
	c = name->candidates;
	CHECK_STR(c[0].scheme, "tcp");
	CHECK_STR(c[0].host, "db1.example.com");
	CHECK_INT(c[0].port, 5432);
	CHECK_INT(c[0].address_count, 0);
	CHECK(c[0].url == NULL);
	CHECK_STR(c[1].scheme, "tcp");
	CHECK_STR(c[1].host, "192.0.2.41");
	CHECK_INT(c[1].port, 5432);
	CHECK_INT(c[1].address_count, 1);
	CHECK_STR(c[2].host, "::1");
	CHECK_INT(c[2].port, 53);
	CHECK_INT(c[2].address_count, 1);
	if (c[2].address_count == 1) {
		CHECK_INT(c[2].addresses[0].family, AF_INET6);
		CHECK_STR(address_text(&c[2].addresses[0]), "::1");
	}
	CHECK_STR(c[3].host, "db2.example.com");
	CHECK_INT(c[3].port, 5433);
	CHECK_STR(c[4].host, "2001:db8::7");
	CHECK_INT(c[4].port, 7);
	CHECK_INT(c[4].address_count, 1);
	CHECK_STR(c[5].host, "db3.example.com");
	CHECK_INT(c[5].address_count, 1);
out:
	config_free(config);

	/* No check_address: http://TITLE/, so port 80 of the title. */
	config = load("nameservers = { 192.0.2.53 }\n"
		      "name db.example.com {\n"
		      "    check_method = tcp\n"
		      "    candidate db1.example.com {}\n"
		      "}\n");
	CHECK_ACCEPTED(config);
	if (config) {
		c = config->names[0].candidates;
		CHECK_STR(c[0].check_address, "http://db1.example.com/");
		CHECK_STR(c[0].host, "db1.example.com");
		CHECK_INT(c[0].port, 80);
	}
	config_free(config);
}

/* ---------------------------------------------------------- nameservers */

static void
test_nameservers(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53, 192.0.2.54:5300, \"[2001:db8::53]:5301\",\n"
	    "                2001:db8::54, \"[2001:db8::55]\" }\n"
	    "name www.example.com { candidate a {} }\n");

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	CHECK_INT(config->nameserver_count, 5);
	CHECK_INT(config->nameservers_from_resolv_conf, 0);
	if (config->nameserver_count != 5)
		goto out;
	CHECK_STR(config->nameservers[0].text, "192.0.2.53:53");
	CHECK_INT(endpoint_family(&config->nameservers[0]), AF_INET);
	CHECK_INT(endpoint_port(&config->nameservers[0]), 53);
	CHECK_INT(config->nameservers[0].addr_len, sizeof(struct sockaddr_in));
	CHECK_STR(config->nameservers[1].text, "192.0.2.54:5300");
	CHECK_INT(endpoint_port(&config->nameservers[1]), 5300);
	CHECK_STR(config->nameservers[2].text, "[2001:db8::53]:5301");
	CHECK_INT(endpoint_family(&config->nameservers[2]), AF_INET6);
	CHECK_INT(endpoint_port(&config->nameservers[2]), 5301);
	CHECK_INT(config->nameservers[2].addr_len, sizeof(struct sockaddr_in6));
	CHECK_STR(config->nameservers[3].text, "[2001:db8::54]:53");
	CHECK_INT(endpoint_port(&config->nameservers[3]), 53);
	CHECK_STR(config->nameservers[4].text, "[2001:db8::55]:53");
out:
	config_free(config);
}

static void
test_endpoint_parse(void)
{
	struct endpoint endpoint;

	CHECK(endpoint_parse("127.0.0.1", 53, &endpoint) == 0);
	CHECK_STR(endpoint.text, "127.0.0.1:53");
	CHECK(endpoint_parse("127.0.0.1:5300", 53, &endpoint) == 0);
	CHECK_INT(endpoint_port(&endpoint), 5300);
	CHECK(endpoint_parse("::1", 53, &endpoint) == 0);
	CHECK_STR(endpoint.text, "[::1]:53");
	CHECK(endpoint_parse("[::1]:5353", 53, &endpoint) == 0);
	CHECK_STR(endpoint.text, "[::1]:5353");
	CHECK(endpoint_parse("[::1]", 53, &endpoint) == 0);
	CHECK(endpoint_parse("ns.example.com", 53, &endpoint) != 0);
	CHECK(endpoint_parse("127.0.0.1:0", 53, &endpoint) != 0);
	CHECK(endpoint_parse("127.0.0.1:65536", 53, &endpoint) != 0);
	CHECK(endpoint_parse("127.0.0.1:", 53, &endpoint) != 0);
	CHECK(endpoint_parse("127.0.0.1:53x", 53, &endpoint) != 0);
	CHECK(endpoint_parse("[::1", 53, &endpoint) != 0);
	CHECK(endpoint_parse("[::1]x", 53, &endpoint) != 0);
	CHECK(endpoint_parse("[]:53", 53, &endpoint) != 0);
	CHECK(endpoint_parse("", 53, &endpoint) != 0);
}

/* metrics_listen: a port alone is on loopback; otherwise one is required. */
static void
test_listen_endpoint_parse(void)
{
	struct endpoint endpoint;
	struct config *config;

	CHECK(listen_endpoint_parse("9153", &endpoint) == 0);
	CHECK_STR(endpoint.text, "127.0.0.1:9153");
	CHECK(endpoint_is_loopback(&endpoint));
	CHECK(listen_endpoint_parse("[::1]:9153", &endpoint) == 0);
	CHECK_STR(endpoint.text, "[::1]:9153");
	CHECK(endpoint_is_loopback(&endpoint));
	CHECK(listen_endpoint_parse("192.0.2.1:9153", &endpoint) == 0);
	CHECK(!endpoint_is_loopback(&endpoint));
	CHECK(listen_endpoint_parse("0.0.0.0:9153", &endpoint) == 0);
	CHECK(!endpoint_is_loopback(&endpoint));
	CHECK(listen_endpoint_parse("127.0.0.1", &endpoint) != 0);
	CHECK(listen_endpoint_parse("::1", &endpoint) != 0);
	CHECK(listen_endpoint_parse("[::1]", &endpoint) != 0);
	CHECK(listen_endpoint_parse("0", &endpoint) != 0);
	CHECK(listen_endpoint_parse("localhost:9153", &endpoint) != 0);
	CHECK(listen_endpoint_parse("", &endpoint) != 0);

	config = load("nameservers = { 192.0.2.53 }\n");
	CHECK_ACCEPTED(config);
	if (config)
		CHECK_INT(config->metrics_listen.addr_len, 0);
	config_free(config);
	config = load("nameservers = { 192.0.2.53 }\nmetrics_listen = \"9153\"\n");
	CHECK_ACCEPTED(config);
	if (config)
		CHECK_STR(config->metrics_listen.text, "127.0.0.1:9153");
	config_free(config);
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\nmetrics_listen = \"x\"\n", 2,
		       "metrics_listen: \"x\" is not PORT, IP:PORT or [IPv6]:PORT");
	/* Said of the file, not of a line: two options make it. */
	config = load("nameservers = { 192.0.2.53 }\nmetrics_listen = \"[::]:53\"\n"
		      "dns_bind_interfaces = { ::1 }\n");
	CHECK(config == NULL);
	CHECK_INT(report_count, 1);
	if (report_count == 1)
		CHECK_CONTAINS(reports[0], "(string): metrics_listen [::]:53 is a "
			       "DNS listener's address and port");
	config_free(config);
}

static void
test_ip_address_parse(void)
{
	struct ip_address ip;
	char text[INET6_ADDRSTRLEN];

	CHECK(ip_address_parse("192.0.2.1", &ip) == 0);
	CHECK_INT(ip.family, AF_INET);
	CHECK(memcmp(ip.bytes, "\xc0\x00\x02\x01", 4) == 0);
	ip_address_format(&ip, text, sizeof(text));
	CHECK_STR(text, "192.0.2.1");
	CHECK(ip_address_parse("2001:DB8::1", &ip) == 0);
	CHECK_INT(ip.family, AF_INET6);
	ip_address_format(&ip, text, sizeof(text));
	CHECK_STR(text, "2001:db8::1");
	CHECK(ip_address_parse("192.0.2.256", &ip) != 0);
	CHECK(ip_address_parse("www.example.com", &ip) != 0);
	CHECK(ip_address_parse("", &ip) != 0);
}

static void
test_resolv_conf(void)
{
	struct config *config;

	config = load("name www.example.com { candidate a {} }\n");
	CHECK_ACCEPTED(config);
	if (!config)
		return;
	CHECK_INT(config->nameservers_from_resolv_conf, 1);
	CHECK_INT(config->nameserver_count, 3);
	if (config->nameserver_count == 3) {
		CHECK_STR(config->nameservers[0].text, "192.0.2.99:53");
		CHECK_STR(config->nameservers[1].text, "[2001:db8::99]:53");
		CHECK_STR(config->nameservers[2].text, "[fe80::1]:53");
	}
	config_free(config);

	/* Given nameservers win: resolv.conf is not read at all. */
	report_count = 0;
	config = config_load_string(
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com { candidate a {} }\n",
	    "/nonexistent/resolv.conf", collect);
	CHECK_ACCEPTED(config);
	if (config) {
		CHECK_INT(config->nameservers_from_resolv_conf, 0);
		CHECK_INT(config->nameserver_count, 1);
	}
	config_free(config);

	/* Neither: an error naming the file. */
	report_count = 0;
	config = config_load_string("name www.example.com { candidate a {} }\n",
				    "/nonexistent/resolv.conf", collect);
	CHECK(config == NULL);
	CHECK(report_count >= 1);
	CHECK_CONTAINS(reports[0], "(string):");
	CHECK_CONTAINS(reports[0], "/nonexistent/resolv.conf");
	config_free(config);
}

/* ------------------------------------------------- forwarding-loop guard */

static void
test_drop_own_listeners(void)
{
	struct config *config;

	/* 127.0.0.1:53 is our default listener; 127.0.0.1:5300 is not. */
	config = load("nameservers = { 127.0.0.1, 127.0.0.1:5300, 192.0.2.53,"
		      " ::1 }\n"
		      "name www.example.com { candidate a {} }\n");
	CHECK_ACCEPTED(config);
	if (config) {
		report_count = 0;
		CHECK_INT(config_drop_own_listeners(config, collect), 2);
		CHECK_INT(config->nameserver_count, 2);
		CHECK_STR(config->nameservers[0].text, "127.0.0.1:5300");
		CHECK_STR(config->nameservers[1].text, "192.0.2.53:53");
		CHECK_INT(report_count, 2);
		CHECK_CONTAINS(reports[0], "127.0.0.1:53");
		CHECK_CONTAINS(reports[1], "[::1]:53");
	}
	config_free(config);

	/* On another port: ours are dropped, none remain. */
	config = load("dns_listen_port = 5353\n"
		      "nameservers = { 127.0.0.1:5353, \"[::1]:5353\" }\n"
		      "name www.example.com { candidate a {} }\n");
	CHECK_ACCEPTED(config);
	if (config) {
		report_count = 0;
		CHECK_INT(config_drop_own_listeners(config, collect), 0);
		CHECK_INT(config->nameserver_count, 0);
		CHECK_INT(report_count, 2);
	}
	config_free(config);

	/* From resolv.conf (127.0.0.1, as once hard runs): dropped quietly. */
	report_count = 0;
	config = config_load_string("name www.example.com { candidate a {} }\n",
				    loopback_resolv_conf, collect);
	CHECK_ACCEPTED(config);
	if (config) {
		CHECK_INT(config->nameserver_count, 1);
		CHECK_INT(config_drop_own_listeners(config, collect), 0);
		CHECK_INT(config->nameserver_count, 0);
		CHECK_INT(report_count, 0);
	}
	config_free(config);

	/* A listener on another loopback address leaves 127.0.0.1 alone. */
	config = load("dns_bind_interfaces = { 127.0.0.2 }\n"
		      "nameservers = { 127.0.0.1 }\n"
		      "name www.example.com { candidate a {} }\n");
	CHECK_ACCEPTED(config);
	if (config)
		CHECK_INT(config_drop_own_listeners(config, collect), 1);
	config_free(config);

	/* Wildcard listeners hear loopback. */
	config = load("dns_bind_interfaces = { 0.0.0.0 }\n"
		      "nameservers = { 127.0.0.53, 192.0.2.53 }\n"
		      "name www.example.com { candidate a {} }\n");
	CHECK_ACCEPTED(config);
	if (config) {
		CHECK_INT(config_drop_own_listeners(config, collect), 1);
		CHECK_STR(config->nameservers[0].text, "192.0.2.53:53");
	}
	config_free(config);
	config = load("dns_bind_interfaces = { :: }\n"
		      "nameservers = { ::1, 2001:db8::53 }\n"
		      "name www.example.com { candidate a {} }\n");
	CHECK_ACCEPTED(config);
	if (config) {
		CHECK_INT(config_drop_own_listeners(config, collect), 1);
		CHECK_STR(config->nameservers[0].text, "[2001:db8::53]:53");
	}
	config_free(config);
}

/* --------------------------------------------------------------- errors */

static void
test_error_unknown_method(void)
{
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    check_method = ping\n"
		       "    candidate a {}\n"
		       "}\n", 3, "check_method");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {}\n"
		       "    selection_method = fastest\n"
		       "}\n", 4, "selection_method");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    rtt_mode = ttfb\n"
		       "    candidate a {}\n"
		       "}\n", 3, "rtt_mode");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    failure_mode = open\n"
		       "    candidate a {}\n"
		       "}\n", 3, "failure_mode");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {\n"
		       "        admin_state = maintenance\n"
		       "    }\n"
		       "}\n", 4, "admin_state: unknown value \"maintenance\" "
		       "(expected auto, drain, down, up)");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    check_method = tcp\n"
		       "    drain_status = { 503 }\n"
		       "    candidate a {}\n"
		       "}\n", 4, "drain_status needs check_method http");
}

static void
test_error_bad_numbers(void)
{
	static const struct {
		const char *option;	/* inside a name, line 3 */
		const char *reason;
	} name_cases[] = {
		{ "check_frequency = -5", "check_frequency" },
		{ "check_frequency = 0", "check_frequency" },
		{ "check_timeout = 0", "check_timeout" },
		{ "check_timeout = -1", "check_timeout" },
		{ "rise = 0", "rise" },
		{ "fall = -1", "fall" },
		{ "max_rtt = -0.5", "max_rtt" },
		{ "group_rtt_threshold = -1", "group_rtt_threshold" },
		{ "ttl = -1", "ttl" },
		{ "expect_status = { 200, 999 }", "expect_status" },
		{ "expect_status = { 99 }", "expect_status" },
	};
	static const struct {
		const char *option;	/* global, line 2 */
		const char *reason;
	} global_cases[] = {
		{ "dns_listen_port = 0", "dns_listen_port" },
		{ "dns_listen_port = 65536", "dns_listen_port" },
		{ "resolver_timeout = 0", "resolver_timeout" },
		{ "resolver_total_timeout = 0", "resolver_total_timeout" },
		{ "check_history = 0", "check_history" },
		{ "tcp_idle_timeout = -1", "tcp_idle_timeout" },
		{ "tcp_max_connections = 0", "tcp_max_connections" },
		{ "dns_bind_interfaces = { 127.0.0.1, localhost }",
		  "dns_bind_interfaces" },
	};
	char text[512];

	for (size_t i = 0; i < sizeof(name_cases) / sizeof(name_cases[0]); i++) {
		snprintf(text, sizeof(text),
			 "nameservers = { 192.0.2.53 }\n"
			 "name www.example.com {\n"
			 "    %s\n"
			 "    candidate a {}\n"
			 "}\n", name_cases[i].option);
		CHECK_REJECTED(text, 3, name_cases[i].reason);
	}
	for (size_t i = 0; i < sizeof(global_cases) / sizeof(global_cases[0]);
	     i++) {
		snprintf(text, sizeof(text),
			 "nameservers = { 192.0.2.53 }\n"
			 "%s\n"
			 "name www.example.com { candidate a {} }\n",
			 global_cases[i].option);
		CHECK_REJECTED(text, 2, global_cases[i].reason);
	}
	/* Not a number at all: libconfuse's own error. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    expect_status = { ok }\n"
		       "    candidate a {}\n"
		       "}\n", 3, "expect_status");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    check_frequency = often\n"
		       "    candidate a {}\n"
		       "}\n", 3, "check_frequency");
}

static void
test_error_no_candidate(void)
{
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    check_frequency = 30\n"
		       "}\n", 2, "no candidate");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name ok.example.com { candidate a {} }\n"
		       "name empty.example.com { }\n", 3, "no candidate");
}

static void
test_error_control_character_in_title(void)
{
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate \"a\\nb\" { address = 192.0.2.1 }\n"
		       "}\n", 3, "control character");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate ok { address = 192.0.2.1 }\n"
		       "    candidate \"tab\\there\" { address = 192.0.2.2 }\n"
		       "}\n", 4, "control character");
}

static void
test_error_bad_urls(void)
{
	/* A URL error may point at the candidate or at its check_address. */
	int lines[] = { 3, 4, 0 };

	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name www.example.com {\n"
			  "    candidate a {\n"
			  "        check_address = \"http://exa mple.com/\"\n"
			  "    }\n"
			  "}\n", lines, "not a URL");
	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name www.example.com {\n"
			  "    candidate a {\n"
			  "        check_address = \"http://[::1/\"\n"
			  "    }\n"
			  "}\n", lines, "not a URL");
	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name www.example.com {\n"
			  "    candidate a {\n"
			  "        check_address = \"ftp://a.example.com/\"\n"
			  "    }\n"
			  "}\n", lines, "http or https");
	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name www.example.com {\n"
			  "    candidate a {\n"
			  "        check_address = \"tcp://a.example.com:80\"\n"
			  "    }\n"
			  "}\n", lines, "http or https");
	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name www.example.com {\n"
			  "    candidate a {\n"
			  "        check_address = \"http:///x\"\n"
			  "    }\n"
			  "}\n", lines, "no host");
	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name www.example.com {\n"
			  "    candidate a {\n"
			  "        check_address = \"http://a.example.com:99999/\"\n"
			  "    }\n"
			  "}\n", lines, "bad port");
	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name www.example.com {\n"
			  "    candidate a {\n"
			  "        check_address = \"http://bad_host!/\"\n"
			  "    }\n"
			  "}\n", lines, "not a host name");
	/* tcp needs HOST:PORT. */
	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name db.example.com { check_method = tcp\n"
			  "    candidate a {\n"
			  "        check_address = \"db.example.com\"\n"
			  "    }\n"
			  "}\n", lines, "HOST:PORT");
	CHECK_REJECTED_AT("nameservers = { 192.0.2.53 }\n"
			  "name db.example.com { check_method = tcp\n"
			  "    candidate a {\n"
			  "        check_address = \"tcp://db.example.com:0\"\n"
			  "    }\n"
			  "}\n", lines, "HOST:PORT");
	/* A name that is not a host name. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name \"bad name!\" { candidate a {} }\n",
		       2, "not a valid host name");
}

static void
test_error_duplicate_names(void)
{
	static const char *const spellings[] = {
		"www.example.com", "WWW.Example.com", "www.example.com.",
	};
	char text[512];

	for (size_t i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
		snprintf(text, sizeof(text),
			 "nameservers = { 192.0.2.53 }\n"
			 "name www.example.com {\n"
			 "    candidate a {}\n"
			 "}\n"
			 "name %s {\n"
			 "    candidate b {}\n"
			 "}\n", spellings[i]);
		CHECK_REJECTED(text, 5, "www.example.com");
	}
	/* Told where the first one is, when it is not the very same title. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {}\n"
		       "}\n"
		       "name WWW.example.com. {\n"
		       "    candidate b {}\n"
		       "}\n", 5, "already defined at line 2");
}

static void
test_error_duplicate_candidates(void)
{
	static const char *const spellings[] = {
		"a.example.com", "A.Example.COM", "a.example.com.",
	};
	char text[512];

	for (size_t i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
		snprintf(text, sizeof(text),
			 "nameservers = { 192.0.2.53 }\n"
			 "name www.example.com {\n"
			 "    candidate a.example.com {\n"
			 "        address = { 192.0.2.1 }\n"
			 "    }\n"
			 "    candidate %s {\n"
			 "        address = { 192.0.2.2 }\n"
			 "    }\n"
			 "}\n", spellings[i]);
		CHECK_REJECTED(text, 6, "a.example.com");
	}
	/* The same candidate in two names is fine. */
	{
		struct config *config = load(
		    "nameservers = { 192.0.2.53 }\n"
		    "name a.example.com { candidate x {} }\n"
		    "name b.example.com { candidate x {} }\n");

		CHECK_ACCEPTED(config);
		config_free(config);
	}
}

static void
test_error_bad_address(void)
{
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {\n"
		       "        address = { 192.0.2.1, 192.0.2.300 }\n"
		       "    }\n"
		       "}\n", 4, "192.0.2.300");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {\n"
		       "        address = { www.example.net }\n"
		       "    }\n"
		       "}\n", 4, "www.example.net");
}

static void
test_error_bad_nameserver(void)
{
	static const char *const bad[] = {
		"ns.example.com", "192.0.2.1:0", "192.0.2.1:65536",
		"\"[2001:db8::1]:x\"", "192.0.2.300",
	};
	char text[512];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text),
			 "dns_listen_port = 53\n"
			 "nameservers = { 192.0.2.53, %s }\n"
			 "name www.example.com { candidate a {} }\n", bad[i]);
		CHECK_REJECTED(text, 2, "nameservers");
	}
}

static void
test_error_syntax(void)
{
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {}\n"
		       "    colour = blue\n"
		       "}\n", 4, "colour");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "\n"
		       "check_frequency = 30\n"
		       "name www.example.com { candidate a {} }\n",
		       3, "check_frequency");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {}\n"
		       "}\n"
		       "}\n", 5, "brace");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    check_frequency\n"
		       "    candidate a {}\n"
		       "}\n", 4, "equal");
}

/* Comments of every kind take exactly the lines they are on. */
static void
test_error_lines_after_comments(void)
{
	CHECK_REJECTED("# hard's configuration\n"
		       "dns_listen_port = 0\n"
		       "name www.example.com { candidate a {} }\n",
		       2, "dns_listen_port");
	CHECK_REJECTED("nameservers = { 192.0.2.53 } # upstream\n"
		       "// another comment\n"
		       "/* and\n"
		       "   another */\n"
		       "name www.example.com {\n"
		       "    # how often\n"
		       "    check_frequency = 0\n"
		       "    candidate a {}\n"
		       "}\n", 7, "check_frequency");
	CHECK_REJECTED("# comment\n"
		       "# comment\n"
		       "name www.example.com {\n"
		       "    candidate a {}\n"
		       "    colour = blue\n"
		       "}\n", 5, "colour");
	CHECK_REJECTED("# comment\n"
		       "name www.example.com {\n"
		       "    # comment\n"
		       "    candidate a {\n"
		       "        check_address = \"ftp://a/\"\n"
		       "    }\n"
		       "}\n", 4, "http or https");
}

static void
test_error_several(void)
{
	struct config *config;

	/* Mistakes found after parsing: every one is reported. */
	config = load("nameservers = { 192.0.2.53 }\n"		/* 1 */
		      "name empty.example.com {\n"		/* 2 */
		      "}\n"					/* 3 */
		      "name www.example.com {\n"		/* 4 */
		      "    candidate a {\n"			/* 5 */
		      "        check_address = \"ftp://a/\"\n"	/* 6 */
		      "    }\n"					/* 7 */
		      "    candidate b {}\n"			/* 8 */
		      "    candidate B {}\n"			/* 9 */
		      "}\n"					/* 10 */
		      "name WWW.example.com {\n"		/* 11 */
		      "    candidate c {}\n"			/* 12 */
		      "}\n");					/* 13 */
	CHECK(config == NULL);
	CHECK_INT(report_count, 4);
	CHECK(reported_at((int[]){ 2, 0 }, "no candidate"));
	CHECK(reported_at((int[]){ 5, 6, 0 }, "http or https"));
	CHECK(reported_at((int[]){ 9, 0 }, "twice"));
	CHECK(reported_at((int[]){ 11, 0 }, "already defined at line 4"));
	if (report_count != 4)
		print_reports();
	config_free(config);

	/* Mistakes in values, with the others. */
	config = load("nameservers = { 192.0.2.53, ns.example.com }\n"	/* 1 */
		      "dns_listen_port = 0\n"				/* 2 */
		      "name www.example.com {\n"			/* 3 */
		      "    check_frequency = -1\n"			/* 4 */
		      "    check_method = ping\n"			/* 5 */
		      "    candidate a {\n"				/* 6 */
		      "        address = { 192.0.2.999 }\n"		/* 7 */
		      "    }\n"						/* 8 */
		      "}\n"						/* 9 */
		      "name other.example.com {\n"			/* 10 */
		      "}\n");						/* 11 */
	CHECK(config == NULL);
	CHECK_INT(report_count, 6);
	CHECK(reported_at((int[]){ 1, 0 }, "nameservers"));
	CHECK(reported_at((int[]){ 2, 0 }, "dns_listen_port"));
	CHECK(reported_at((int[]){ 4, 0 }, "check_frequency"));
	CHECK(reported_at((int[]){ 5, 0 }, "check_method"));
	CHECK(reported_at((int[]){ 7, 0 }, "192.0.2.999"));
	CHECK(reported_at((int[]){ 10, 0 }, "no candidate"));
	if (report_count != 6)
		print_reports();
	config_free(config);
}

/*
 * Every number has a range (issue 9 item 13): a value that libconfuse
 * reads fine but that would overflow later is refused with the range.
 */
static void
test_error_ranges(void)
{
	static const struct {
		const char *option;	/* inside a name, line 3 */
		const char *reason;
	} name_cases[] = {
		{ "check_timeout = 1e300", "between 0.001 and 86400 seconds, not 1e+300" },
		{ "check_timeout = nan", "check_timeout must be between" },
		{ "check_timeout = inf", "check_timeout must be between" },
		{ "check_timeout = 86400.5", "check_timeout" },
		{ "check_frequency = 0.001", "between 0.01 and 86400 seconds" },
		{ "check_frequency = 1e10", "check_frequency" },
		{ "check_frequency = -inf", "check_frequency" },
		{ "rise = 1001", "rise must be between 1 and 1000, not 1001" },
		{ "fall = 4294967297", "fall must be between 1 and 1000" },
		{ "max_rtt = inf", "max_rtt must be between 0 and 86400" },
		{ "max_rtt = nan", "max_rtt" },
		{ "group_rtt_threshold = 1e9", "group_rtt_threshold" },
		{ "ttl = 2147483648", "ttl must be between 0 and 2147483647 seconds" },
		{ "ttl = 4294967296", "ttl" },
		{ "expect_status = { 200, 600 }", "between 100 and 599, not 600" },
		{ "expect_status = {}", "expect_status is empty" },
		{ "drain_status = { 503, 600 }", "drain_status must be between 100 and 599, not 600" },
		{ "drain_status = { 99 }", "drain_status" },
		{ "overprovisioning = 101", "overprovisioning must be between 0 and 100, not 101" },
		{ "overprovisioning = nan", "overprovisioning" },
		{ "overprovisioning = -1", "overprovisioning" },
		{ "overprovisioning = 0.5", "overprovisioning must be 0 (off) or between 1 and 100, not 0.5" },
		/* best_rtt is the default selection_method */
		{ "overprovisioning = 1.4", "overprovisioning needs selection_method group_rtt_rr or all, not best_rtt" },
	};
	static const struct {
		const char *option;	/* global, line 2 */
		const char *reason;
	} global_cases[] = {
		{ "resolver_timeout = 1e10", "resolver_timeout must be between 0.001 and 60 seconds" },
		{ "resolver_timeout = nan", "resolver_timeout" },
		{ "resolver_timeout = 0.0001", "resolver_timeout" },
		{ "tcp_idle_timeout = 1e300", "tcp_idle_timeout" },
		{ "tcp_idle_timeout = inf", "tcp_idle_timeout" },
		{ "check_history = 1000001", "check_history must be between 1 and 1000000" },
		{ "tcp_max_connections = 99999999999", "tcp_max_connections" },
	};
	char text[512];

	for (size_t i = 0; i < sizeof(name_cases) / sizeof(name_cases[0]); i++) {
		snprintf(text, sizeof(text),
			 "nameservers = { 192.0.2.53 }\n"
			 "name www.example.com {\n"
			 "    %s\n"
			 "    candidate a {}\n"
			 "}\n", name_cases[i].option);
		CHECK_REJECTED(text, 3, name_cases[i].reason);
	}
	for (size_t i = 0; i < sizeof(global_cases) / sizeof(global_cases[0]);
	     i++) {
		snprintf(text, sizeof(text),
			 "nameservers = { 192.0.2.53 }\n"
			 "%s\n"
			 "name www.example.com { candidate a {} }\n",
			 global_cases[i].option);
		CHECK_REJECTED(text, 2, global_cases[i].reason);
	}
}

/* The ends of every range are allowed. */
static void
test_range_limits_accepted(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53 }\n"
	    "dns_listen_port = 65535\n"
	    "resolver_timeout = 60\n"
	    "check_history = 1000000\n"
	    "tcp_idle_timeout = 86400\n"
	    "tcp_max_connections = 1000000\n"
	    "name max.example.com {\n"
	    "    check_frequency = 86400\n"
	    "    check_timeout = 86400\n"
	    "    rise = 1000\n"
	    "    fall = 1000\n"
	    "    expect_status = { 100, 599 }\n"
	    "    max_rtt = 86400\n"
	    "    group_rtt_threshold = 86400\n"
	    "    selection_method = all\n"
	    "    overprovisioning = 100\n"
	    "    ttl = 2147483647\n"
	    "    candidate a {}\n"
	    "}\n"
	    "name min.example.com {\n"
	    "    check_frequency = 0.01\n"
	    "    check_timeout = 0.001\n"
	    "    max_rtt = 0\n"
	    "    group_rtt_threshold = 0\n"
	    "    selection_method = group_rtt_rr\n"
	    "    overprovisioning = 1\n"
	    "    ttl = 0\n"
	    "    candidate a {}\n"
	    "}\n");
	const struct config_name *name;

	CHECK_ACCEPTED(config);
	if (!config)
		return;
	CHECK_DOUBLE(config->resolver_timeout, 60);
	name = find_name(config, "max.example.com");
	if (CHECK(name != NULL)) {
		CHECK_INT(name->ttl, 2147483647);
		CHECK_INT(name->rise, 1000);
		CHECK_DOUBLE(name->overprovisioning, 100);
	}
	name = find_name(config, "min.example.com");
	if (CHECK(name != NULL)) {
		CHECK_DOUBLE(name->check_timeout, 0.001);
		CHECK_DOUBLE(name->overprovisioning, 1);
	}
	config_free(config);
}

/* What libconfuse lets through at the end of the file (item 14). */
static void
test_error_unclosed(void)
{
	struct config *config;

	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name ok.example.com { candidate a {} }\n"
		       "name www.example.com {\n"
		       "    candidate a { }\n", 3, "never closed");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {\n"
		       "        check_address = \"http://a/{\"\n", 2, "never closed");
	/* A comment that never ends would swallow the rest of the file. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "/* the names\n"
		       "name www.example.com { candidate a {} }\n", 2,
		       "comment is never closed");
	/* Braces in strings and comments do not count. */
	config = load("nameservers = { 192.0.2.53 } # {\n"
		      "data_file = \"/tmp/har-{-unbalanced/har.db\"\n"
		      "/* { */ name www.example.com {\n"
		      "    candidate a { }\n"
		      "}\n");
	CHECK_ACCEPTED(config);
	config_free(config);
}

/* What a start would fail on outside the file (item 14). */
static void
test_error_system(void)
{
	char directory[] = "/tmp/har-test-config-XXXXXX";
	char text[1024], path[128];

	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "user = \"no-such-user-har\"\n"
		       "name www.example.com { candidate a {} }\n", 2,
		       "user \"no-such-user-har\": no such user");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    candidate a {}\n"
		       "    ca_file = \"/nonexistent/ca.pem\"\n"
		       "}\n", 4, "ca_file \"/nonexistent/ca.pem\": No such file");
	if (!CHECK(mkdtemp(directory) != NULL))
		return;
	snprintf(text, sizeof(text),
		 "nameservers = { 192.0.2.53 }\n"
		 "name www.example.com {\n"
		 "    ca_file = \"%s\"\n"
		 "    candidate a {}\n"
		 "}\n", directory);
	CHECK_REJECTED(text, 3, "is a directory");
	/*
	 * A data file that cannot be opened is not the configuration's
	 * fault: a start and a reload go on with the state in memory, and
	 * only -t reports it (store_check, tested in test_start.py).
	 */
	snprintf(text, sizeof(text),
		 "nameservers = { 192.0.2.53 }\n"
		 "data_file = \"%s\"\n"
		 "name www.example.com { candidate a {} }\n", directory);
	{
		struct config *config = load(text);

		CHECK_ACCEPTED(config);
		config_free(config);
	}
	/* A directory hard would create is fine, and loading creates nothing. */
	snprintf(text, sizeof(text),
		 "nameservers = { 192.0.2.53 }\n"
		 "data_file = \"%s/new/deeper/har.db\"\n"
		 "name www.example.com { candidate a {} }\n", directory);
	{
		struct config *config = load(text);

		CHECK_ACCEPTED(config);
		config_free(config);
	}
	snprintf(path, sizeof(path), "%s/new", directory);
	CHECK(access(path, F_OK) != 0);
	rmdir(directory);
}

/* ---------------------------------------------------------------- main */

static int
write_file(char *path, const char *text)
{
	int fd = mkstemp(path);
	size_t length = strlen(text);

	if (fd < 0) {
		perror("mkstemp");
		return -1;
	}
	if (write(fd, text, length) != (ssize_t)length) {
		perror("write");
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* Issue 10 item 3: http_method, expect_body, http_headers, status ranges. */
static void
test_http_options(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53 }\n"
	    "name plain.example.com { candidate a {} }\n"
	    "name rich.example.com {\n"
	    "    http_method = HEAD\n"
	    "    expect_status = { 204, \"200-299\", 301-302 }\n"
	    "    http_headers = { \"Host: status.example.com\",\n"
	    "                     \"X-Check:yes\" }\n"
	    "    candidate a {}\n"
	    "}\n"
	    "name body.example.com {\n"
	    "    http_method = GET\n"
	    "    expect_body = \"all \\\"good\\\"\"\n"
	    "    candidate a {}\n"
	    "}\n");
	const struct config_name *plain = find_name(config, "plain.example.com");
	const struct config_name *rich = find_name(config, "rich.example.com");
	const struct config_name *body = find_name(config, "body.example.com");

	CHECK_ACCEPTED(config);
	if (!plain || !rich || !body) {
		config_free(config);
		return;
	}
	CHECK_INT(plain->http_method, HTTP_GET);
	CHECK(plain->expect_body == NULL);
	CHECK_INT(plain->http_header_count, 0);
	CHECK_INT(config_status_expected(plain, 200), 1);
	CHECK_INT(config_status_expected(plain, 201), 0);

	CHECK_INT(rich->http_method, HTTP_HEAD);
	CHECK_INT(rich->expect_status_count, 3);
	if (rich->expect_status_count == 3) {
		CHECK_INT(rich->expect_status[1].low, 200);
		CHECK_INT(rich->expect_status[1].high, 299);
		CHECK_INT(rich->expect_status[2].low, 301);
		CHECK_INT(rich->expect_status[2].high, 302);
	}
	CHECK_INT(config_status_expected(rich, 199), 0);
	CHECK_INT(config_status_expected(rich, 200), 1);
	CHECK_INT(config_status_expected(rich, 299), 1);
	CHECK_INT(config_status_expected(rich, 300), 0);
	CHECK_INT(config_status_expected(rich, 302), 1);
	CHECK_INT(config_status_expected(rich, 303), 0);
	CHECK_INT(rich->http_header_count, 2);
	if (rich->http_header_count == 2) {
		CHECK_STR(rich->http_headers[0], "Host: status.example.com");
		CHECK_STR(rich->http_headers[1], "X-Check:yes");
	}
	CHECK_INT(config_same_expect_status(plain, rich), 0);
	CHECK_INT(config_same_http_request(plain, rich), 0);

	CHECK_INT(body->http_method, HTTP_GET);
	CHECK_STR(body->expect_body, "all \"good\"");
	CHECK_INT(config_same_http_request(plain, body), 0);
	CHECK_INT(config_same_http_request(body, body), 1);
	config_free(config);
}

/* Lists written differently but accepting the same statuses are the same. */
static void
test_expect_status_compared_by_meaning(void)
{
	struct config *config = load(
	    "nameservers = { 192.0.2.53 }\n"
	    "name a.example.com { expect_status = { 200-299 } candidate a {} }\n"
	    "name b.example.com { expect_status = { 250-299, 200, 201-249 }"
	    " candidate a {} }\n"
	    "name c.example.com { expect_status = { 200-298 } candidate a {} }\n");
	const struct config_name *a = find_name(config, "a.example.com");
	const struct config_name *b = find_name(config, "b.example.com");
	const struct config_name *c = find_name(config, "c.example.com");

	CHECK_ACCEPTED(config);
	if (!a || !b || !c) {
		config_free(config);
		return;
	}
	CHECK_INT(config_same_expect_status(a, b), 1);
	CHECK_INT(config_same_expect_status(a, c), 0);
	config_free(config);
}

static void
test_error_http_options(void)
{
	static const struct {
		const char *option;	/* inside a name, line 3 */
		const char *reason;
	} cases[] = {
		{ "http_method = POST", "http_method: unknown value \"POST\" (expected GET, HEAD)" },
		{ "http_method = get", "http_method: unknown value" },
		{ "expect_body = \"\"", "expect_body is empty" },
		{ "http_headers = { \"X-Check yes\" }", "\"X-Check yes\" is not \"Name: value\"" },
		{ "http_headers = { \": value\" }", "is not \"Name: value\"" },
		{ "http_headers = { \"X-A: 1\", \"X-B:\" }", "\"X-B:\" has no value" },
		{ "http_headers = { \"X-A: 1\\r\\nX-B: 2\" }", "without CR or LF" },
		{ "http_headers = { \"X-A: 1\\n\" }", "without CR or LF" },
		{ "expect_status = { 300-200 }", "range 300-200 runs backwards" },
		{ "expect_status = { \"200-600\" }", "between 100 and 599, not 200-600" },
		{ "expect_status = { 99-200 }", "between 100 and 599, not 99-200" },
		{ "expect_status = { 200- }", "\"200-\" is not an HTTP status or a range" },
		{ "expect_status = { -200 }", "is not an HTTP status or a range" },
		{ "expect_status = { 2.5e2 }", "is not an HTTP status or a range" },
		{ "expect_status = { 200-299-300 }", "is not an HTTP status or a range" },
		{ "expect_status = { 99999999999999999999 }", "between 100 and 599" },
	};
	char text[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text),
			 "nameservers = { 192.0.2.53 }\n"
			 "name www.example.com {\n"
			 "    %s\n"
			 "    candidate a {}\n"
			 "}\n", cases[i].option);
		CHECK_REJECTED(text, 3, cases[i].reason);
	}
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    http_method = HEAD\n"
		       "    expect_body = \"ok\"\n"
		       "    candidate a {}\n"
		       "}\n", 4, "expect_body needs http_method GET");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    check_method = tcp\n"
		       "    http_headers = { \"X-A: 1\" }\n"
		       "    candidate a {}\n"
		       "}\n", 4, "http_headers applies to http checks only");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name www.example.com {\n"
		       "    check_method = tcp\n"
		       "    expect_body = \"ok\"\n"
		       "    candidate a {}\n"
		       "}\n", 4, "expect_body applies to http checks only");
}

/* ------------------------------------------ defaults (issue 18 item 6) */

static const char shared_defaults[] =
	"nameservers = { 192.0.2.53 }\n"				/*  1 */
	"name plain.example.com { candidate a {} }\n"			/*  2 */
	"defaults {\n"							/*  3 */
	"    check_frequency = 5\n"					/*  4 */
	"    rise = 3\n"						/*  5 */
	"    expect_status = { 200, 204 }\n"				/*  6 */
	"    http_headers = { \"X-Check: har\" }\n"			/*  7 */
	"    selection_method = group_rtt_rr\n"				/*  8 */
	"    overprovisioning = 1.5\n"					/*  9 */
	"    failure_mode = servfail\n"					/* 10 */
	"    ttl = 30\n"						/* 11 */
	"    max_rtt = 0.25\n"						/* 12 */
	"}\n"								/* 13 */
	"name own.example.com {\n"					/* 14 */
	"    check_frequency = 2\n"					/* 15 */
	"    expect_status = { 301 }\n"					/* 16 */
	"    ttl = 0\n"							/* 17 */
	"    candidate a {}\n"						/* 18 */
	"}\n"								/* 19 */
	"name tcp.example.com {\n"					/* 20 */
	"    check_method = tcp\n"					/* 21 */
	"    selection_method = best_rtt\n"				/* 22 */
	"    candidate a { check_address = \"192.0.2.1:80\" }\n"	/* 23 */
	"}\n";								/* 24 */

/* Every name takes what defaults sets and its own section does not. */
static void
test_defaults_section_applied(void)
{
	struct config *config = load(shared_defaults);
	const struct config_name *plain = find_name(config, "plain.example.com");
	const struct config_name *own = find_name(config, "own.example.com");

	CHECK_ACCEPTED(config);
	if (!plain || !own) {
		config_free(config);
		return;
	}
	/* Written before the defaults section, and still takes it. */
	CHECK_DOUBLE(plain->check_frequency, 5);
	CHECK_DOUBLE(plain->check_timeout, 5);	/* derived from the shared pace */
	CHECK_INT(plain->rise, 3);
	CHECK_INT(plain->fall, 1);		/* set nowhere: built in */
	CHECK_INT(plain->expect_status_count, 2);
	CHECK_INT(config_status_expected(plain, 204), 1);
	CHECK_INT(plain->http_header_count, 1);
	if (plain->http_header_count == 1)
		CHECK_STR(plain->http_headers[0], "X-Check: har");
	CHECK_INT(plain->selection_method, SELECT_GROUP_RTT_RR);
	CHECK_DOUBLE(plain->overprovisioning, 1.5);
	CHECK_INT(plain->failure_mode, FAILURE_SERVFAIL);
	CHECK_INT(plain->ttl, 30);
	CHECK_DOUBLE(plain->max_rtt, 0.25);
	CHECK_DOUBLE(plain->group_rtt_threshold, INFINITY);

	/* A name's own setting wins; the rest still comes from defaults. */
	CHECK_DOUBLE(own->check_frequency, 2);
	CHECK_DOUBLE(own->check_timeout, 2);
	CHECK_INT(own->ttl, 0);
	CHECK_INT(own->rise, 3);
	CHECK_INT(own->failure_mode, FAILURE_SERVFAIL);

	CHECK(config->defaults != NULL);
	if (config->defaults) {
		CHECK_INT(config->defaults->line, 3);
		CHECK_DOUBLE(config->defaults->check_frequency, 5);
		CHECK_INT(config->defaults->candidate_count, 0);
	}
	config_free(config);
}

/* A list is replaced whole, an empty list included; never merged. */
static void
test_defaults_list_overridden_whole(void)
{
	struct config *config = load(shared_defaults);
	const struct config_name *own = find_name(config, "own.example.com");

	CHECK_ACCEPTED(config);
	if (own) {
		CHECK_INT(own->expect_status_count, 1);
		CHECK_INT(config_status_expected(own, 301), 1);
		CHECK_INT(config_status_expected(own, 200), 0);
		CHECK_INT(config_status_expected(own, 204), 0);
	}
	config_free(config);

	config = load("nameservers = { 192.0.2.53 }\n"
		      "defaults { drain_status = { 418 } }\n"
		      "name a.example.com { drain_status = {} candidate a {} }\n"
		      "name b.example.com { candidate a {} }\n");
	CHECK_ACCEPTED(config);
	if (find_name(config, "a.example.com") && find_name(config, "b.example.com")) {
		CHECK_INT(find_name(config, "a.example.com")->drain_status_count, 0);
		CHECK_INT(find_name(config, "b.example.com")->drain_status_count, 1);
	}
	config_free(config);

	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults { expect_status = { 204 } }\n"
		       "name a.example.com {\n"
		       "    expect_status = {}\n"
		       "    candidate a {}\n"
		       "}\n", 4, "expect_status is empty");
}

/*
 * A shared option that does not fit a name which chose otherwise in its
 * own section is left out of that name; written in the name, it is an
 * error.
 */
static void
test_defaults_left_out_where_they_do_not_apply(void)
{
	struct config *config = load(shared_defaults);
	const struct config_name *tcp = find_name(config, "tcp.example.com");

	CHECK_ACCEPTED(config);
	if (tcp) {
		CHECK_INT(tcp->check_method, CHECK_TCP);
		CHECK_INT(tcp->http_header_count, 0);
		CHECK_INT(tcp->selection_method, SELECT_BEST_RTT);
		CHECK_DOUBLE(tcp->overprovisioning, 0);
		CHECK_INT(tcp->rise, 3);
	}
	config_free(config);

	config = load("nameservers = { 192.0.2.53 }\n"
		      "defaults { expect_body = \"ok\" drain_status = { 418 } }\n"
		      "name head.example.com { http_method = HEAD candidate a {} }\n"
		      "name tcp.example.com { check_method = tcp\n"
		      "    candidate a { check_address = \"192.0.2.1:80\" } }\n");
	CHECK_ACCEPTED(config);
	if (find_name(config, "head.example.com"))
		CHECK(find_name(config, "head.example.com")->expect_body == NULL);
	if (find_name(config, "tcp.example.com"))
		CHECK_INT(find_name(config, "tcp.example.com")->drain_status_count, 0);
	config_free(config);

	/* The name's own option against a shared choice: its own mistake. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults { check_method = tcp }\n"
		       "name a.example.com {\n"
		       "    http_headers = { \"X-A: 1\" }\n"
		       "    candidate a { check_address = \"192.0.2.1:80\" }\n"
		       "}\n", 4, "http_headers applies to http checks only");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    selection_method = best_rtt\n"
		       "}\n"
		       "name a.example.com {\n"
		       "    overprovisioning = 2\n"
		       "    candidate a {}\n"
		       "}\n", 6, "overprovisioning needs selection_method");
}

/*
 * A text that ends inside a string ("L\"" as the last value) left
 * libconfuse's global lexer holding what it had not finished, and the
 * next parse of a list default ("{200}") failed: libconfuse aborted,
 * in the defaults of the same load (no defaults section) or in the next
 * load.  Found by fuzz_config.  Both loads must come back.
 */
static void
test_text_ending_inside_a_string(void)
{
	const char *broken = "nameservers = { 192.0.2.53 }\n"
			     "name a.example.com {\n"
			     "    candidate a { address = { 192.0.2.1 } }\n"
			     "    expect_body = L\"\n"
			     "}\n";
	struct config *config;

	CHECK_REJECTED(broken, 2, "the { of this line is never closed");
	CHECK_REJECTED(broken, 2, "the { of this line is never closed");
	config = load("nameservers = { 192.0.2.53 }\n"
		      "name a.example.com { candidate a {} }\n");
	CHECK_ACCEPTED(config);
	config_free(config);
}

static void
test_defaults_errors(void)
{
	/* A bad value in defaults is reported at its line, once, even
	 * with no name to take it. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    check_frequency = 0\n"
		       "}\n", 3, "check_frequency must be between 0.01 and 86400 seconds, not 0");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "name a.example.com { candidate a {} }\n"
		       "defaults {\n"
		       "    rise = 1\n"
		       "    selection_method = fastest\n"
		       "}\n", 5, "selection_method: unknown value \"fastest\"");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    expect_status = { 200, 700 }\n"
		       "}\n", 3, "expect_status must be between 100 and 599, not 700");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    http_headers = { \"no colon\" }\n"
		       "}\n", 3, "is not \"Name: value\"");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    ca_file = \"/nonexistent/ca.pem\"\n"
		       "}\n", 3, "ca_file \"/nonexistent/ca.pem\"");
	/* Options that contradict each other within defaults. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    check_method = tcp\n"
		       "    expect_body = \"ok\"\n"
		       "}\n"
		       "name a.example.com { candidate a { check_address = \"192.0.2.1:80\" } }\n"
		       "name b.example.com { candidate a { check_address = \"192.0.2.1:80\" } }\n",
		       4, "expect_body applies to http checks only");
	if (report_count != 1)
		print_reports();
	CHECK_INT(report_count, 1);
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    overprovisioning = 0.5\n"
		       "}\n", 3, "overprovisioning must be 0 (off) or between 1 and 100");
	/* What is not a name's option has no place in defaults. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    rise = 2\n"
		       "    check_frequncy = 5\n"
		       "}\n", 4, "no such option 'check_frequncy'");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    candidate a {}\n"
		       "}\n", 3, "candidate");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults {\n"
		       "    dns_listen_port = 5300\n"
		       "}\n", 3, "no such option 'dns_listen_port'");
	/* Without a section, a name's option is still no global option. */
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "check_frequency = 5\n", 2,
		       "no such option 'check_frequency'");
	CHECK_REJECTED("nameservers = { 192.0.2.53 }\n"
		       "defaults { rise = 2 }\n"
		       "name a.example.com { candidate a {} }\n"
		       "defaults { fall = 2 }\n", 4,
		       "defaults is already given at line 2");
}

int
main(void)
{
	snprintf(resolv_conf, sizeof(resolv_conf), "/tmp/har-resolv-XXXXXX");
	snprintf(loopback_resolv_conf, sizeof(loopback_resolv_conf),
		 "/tmp/har-resolv-XXXXXX");
	if (write_file(resolv_conf,
		       "# written by test_config\n"
		       "search example.com\n"
		       "nameserver 192.0.2.99\n"
		       "options ndots:2 timeout:1\n"
		       "nameserver 2001:db8::99\n"
		       "nameserver fe80::1%eth0\n"
		       "nameserver not-an-address\n") != 0 ||
	    write_file(loopback_resolv_conf, "nameserver 127.0.0.1\n") != 0)
		return 1;

	RUN(test_defaults);
	RUN(test_check_timeout_default);
	RUN(test_every_option);
	RUN(test_original_example);
	RUN(test_example_file);
	RUN(test_load_file_errors);
	RUN(test_names_canonical);
	RUN(test_dns_name_to_wire);
	RUN(test_ip_literals_and_addresses);
	RUN(test_tcp_targets);
	RUN(test_nameservers);
	RUN(test_endpoint_parse);
	RUN(test_listen_endpoint_parse);
	RUN(test_ip_address_parse);
	RUN(test_resolv_conf);
	RUN(test_drop_own_listeners);
	RUN(test_error_unknown_method);
	RUN(test_error_bad_numbers);
	RUN(test_error_no_candidate);
	RUN(test_error_control_character_in_title);
	RUN(test_error_bad_urls);
	RUN(test_error_duplicate_names);
	RUN(test_error_duplicate_candidates);
	RUN(test_error_bad_address);
	RUN(test_error_bad_nameserver);
	RUN(test_error_syntax);
	RUN(test_error_lines_after_comments);
	RUN(test_error_several);
	RUN(test_error_ranges);
	RUN(test_range_limits_accepted);
	RUN(test_error_unclosed);
	RUN(test_error_system);
	RUN(test_http_options);
	RUN(test_expect_status_compared_by_meaning);
	RUN(test_error_http_options);
	RUN(test_defaults_section_applied);
	RUN(test_defaults_list_overridden_whole);
	RUN(test_defaults_left_out_where_they_do_not_apply);
	RUN(test_defaults_errors);
	RUN(test_text_ending_inside_a_string);

	unlink(resolv_conf);
	unlink(loopback_resolv_conf);
	return UNIT_SUMMARY();
}
