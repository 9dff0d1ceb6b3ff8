/*
 * querylog.c - the query log: when it is on, one line per query saying
 * who asked (address, port, transport), what (name, type) and what hard
 * did (answered with which addresses, NODATA, which failure_mode, forwarded
 * and the upstream's rcode, SERVFAIL, dropped and why).
 *
 * It is on with -d or log_queries, and SIGUSR1 turns it on and off.  Off,
 * the answer path pays one test of query_log_enabled per query: every
 * bit of formatting happens here, only for a query that is logged.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <ldns/ldns.h>

#include "har.h"

int query_log_enabled;

void
query_log_set(int on, const char *why)
{
	if (query_log_enabled == on)
		return;
	query_log_enabled = on;
	log_info("query log %s (%s)", on ? "on" : "off", why);
}

void
query_log_toggle(void)
{
	query_log_set(!query_log_enabled, "SIGUSR1");
}

static void
format_client(const struct sockaddr_storage *client, char *out, size_t size)
{
	char text[INET6_ADDRSTRLEN] = "?";

	if (!client) {
		snprintf(out, size, "?");
		return;
	}
	if (client->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)client;

		inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
		snprintf(out, size, "%s:%u", text, ntohs(in->sin_port));
		return;
	}
	if (client->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)client;

		inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
		snprintf(out, size, "[%s]:%u", text, ntohs(in6->sin6_port));
		return;
	}
	snprintf(out, size, "?");
}

/* Appends src to out (of size bytes, holding *used), cutting if needed. */
static void
append(char *out, size_t size, size_t *used, const char *src)
{
	size_t len = strlen(src);

	if (*used + 1 >= size)
		return;
	if (len > size - *used - 1)
		len = size - *used - 1;
	memcpy(out + *used, src, len);
	*used += len;
	out[*used] = '\0';
}

/*
 * A type by its mnemonic.  ldns's table describes record types only, so
 * the types that exist only in questions (RFC 1035 section 3.2.3, RFC
 * 1995) would read TYPE255; the rest, and TYPEnnn for an unknown one
 * (RFC 3597), come from ldns without allocating.
 */
static void
format_type(uint16_t qtype, char *type, size_t type_size)
{
	static const struct {
		uint16_t number;
		const char *name;
	} question_types[] = {
		{ 251, "IXFR" }, { 252, "AXFR" }, { 253, "MAILB" },
		{ 254, "MAILA" }, { 255, "ANY" },
	};
	const ldns_rr_descriptor *descriptor;

	for (size_t i = 0; i < sizeof(question_types) / sizeof(question_types[0]);
	     i++) {
		if (question_types[i].number == qtype) {
			snprintf(type, type_size, "%s", question_types[i].name);
			return;
		}
	}
	descriptor = ldns_rr_descript(qtype);
	if (descriptor && descriptor->_name)
		snprintf(type, type_size, "%s", descriptor->_name);
	else
		snprintf(type, type_size, "TYPE%u", qtype);
}

/*
 * The question's name in presentation form (bytes outside printable ASCII,
 * dots and backslashes escaped as \DDD) and its type.  Returns the offset
 * after the question, or 0 when the packet has none that can be read.
 */
static size_t
read_question(const uint8_t *packet, size_t len, char *name, size_t name_size,
	      char *type, size_t type_size)
{
	size_t at = 12, used = 0;
	uint16_t qtype;

	if (len < 12 || (packet[4] << 8 | packet[5]) == 0)
		return 0;
	name[0] = '\0';
	while (at < len && packet[at] != 0) {
		size_t label = packet[at];

		if (label > 63 || at + 1 + label >= len)
			return 0;	/* a pointer or a cut label: no question */
		for (size_t i = 1; i <= label; i++) {
			uint8_t c = packet[at + i];
			char escaped[8];

			if (c > 0x20 && c < 0x7f && c != '.' && c != '\\')
				snprintf(escaped, sizeof(escaped), "%c", c);
			else
				snprintf(escaped, sizeof(escaped), "\\%03u", c);
			append(name, name_size, &used, escaped);
		}
		append(name, name_size, &used, ".");
		at += 1 + label;
	}
	if (at + 5 > len)
		return 0;
	if (used == 0)
		append(name, name_size, &used, ".");
	qtype = (uint16_t)(packet[at + 1] << 8 | packet[at + 2]);
	format_type(qtype, type, type_size);
	return at + 5;
}

/*
 * The question's name in presentation form (bytes outside printable ASCII,
 * dots and backslashes escaped as \DDD) and its type, or "-" for both.
 * Returns the offset after the question, or 0 when there is none to read.
 */
static size_t
format_question(const uint8_t *packet, size_t len, char *name, size_t name_size,
		char *type, size_t type_size)
{
	size_t end = read_question(packet, len, name, name_size, type, type_size);

	if (end == 0) {
		snprintf(name, name_size, "-");
		snprintf(type, type_size, "-");
	}
	return end;
}

/* Skips a (possibly compressed) name; 0 when it runs off the packet. */
static size_t
skip_name(const uint8_t *packet, size_t len, size_t at)
{
	while (at < len) {
		if ((packet[at] & 0xc0) == 0xc0)
			return at + 2 <= len ? at + 2 : 0;
		if (packet[at] == 0)
			return at + 1;
		at += 1 + (size_t)packet[at];
	}
	return 0;
}

/* The A and AAAA addresses of a reply's answer section, comma separated. */
static void
format_addresses(const uint8_t *reply, size_t len, size_t at, char *out,
		 size_t size)
{
	unsigned answers = len >= 12 ? (unsigned)(reply[6] << 8 | reply[7]) : 0;
	size_t used = 0;

	out[0] = '\0';
	for (unsigned i = 0; i < answers && at; i++) {
		char text[INET6_ADDRSTRLEN];
		uint16_t type, rdlength;

		at = skip_name(reply, len, at);
		if (!at || at + 10 > len)
			return;
		type = (uint16_t)(reply[at] << 8 | reply[at + 1]);
		rdlength = (uint16_t)(reply[at + 8] << 8 | reply[at + 9]);
		at += 10;
		if (at + rdlength > len)
			return;
		if ((type == 1 && rdlength == 4) || (type == 28 && rdlength == 16)) {
			inet_ntop(type == 1 ? AF_INET : AF_INET6, reply + at, text,
				  sizeof(text));
			if (used)
				append(out, size, &used, ", ");
			append(out, size, &used, text);
		}
		at += rdlength;
	}
}

/* An rcode by name, or RCODEn for one without a name. */
static const char *
rcode_number_text(int rcode, char *buffer, size_t size)
{
	const char *name = dns_rcode_name(rcode);

	if (name)
		return name;
	snprintf(buffer, size, "RCODE%d", rcode);
	return buffer;
}

/* The reply's 12-bit rcode (RFC 6891 section 6.1.3), by name. */
static const char *
rcode_text(const uint8_t *reply, size_t reply_len, char *buffer, size_t size)
{
	return rcode_number_text(dns_reply_rcode(reply, reply_len), buffer, size);
}

static const char *
outcome_text(enum dns_outcome outcome)
{
	switch (outcome) {
	case OUTCOME_ANSWERED: return "answered";
	case OUTCOME_NODATA: return "NODATA";
	case OUTCOME_FAILURE_ALL: return "no address available, failure_mode all";
	case OUTCOME_FAILURE_SERVFAIL: return "no address available, failure_mode servfail";
	case OUTCOME_FAILURE_FORWARD: return "no address available, failure_mode none, forwarded";
	case OUTCOME_NO_ADDRESS: return "no address available";
	case OUTCOME_FORWARD: return "forwarded";
	case OUTCOME_ERROR: return "refused as malformed or unsupported";
	case OUTCOME_DROP_SHORT: return "dropped: shorter than a DNS header";
	case OUTCOME_DROP_RESPONSE: return "dropped: a response (QR set), not a query";
	}
	return "?";
}

/*
 * One line for a query: what hard did with it, and the reply the client
 * got (NULL: none, or for a forwarded query, SERVFAIL after no upstream
 * reply).
 */
void
query_log_write(const struct sockaddr_storage *client, int over_tcp,
		const uint8_t *query, size_t query_len, enum dns_outcome outcome,
		const uint8_t *reply, size_t reply_len)
{
	char who[INET6_ADDRSTRLEN + 16], name[4 * DNS_MAX_NAME + 2], type[24];
	char found[512], scratch_name[sizeof(name)], scratch_type[sizeof(type)];
	char rcode[16], upstream_rcode[16];
	const char *transport = over_tcp ? "TCP" : "UDP";
	int forwarded = outcome == OUTCOME_FORWARD ||
	    outcome == OUTCOME_FAILURE_FORWARD;
	size_t after_question;

	format_client(client, who, sizeof(who));
	format_question(query, query_len, name, sizeof(name), type, sizeof(type));
	if (outcome == OUTCOME_DROP_SHORT || outcome == OUTCOME_DROP_RESPONSE || !reply) {
		log_query("query %s %s %s %s: %s%s", who, transport, name, type,
			 outcome_text(outcome),
			 forwarded ? ": no upstream reply, SERVFAIL" : "");
		return;
	}
	if (reply_len < 12) {
		log_query("query %s %s %s %s: %s", who, transport, name, type,
			 outcome_text(outcome));
		return;
	}
	/* The reply's own question tells where its answer section starts. */
	after_question = format_question(reply, reply_len, scratch_name,
					 sizeof(scratch_name), scratch_type,
					 sizeof(scratch_type));
	format_addresses(reply, reply_len, after_question, found, sizeof(found));
	if (forwarded && relay_last.rewritten) {
		log_query("query %s %s %s %s: %s: upstream %s, rewritten for %s: "
			  "%s%s%s%s", who, transport, name, type,
			  outcome_text(outcome),
			  rcode_number_text(relay_last.upstream_rcode, upstream_rcode,
					    sizeof(upstream_rcode)),
			  relay_last.name ? relay_last.name : "?",
			  rcode_text(reply, reply_len, rcode, sizeof(rcode)),
			  found[0] ? " " : "", found,
			  (reply[2] & 0x02) ? ", truncated" : "");
		return;
	}
	if (forwarded) {
		log_query("query %s %s %s %s: %s: upstream %s%s", who, transport,
			  name, type, outcome_text(outcome),
			  rcode_text(reply, reply_len, rcode, sizeof(rcode)),
			  (reply[2] & 0x02) ? ", truncated" : "");
		return;
	}
	log_query("query %s %s %s %s: %s: %s%s%s", who, transport, name, type,
		  outcome_text(outcome),
		  rcode_text(reply, reply_len, rcode, sizeof(rcode)),
		 found[0] ? " " : "", found);
}
