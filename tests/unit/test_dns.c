/*
 * test_dns.c - dns.c: query bytes in, response bytes out.  Queries are
 * built by hand here; responses are checked byte by byte where the
 * layout matters (header, echoed question, OPT) and read back with ldns
 * for the records.  The registry comes from a config string, with
 * address health set by hand.  No network, no event loop.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ldns/ldns.h>

#include "har.h"
#include "unit.h"

#define QR 0x8000
#define AA 0x0400
#define TC 0x0200
#define RD 0x0100
#define RA 0x0080
#define CD 0x0010

#define T_A 1
#define T_SOA 6
#define T_TXT 16
#define T_AAAA 28
#define T_OPT 41
#define T_ANY 255
#define C_IN 1
#define C_CH 3

static struct config *config;
static struct registry *registry;
static uint8_t response[DNS_MAX_UDP];
static size_t response_len;
static size_t client_limit;

/* ------------------------------------------------------------ helpers */

static uint16_t
get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static void
set16(uint8_t *p, uint16_t value)
{
	p[0] = (uint8_t)(value >> 8);
	p[1] = (uint8_t)value;
}

/* NAME's wire form, keeping its case; returns the length. */
static size_t
put_name(uint8_t *out, const char *name)
{
	size_t at = 0;

	while (*name) {
		const char *dot = strchr(name, '.');
		size_t length = dot ? (size_t)(dot - name) : strlen(name);

		out[at++] = (uint8_t)length;
		memcpy(out + at, name, length);
		at += length;
		name += length + (dot ? 1 : 0);
	}
	out[at++] = 0;
	return at;
}

/* A query: header with flags, one question; returns its length. */
static size_t
make_query(uint8_t *out, uint16_t id, uint16_t flags, const char *name,
	   uint16_t type, uint16_t class)
{
	size_t at = 12;

	memset(out, 0, 12);
	set16(out, id);
	set16(out + 2, flags);
	set16(out + 4, 1);
	at += put_name(out + at, name);
	set16(out + at, type);
	set16(out + at + 2, class);
	return at + 4;
}

/* Appends an OPT record (and counts it); returns the new length. */
static size_t
add_opt(uint8_t *out, size_t len, uint16_t udp_size, uint8_t version,
	int dnssec_ok)
{
	uint8_t *opt = out + len;

	memset(opt, 0, 11);
	set16(opt + 1, T_OPT);
	set16(opt + 3, udp_size);
	opt[6] = version;
	opt[7] = dnssec_ok ? 0x80 : 0;
	set16(out + 10, (uint16_t)(get16(out + 10) + 1));
	return len + 11;
}

static enum dns_verdict
ask(const uint8_t *query, size_t len, int over_tcp)
{
	memset(response, 0xee, 256);
	return dns_answer(registry, query, len, over_tcp, response,
			  sizeof(response), &response_len, &client_limit);
}

static uint16_t
response_flags(void)
{
	return get16(response + 2);
}

static int
response_rcode(void)
{
	return response_flags() & 0x0f;
}

static int
response_count(int section)	/* 0 qd, 1 an, 2 ns, 3 ar */
{
	return get16(response + 4 + 2 * section);
}

/* The response's question is the query's, byte for byte. */
static int
question_echoed(const uint8_t *query, size_t query_len)
{
	size_t question_len = query_len - 12;

	return response_len >= 12 + question_len &&
	    memcmp(response + 12, query + 12, question_len) == 0;
}

static ldns_pkt *
parse_response(void)
{
	ldns_pkt *pkt = NULL;

	if (ldns_wire2pkt(&pkt, response, response_len) != LDNS_STATUS_OK)
		return NULL;
	return pkt;
}

/* Answer i's address as text ("" if none or not A/AAAA). */
static const char *
answer_address(ldns_pkt *pkt, size_t i)
{
	static char text[8][INET6_ADDRSTRLEN];
	static int next;
	char *out = text[next++ % 8];
	ldns_rr_list *answers = ldns_pkt_answer(pkt);
	ldns_rr *rr;
	ldns_rdf *rdf;

	out[0] = '\0';
	if (!answers || i >= ldns_rr_list_rr_count(answers))
		return out;
	rr = ldns_rr_list_rr(answers, i);
	rdf = ldns_rr_rdf(rr, 0);
	if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_A && ldns_rdf_size(rdf) == 4)
		inet_ntop(AF_INET, ldns_rdf_data(rdf), out, INET6_ADDRSTRLEN);
	else if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_AAAA &&
		 ldns_rdf_size(rdf) == 16)
		inet_ntop(AF_INET6, ldns_rdf_data(rdf), out, INET6_ADDRSTRLEN);
	return out;
}

static int
dname_is(const ldns_rdf *rdf, const char *text)
{
	ldns_rdf *expected = ldns_dname_new_frm_str(text);
	int equal = expected && ldns_dname_compare(rdf, expected) == 0;

	ldns_rdf_deep_free(expected);
	return equal;
}

static struct name *
find_name(const char *title)
{
	for (int i = 0; i < registry->name_count; i++)
		if (strcmp(registry->names[i].config->title, title) == 0)
			return &registry->names[i];
	fprintf(stderr, "no name %s\n", title);
	abort();
}

static void
set_up(const char *title, const char *text, double srtt)
{
	struct name *name = find_name(title);

	for (int i = 0; i < name->candidate_count; i++)
		for (int j = 0; j < name->candidates[i].address_count; j++) {
			struct address *address = name->candidates[i].addresses[j];

			if (strcmp(address->text, text) == 0) {
				address->health = HEALTH_UP;
				address->srtt = srtt;
				select_update_all(name);
				return;
			}
		}
	fprintf(stderr, "no address %s in %s\n", text, title);
	abort();
}

static void
set_all(const char *title, int health, double srtt)
{
	struct name *name = find_name(title);

	for (int i = 0; i < name->candidate_count; i++)
		for (int j = 0; j < name->candidates[i].address_count; j++) {
			name->candidates[i].addresses[j]->health = health;
			name->candidates[i].addresses[j]->srtt = srtt;
		}
	select_update_all(name);
}

static void
report(const char *message)
{
	fprintf(stderr, "config: %s\n", message);
}

static int
setup(void)
{
	char text[8192];
	size_t at;

	at = (size_t)snprintf(text, sizeof(text),
	    "nameservers = { 192.0.2.53 }\n"
	    "name www.example.com {\n"
	    "    ttl = 300\n"
	    "    candidate a { address = { 192.0.2.1, 2001:db8::1 } }\n"
	    "    candidate b { address = { 192.0.2.2, 2001:db8::2 } }\n"
	    "}\n"
	    "name v4.example.com {\n"
	    "    ttl = 60\n"
	    "    candidate a { address = { 192.0.2.10 } }\n"
	    "}\n"
	    "name rr.example.com {\n"
	    "    selection_method = group_rtt_rr\n"
	    "    candidate a { address = { 192.0.2.21, 192.0.2.22 } }\n"
	    "    candidate b { address = { 192.0.2.23 } }\n"
	    "}\n"
	    "name servfail.example.com {\n"
	    "    failure_mode = servfail\n"
	    "    candidate a { address = { 192.0.2.31 } }\n"
	    "}\n"
	    "name failall.example.com {\n"
	    "    failure_mode = all\n"
	    "    candidate a { address = { 192.0.2.41, 192.0.2.42 } }\n"
	    "    candidate b { address = { 2001:db8::41 } }\n"
	    "}\n"
	    "name down.example.com {\n"
	    "    candidate a { address = { 192.0.2.51, 2001:db8::51 } }\n"
	    "}\n"
	    "name every.example.com {\n"
	    "    selection_method = all\n"
	    "    candidate a { address = { 192.0.2.61, 192.0.2.62 } }\n"
	    "    candidate b { address = { 192.0.2.63 } }\n"
	    "}\n"
	    "name empty.example.com {\n"
	    "    candidate a { check_address = \"http://a.example.net/\" }\n"
	    "}\n"
	    "name many.example.com {\n"
	    "    selection_method = all\n"
	    "    candidate a { address = { 198.51.100.1");
	for (int i = 2; i <= 40; i++)
		at += (size_t)snprintf(text + at, sizeof(text) - at,
				       ", 198.51.100.%d", i);
	snprintf(text + at, sizeof(text) - at, " } }\n}\n");

	config = config_load_string(text, "/dev/null", report);
	if (!config)
		return 0;
	registry = registry_create(config);
	set_up("www.example.com", "192.0.2.1", 0.2);
	set_up("www.example.com", "192.0.2.2", 0.1);
	set_up("www.example.com", "2001:db8::1", 0.1);
	set_up("v4.example.com", "192.0.2.10", 0.1);
	set_all("rr.example.com", HEALTH_UP, 0.1);
	set_all("servfail.example.com", HEALTH_DOWN, NAN);
	set_all("failall.example.com", HEALTH_DOWN, NAN);
	set_up("every.example.com", "192.0.2.61", 0.3);
	set_up("every.example.com", "192.0.2.62", 0.1);
	set_up("every.example.com", "192.0.2.63", 0.2);
	set_all("many.example.com", HEALTH_UP, 0.1);
	/* resolved, to no address at all */
	find_name("empty.example.com")->candidates[0].known[0] = 1;
	find_name("empty.example.com")->candidates[0].known[1] = 1;
	select_update_all(find_name("empty.example.com"));
	return 1;
}

/* -------------------------------------------------------------- answers */

static void
test_answer_a(void)
{
	uint8_t query[512];
	size_t len = make_query(query, 0xbeef, RD, "WwW.ExAmPlE.cOm", T_A, C_IN);
	ldns_pkt *pkt;
	ldns_rr *rr;

	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(client_limit, 512);
	CHECK_INT(get16(response), 0xbeef);
	CHECK_INT(response_flags(), QR | AA | RD | RA);
	CHECK_INT(response_count(0), 1);
	CHECK_INT(response_count(1), 1);
	CHECK_INT(response_count(2), 0);
	CHECK_INT(response_count(3), 0);
	CHECK(question_echoed(query, len));
	CHECK_INT(response_len, len + 16);	/* one A record, compressed */
	pkt = parse_response();
	if (!CHECK(pkt != NULL))
		return;
	CHECK_INT(ldns_pkt_get_rcode(pkt), LDNS_RCODE_NOERROR);
	CHECK_INT(ldns_pkt_ancount(pkt), 1);
	CHECK_STR(answer_address(pkt, 0), "192.0.2.2");
	rr = ldns_rr_list_rr(ldns_pkt_answer(pkt), 0);
	CHECK_INT(ldns_rr_ttl(rr), 300);
	CHECK_INT(ldns_rr_get_class(rr), LDNS_RR_CLASS_IN);
	CHECK(dname_is(ldns_rr_owner(rr), "www.example.com."));
	ldns_pkt_free(pkt);

	/* RD clear is copied too; so are the ID's bytes. */
	len = make_query(query, 0x0001, 0, "www.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(get16(response), 1);
	CHECK_INT(response_flags(), QR | AA | RA);

	/* Upper case is the same name; over TCP the limit is TCP's. */
	len = make_query(query, 2, RD, "WWW.EXAMPLE.COM", T_A, C_IN);
	CHECK_INT(ask(query, len, 1), DNS_REPLY);
	CHECK(question_echoed(query, len));
	CHECK_INT(client_limit, DNS_MAX_UDP);
}

static void
test_answer_aaaa(void)
{
	uint8_t query[512];
	size_t len = make_query(query, 7, RD, "www.example.com", T_AAAA, C_IN);
	ldns_pkt *pkt;

	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_flags(), QR | AA | RD | RA);
	CHECK_INT(response_count(1), 1);
	CHECK_INT(response_len, len + 28);
	pkt = parse_response();
	if (!CHECK(pkt != NULL))
		return;
	CHECK_STR(answer_address(pkt, 0), "2001:db8::1");
	CHECK_INT(ldns_rr_get_type(ldns_rr_list_rr(ldns_pkt_answer(pkt), 0)),
		  LDNS_RR_TYPE_AAAA);
	CHECK_INT(ldns_rr_ttl(ldns_rr_list_rr(ldns_pkt_answer(pkt), 0)), 300);
	ldns_pkt_free(pkt);
}

static void
test_nodata(void)
{
	uint8_t query[512];
	size_t len = make_query(query, 9, RD, "V4.Example.Com", T_AAAA, C_IN);
	ldns_pkt *pkt;
	ldns_rr *soa;

	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_flags(), QR | AA | RD | RA);
	CHECK_INT(response_rcode(), 0);
	CHECK_INT(response_count(1), 0);
	CHECK_INT(response_count(2), 1);
	CHECK(question_echoed(query, len));
	pkt = parse_response();
	if (!CHECK(pkt != NULL))
		return;
	CHECK_INT(ldns_pkt_nscount(pkt), 1);
	soa = ldns_rr_list_rr(ldns_pkt_authority(pkt), 0);
	if (CHECK(soa != NULL) &&
	    CHECK(ldns_rr_get_type(soa) == LDNS_RR_TYPE_SOA) &&
	    CHECK(ldns_rr_rd_count(soa) == 7)) {
		CHECK(dname_is(ldns_rr_owner(soa), "v4.example.com."));
		CHECK_INT(ldns_rr_ttl(soa), 60);
		CHECK(dname_is(ldns_rr_rdf(soa, 0), "v4.example.com."));
		CHECK(dname_is(ldns_rr_rdf(soa, 1), "hostmaster.v4.example.com."));
		CHECK_INT(ldns_rdf2native_int32(ldns_rr_rdf(soa, 2)), 1);
		CHECK_INT(ldns_rdf2native_int32(ldns_rr_rdf(soa, 3)), 3600);
		CHECK_INT(ldns_rdf2native_int32(ldns_rr_rdf(soa, 4)), 600);
		CHECK_INT(ldns_rdf2native_int32(ldns_rr_rdf(soa, 5)), 86400);
		CHECK_INT(ldns_rdf2native_int32(ldns_rr_rdf(soa, 6)), 60);
	}
	ldns_pkt_free(pkt);

	/* The same with EDNS: the OPT comes after the SOA. */
	len = add_opt(query, len, 1232, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(2), 1);
	CHECK_INT(response_count(3), 1);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK(ldns_pkt_edns(pkt));
		CHECK_INT(ldns_pkt_nscount(pkt), 1);
		ldns_pkt_free(pkt);
	}
}

static void
test_forward(void)
{
	uint8_t query[512];
	size_t len;

	/* Names we do not have. */
	len = make_query(query, 1, RD, "other.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	CHECK_INT(response_len, 0);
	CHECK_INT(client_limit, 512);
	len = make_query(query, 1, RD, "example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = make_query(query, 1, RD, "x.www.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = make_query(query, 1, RD, "www.example.co", T_AAAA, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = make_query(query, 1, RD, "", T_A, C_IN);	/* the root */
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	/* Other types and classes of our names. */
	len = make_query(query, 1, RD, "www.example.com", T_TXT, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = make_query(query, 1, RD, "www.example.com", T_SOA, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = make_query(query, 1, RD, "www.example.com", T_A, C_CH);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	/* failure_mode none with nothing up. */
	len = make_query(query, 1, RD, "down.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = make_query(query, 1, RD, "down.example.com", T_AAAA, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);

	/* The client's limit goes with the forwarded query. */
	len = make_query(query, 1, RD, "other.example.com", T_A, C_IN);
	len = add_opt(query, len, 4096, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	CHECK_INT(client_limit, 4096);
	CHECK_INT(ask(query, len, 1), DNS_FORWARD);
	CHECK_INT(client_limit, DNS_MAX_UDP);
	len = make_query(query, 1, RD, "other.example.com", T_A, C_IN);
	len = add_opt(query, len, 100, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	CHECK_INT(client_limit, 512);

	/* Without a registry everything is forwarded. */
	len = make_query(query, 1, RD, "www.example.com", T_A, C_IN);
	CHECK_INT(dns_answer(NULL, query, len, 0, response, sizeof(response),
			     &response_len, &client_limit), DNS_FORWARD);
}

static void
test_edns(void)
{
	uint8_t query[512];
	size_t len;
	const uint8_t *opt;
	ldns_pkt *pkt;

	/* OPT back, advertising 1232, DO copied. */
	len = make_query(query, 3, RD, "www.example.com", T_A, C_IN);
	len = add_opt(query, len, 4096, 0, 1);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(client_limit, 4096);
	CHECK_INT(response_count(1), 1);
	CHECK_INT(response_count(3), 1);
	CHECK(question_echoed(query, len - 11));
	opt = response + response_len - 11;
	CHECK_INT(opt[0], 0);			/* root owner */
	CHECK_INT(get16(opt + 1), T_OPT);
	CHECK_INT(get16(opt + 3), 1232);
	CHECK_INT(opt[5], 0);			/* extended rcode */
	CHECK_INT(opt[6], 0);			/* version */
	CHECK_INT(opt[7], 0x80);		/* DO */
	CHECK_INT(opt[8], 0);
	CHECK_INT(get16(opt + 9), 0);		/* no options */
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK(ldns_pkt_edns(pkt));
		CHECK_INT(ldns_pkt_edns_udp_size(pkt), 1232);
		CHECK(ldns_pkt_edns_do(pkt));
		CHECK_STR(answer_address(pkt, 0), "192.0.2.2");
		ldns_pkt_free(pkt);
	}

	/* DO clear stays clear. */
	len = make_query(query, 3, RD, "www.example.com", T_AAAA, C_IN);
	len = add_opt(query, len, 1232, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(3), 1);
	opt = response + response_len - 11;
	CHECK_INT(get16(opt + 1), T_OPT);
	CHECK_INT(opt[7], 0);

	/* No OPT in, none out. */
	len = make_query(query, 3, RD, "www.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(3), 0);
	CHECK_INT(response_len, len + 16);

	/* An OPT carrying an option (a cookie) is still the common case. */
	{
		static const uint8_t cookie[] = {
			0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8
		};

		len = make_query(query, 3, RD, "www.example.com", T_A, C_IN);
		len = add_opt(query, len, 1400, 0, 0);
		set16(query + len - 2, sizeof(cookie));
		memcpy(query + len, cookie, sizeof(cookie));
		len += sizeof(cookie);
		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_INT(response_count(1), 1);
		CHECK_INT(response_count(3), 1);
		CHECK_INT(client_limit, 1400);
	}

	/* EDNS version 1: BADVERS (16 = extended rcode 1, header rcode 0). */
	len = make_query(query, 4, RD, "www.example.com", T_A, C_IN);
	len = add_opt(query, len, 4096, 1, 1);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(get16(response), 4);
	CHECK_INT(response_flags() & (QR | RD | RA), QR | RD | RA);
	CHECK_INT(response_rcode(), 0);
	CHECK_INT(response_count(0), 1);
	CHECK_INT(response_count(1), 0);
	CHECK_INT(response_count(3), 1);
	CHECK(question_echoed(query, len - 11));
	opt = response + response_len - 11;
	CHECK_INT(get16(opt + 1), T_OPT);
	CHECK_INT(get16(opt + 3), 1232);
	CHECK_INT(opt[5], 1);
	CHECK_INT(opt[6], 0);			/* we speak version 0 */
	CHECK_INT(opt[7], 0x80);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_INT(ldns_pkt_edns_extended_rcode(pkt), 1);
		ldns_pkt_free(pkt);
	}
}

static void
test_truncation(void)
{
	uint8_t query[512];
	size_t len;
	ldns_pkt *pkt;

	/* 40 A records: 34 + 40 * 16 = 674 octets, over 512. */
	len = make_query(query, 5, RD, "many.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK(response_len <= 512);
	CHECK_INT(response_flags(), QR | AA | TC | RD | RA);
	CHECK_INT(response_rcode(), 0);
	CHECK_INT(response_count(0), 1);
	CHECK_INT(response_count(1), 0);
	CHECK_INT(response_count(2), 0);
	CHECK_INT(response_count(3), 0);
	CHECK_INT(response_len, len);
	CHECK(question_echoed(query, len));

	/* Over TCP: everything. */
	CHECK_INT(ask(query, len, 1), DNS_REPLY);
	CHECK_INT(response_flags() & TC, 0);
	CHECK_INT(response_count(1), 40);
	CHECK_INT(response_len, len + 40 * 16);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_INT(ldns_pkt_ancount(pkt), 40);
		CHECK_STR(answer_address(pkt, 0), "198.51.100.1");
		CHECK_STR(answer_address(pkt, 39), "198.51.100.9");	/* text order */
		ldns_pkt_free(pkt);
	}

	/* A big EDNS buffer: everything, with OPT. */
	len = add_opt(query, len, 4096, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_flags() & TC, 0);
	CHECK_INT(response_count(1), 40);
	CHECK_INT(response_count(3), 1);
	CHECK(response_len > 512);

	/* A small one: TC, and still OPT. */
	set16(query + len - 8, 600);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(client_limit, 600);
	CHECK_INT(response_flags() & TC, TC);
	CHECK_INT(response_count(1), 0);
	CHECK_INT(response_count(3), 1);
	CHECK(response_len <= 600);

	/* Less than 512 counts as 512: the A set of www fits. */
	len = make_query(query, 5, RD, "www.example.com", T_A, C_IN);
	len = add_opt(query, len, 100, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_flags() & TC, 0);
	CHECK_INT(response_count(1), 1);
}

static void
test_rotation(void)
{
	static const char *const expected[] = {
		"192.0.2.21", "192.0.2.22", "192.0.2.23",
		"192.0.2.21", "192.0.2.22", "192.0.2.23", "192.0.2.21",
	};
	uint8_t query[512];
	size_t len = make_query(query, 6, RD, "rr.example.com", T_A, C_IN);
	struct name *name = find_name("rr.example.com");
	unsigned start = name->answers[0].next;

	CHECK_INT(name->answers[0].rotate, 1);
	CHECK_INT(name->answers[0].count, 3);
	for (unsigned i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
		ldns_pkt *pkt;

		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_INT(response_count(1), 1);
		pkt = parse_response();
		if (!CHECK(pkt != NULL))
			continue;
		CHECK_STR(answer_address(pkt, 0),
			  expected[(i + start) % 3]);
		ldns_pkt_free(pkt);
	}
	/* One of the three goes down: the rotation goes on over two. */
	name->candidates[1].addresses[0]->health = HEALTH_DOWN;
	select_update_all(name);
	{
		int seen21 = 0, seen22 = 0;

		for (int i = 0; i < 4; i++) {
			ldns_pkt *pkt;

			CHECK_INT(ask(query, len, 0), DNS_REPLY);
			pkt = parse_response();
			if (!CHECK(pkt != NULL))
				continue;
			seen21 += strcmp(answer_address(pkt, 0), "192.0.2.21") == 0;
			seen22 += strcmp(answer_address(pkt, 0), "192.0.2.22") == 0;
			ldns_pkt_free(pkt);
		}
		CHECK_INT(seen21, 2);
		CHECK_INT(seen22, 2);
	}
}

static void
test_failure_modes(void)
{
	uint8_t query[512];
	size_t len;
	ldns_pkt *pkt;

	/* servfail: SERVFAIL with the question. */
	len = make_query(query, 8, RD, "servfail.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(get16(response), 8);
	CHECK_INT(response_flags() & (QR | RD | RA | TC), QR | RD | RA);
	CHECK_INT(response_rcode(), 2);
	CHECK_INT(response_count(0), 1);
	CHECK_INT(response_count(1), 0);
	CHECK(question_echoed(query, len));
	/* ...and so is the family it has no address of: the name fails
	 * as a whole (glibc: EAI_AGAIN, not "no address"). */
	len = make_query(query, 8, RD, "servfail.example.com", T_AAAA, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_rcode(), 2);
	CHECK_INT(response_count(2), 0);
	CHECK(question_echoed(query, len));
	/* Once an address is back, the other family is NODATA again. */
	set_all("servfail.example.com", HEALTH_UP, 0.1);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_rcode(), 0);
	CHECK_INT(response_count(2), 1);
	set_all("servfail.example.com", HEALTH_DOWN, NAN);

	/* all: every address of the family. */
	len = make_query(query, 8, RD, "failall.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_flags(), QR | AA | RD | RA);
	CHECK_INT(response_count(1), 2);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_STR(answer_address(pkt, 0), "192.0.2.41");
		CHECK_STR(answer_address(pkt, 1), "192.0.2.42");
		ldns_pkt_free(pkt);
	}
	len = make_query(query, 8, RD, "failall.example.com", T_AAAA, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(1), 1);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_STR(answer_address(pkt, 0), "2001:db8::41");
		ldns_pkt_free(pkt);
	}

	/* selection_method all: every available address, by RTT. */
	len = make_query(query, 8, RD, "every.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(1), 3);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_STR(answer_address(pkt, 0), "192.0.2.62");
		CHECK_STR(answer_address(pkt, 1), "192.0.2.63");
		CHECK_STR(answer_address(pkt, 2), "192.0.2.61");
		ldns_pkt_free(pkt);
	}
}

static void
test_query_counter(void)
{
	uint8_t query[512];
	size_t len;
	struct name *www = find_name("www.example.com");
	struct name *v4 = find_name("v4.example.com");
	struct name *down = find_name("down.example.com");
	uint64_t before = www->queries;

	len = make_query(query, 1, RD, "www.example.com", T_A, C_IN);
	ask(query, len, 0);
	CHECK_INT(www->queries, before + 1);
	len = make_query(query, 1, RD, "www.example.com", T_AAAA, C_IN);
	ask(query, len, 1);
	CHECK_INT(www->queries, before + 2);
	/* Forwarded, refused or broken: not ours. */
	len = make_query(query, 1, RD, "www.example.com", T_TXT, C_IN);
	ask(query, len, 0);
	len = make_query(query, 1, RD, "www.example.com", T_A, C_CH);
	ask(query, len, 0);
	len = make_query(query, 1, RD, "www.example.com", T_A, C_IN);
	len = add_opt(query, len, 4096, 1, 0);
	ask(query, len, 0);			/* BADVERS */
	len = make_query(query, 1, RD | 0x2000, "www.example.com", T_A, C_IN);
	ask(query, len, 0);			/* NOTIMP */
	CHECK_INT(www->queries, before + 2);
	/* NODATA is an answer. */
	before = v4->queries;
	len = make_query(query, 1, RD, "v4.example.com", T_AAAA, C_IN);
	ask(query, len, 0);
	CHECK_INT(v4->queries, before + 1);
	/* Forwarded for want of an address: not ours. */
	before = down->queries;
	len = make_query(query, 1, RD, "down.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	CHECK_INT(down->queries, before);
}

/* ------------------------------------------------------------ bad input */

/* The reply carries only a header with rcode (and the echoed ID, QR). */
static void
check_error_reply(const char *file, int line, uint16_t id, int rcode)
{
	char what[64];

	snprintf(what, sizeof(what), "error reply with rcode %d", rcode);
	if (!unit_result(response_len >= 12 && get16(response) == id &&
			 (response_flags() & QR) && response_rcode() == rcode &&
			 response_count(1) == 0 && response_count(2) == 0,
			 file, line, what))
		fprintf(stderr, "    got length %zu, id %u, flags 0x%04x\n",
			response_len, response_len >= 2 ? get16(response) : 0,
			response_len >= 4 ? response_flags() : 0);
}

#define CHECK_ERROR_REPLY(id, rcode) \
	check_error_reply(__FILE__, __LINE__, (id), (rcode))

/* The types of an ANY answer's records, in order, as "A A AAAA". */
static const char *
answer_types(ldns_pkt *pkt)
{
	static char text[128];
	ldns_rr_list *answers = ldns_pkt_answer(pkt);

	text[0] = '\0';
	for (size_t i = 0; answers && i < ldns_rr_list_rr_count(answers); i++) {
		ldns_rr_type type = ldns_rr_get_type(ldns_rr_list_rr(answers, i));

		strcat(text, i ? " " : "");
		strcat(text, type == LDNS_RR_TYPE_A ? "A" :
		       type == LDNS_RR_TYPE_AAAA ? "AAAA" : "?");
	}
	return text;
}

/*
 * ANY (RFC 8482): hard's own selection, A then AAAA, never the upstream's
 * records; class ANY like IN.
 */
static void
test_any(void)
{
	uint8_t query[512];
	size_t len;
	ldns_pkt *pkt;
	struct name *www = find_name("www.example.com");
	uint64_t before = www->queries;

	len = make_query(query, 0x2200, RD, "www.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_flags(), QR | AA | RD | RA);
	CHECK_INT(response_rcode(), 0);
	CHECK_INT(response_count(1), 2);
	CHECK_INT(response_count(2), 0);
	CHECK(question_echoed(query, len));
	CHECK_INT(www->queries, before + 1);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_STR(answer_types(pkt), "A AAAA");
		CHECK_STR(answer_address(pkt, 0), "192.0.2.2");
		CHECK_STR(answer_address(pkt, 1), "2001:db8::1");
		CHECK_INT(ldns_rr_get_class(ldns_rr_list_rr(ldns_pkt_answer(pkt), 0)),
			  LDNS_RR_CLASS_IN);
		ldns_pkt_free(pkt);
	}
	/* Class ANY: the same records, the question as asked. */
	len = make_query(query, 0x2201, RD, "www.example.com", T_ANY, 255);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(1), 2);
	CHECK(question_echoed(query, len));
	len = make_query(query, 0x2202, RD, "www.example.com", T_A, 255);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(1), 1);
	/* One family only. */
	len = make_query(query, 0x2203, RD, "v4.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_STR(answer_types(pkt), "A");
		ldns_pkt_free(pkt);
	}
	/* group_rtt_rr: one of each family per answer, rotating. */
	len = make_query(query, 0x2204, RD, "rr.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(1), 1);
	/* failure_mode all: every address of both families. */
	len = make_query(query, 0x2205, RD, "failall.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_STR(answer_types(pkt), "A A AAAA");
		ldns_pkt_free(pkt);
	}
	/* Nothing available, failure_mode none: SERVFAIL, never forwarded. */
	len = make_query(query, 0x2206, RD, "down.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x2206, 2);
	len = make_query(query, 0x2207, RD, "servfail.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x2207, 2);
	/* No address at all: NODATA with the SOA. */
	len = make_query(query, 0x2208, RD, "empty.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_rcode(), 0);
	CHECK_INT(response_count(1), 0);
	CHECK_INT(response_count(2), 1);
	/* With EDNS: OPT back; too big for 512 bytes: TC. */
	len = make_query(query, 0x2209, RD, "www.example.com", T_ANY, C_IN);
	len = add_opt(query, len, 1232, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_count(1), 2);
	CHECK_INT(response_count(3), 1);
	len = make_query(query, 0x220a, RD, "many.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_flags() & TC, TC);
	CHECK_INT(response_count(1), 0);
	/* Other types, other names: forwarded as before. */
	len = make_query(query, 0x220b, RD, "other.example.com", T_ANY, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = make_query(query, 0x220c, RD, "www.example.com", T_TXT, 255);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = make_query(query, 0x220d, RD, "www.example.com", T_ANY, C_CH);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
}

static void
test_drop(void)
{
	uint8_t query[512];
	size_t len = make_query(query, 1, RD, "www.example.com", T_A, C_IN);

	CHECK_INT(ask(query, 0, 0), DNS_DROP);
	CHECK_INT(response_len, 0);
	CHECK_INT(ask(query, 11, 0), DNS_DROP);
	CHECK_INT(response_len, 0);
	/* A response (QR set) is never answered: no reflection loops. */
	set16(query + 2, QR | RD);
	CHECK_INT(ask(query, len, 0), DNS_DROP);
	CHECK_INT(ask(query, len, 1), DNS_DROP);
	CHECK_INT(response_len, 0);
	set16(query + 2, QR | AA | 0x2000);
	CHECK_INT(ask(query, len, 0), DNS_DROP);
}

static void
test_formerr(void)
{
	uint8_t query[1024];
	size_t len;

	/* Header only, QDCOUNT 0. */
	len = make_query(query, 0x4242, RD, "www.example.com", T_A, C_IN);
	set16(query + 4, 0);
	CHECK_INT(ask(query, 12, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4242, 1);
	CHECK_INT(response_flags() & (RD | RA), RD | RA);
	CHECK_INT(response_count(0), 0);
	CHECK_INT(response_len, 12);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);	/* question, QDCOUNT 0 */
	CHECK_ERROR_REPLY(0x4242, 1);

	/* QDCOUNT 2, with two questions. */
	len = make_query(query, 0x4343, RD, "www.example.com", T_A, C_IN);
	memcpy(query + len, query + 12, len - 12);
	len += len - 12;
	set16(query + 4, 2);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4343, 1);

	/* A question cut short, in the name and in type/class. */
	len = make_query(query, 0x4444, RD, "www.example.com", T_A, C_IN);
	CHECK_INT(ask(query, 12 + 6, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4444, 1);
	CHECK_INT(ask(query, len - 1, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4444, 1);
	CHECK_INT(ask(query, len - 4, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4444, 1);
	CHECK_INT(ask(query, 12 + 16, 0), DNS_REPLY);	/* name, no root */
	CHECK_ERROR_REPLY(0x4444, 1);

	/* A compression pointer in the question name. */
	len = make_query(query, 0x4545, RD, "www", T_A, C_IN);
	query[12 + 4] = 0xc0;	/* "www" then a pointer to offset 12 */
	query[12 + 5] = 12;
	set16(query + 12 + 6, T_A);
	set16(query + 12 + 8, C_IN);
	len = 12 + 10;
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4545, 1);
	query[12] = 0xc0;	/* the whole name a pointer */
	query[13] = 12;
	set16(query + 14, T_A);
	set16(query + 16, C_IN);
	CHECK_INT(ask(query, 18, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4545, 1);

	/* Extended label types (0x40, 0x80) and an overlong name. */
	len = make_query(query, 0x4646, RD, "www.example.com", T_A, C_IN);
	query[12] = 0x40;
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4646, 1);
	query[12] = 0x80 | 3;
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4646, 1);
	{
		char long_name[600];
		size_t at = 0;

		/* 5 labels of 60: 306 octets on the wire. */
		for (int i = 0; i < 5; i++) {
			if (i)
				long_name[at++] = '.';
			memset(long_name + at, 'a', 60);
			at += 60;
		}
		long_name[at] = '\0';
		len = make_query(query, 0x4747, RD, long_name, T_A, C_IN);
		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(0x4747, 1);
	}

	/* An OPT whose RDATA runs past the end, or a garbage record. */
	len = make_query(query, 0x4848, RD, "www.example.com", T_A, C_IN);
	len = add_opt(query, len, 4096, 0, 0);
	set16(query + len - 2, 20);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4848, 1);
	CHECK_INT(response_count(3), 0);
	len = make_query(query, 0x4949, RD, "www.example.com", T_A, C_IN);
	set16(query + 6, 1);
	memcpy(query + len, "\x03xyz", 4);
	CHECK_INT(ask(query, len + 4, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4949, 1);
	/* A record count with nothing behind it. */
	len = make_query(query, 0x4a4a, RD, "www.example.com", T_A, C_IN);
	set16(query + 10, 3);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x4a4a, 1);
}

static void
test_notimp(void)
{
	static const int opcodes[] = { 1, 2, 4, 5, 15 };
	uint8_t query[512];
	size_t len;

	for (size_t i = 0; i < sizeof(opcodes) / sizeof(opcodes[0]); i++) {
		uint16_t flags = (uint16_t)(opcodes[i] << 11 | RD);

		len = make_query(query, 0x5000, flags, "www.example.com", T_A,
				 C_IN);
		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(0x5000, 4);
		/* The opcode is echoed (RFC 1035 4.1.1). */
		CHECK_INT((response_flags() >> 11) & 0x0f, opcodes[i]);
		CHECK_INT(ask(query, len, 1), DNS_REPLY);
		CHECK_ERROR_REPLY(0x5000, 4);
	}
	/* NOTIFY of a name we do not have: still not forwarded. */
	len = make_query(query, 0x5001, 4 << 11, "other.example.com", T_SOA,
			 C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x5001, 4);
	/* STATUS without a question. */
	len = make_query(query, 0x5002, 2 << 11, "", T_A, C_IN);
	set16(query + 4, 0);
	CHECK_INT(ask(query, 12, 0), DNS_REPLY);
	CHECK(response_rcode() == 4 || response_rcode() == 1);
}

/*
 * RFC 6891 6.1.1: a request with OPT gets OPT back, errors included; and
 * a request with more than one OPT gets FORMERR.
 */
static void
test_edns_errors(void)
{
	uint8_t query[512];
	size_t len;

	len = make_query(query, 0x5100, (4 << 11) | RD, "www.example.com",
			 T_SOA, C_IN);
	len = add_opt(query, len, 4096, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x5100, 4);
	CHECK_INT(response_count(3), 1);

	len = make_query(query, 0x5101, RD, "www.example.com", T_A, C_IN);
	len = add_opt(query, len, 4096, 0, 0);
	len = add_opt(query, len, 1024, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x5101, 1);
}

/* Records in the other sections of a query: ldns reads it; still a query. */
static void
test_query_with_records(void)
{
	uint8_t query[512];
	size_t len;
	ldns_pkt *pkt;
	static const uint8_t a_record[] = {
		0xc0, 12, 0, T_A, 0, C_IN, 0, 0, 0, 60, 0, 4, 192, 0, 2, 99
	};

	/* An answer-section record (as a known-answer list would be). */
	len = make_query(query, 0x6000, RD, "www.example.com", T_A, C_IN);
	set16(query + 6, 1);
	memcpy(query + len, a_record, sizeof(a_record));
	len += sizeof(a_record);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(get16(response), 0x6000);
	CHECK_INT(response_flags(), QR | AA | RD | RA);
	CHECK_INT(response_count(1), 1);
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK_STR(answer_address(pkt, 0), "192.0.2.2");
		ldns_pkt_free(pkt);
	}

	/* An additional record and an OPT: the OPT is still seen. */
	len = make_query(query, 0x6001, RD, "www.example.com", T_A, C_IN);
	set16(query + 10, 1);
	memcpy(query + len, a_record, sizeof(a_record));
	len += sizeof(a_record);
	len = add_opt(query, len, 2048, 0, 1);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(client_limit, 2048);
	CHECK_INT(response_count(1), 1);
	CHECK_INT(response_count(3), 1);
	CHECK_INT(response[response_len - 11 + 7], 0x80);

	/* An authority record in a query for another name: forwarded. */
	len = make_query(query, 0x6002, RD, "other.example.com", T_A, C_IN);
	set16(query + 8, 1);
	memcpy(query + len, a_record, sizeof(a_record));
	len += sizeof(a_record);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
}

/* A TSIG record (RFC 8945) with an empty MAC: owner root, algorithm root. */
static size_t
add_tsig(uint8_t *out, size_t len)
{
	static const uint8_t tsig[] = {
		0, 0, 250, 0, 255, 0, 0, 0, 0, 0, 17,
		0, 0, 0, 0, 0, 0, 1, 1, 44, 0, 0, 0x12, 0x34, 0, 0, 0, 0
	};

	memcpy(out + len, tsig, sizeof(tsig));
	set16(out + 10, (uint16_t)(get16(out + 10) + 1));
	return len + sizeof(tsig);
}

/* The whole content of FILE into buffer; its length, or 0. */
static size_t
read_file(const char *file, uint8_t *buffer, size_t size)
{
	FILE *stream = fopen(file, "rb");
	size_t len;

	if (!stream)
		return 0;
	len = fread(buffer, 1, size, stream);
	fclose(stream);
	return len;
}

/*
 * TSIG: hard cannot verify it and does not need to; one, the last record,
 * is let through as before.  More than one, or one followed by anything,
 * is FORMERR (RFC 8945 5.1), decided without ldns_wire2pkt, whose 1.8.3
 * loses every TSIG but the last (run under SANITIZE=1 or valgrind, this
 * test would report the leak).
 */
static void
test_tsig(void)
{
	uint8_t query[1024];
	size_t len;
	static const char *const leaks[] = {
		"tests/fuzz/corpus/query/query-leak-1.bin",
		"tests/fuzz/corpus/query/query-leak-2.bin",
	};

	len = make_query(query, 0x7100, RD, "www.example.com", T_A, C_IN);
	len = add_tsig(query, len);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response_rcode(), 0);
	CHECK_INT(response_count(1), 1);

	len = make_query(query, 0x7101, RD, "www.example.com", T_A, C_IN);
	len = add_tsig(query, len);
	len = add_tsig(query, len);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x7101, 1);
	len = add_tsig(query, len);
	CHECK_INT(ask(query, len, 1), DNS_REPLY);
	CHECK_ERROR_REPLY(0x7101, 1);

	/* A TSIG, then an OPT: the TSIG is not last. */
	len = make_query(query, 0x7102, RD, "other.example.com", T_A, C_IN);
	len = add_tsig(query, len);
	len = add_opt(query, len, 1232, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_ERROR_REPLY(0x7102, 1);
	/* An OPT, then a TSIG: fine, and forwarded for another name. */
	len = make_query(query, 0x7103, RD, "other.example.com", T_A, C_IN);
	len = add_opt(query, len, 1232, 0, 0);
	len = add_tsig(query, len);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	CHECK_INT(client_limit, 1232);

	/* What the fuzzer found: FORMERR, and nothing left behind. */
	for (size_t i = 0; i < sizeof(leaks) / sizeof(leaks[0]); i++) {
		len = read_file(leaks[i], query, sizeof(query));
		if (!CHECK(len > 12)) {
			fprintf(stderr, "    cannot read %s (run from the top)\n",
				leaks[i]);
			continue;
		}
		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_INT(response_rcode(), 1);
		CHECK_INT(ask(query, len, 1), DNS_REPLY);
	}
}

/*
 * Appends an OPT record with the given owner (wire form) and RDATA to the
 * section whose count is at header offset count_at; returns the new length.
 */
static size_t
add_raw_opt(uint8_t *out, size_t len, int count_at, const uint8_t *owner,
	    size_t owner_len, const uint8_t *rdata, uint16_t rdlen)
{
	memcpy(out + len, owner, owner_len);
	len += owner_len;
	memset(out + len, 0, 10);
	set16(out + len, T_OPT);
	set16(out + len + 2, 1232);
	set16(out + len + 8, rdlen);
	len += 10;
	if (rdlen > 0)	/* memcpy's source may not be NULL, even for 0 bytes */
		memcpy(out + len, rdata, rdlen);
	set16(out + count_at, (uint16_t)(get16(out + count_at) + 1));
	return len + rdlen;
}

/* The query for name with one OPT as described; its length. */
static size_t
opt_query(uint8_t *query, uint16_t id, const char *name, int count_at,
	  const uint8_t *owner, size_t owner_len, const uint8_t *rdata,
	  uint16_t rdlen)
{
	size_t len = make_query(query, id, RD, name, T_A, C_IN);

	return add_raw_opt(query, len, count_at, owner, owner_len, rdata, rdlen);
}

/*
 * RFC 6891 6.1.1 and 6.1.2: an OPT owned by another name than the root,
 * with an option that overruns its RDATA, or in another section than the
 * additional one is malformed; so are bytes after the last record.  Each
 * is FORMERR, without an OPT in the reply (the query's cannot be trusted),
 * whether hard answers the name or would forward it.
 */
static void
test_malformed_edns(void)
{
	static const char *const names[] = { "www.example.com", "other.example.com" };
	static const uint8_t root[] = { 0 }, not_root[] = { 1, 'x', 0 };
	static const uint8_t cookie[] = { 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8 };
	static const uint8_t overrun[] = { 0, 10, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8 };
	static const uint8_t half_header[] = { 0, 10, 0, 0, 0, 12 };
	static const uint8_t empty_option[] = { 0, 12, 0, 0 };
	uint8_t query[512];
	size_t len;

	for (size_t i = 0; i < 2; i++) {
		uint16_t id = (uint16_t)(0x6100 + 0x10 * i);

		/* Well formed, with options: answered or forwarded. */
		len = opt_query(query, id, names[i], 10, root, 1, cookie,
				sizeof(cookie));
		CHECK_INT(ask(query, len, 0), i == 0 ? DNS_REPLY : DNS_FORWARD);
		len = opt_query(query, id, names[i], 10, root, 1, empty_option,
				sizeof(empty_option));
		CHECK_INT(ask(query, len, 0), i == 0 ? DNS_REPLY : DNS_FORWARD);
		if (i == 0)
			CHECK_INT(response_rcode(), 0);

		len = opt_query(query, id + 1, names[i], 10, not_root,
				sizeof(not_root), NULL, 0);
		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 1, 1);
		CHECK_INT(response_count(3), 0);

		len = opt_query(query, id + 2, names[i], 10, root, 1, overrun,
				sizeof(overrun));
		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 2, 1);
		CHECK_INT(response_count(3), 0);
		len = opt_query(query, id + 3, names[i], 10, root, 1, half_header,
				sizeof(half_header));
		CHECK_INT(ask(query, len, 1), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 3, 1);

		/* In the answer and in the authority section. */
		len = opt_query(query, id + 4, names[i], 6, root, 1, NULL, 0);
		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 4, 1);
		len = opt_query(query, id + 5, names[i], 8, root, 1, NULL, 0);
		CHECK_INT(ask(query, len, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 5, 1);

		/* Bytes after the question, after the OPT, after a TSIG. */
		len = make_query(query, id + 6, RD, names[i], T_A, C_IN);
		memcpy(query + len, "\0\0\0", 3);
		CHECK_INT(ask(query, len + 3, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 6, 1);
		CHECK_INT(ask(query, len + 1, 1), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 6, 1);
		len = opt_query(query, id + 7, names[i], 10, root, 1, cookie,
				sizeof(cookie));
		query[len] = 0;
		CHECK_INT(ask(query, len + 1, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 7, 1);
		len = make_query(query, id + 8, RD, names[i], T_A, C_IN);
		len = add_tsig(query, len);
		memcpy(query + len, "junk", 4);
		CHECK_INT(ask(query, len + 4, 0), DNS_REPLY);
		CHECK_ERROR_REPLY(id + 8, 1);
	}
	/* OPT as the question's type is a question, not a record. */
	len = make_query(query, 0x6120, RD, "other.example.com", T_OPT, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_FORWARD);
	len = add_opt(query, len, 1232, 0, 0);
	set16(query + 10, 0);
	set16(query + 6, 0);
	set16(query + 4, 1);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);	/* the OPT, uncounted */
	CHECK_ERROR_REPLY(0x6120, 1);
}

/* ---------------------------------------------------- reply utilities */

static void
test_truncate_reply(void)
{
	uint8_t query[512], reply[2048], copy[2048];
	size_t len, reply_len, cut;

	/* An upstream-sized reply: the 40 records of many, over TCP. */
	len = make_query(query, 0x7000, RD, "Many.Example.Com", T_A, C_IN);
	CHECK_INT(ask(query, len, 1), DNS_REPLY);
	reply_len = response_len;
	memcpy(reply, response, reply_len);
	CHECK(reply_len > 512);

	memcpy(copy, reply, reply_len);
	CHECK_INT(dns_truncate_reply(copy, reply_len, reply_len, 1), reply_len);
	CHECK(memcmp(copy, reply, reply_len) == 0);
	CHECK_INT(dns_truncate_reply(copy, reply_len, 4096, 1), reply_len);

	cut = dns_truncate_reply(copy, reply_len, 512, 0);
	CHECK_INT(cut, len);
	CHECK_INT(get16(copy), 0x7000);
	CHECK_INT(get16(copy + 2), get16(reply + 2) | TC);
	CHECK_INT(get16(copy + 4), 1);
	CHECK_INT(get16(copy + 6), 0);
	CHECK_INT(get16(copy + 8), 0);
	CHECK_INT(get16(copy + 10), 0);
	CHECK(memcmp(copy + 12, query + 12, len - 12) == 0);

	/* No question to keep: the header alone. */
	memcpy(copy, reply, reply_len);
	set16(copy + 4, 0);
	cut = dns_truncate_reply(copy, reply_len, 512, 0);
	CHECK_INT(cut, 12);
	CHECK_INT(get16(copy + 2) & TC, TC);
	CHECK_INT(get16(copy + 4), 0);
	CHECK_INT(get16(copy + 6), 0);

	/* A question that does not parse: the header alone. */
	memcpy(copy, reply, reply_len);
	copy[12] = 0xc0;
	cut = dns_truncate_reply(copy, reply_len, 512, 0);
	CHECK_INT(cut, 12);
	CHECK_INT(get16(copy + 4), 0);

	/* No OPT from upstream, but the client's limit shows it sent one:
	 * hard's own OPT (RFC 6891 section 7). */
	memcpy(copy, reply, reply_len);
	cut = dns_truncate_reply(copy, reply_len, 600, 1);
	CHECK_INT(cut, len + 11);
	CHECK_INT(get16(copy + 10), 1);
	CHECK_INT(copy[len], 0);
	CHECK_INT(get16(copy + len + 1), T_OPT);
	CHECK_INT(get16(copy + len + 3), DNS_EDNS_ADVERTISED);
	CHECK_INT(get16(copy + len + 9), 0);

	/* A client that sent OPT with a size of 512 gets it too. */
	memcpy(copy, reply, reply_len);
	cut = dns_truncate_reply(copy, reply_len, 512, 1);
	CHECK_INT(cut, len + 11);
	CHECK_INT(get16(copy + 10), 1);
	CHECK_INT(get16(copy + len + 1), T_OPT);
}

/* The upstream's OPT survives truncation, options and all. */
static void
test_truncate_keeps_opt(void)
{
	uint8_t query[512], reply[2048], copy[2048];
	size_t len, reply_len, cut, opt_at;
	ldns_pkt *pkt;
	static const uint8_t cookie_opt[] = {
		0, 0, T_OPT, 0x10, 0x00, 0, 0, 0x80, 0,	/* 4096, DO */
		0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8
	};

	len = make_query(query, 0x7300, RD, "many.example.com", T_A, C_IN);
	len = add_opt(query, len, 4096, 0, 1);
	CHECK_INT(ask(query, len, 1), DNS_REPLY);
	CHECK(response_len > 600);
	/* As an upstream would send it: its own OPT, with a cookie. */
	reply_len = response_len - 11;
	memcpy(reply, response, reply_len);
	memcpy(reply + reply_len, cookie_opt, sizeof(cookie_opt));
	reply_len += sizeof(cookie_opt);
	opt_at = len - 11;

	memcpy(copy, reply, reply_len);
	cut = dns_truncate_reply(copy, reply_len, 600, 1);
	CHECK_INT(cut, opt_at + sizeof(cookie_opt));
	CHECK_INT(get16(copy + 2) & TC, TC);
	CHECK_INT(get16(copy + 4), 1);
	CHECK_INT(get16(copy + 6), 0);
	CHECK_INT(get16(copy + 8), 0);
	CHECK_INT(get16(copy + 10), 1);
	CHECK(memcmp(copy + opt_at, cookie_opt, sizeof(cookie_opt)) == 0);
	memcpy(response, copy, cut);
	response_len = cut;
	pkt = parse_response();
	if (CHECK(pkt != NULL)) {
		CHECK(ldns_pkt_edns(pkt));
		CHECK_INT(ldns_pkt_edns_udp_size(pkt), 4096);
		CHECK(ldns_pkt_edns_do(pkt));
		CHECK_INT(ldns_pkt_ancount(pkt), 0);
		ldns_pkt_free(pkt);
	}

	/* At 512 bytes, too: the OPT is small. */
	memcpy(copy, reply, reply_len);
	CHECK_INT(dns_truncate_reply(copy, reply_len, 512, 0),
		  opt_at + sizeof(cookie_opt));

	/* Options that do not fit the limit: the OPT without them. */
	memcpy(copy, reply, reply_len);
	cut = dns_truncate_reply(copy, reply_len, opt_at + 20, 1);
	CHECK_INT(cut, opt_at + 11);
	CHECK(memcmp(copy + opt_at, cookie_opt, 9) == 0);
	CHECK_INT(get16(copy + opt_at + 9), 0);
	CHECK_INT(get16(copy + 10), 1);

	/* hard's own answers, cut the same way, keep their OPT. */
	len = make_query(query, 0x7301, RD, "many.example.com", T_A, C_IN);
	len = add_opt(query, len, 4096, 0, 0);
	CHECK_INT(ask(query, len, 1), DNS_REPLY);
	reply_len = response_len;
	memcpy(copy, response, reply_len);
	cut = dns_truncate_reply(copy, reply_len, 512, 0);
	CHECK_INT(cut, len);
	CHECK(memcmp(copy + len - 11, response + reply_len - 11, 11) == 0);
}

/* The 12-bit rcode of RFC 6891 section 6.1.3, and its name. */
static void
test_reply_rcode(void)
{
	uint8_t query[512], copy[2048];
	size_t len, opt_at;

	/* hard's own BADVERS: 0 in the header, 1 in the OPT's TTL. */
	len = make_query(query, 0x7400, RD, "www.example.com", T_A, C_IN);
	len = add_opt(query, len, 1232, 1, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(response[3] & 0x0f, 0);
	CHECK_INT(dns_reply_rcode(response, response_len), 16);
	CHECK_STR(dns_rcode_name(16), "BADVERS");

	/* Without OPT, the header's four bits. */
	len = make_query(query, 0x7401, RD, "servfail.example.com", T_A, C_IN);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	CHECK_INT(dns_reply_rcode(response, response_len), 2);
	CHECK_INT(dns_reply_rcode(response, 11), 0);

	/* The OPT's upper eight bits, after an answer section. */
	len = make_query(query, 0x7402, RD, "www.example.com", T_A, C_IN);
	len = add_opt(query, len, 1232, 0, 0);
	CHECK_INT(ask(query, len, 0), DNS_REPLY);
	memcpy(copy, response, response_len);
	opt_at = response_len - 11;
	copy[3] |= 0x05;
	copy[opt_at + 5] = 0xff;
	CHECK_INT(dns_reply_rcode(copy, response_len), 0xff5);
	CHECK(dns_rcode_name(0xff5) == NULL);
	CHECK_STR(dns_rcode_name(0), "NOERROR");
	CHECK_STR(dns_rcode_name(23), "BADCOOKIE");
	CHECK(dns_rcode_name(24) == NULL);
	CHECK(dns_rcode_name(-1) == NULL);
}

static void
test_error_reply(void)
{
	uint8_t query[512], reply[512];
	size_t len, reply_len;

	len = make_query(query, 0x8000, RD, "Other.Example.Com", T_A, C_IN);
	reply_len = dns_error_reply(query, len, 2, reply, sizeof(reply));
	CHECK_INT(reply_len, len);
	CHECK_INT(get16(reply), 0x8000);
	CHECK_INT(get16(reply + 2), QR | RD | RA | 2);
	CHECK_INT(get16(reply + 4), 1);
	CHECK_INT(get16(reply + 6), 0);
	CHECK_INT(get16(reply + 8), 0);
	CHECK_INT(get16(reply + 10), 0);
	CHECK(memcmp(reply + 12, query + 12, len - 12) == 0);

	/* With EDNS: OPT back. */
	len = add_opt(query, len, 4096, 0, 1);
	reply_len = dns_error_reply(query, len, 2, reply, sizeof(reply));
	CHECK_INT(reply_len, len);
	CHECK_INT(get16(reply + 10), 1);
	CHECK_INT(get16(reply + reply_len - 11 + 1), T_OPT);
	CHECK_INT(get16(reply + reply_len - 11 + 3), 1232);
	CHECK_INT(reply[reply_len - 11 + 7], 0x80);

	/* RD clear stays clear. */
	len = make_query(query, 0x8001, 0, "other.example.com", T_A, C_IN);
	reply_len = dns_error_reply(query, len, 2, reply, sizeof(reply));
	CHECK_INT(get16(reply + 2), QR | RA | 2);

	/* Nothing to reply to: too short, or a response. */
	CHECK_INT(dns_error_reply(query, 11, 2, reply, sizeof(reply)), 0);
	set16(query + 2, QR);
	CHECK_INT(dns_error_reply(query, len, 2, reply, sizeof(reply)), 0);
	/* A buffer too small for the reply. */
	len = make_query(query, 0x8002, 0, "other.example.com", T_A, C_IN);
	CHECK_INT(dns_error_reply(query, len, 2, reply, 20), 0);
	CHECK_INT(dns_error_reply(query, len, 2, reply, len), len);
	/* An unparseable query: the header with the rcode. */
	set16(query + 4, 0);
	reply_len = dns_error_reply(query, len, 2, reply, sizeof(reply));
	CHECK_INT(reply_len, 12);
	CHECK_INT(get16(reply), 0x8002);
	CHECK_INT(get16(reply + 2) & 0x0f, 2);
}

/* A reply too big for the buffer it is written into never overruns it. */
static void
test_small_buffer(void)
{
	uint8_t query[512], small[64];
	size_t len, got, limit;

	memset(small, 0xee, sizeof(small));
	len = make_query(query, 0x9000, RD, "many.example.com", T_A, C_IN);
	CHECK_INT(dns_answer(registry, query, len, 1, small, 40, &got, &limit),
		  DNS_REPLY);
	CHECK(got <= 40);
	CHECK_INT(small[40], 0xee);
	if (got > 0)
		CHECK_INT(get16(small + 2) & TC, TC);
	/* Not even room for a header and question: no reply. */
	CHECK(dns_answer(registry, query, len, 1, small, 20, &got, &limit) ==
	      DNS_DROP || got <= 20);
	CHECK_INT(small[40], 0xee);
}

int
main(void)
{
	if (!CHECK(setup()))
		return UNIT_SUMMARY();
	RUN(test_answer_a);
	RUN(test_answer_aaaa);
	RUN(test_nodata);
	RUN(test_forward);
	RUN(test_edns);
	RUN(test_truncation);
	RUN(test_rotation);
	RUN(test_failure_modes);
	RUN(test_query_counter);
	RUN(test_any);
	RUN(test_drop);
	RUN(test_formerr);
	RUN(test_notimp);
	RUN(test_edns_errors);
	RUN(test_query_with_records);
	RUN(test_tsig);
	RUN(test_malformed_edns);
	RUN(test_truncate_reply);
	RUN(test_truncate_keeps_opt);
	RUN(test_reply_rcode);
	RUN(test_error_reply);
	RUN(test_small_buffer);
	registry_free(registry);
	config_free(config);
	return UNIT_SUMMARY();
}
