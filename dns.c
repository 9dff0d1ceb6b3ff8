/*
 * dns.c - the answer path: query bytes in, response bytes out.
 *
 * Nearly every query is a header, one question and at most one OPT
 * record.  Those are read straight off the wire and answered by writing
 * bytes into the caller's buffer: no allocation, no copy of the packet.
 * Anything shaped differently has each of its records read by ldns,
 * which decides between FORMERR and forwarding.  The addresses to answer
 * with were chosen ahead of time by select.c, so answering is copying.
 * Upstream replies too big for a UDP client are cut here too.
 */
#include <string.h>

#include <ldns/ldns.h>

#include "har.h"

#define DNS_HEADER_SIZE 12
#define DNS_TYPE_A 1
#define DNS_TYPE_SOA 6
#define DNS_TYPE_AAAA 28
#define DNS_TYPE_OPT 41
#define DNS_TYPE_ANY 255
#define DNS_CLASS_IN 1
#define DNS_CLASS_ANY 255

#define FLAG_QR 0x8000
#define FLAG_AA 0x0400
#define FLAG_TC 0x0200
#define FLAG_RD 0x0100
#define FLAG_RA 0x0080
#define OPCODE_MASK 0x7800

#define RCODE_FORMERR 1
#define RCODE_SERVFAIL 2
#define RCODE_NOTIMP 4
#define RCODE_BADVERS 16

/* What the answer path needs to know of a query. */
struct query {
	uint16_t id;
	uint16_t flags;
	const uint8_t *question;	/* in the packet, the client's case */
	size_t question_len;		/* name + type + class */
	uint8_t lower_name[DNS_MAX_NAME + 1];
	int name_len;
	uint16_t type;
	uint16_t class;
	int has_opt;
	uint16_t udp_size;
	uint8_t edns_version;
	int dnssec_ok;
};

static inline void
write32(uint8_t *p, uint32_t value)
{
	write16(p, (uint16_t)(value >> 16));
	write16(p + 2, (uint16_t)value);
}

/*
 * Reads the question name into q->lower_name.  Compression cannot occur
 * in the first name of a packet (there is nothing before it to point at),
 * so a pointer here means a malformed query.
 */
static int
parse_question_name(const uint8_t *packet, size_t len, size_t *offset,
		    struct query *q)
{
	size_t at = *offset;
	int out = 0;

	for (;;) {
		uint8_t label_len;

		if (at >= len)
			return -1;
		label_len = packet[at++];
		if (label_len == 0)
			break;
		if (label_len > 63 || at + label_len > len ||
		    out + 1 + label_len + 1 > DNS_MAX_NAME)
			return -1;
		q->lower_name[out++] = label_len;
		for (int i = 0; i < label_len; i++) {
			uint8_t c = packet[at++];

			q->lower_name[out++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
		}
	}
	q->lower_name[out++] = 0;
	q->name_len = out;
	*offset = at;
	return 0;
}

/*
 * An OPT's RDATA is a run of options, each a code, a length and that many
 * bytes (RFC 6891 6.1.2); one that runs past the RDATA, or a few bytes
 * too short to be an option, make the OPT malformed.
 */
static int
opt_options_fit(const uint8_t *rdata, size_t rdlen)
{
	size_t at = 0;

	while (at < rdlen) {
		if (rdlen - at < 4)
			return 0;
		at += 4 + (size_t)read16(rdata + at + 2);
	}
	return at == rdlen;
}

/*
 * An OPT record at offset, the only additional record and the end of the
 * packet: the common case.  Anything else (another owner than the root,
 * options that overrun, bytes after it) is left to parse_with_ldns to
 * judge.
 */
static int
parse_opt(const uint8_t *packet, size_t len, size_t offset, struct query *q)
{
	uint16_t rdlen;

	if (offset + 11 > len || packet[offset] != 0 ||
	    read16(packet + offset + 1) != DNS_TYPE_OPT)
		return -1;
	rdlen = read16(packet + offset + 9);
	if (offset + 11 + rdlen != len ||
	    !opt_options_fit(packet + offset + 11, rdlen))
		return -1;
	q->has_opt = 1;
	q->udp_size = read16(packet + offset + 3);
	q->edns_version = packet[offset + 6];
	q->dnssec_ok = (packet[offset + 7] & 0x80) != 0;
	return 0;
}

/* Steps over a (possibly compressed) name; 0 past the end. */
static size_t
skip_name(const uint8_t *packet, size_t len, size_t at)
{
	while (at < len) {
		uint8_t label_len = packet[at];

		if ((label_len & 0xc0) == 0xc0)
			return at + 2 <= len ? at + 2 : 0;
		if (label_len == 0)
			return at + 1;
		at += 1 + (size_t)label_len;
	}
	return 0;
}

/* The EDNS fields of an OPT record ldns has read. */
static void
read_opt_record(const ldns_rr *rr, struct query *q)
{
	uint32_t ttl = ldns_rr_ttl(rr);

	q->has_opt = 1;
	q->udp_size = (uint16_t)ldns_rr_get_class(rr);
	q->edns_version = (uint8_t)(ttl >> 16);
	q->dnssec_ok = (ttl & 0x8000) != 0;
}

/*
 * An OPT record ldns has read, from start to end in the packet: only in
 * the additional section, owned by the root, its options within its RDATA
 * (RFC 6891 6.1.1, 6.1.2).
 */
static int
opt_well_formed(const uint8_t *packet, size_t start, size_t end,
		const ldns_rr *rr, int additional)
{
	size_t rdata = skip_name(packet, end, start) + 10;
	size_t rdlen = read16(packet + rdata - 2);

	return additional && ldns_dname_label_count(ldns_rr_owner(rr)) == 0 &&
	    rdata + rdlen == end && opt_options_fit(packet + rdata, rdlen);
}

/*
 * Anything unusual: ldns reads every record of the packet, one at a time,
 * and each is freed as soon as it has been looked at.  Not ldns_wire2pkt:
 * the ldns of Debian 12 (1.8.3) loses every TSIG record of a packet but
 * the last, 73 bytes for each packet anyone sends with two.  Reading the
 * records with ldns_wire2rr keeps ldns's judgement of what is well formed
 * (and its record boundaries) without that leak.  Malformed, so FORMERR
 * before any forwarding: more than one OPT (RFC 6891 6.1.1), an OPT
 * outside the additional section, not owned by the root or with options
 * past its RDATA (6.1.2), more than one TSIG, a TSIG that is not the last
 * record (RFC 8945 5.1), and bytes after the records the header counts.
 * The question's QTYPE may be OPT: that is a question, not a record.
 */
static int
parse_with_ldns(const uint8_t *packet, size_t len, struct query *q)
{
	static const ldns_pkt_section sections[] = {
		LDNS_SECTION_QUESTION, LDNS_SECTION_ANSWER,
		LDNS_SECTION_AUTHORITY, LDNS_SECTION_ADDITIONAL,
	};
	size_t at = DNS_HEADER_SIZE;
	int opts = 0, after_tsig = 0;

	for (int section = 0; section < 4; section++) {
		int count = read16(packet + 4 + 2 * section);
		int additional = sections[section] == LDNS_SECTION_ADDITIONAL;

		for (int i = 0; i < count; i++) {
			ldns_rr *rr = NULL;
			ldns_rr_type type;
			size_t start = at;
			int well_formed = 1;

			if (after_tsig ||
			    ldns_wire2rr(&rr, packet, len, &at,
					 sections[section]) != LDNS_STATUS_OK)
				return -1;
			type = ldns_rr_get_type(rr);
			if (sections[section] != LDNS_SECTION_QUESTION &&
			    type == LDNS_RR_TYPE_OPT) {
				well_formed = opt_well_formed(packet, start, at,
							      rr, additional);
				if (well_formed)
					read_opt_record(rr, q);
				opts++;
			}
			after_tsig = additional && type == LDNS_RR_TYPE_TSIG;
			ldns_rr_free(rr);
			if (!well_formed)
				return -1;
		}
	}
	return opts > 1 || at != len ? -1 : 0;
}

/* 0: parsed; else the rcode to answer with (-1: drop silently). */
static int
parse_query(const uint8_t *packet, size_t len, struct query *q)
{
	size_t offset = DNS_HEADER_SIZE;
	uint16_t ancount, nscount, arcount;
	int parsed;

	if (len < DNS_HEADER_SIZE)
		return -1;
	q->id = read16(packet);
	q->flags = read16(packet + 2);
	q->question = NULL;
	q->question_len = 0;
	q->has_opt = 0;
	if (q->flags & FLAG_QR)
		return -1;
	if (read16(packet + 4) == 1 &&
	    parse_question_name(packet, len, &offset, q) == 0 &&
	    offset + 4 <= len) {
		q->type = read16(packet + offset);
		q->class = read16(packet + offset + 2);
		q->question = packet + DNS_HEADER_SIZE;
		q->question_len = offset + 4 - DNS_HEADER_SIZE;
		offset += 4;
	}
	ancount = read16(packet + 6);
	nscount = read16(packet + 8);
	arcount = read16(packet + 10);
	if (q->question && ancount == 0 && nscount == 0 && arcount == 0 &&
	    offset == len)
		parsed = 0;
	else if (q->question && ancount == 0 && nscount == 0 && arcount == 1 &&
		 parse_opt(packet, len, offset, q) == 0)
		parsed = 0;
	else
		parsed = parse_with_ldns(packet, len, q);
	/* Errors carry OPT too when the query had one (RFC 6891 6.1.1). */
	if (q->flags & OPCODE_MASK)
		return RCODE_NOTIMP;
	if (!q->question || parsed != 0)
		return RCODE_FORMERR;
	return 0;
}

/* ------------------------------------------------------------ building */

struct writer {
	uint8_t *start;
	size_t at;
	size_t size;
	int overflow;
};

static void
put(struct writer *w, const void *bytes, size_t len)
{
	if (w->overflow || w->at + len > w->size) {
		w->overflow = 1;
		return;
	}
	memcpy(w->start + w->at, bytes, len);
	w->at += len;
}

static void
put_header(struct writer *w, const struct query *q, uint16_t flags,
	   int qdcount, int ancount, int nscount, int arcount)
{
	uint8_t header[DNS_HEADER_SIZE];

	write16(header, q->id);
	write16(header + 2, flags);
	write16(header + 4, (uint16_t)qdcount);
	write16(header + 6, (uint16_t)ancount);
	write16(header + 8, (uint16_t)nscount);
	write16(header + 10, (uint16_t)arcount);
	put(w, header, sizeof(header));
}

/* Our OPT: 1232 advertised (the DNS flag day 2020 size), DO echoed. */
static void
put_opt(struct writer *w, const struct query *q, int extended_rcode)
{
	uint8_t opt[11] = { 0 };

	write16(opt + 1, DNS_TYPE_OPT);
	write16(opt + 3, DNS_EDNS_ADVERTISED);
	opt[5] = (uint8_t)(extended_rcode >> 4);
	opt[7] = q->dnssec_ok ? 0x80 : 0;
	put(w, opt, sizeof(opt));
}

/* The owner of every record we write is the question name: offset 12. */
static void
put_record_head(struct writer *w, uint16_t type, uint32_t ttl, uint16_t rdlen)
{
	uint8_t head[12];

	write16(head, 0xc000 | DNS_HEADER_SIZE);
	write16(head + 2, type);
	write16(head + 4, DNS_CLASS_IN);
	write32(head + 6, ttl);
	write16(head + 10, rdlen);
	put(w, head, sizeof(head));
}

/*
 * RFC 2308: a NODATA answer carries the zone's SOA so resolvers can cache
 * the absence.  We act as the apex of each configured name.
 */
static void
put_soa(struct writer *w, uint32_t ttl)
{
	static const uint8_t rname_label[] = "\x0ahostmaster";
	uint8_t timers[20];

	put_record_head(w, DNS_TYPE_SOA, ttl, 2 + 11 + 2 + 20);
	put(w, "\xc0\x0c", 2);			/* mname: the name itself */
	put(w, rname_label, 11);		/* rname: hostmaster.<name> */
	put(w, "\xc0\x0c", 2);
	write32(timers, 1);			/* serial */
	write32(timers + 4, 3600);		/* refresh */
	write32(timers + 8, 600);		/* retry */
	write32(timers + 12, 86400);		/* expire */
	write32(timers + 16, ttl);		/* minimum: negative TTL */
	put(w, timers, sizeof(timers));
}

static uint16_t
response_flags(const struct query *q, uint16_t extra, int rcode)
{
	return (uint16_t)(FLAG_QR | (q->flags & (OPCODE_MASK | FLAG_RD)) |
			  FLAG_RA | extra | (rcode & 0x0f));
}

/* A reply with just the question (if any) and OPT: errors and TC. */
static size_t
write_bare(const struct query *q, uint16_t extra_flags, int rcode,
	   uint8_t *response, size_t size)
{
	struct writer w = { response, 0, size, 0 };
	int with_question = q->question != NULL;

	put_header(&w, q, response_flags(q, extra_flags, rcode),
		   with_question, 0, 0, q->has_opt);
	if (with_question)
		put(&w, q->question, q->question_len);
	if (q->has_opt)
		put_opt(&w, q, rcode);
	return w.overflow ? 0 : w.at;
}

size_t
dns_error_reply(const uint8_t *query, size_t query_len, int rcode,
		uint8_t *response, size_t response_size)
{
	struct query q;
	int parsed = parse_query(query, query_len, &q);

	if (parsed < 0)
		return 0;
	if (parsed != 0)
		q.has_opt = 0;
	return write_bare(&q, 0, rcode, response, response_size);
}

static size_t
udp_limit(const struct query *q, int over_tcp)
{
	if (over_tcp)
		return DNS_MAX_UDP;
	if (q->has_opt && q->udp_size > 512)
		return q->udp_size;
	return 512;
}

static void
put_addresses(struct writer *w, const struct answer_set *set, int family,
	      int first, int count, uint32_t ttl)
{
	uint16_t type = family == AF_INET ? DNS_TYPE_A : DNS_TYPE_AAAA;
	uint16_t rdlen = family == AF_INET ? 4 : 16;

	for (int i = 0; i < count; i++) {
		put_record_head(w, type, ttl, rdlen);
		put(w, set->ips[first + i].bytes, rdlen);
	}
}

/*
 * The authoritative answer to an A or AAAA query from its answer set, or
 * to an ANY query from both (RFC 8482 lets ANY be answered with a subset
 * of the name's records: these are the ones the checks vetted).
 */
static size_t
write_answer(const struct query *q, const struct name *name,
	     struct answer_set *sets[2], uint8_t *response, size_t size)
{
	struct writer w = { response, 0, size, 0 };
	static const int families[2] = { AF_INET, AF_INET6 };
	uint32_t ttl = name->config->ttl;
	int first[2] = { 0, 0 }, count[2] = { 0, 0 }, nodata;

	for (int i = 0; i < 2; i++)
		if (sets[i])
			count[i] = select_answer(sets[i], &first[i]);
	nodata = count[0] + count[1] == 0;
	put_header(&w, q, response_flags(q, FLAG_AA, 0), 1, count[0] + count[1],
		   nodata, q->has_opt);
	put(&w, q->question, q->question_len);
	for (int i = 0; i < 2; i++)
		if (count[i] > 0)
			put_addresses(&w, sets[i], families[i], first[i],
				      count[i], ttl);
	if (nodata)
		put_soa(&w, ttl);
	if (q->has_opt)
		put_opt(&w, q, 0);
	return w.overflow ? 0 : w.at;
}

/* A, AAAA and ANY of class IN or ANY: the queries hard may answer itself. */
static int
may_answer_itself(const struct query *q)
{
	if (q->class != DNS_CLASS_IN && q->class != DNS_CLASS_ANY)
		return 0;
	return q->type == DNS_TYPE_A || q->type == DNS_TYPE_AAAA ||
	    q->type == DNS_TYPE_ANY;
}

/*
 * The answer sets a query is answered from (sets[i] NULL: that family is
 * not asked for), or what to do instead.  ANY is never forwarded, as the
 * upstream's records of a configured name were never checked: with no
 * address of either family to give it is SERVFAIL, unless the name has
 * no address at all (NODATA).
 */
static enum answer_kind
choose_sets(const struct query *q, struct name *name, struct answer_set *sets[2])
{
	struct answer_set *a = &name->answers[0], *aaaa = &name->answers[1];

	sets[0] = q->type == DNS_TYPE_AAAA ? NULL : a;
	sets[1] = q->type == DNS_TYPE_A ? NULL : aaaa;
	if (q->type == DNS_TYPE_A)
		return a->kind;
	if (q->type == DNS_TYPE_AAAA)
		return aaaa->kind;
	if (a->kind == ANSWER_ADDRESSES || aaaa->kind == ANSWER_ADDRESSES)
		return ANSWER_ADDRESSES;
	if (a->kind == ANSWER_NODATA && aaaa->kind == ANSWER_NODATA)
		return ANSWER_NODATA;
	return ANSWER_SERVFAIL;
}

struct dns_last_query dns_last;
struct totals totals;

/* A few increments: the name's share of the monitoring counters. */
static void
count_name_outcome(struct name *name, enum dns_outcome outcome)
{
	struct name_counters *counters = &name->counters;

	switch (outcome) {
	case OUTCOME_ANSWERED: counters->answered++; break;
	case OUTCOME_NODATA: counters->nodata++; break;
	case OUTCOME_FAILURE_ALL:
		counters->answered++;
		counters->failure_all++;
		break;
	case OUTCOME_FAILURE_SERVFAIL:
		counters->servfail++;
		counters->failure_servfail++;
		break;
	case OUTCOME_FAILURE_FORWARD: counters->failure_none++; break;
	case OUTCOME_NO_ADDRESS: counters->servfail++; break;
	default: break;
	}
}

/*
 * Says what a query's answer sets made of it.  An answer comes from
 * failure_mode only when every set that gave it did (an ANY query may
 * have healthy A records and fail-open AAAA ones: that is an answer), and
 * a SERVFAIL is the name's failure_mode only when that mode is servfail.
 */
static enum dns_outcome
answered_outcome(const struct name *name, enum answer_kind kind,
		 struct answer_set *sets[2])
{
	int from_failure = 0, healthy = 0;

	for (int i = 0; i < 2; i++) {
		if (!sets[i] || sets[i]->kind != kind)
			continue;
		if (sets[i]->failure_mode)
			from_failure = 1;
		else
			healthy = 1;
	}
	from_failure = from_failure && !healthy;
	switch (kind) {
	case ANSWER_FORWARD:
		return OUTCOME_FAILURE_FORWARD;
	case ANSWER_SERVFAIL:
		return from_failure &&
		    name->config->failure_mode == FAILURE_SERVFAIL ?
		    OUTCOME_FAILURE_SERVFAIL : OUTCOME_NO_ADDRESS;
	case ANSWER_NODATA:
		return OUTCOME_NODATA;
	case ANSWER_ADDRESSES:
		break;
	}
	return from_failure ? OUTCOME_FAILURE_ALL : OUTCOME_ANSWERED;
}

enum dns_verdict
dns_answer(struct registry *registry, const uint8_t *packet, size_t len,
	   int over_tcp, uint8_t *response, size_t response_size,
	   size_t *response_len, size_t *client_limit)
{
	struct query q;
	struct name *name;
	struct answer_set *sets[2];
	enum answer_kind kind;
	int rcode;
	size_t limit;

	*response_len = 0;
	*client_limit = 512;
	totals.queries[over_tcp ? 1 : 0]++;
	rcode = parse_query(packet, len, &q);
	if (rcode < 0) {
		dns_last.had_opt = 0;
		dns_last.outcome = len < DNS_HEADER_SIZE ? OUTCOME_DROP_SHORT :
		    OUTCOME_DROP_RESPONSE;
		totals.dropped[len < DNS_HEADER_SIZE ? DROP_SHORT : DROP_RESPONSE]++;
		return DNS_DROP;
	}
	dns_last.outcome = OUTCOME_ERROR;
	dns_last.had_opt = q.has_opt;
	if (rcode > 0) {
		totals.malformed[rcode == RCODE_NOTIMP ? MALFORMED_NOTIMP :
				 MALFORMED_FORMERR]++;
		*response_len = write_bare(&q, 0, rcode, response, response_size);
		return *response_len ? DNS_REPLY : DNS_DROP;
	}
	limit = udp_limit(&q, over_tcp);
	*client_limit = limit;
	dns_last.outcome = OUTCOME_FORWARD;
	if (!may_answer_itself(&q))
		return DNS_FORWARD;
	name = registry ? registry_lookup(registry, q.lower_name, q.name_len) : NULL;
	if (!name)
		return DNS_FORWARD;
	/* A store, no clock: check.c's sweep turns it into a time and
	 * wakes an idle name. */
	name->queried = 1;
	if (q.has_opt && q.edns_version != 0) {
		dns_last.outcome = OUTCOME_ERROR;
		totals.malformed[MALFORMED_BADVERS]++;
		*response_len = write_bare(&q, 0, RCODE_BADVERS, response,
					   response_size);
		return *response_len ? DNS_REPLY : DNS_DROP;
	}
	kind = choose_sets(&q, name, sets);
	dns_last.outcome = answered_outcome(name, kind, sets);
	if (kind == ANSWER_FORWARD) {
		count_name_outcome(name, dns_last.outcome);
		return DNS_FORWARD;
	}
	name->queries++;
	if (kind == ANSWER_SERVFAIL) {
		count_name_outcome(name, dns_last.outcome);
		*response_len = write_bare(&q, 0, RCODE_SERVFAIL, response,
					   response_size);
		return *response_len ? DNS_REPLY : DNS_DROP;
	}
	if (response_size > limit)
		response_size = limit;
	*response_len = write_answer(&q, name, sets, response, response_size);
	/* Too big: cut, and the answer counted when the client asks again
	 * over TCP, so that one answer is not counted twice. */
	if (*response_len == 0)
		*response_len = write_bare(&q, FLAG_AA | FLAG_TC, 0, response,
					   response_size);
	else
		count_name_outcome(name, dns_last.outcome);
	return *response_len ? DNS_REPLY : DNS_DROP;
}

/*
 * hard's answer for a configured name met in a relayed reply (relay.c):
 * the message dns_answer would write to an A, AAAA or ANY query of
 * wire_name (spelled as the reply spells it), with ID 0 and no OPT, and
 * what it is.  The name is marked queried, as it is in use; nothing is
 * counted, the client's query being counted as forwarded.  *response_len
 * is 0 when the outcome has no message (forward, SERVFAIL).
 */
enum dns_outcome
dns_name_answer(struct name *name, const uint8_t *wire_name, int wire_len,
		uint16_t type, uint8_t *response, size_t response_size,
		size_t *response_len)
{
	uint8_t question[DNS_MAX_NAME + 4];
	struct query q = { 0 };
	struct answer_set *sets[2];
	enum answer_kind kind;

	*response_len = 0;
	if (wire_len < 1 || wire_len > DNS_MAX_NAME)
		return OUTCOME_ERROR;
	memcpy(question, wire_name, (size_t)wire_len);
	write16(question + wire_len, type);
	write16(question + wire_len + 2, DNS_CLASS_IN);
	q.question = question;
	q.question_len = (size_t)wire_len + 4;
	q.type = type;
	q.class = DNS_CLASS_IN;
	name->queried = 1;
	kind = choose_sets(&q, name, sets);
	if (kind == ANSWER_ADDRESSES || kind == ANSWER_NODATA)
		*response_len = write_answer(&q, name, sets, response,
					     response_size);
	return answered_outcome(name, kind, sets);
}

/*
 * Where the reply's OPT record starts (0: it has none) and its length,
 * walking the records by their RDLENGTH.
 */
static size_t
find_opt(const uint8_t *reply, size_t len, size_t *opt_len)
{
	size_t at = DNS_HEADER_SIZE;
	int additional_from = read16(reply + 6) + read16(reply + 8);
	int records = additional_from + read16(reply + 10);

	for (int i = 0; i < read16(reply + 4); i++) {
		at = skip_name(reply, len, at);
		if (!at || at + 4 > len)
			return 0;
		at += 4;
	}
	for (int i = 0; i < records; i++) {
		size_t owner = at, end;

		at = skip_name(reply, len, at);
		if (!at || at + 10 > len)
			return 0;
		end = at + 10 + read16(reply + at + 8);
		if (end > len)
			return 0;
		if (i >= additional_from && reply[owner] == 0 &&
		    read16(reply + at) == DNS_TYPE_OPT) {
			*opt_len = end - owner;
			return owner;
		}
		at = end;
	}
	return 0;
}

int
dns_reply_rcode(const uint8_t *reply, size_t reply_len)
{
	size_t opt_len = 0, opt_at;

	if (reply_len < DNS_HEADER_SIZE)
		return 0;
	opt_at = find_opt(reply, reply_len, &opt_len);
	/* owner (the root, 1 byte), type, class, then the TTL's first byte */
	return (opt_at ? reply[opt_at + 5] << 4 : 0) | (reply[3] & 0x0f);
}

const char *
dns_rcode_name(int rcode)
{
	static const char *const names[24] = {
		"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP",
		"REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH",
		"NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14",
		"RCODE15", "BADVERS", "BADKEY", "BADTIME", "BADMODE",
		"BADNAME", "BADALG", "BADTRUNC", "BADCOOKIE",
	};

	return rcode >= 0 && rcode < 24 ? names[rcode] : NULL;
}

/*
 * Puts an OPT record at offset, within limit (which is below the reply's
 * length): the upstream's own when it fits, else its fixed part without
 * options; hard's own when the upstream sent none but the client's query
 * had one (RFC 6891 section 7).  Returns the new length.
 */
static size_t
keep_opt(uint8_t *reply, size_t reply_len, size_t offset, size_t limit,
	 int client_opt)
{
	size_t opt_len = 0;
	size_t opt_at = find_opt(reply, reply_len, &opt_len);

	if (offset + 11 > limit)
		return offset;
	if (opt_at && offset + opt_len <= limit) {
		memmove(reply + offset, reply + opt_at, opt_len);
		return offset + opt_len;
	}
	if (opt_at) {
		memmove(reply + offset, reply + opt_at, 9);
		write16(reply + offset + 9, 0);
		return offset + 11;
	}
	if (!client_opt)
		return offset;
	memset(reply + offset, 0, 11);
	write16(reply + offset + 1, DNS_TYPE_OPT);
	write16(reply + offset + 3, DNS_EDNS_ADVERTISED);
	return offset + 11;
}

/*
 * An upstream reply bigger than the client can take over UDP is cut to
 * its header, question and OPT record with TC set, as a server would
 * have done (RFC 6891 section 7: a query with OPT gets OPT back).
 */
size_t
dns_truncate_reply(uint8_t *reply, size_t reply_len, size_t limit,
		   int client_opt)
{
	size_t question_end = DNS_HEADER_SIZE, end;
	struct query q;

	if (reply_len <= limit || reply_len < DNS_HEADER_SIZE)
		return reply_len;
	if (read16(reply + 4) != 1 ||
	    parse_question_name(reply, reply_len, &question_end, &q) != 0 ||
	    question_end + 4 > reply_len)
		question_end = DNS_HEADER_SIZE;
	else
		question_end += 4;
	end = keep_opt(reply, reply_len, question_end, limit, client_opt);
	write16(reply + 2, read16(reply + 2) | FLAG_TC);
	write16(reply + 4, question_end > DNS_HEADER_SIZE ? 1 : 0);
	write16(reply + 6, 0);
	write16(reply + 8, 0);
	write16(reply + 10, end > question_end ? 1 : 0);
	return end;
}
