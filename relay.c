/*
 * relay.c - what a forwarded query's reply carries to the client.
 *
 * hard relays the upstream's reply as it came, but for two things that
 * are hard's to say and not the upstream's:
 *
 * - The addresses of a configured name.  Whatever a client asked, the
 *   reply names no address of a configured name that hard's own answer
 *   would not give.  Where the reply's CNAME chain reaches a configured
 *   name, that name's records are hard's own answer to the query
 *   (dns_name_answer: the selection, TTL and failure_mode of a query of
 *   the name itself; SERVFAIL makes the whole reply SERVFAIL).  Other A
 *   and AAAA records of a configured name, in any section, are removed:
 *   the client asks hard for them.  The ipv4hint and ipv6hint of an SVCB
 *   or HTTPS record whose owner or target is a configured name become
 *   hard's selection for the target while it has available addresses,
 *   or are removed (RFC 9460 7.3: a client may connect to them before its
 *   A and AAAA queries return).  A failure_mode none name whose addresses
 *   are all down is forwarded, so there the upstream's records stand, as
 *   they do for a query of it.
 * - The client's connection.  edns-tcp-keepalive (RFC 7828) speaks of the
 *   connection it came on, hard's to the upstream: it is removed over UDP,
 *   where it has no place, and carries hard's own tcp_idle_timeout over
 *   TCP.
 *
 * Nearly every reply needs neither.  It costs one walk over its records
 * that looks at the question name of an address query, the owner of each
 * A and AAAA record, the target of each CNAME and the names of SVCB
 * records with hints: most are ruled out by their shape (registry_may_hold)
 * and the rest looked up; the keepalive option is changed in place.  Only
 * a reply whose records must change is read by ldns, record by record,
 * changed and written again by ldns, which counts and compresses the
 * names anew.  A truncated reply that would change is cut to its question
 * (the client asks again over TCP), and one that cannot be read gets
 * SERVFAIL: either way no address goes out unvetted.
 */
#include <stdlib.h>
#include <string.h>

#include <ldns/ldns.h>

#include "har.h"

#define HEADER_SIZE 12
#define TYPE_A 1
#define TYPE_CNAME 5
#define TYPE_AAAA 28
#define TYPE_OPT 41
#define TYPE_RRSIG 46
#define TYPE_SVCB 64
#define TYPE_HTTPS 65
#define TYPE_ANY 255
#define CLASS_IN 1
#define CLASS_ANY 255

#define FLAG_AA 0x0400
#define FLAG_TC 0x0200
#define FLAG_AD 0x0020
#define RCODE_MASK 0x000f
#define RCODE_SERVFAIL 2

#define OPTION_TCP_KEEPALIVE 11	/* RFC 7828 */
#define SVC_KEY_MANDATORY 0	/* RFC 9460 */
#define SVC_KEY_IPV4HINT 4
#define SVC_KEY_IPV6HINT 6

/* The longest CNAME chain followed, loops cut: longer than resolvers
 * follow (BIND stops at 16 links, Unbound at 11). */
#define CHAIN_MAX 17
/* Names whose records a rewrite changed, whose signatures go with them;
 * past this many every signature goes. */
#define CHANGED_MAX 32

enum section { QUESTION, ANSWER, AUTHORITY, ADDITIONAL };
static const ldns_pkt_section ldns_sections[] = {
	LDNS_SECTION_QUESTION, LDNS_SECTION_ANSWER,
	LDNS_SECTION_AUTHORITY, LDNS_SECTION_ADDITIONAL,
};

struct relay_last relay_last;

/* A rebuilt reply, and hard's own answers the rebuild reads. */
static uint8_t rebuilt[DNS_MAX_UDP];
static uint8_t own[DNS_MAX_UDP];

/* ------------------------------------------------------- the walk */

/* One record of a message, where the walk found it. */
struct record {
	size_t owner;		/* where the record starts */
	size_t rdata;
	size_t end;
	uint16_t type;
	uint16_t class;
	enum section section;
};

struct walk {
	size_t at;
	enum section section;
	int left;		/* records of the section still to read */
};

/* Steps over a possibly compressed name; 0 if it runs off the message. */
static size_t
skip_name(const uint8_t *msg, size_t len, size_t at)
{
	while (at < len) {
		uint8_t label = msg[at];

		if ((label & 0xc0) == 0xc0)
			return at + 2 <= len ? at + 2 : 0;
		if (label & 0xc0)
			return 0;
		if (label == 0)
			return at + 1;
		at += 1 + (size_t)label;
	}
	return 0;
}

/* Whether the name at `at` is whole there, without compression. */
static int
plain_name(const uint8_t *msg, size_t len, size_t at)
{
	size_t end = at + DNS_MAX_NAME;

	while (at < len && at < end && msg[at] <= 63) {
		if (msg[at] == 0)
			return 1;
		at += 1 + (size_t)msg[at];
	}
	return 0;
}

/* Past the questions; 0 when they cannot be read. */
static int
walk_start(const uint8_t *msg, size_t len, struct walk *w)
{
	w->at = HEADER_SIZE;
	w->section = QUESTION;
	w->left = 0;
	for (int i = 0; i < read16(msg + 4); i++) {
		w->at = skip_name(msg, len, w->at);
		if (!w->at || w->at + 4 > len)
			return 0;
		w->at += 4;
	}
	return 1;
}

/* The next record: 1, 0 past the last, -1 when the message is cut short. */
static int
walk_next(const uint8_t *msg, size_t len, struct walk *w, struct record *r)
{
	size_t fixed;

	while (w->left == 0) {
		if (w->section == ADDITIONAL)
			return 0;
		w->section++;
		w->left = read16(msg + 4 + 2 * w->section);
	}
	fixed = skip_name(msg, len, w->at);
	if (!fixed || fixed + 10 > len)
		return -1;
	r->owner = w->at;
	r->type = read16(msg + fixed);
	r->class = read16(msg + fixed + 2);
	r->rdata = fixed + 10;
	r->end = r->rdata + read16(msg + fixed + 8);
	r->section = w->section;
	if (r->end > len)
		return -1;
	w->left--;
	w->at = r->end;
	return 1;
}

/*
 * Where the compression pointer at `at` leads: 1 with *at moved there, or
 * 0 when it cannot be followed.  A pointer may lead anywhere in the
 * message, forward too, as glibc and ldns read it: a name this walk gave
 * up on while a client reads it would carry an unvetted address through
 * (a forward pointer to "api.test" did).  Loops end at *hops: each
 * pointer is two bytes, so more than half the message's length of them
 * must go round.
 */
static int
follow_pointer(const uint8_t *msg, size_t len, size_t *at, size_t *hops)
{
	if (*at + 1 >= len || ++*hops > len / 2)
		return 0;
	*at = (size_t)(msg[*at] & 0x3f) << 8 | msg[*at + 1];
	return *at < len;
}

/*
 * The name at `at` in lower-case wire form, compression undone, into out;
 * its length, or -1.
 */
static int
lower_name(const uint8_t *msg, size_t len, size_t at,
	   uint8_t out[DNS_MAX_NAME + 1])
{
	size_t hops = 0;
	int used = 0;

	for (;;) {
		uint8_t label;

		if (at >= len)
			return -1;
		label = msg[at];
		if ((label & 0xc0) == 0xc0) {
			if (!follow_pointer(msg, len, &at, &hops))
				return -1;
			continue;
		}
		if (label > 63 || at + 1 + label > len ||
		    used + 1 + label > DNS_MAX_NAME)
			return -1;
		out[used++] = label;
		for (int i = 1; i <= label; i++) {
			uint8_t c = msg[at + i];

			out[used++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
		}
		if (label == 0)
			return used;
		at += 1 + (size_t)label;
	}
}

/*
 * Whether the name at `at` may be configured, by its shape alone (wire
 * length and label count, compression undone): most names are not, and
 * this costs a few steps where hashing the name costs a step a byte.
 */
static int
may_be_configured(const struct registry *registry, const uint8_t *msg,
		  size_t len, size_t at)
{
	size_t hops = 0;
	int wire_len = 1, labels = 0;

	while (at < len && msg[at] != 0 && wire_len <= DNS_MAX_NAME) {
		uint8_t label = msg[at];

		if ((label & 0xc0) == 0xc0) {
			if (!follow_pointer(msg, len, &at, &hops))
				return 0;
			continue;
		}
		wire_len += 1 + label;
		labels++;
		at += 1 + (size_t)label;
	}
	return at < len && wire_len <= DNS_MAX_NAME &&
	    registry_may_hold(registry, wire_len, labels);
}

static struct name *
configured_at(struct registry *registry, const uint8_t *msg, size_t len,
	      size_t at)
{
	uint8_t wire[DNS_MAX_NAME + 1];
	int wire_len;

	if (!registry || !may_be_configured(registry, msg, len, at))
		return NULL;
	wire_len = lower_name(msg, len, at, wire);
	return wire_len > 0 ? registry_lookup(registry, wire, wire_len) : NULL;
}

/*
 * Whether hard answers queries of the name of this type (A, AAAA or ANY)
 * itself now.  ANY is never forwarded.
 */
static int
answers_itself(const struct name *name, uint16_t type)
{
	if (type == TYPE_A)
		return name->answers[0].kind != ANSWER_FORWARD;
	if (type == TYPE_AAAA)
		return name->answers[1].kind != ANSWER_FORWARD;
	return 1;
}

/* ------------------------------------------------------- the scan */

/* What one walk over a reply found. */
struct scan {
	uint16_t qtype;		/* of the one question; 0 if not one */
	size_t records;		/* where the records start */
	size_t opt_rdata;	/* the first OPT record's data (0: none) */
	size_t opt_end;
	int opts;		/* OPT records: one, unless malformed */
	int broken;		/* the records cannot all be read */
	int rewrite;		/* records of a configured name to change */
	const struct name *name;	/* the first such name */
	int question_known;	/* the question name has been looked up: */
	struct name *question;	/* its name, or NULL */
};

/*
 * The configured name at `at`, or NULL.  The question name is looked up
 * once: most owners are a pointer to it.
 */
static struct name *
name_at(struct registry *registry, const uint8_t *msg, size_t len, size_t at,
	struct scan *s)
{
	if (at != HEADER_SIZE && !(at + 1 < len && msg[at] == 0xc0 &&
				   msg[at + 1] == HEADER_SIZE))
		return configured_at(registry, msg, len, at);
	if (!s->question_known) {
		s->question = configured_at(registry, msg, len, HEADER_SIZE);
		s->question_known = 1;
	}
	return s->question;
}

/* A, AAAA and ANY of class IN or ANY: the queries hard answers itself. */
static int
address_query(uint16_t qtype, uint16_t qclass)
{
	return (qclass == CLASS_IN || qclass == CLASS_ANY) &&
	    (qtype == TYPE_A || qtype == TYPE_AAAA || qtype == TYPE_ANY);
}

static void
must_rewrite(struct scan *s, const struct name *name)
{
	s->rewrite = 1;
	if (!s->name)
		s->name = name;
}

/* Where an SVCB record's parameters start within it; 0 if nowhere. */
static size_t
svcb_params(const uint8_t *msg, const struct record *r)
{
	size_t params;

	if (r->rdata + 3 > r->end)
		return 0;
	params = skip_name(msg, r->end, r->rdata + 2);
	return params && params <= r->end ? params : 0;
}

/* Whether SVCB parameters hold an address hint (or cannot be read). */
static int
params_have_hints(const uint8_t *params, size_t len)
{
	size_t at = 0;

	while (at + 4 <= len) {
		uint16_t key = read16(params + at);

		if (key == SVC_KEY_IPV4HINT || key == SVC_KEY_IPV6HINT)
			return 1;
		at += 4 + (size_t)read16(params + at + 2);
	}
	return at != len;
}

static int
svcb_has_hints(const uint8_t *msg, const struct record *r)
{
	size_t at = svcb_params(msg, r);

	return !at || params_have_hints(msg + at, r->end - at);
}

/* An SVCB record: its owner, or its target (the owner when "."). */
static struct name *
svcb_configured(struct registry *registry, const uint8_t *msg, size_t len,
		const struct record *r, struct scan *s)
{
	struct name *name = name_at(registry, msg, len, r->owner, s);

	if (name || r->rdata + 3 > r->end || msg[r->rdata + 2] == 0)
		return name;
	return name_at(registry, msg, len, r->rdata + 2, s);
}

static void
scan_record(struct registry *registry, const uint8_t *msg, size_t len,
	    const struct record *r, struct scan *s)
{
	struct name *name;

	switch (r->type) {
	case TYPE_A:
	case TYPE_AAAA:
		if (r->class != CLASS_IN)
			return;
		name = name_at(registry, msg, len, r->owner, s);
		if (name && answers_itself(name, r->type))
			must_rewrite(s, name);
		return;
	case TYPE_CNAME:
		if (r->section != ANSWER || !s->qtype || r->rdata >= r->end)
			return;
		name = name_at(registry, msg, len, r->rdata, s);
		if (name && answers_itself(name, s->qtype))
			must_rewrite(s, name);
		return;
	case TYPE_SVCB:
	case TYPE_HTTPS:
		if (!svcb_has_hints(msg, r))
			return;
		name = svcb_configured(registry, msg, len, r, s);
		if (name)
			must_rewrite(s, name);
		return;
	case TYPE_OPT:
		/* whatever its owner (RFC 6891 says the root): ldns, for
		 * one, reads it as the OPT record */
		if (r->section != ADDITIONAL)
			return;
		if (!s->opts++) {
			s->opt_rdata = r->rdata;
			s->opt_end = r->end;
		}
		return;
	default:
		return;
	}
}

/*
 * One walk over the reply.  s->qtype is set only for an address query,
 * the one kind whose CNAME chain hard may answer the end of.
 */
static void
scan_reply(struct registry *registry, const uint8_t *msg, size_t len,
	   struct scan *s)
{
	struct walk w;
	struct record r;
	int got;

	memset(s, 0, sizeof(*s));
	if (!walk_start(msg, len, &w)) {
		s->broken = 1;
		return;
	}
	s->records = w.at;
	if (read16(msg + 4) == 1 &&
	    address_query(read16(msg + w.at - 4), read16(msg + w.at - 2))) {
		struct name *name = name_at(registry, msg, len, HEADER_SIZE, s);

		s->qtype = read16(msg + w.at - 4);
		if (name && answers_itself(name, s->qtype))
			must_rewrite(s, name);
	}
	while ((got = walk_next(msg, len, &w, &r)) > 0)
		scan_record(registry, msg, len, &r, s);
	s->broken = got < 0;
}

/* ------------------------------------------------ changes in place */

/*
 * Cuts the message to its header, questions and OPT record, moved to
 * follow the questions with the root as its owner (and no options when
 * bare): a truncated reply, or one hard answers SERVFAIL.  Returns the
 * new length.
 */
static size_t
keep_question_and_opt(uint8_t *msg, size_t len, const struct scan *s,
		      int bare)
{
	size_t at = s->records, fixed = s->opt_rdata - 10;
	size_t opt_len = 10 + (bare ? 0 : s->opt_end - s->opt_rdata);

	/* One question a client can read, or none at all: the first name of
	 * a message has nothing before it to point at. */
	if (read16(msg + 4) > 1 ||
	    (read16(msg + 4) == 1 && !plain_name(msg, len, HEADER_SIZE))) {
		write16(msg + 4, 0);
		at = HEADER_SIZE;
	}
	write16(msg + 6, 0);
	write16(msg + 8, 0);
	write16(msg + 10, s->opt_rdata ? 1 : 0);
	if (!s->opt_rdata)
		return at;
	memmove(msg + at + 1, msg + fixed, opt_len);
	msg[at] = 0;
	if (bare) {
		msg[at + 5] = 0;	/* no extended rcode */
		write16(msg + at + 9, 0);
	}
	return at + 1 + opt_len;
}

/*
 * SERVFAIL with the reply's question and bare OPT record (without the
 * question when it cannot be read).  Returns the new length.
 */
static size_t
make_servfail(uint8_t *msg, size_t len, const struct scan *s)
{
	len = keep_question_and_opt(msg, len, s, 1);

	write16(msg + 2, (uint16_t)((read16(msg + 2) &
				     ~(FLAG_AA | FLAG_TC | FLAG_AD | RCODE_MASK)) |
				    RCODE_SERVFAIL));
	return len;
}

/* hard's tcp_idle_timeout as RFC 7828 counts it: 100 ms units. */
static uint16_t
keepalive_units(double tcp_idle_timeout)
{
	double units = tcp_idle_timeout * 10;

	if (!(units >= 0))
		return 0;
	return units >= 65535 ? 65535 : (uint16_t)units;
}

/*
 * edns-tcp-keepalive in the OPT record whose data starts at rdata: hard's
 * own timeout over TCP, none over UDP (a malformed or empty one goes too).
 * Options that overrun the record are left alone.  Returns the message's
 * new length.
 */
static size_t
fix_keepalive(uint8_t *msg, size_t len, size_t rdata, int over_tcp,
	      uint16_t timeout)
{
	size_t at = rdata, end = rdata + read16(msg + rdata - 2);

	while (at + 4 <= end) {
		size_t next = at + 4 + read16(msg + at + 2);

		if (next > end)
			break;
		if (read16(msg + at) != OPTION_TCP_KEEPALIVE) {
			at = next;
			continue;
		}
		if (over_tcp && next - at == 6) {
			write16(msg + at + 4, timeout);
			at = next;
			continue;
		}
		memmove(msg + at, msg + next, len - next);
		len -= next - at;
		end -= next - at;
		write16(msg + rdata - 2, (uint16_t)(end - rdata));
	}
	return len;
}

/* Where the data of the message's n-th OPT record (from 0) starts; 0 if
 * nowhere. */
static size_t
find_opt(const uint8_t *msg, size_t len, int n)
{
	struct walk w;
	struct record r;

	if (!walk_start(msg, len, &w))
		return 0;
	while (walk_next(msg, len, &w, &r) > 0)
		if (r.section == ADDITIONAL && r.type == TYPE_OPT && n-- == 0)
			return r.rdata;
	return 0;
}

/*
 * Every OPT record's keepalive.  A message has one OPT record; only a
 * malformed one has more, and pays a walk for each.
 */
static size_t
fix_keepalives(uint8_t *msg, size_t len, size_t rdata, int opts,
	       int over_tcp, double tcp_idle_timeout)
{
	uint16_t timeout = keepalive_units(tcp_idle_timeout);

	for (int n = 0; rdata; rdata = ++n < opts ? find_opt(msg, len, n) : 0)
		len = fix_keepalive(msg, len, rdata, over_tcp, timeout);
	return len;
}

/* --------------------------------------------------- the rebuild */

/* A name in wire form: lower case, or as a message spells it. */
struct wire_name {
	uint8_t bytes[DNS_MAX_NAME + 1];
	int len;
};

/* The CNAME chain of an answer, from the question name on. */
struct chain {
	struct wire_name lower[CHAIN_MAX];
	struct wire_name spelled[CHAIN_MAX];
	int count;
};

/* What a rebuild knows and has done. */
struct rebuild {
	struct registry *registry;
	ldns_pkt *pkt;
	uint16_t qtype;		/* an address query's, else 0 */
	struct chain *chain;
	int chain_end;		/* the first name hard answers, or count */
	ldns_rr_list *own;	/* hard's answer for it: records */
	ldns_rr_list *own_authority;	/* and its SOA for NODATA */
	int servfail;		/* the reply must be SERVFAIL */
	int rcode_set;		/* hard's answer made it NOERROR */
	int changes;
	const struct name *first;	/* the first name that changed it */
	struct wire_name *changed;	/* CHANGED_MAX: their signatures go */
	int changed_count;	/* past CHANGED_MAX: every signature goes */
};

static int
copy_wire_name(const ldns_rdf *dname, struct wire_name *out, int lower)
{
	size_t size = dname ? ldns_rdf_size(dname) : 0;
	const uint8_t *data;

	if (!dname || ldns_rdf_get_type(dname) != LDNS_RDF_TYPE_DNAME ||
	    size == 0 || size > DNS_MAX_NAME)
		return -1;
	data = ldns_rdf_data(dname);
	for (size_t i = 0; i < size; i++)
		out->bytes[i] = (lower && data[i] >= 'A' && data[i] <= 'Z') ?
		    data[i] + 32 : data[i];
	out->len = (int)size;
	return 0;
}

static int
same_name(const struct wire_name *a, const struct wire_name *b)
{
	return a->len == b->len && memcmp(a->bytes, b->bytes, (size_t)a->len) == 0;
}

static struct name *
configured(struct rebuild *rb, const struct wire_name *lower)
{
	if (!rb->registry || rb->registry->name_count == 0)
		return NULL;
	return registry_lookup(rb->registry, lower->bytes, lower->len);
}

static ldns_rr_list *
section_list(ldns_pkt *pkt, enum section section)
{
	switch (section) {
	case QUESTION: return ldns_pkt_question(pkt);
	case ANSWER: return ldns_pkt_answer(pkt);
	case AUTHORITY: return ldns_pkt_authority(pkt);
	case ADDITIONAL: return ldns_pkt_additional(pkt);
	}
	return NULL;
}

/* A change made for name; owner's signatures go (NULL: none to drop). */
static void
note_change(struct rebuild *rb, const struct name *name,
	    const struct wire_name *owner)
{
	rb->changes++;
	if (!rb->first)
		rb->first = name;
	if (!owner || rb->changed_count > CHANGED_MAX)
		return;
	for (int i = 0; i < rb->changed_count; i++)
		if (same_name(&rb->changed[i], owner))
			return;
	if (rb->changed_count < CHANGED_MAX)
		rb->changed[rb->changed_count] = *owner;
	rb->changed_count++;
}

/* Reads the record at *at into list, which takes it; -1 if it cannot. */
static int
read_record(ldns_rr_list *list, const uint8_t *msg, size_t len, size_t *at,
	    enum section section)
{
	ldns_rr *rr = NULL;

	if (ldns_wire2rr(&rr, msg, len, at, ldns_sections[section]) !=
	    LDNS_STATUS_OK)
		return -1;
	if (!ldns_rr_list_push_rr(list, rr)) {
		ldns_rr_free(rr);
		return -1;
	}
	return 0;
}

/*
 * The reply, read by ldns record by record at the walk's boundaries: a
 * record that ldns reads otherwise (a name running past its RDLENGTH,
 * data left over) makes the reply unreadable.  Not ldns_wire2pkt, which
 * leaks TSIG records (see dns.c).
 */
static ldns_pkt *
read_reply(const uint8_t *msg, size_t len)
{
	ldns_pkt *pkt = ldns_pkt_new();
	size_t at = HEADER_SIZE;
	struct walk w;
	struct record r;
	int got;

	if (!pkt || !walk_start(msg, len, &w))
		goto fail;
	/* ldns's bool is a char here (its common.h): flags as 0 or 1 */
	ldns_pkt_set_id(pkt, read16(msg));
	ldns_pkt_set_qr(pkt, LDNS_QR_WIRE(msg) != 0);
	ldns_pkt_set_opcode(pkt, LDNS_OPCODE_WIRE(msg));
	ldns_pkt_set_aa(pkt, LDNS_AA_WIRE(msg) != 0);
	ldns_pkt_set_tc(pkt, LDNS_TC_WIRE(msg) != 0);
	ldns_pkt_set_rd(pkt, LDNS_RD_WIRE(msg) != 0);
	ldns_pkt_set_ra(pkt, LDNS_RA_WIRE(msg) != 0);
	ldns_pkt_set_ad(pkt, LDNS_AD_WIRE(msg) != 0);
	ldns_pkt_set_cd(pkt, LDNS_CD_WIRE(msg) != 0);
	ldns_pkt_set_rcode(pkt, LDNS_RCODE_WIRE(msg));
	for (int i = 0; i < read16(msg + 4); i++)
		if (read_record(ldns_pkt_question(pkt), msg, len, &at,
				QUESTION) != 0)
			goto fail;
	if (at != w.at)
		goto fail;
	while ((got = walk_next(msg, len, &w, &r)) > 0) {
		at = r.owner;
		if (read_record(section_list(pkt, r.section), msg, len, &at,
				r.section) != 0 || at != r.end)
			goto fail;
	}
	if (got == 0)
		return pkt;
fail:
	ldns_pkt_free(pkt);
	return NULL;
}

/*
 * Drops (and frees) the records of a section that drop() picks; drop()
 * may change the records it keeps.
 */
typedef int drop_fn(struct rebuild *rb, ldns_rr *rr,
		    const struct wire_name *owner);

static void
drop_records(struct rebuild *rb, enum section section, drop_fn *drop)
{
	ldns_rr_list *list = section_list(rb->pkt, section);
	size_t kept = 0, count = ldns_rr_list_rr_count(list);

	for (size_t i = 0; i < count; i++) {
		ldns_rr *rr = ldns_rr_list_rr(list, i);
		struct wire_name owner;

		if (copy_wire_name(ldns_rr_owner(rr), &owner, 1) == 0 &&
		    drop(rb, rr, &owner)) {
			ldns_rr_free(rr);
			continue;
		}
		ldns_rr_list_set_rr(list, rr, kept++);
	}
	ldns_rr_list_set_rr_count(list, kept);
}

/* Appends list's records to a section; list is freed. */
static void
append_records(struct rebuild *rb, enum section section, ldns_rr_list *list)
{
	ldns_rr_list *to = section_list(rb->pkt, section);

	for (size_t i = 0; list && i < ldns_rr_list_rr_count(list); i++)
		if (!ldns_rr_list_push_rr(to, ldns_rr_list_rr(list, i)))
			ldns_rr_free(ldns_rr_list_rr(list, i));
	ldns_rr_list_free(list);
}

/* One section of hard's own answer in `own`, read by ldns; NULL if not. */
static ldns_rr_list *
own_section(size_t own_len, enum section wanted)
{
	ldns_rr_list *list = ldns_rr_list_new();
	struct walk w;
	struct record r;

	if (!list || !walk_start(own, own_len, &w))
		goto fail;
	while (walk_next(own, own_len, &w, &r) > 0) {
		size_t at = r.owner;

		if (r.section == wanted &&
		    read_record(list, own, own_len, &at, wanted) != 0)
			goto fail;
	}
	return list;
fail:
	ldns_rr_list_deep_free(list);
	return NULL;
}

/* ---- the CNAME chain */

static int
chain_add(struct chain *chain, const ldns_rdf *dname)
{
	int n = chain->count;

	if (n == CHAIN_MAX || copy_wire_name(dname, &chain->lower[n], 1) != 0 ||
	    copy_wire_name(dname, &chain->spelled[n], 0) != 0)
		return -1;
	for (int i = 0; i < n; i++)
		if (same_name(&chain->lower[i], &chain->lower[n]))
			return -1;	/* a loop */
	chain->count++;
	return 0;
}

/* The target of the answer's CNAME owned by name, or NULL. */
static const ldns_rdf *
cname_of(ldns_pkt *pkt, const struct wire_name *name)
{
	ldns_rr_list *answer = ldns_pkt_answer(pkt);

	for (size_t i = 0; i < ldns_rr_list_rr_count(answer); i++) {
		const ldns_rr *rr = ldns_rr_list_rr(answer, i);
		struct wire_name owner;

		if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_CNAME &&
		    ldns_rr_rd_count(rr) == 1 &&
		    copy_wire_name(ldns_rr_owner(rr), &owner, 1) == 0 &&
		    same_name(&owner, name))
			return ldns_rr_rdf(rr, 0);
	}
	return NULL;
}

/* The question name and the CNAME targets that follow from it. */
static void
follow_chain(ldns_pkt *pkt, struct chain *chain)
{
	ldns_rr *question = ldns_rr_list_rr(ldns_pkt_question(pkt), 0);
	const ldns_rdf *next;

	chain->count = 0;
	if (!question || chain_add(chain, ldns_rr_owner(question)) != 0)
		return;
	while ((next = cname_of(pkt, &chain->lower[chain->count - 1])) &&
	       chain_add(chain, next) == 0)
		;
}

static int
owned_by_chain_end(struct rebuild *rb, ldns_rr *rr,
		   const struct wire_name *owner)
{
	(void)rr;
	for (int i = rb->chain_end; i < rb->chain->count; i++)
		if (same_name(owner, &rb->chain->lower[i]))
			return 1;
	return 0;
}

/*
 * Where the chain reaches a name hard answers itself, that name's records
 * (and those of the chain past it) are hard's answer, and so is the
 * authority section (the SOA of NODATA, or nothing): what the upstream
 * said of the name is not the upstream's to say.
 */
static void
rewrite_chain(struct rebuild *rb)
{
	struct chain *chain = rb->chain;
	enum dns_outcome outcome = OUTCOME_FORWARD;
	struct name *name = NULL;
	size_t own_len = 0;
	int at;

	follow_chain(rb->pkt, chain);
	for (at = 0; at < chain->count; at++) {
		name = configured(rb, &chain->lower[at]);
		if (!name)
			continue;
		outcome = dns_name_answer(name, chain->spelled[at].bytes,
					  chain->spelled[at].len, rb->qtype,
					  own, sizeof(own), &own_len);
		if (outcome != OUTCOME_FAILURE_FORWARD && outcome != OUTCOME_ERROR)
			break;
	}
	rb->chain_end = at;
	if (at == chain->count)
		return;
	for (int i = at; i < chain->count; i++)
		note_change(rb, name, &chain->lower[i]);
	if (outcome == OUTCOME_FAILURE_SERVFAIL || outcome == OUTCOME_NO_ADDRESS ||
	    own_len == 0) {
		rb->servfail = 1;
		return;
	}
	drop_records(rb, ANSWER, owned_by_chain_end);
	ldns_rr_list_deep_free(ldns_pkt_authority(rb->pkt));
	ldns_pkt_set_authority(rb->pkt, ldns_rr_list_new());
	rb->own = own_section(own_len, ANSWER);
	rb->own_authority = own_section(own_len, AUTHORITY);
	if (!rb->own || !rb->own_authority || !ldns_pkt_authority(rb->pkt))
		rb->servfail = 1;
	ldns_pkt_set_rcode(rb->pkt, LDNS_RCODE_NOERROR);
	rb->rcode_set = 1;
}

/* ---- address records */

/* An A or AAAA record of a name hard answers itself: it goes. */
static int
hard_answers_address(struct rebuild *rb, ldns_rr *rr,
		     const struct wire_name *owner)
{
	ldns_rr_type type = ldns_rr_get_type(rr);
	struct name *name;

	if ((type != LDNS_RR_TYPE_A && type != LDNS_RR_TYPE_AAAA) ||
	    ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN)
		return 0;
	name = configured(rb, owner);
	if (!name || !answers_itself(name, (uint16_t)type))
		return 0;
	note_change(rb, name, owner);
	return 1;
}

/* ---- SVCB and HTTPS hints */

/* hard's available addresses of a name of one family: a hint's value. */
struct hint {
	uint8_t bytes[DNS_MAX_UDP];
	size_t len;
};

static void
hint_of(struct name *name, const struct wire_name *spelled, uint16_t type,
	struct hint *hint)
{
	size_t own_len = 0;
	struct walk w;
	struct record r;

	hint->len = 0;
	if (!name || dns_name_answer(name, spelled->bytes, spelled->len, type,
				     own, sizeof(own), &own_len) !=
	    OUTCOME_ANSWERED || !walk_start(own, own_len, &w))
		return;
	while (walk_next(own, own_len, &w, &r) > 0) {
		size_t size = r.end - r.rdata;

		if (r.section != ANSWER || r.type != type ||
		    hint->len + size > 65535)
			continue;
		memcpy(hint->bytes + hint->len, own + r.rdata, size);
		hint->len += size;
	}
}

/* Starts a parameter at *at of out; -1 if it would not fit. */
static int
put_param_head(uint8_t *out, size_t size, size_t *at, uint16_t key,
	       size_t value_len)
{
	if (value_len > 65535 || *at + 4 + value_len > size)
		return -1;
	write16(out + *at, key);
	write16(out + *at + 2, (uint16_t)value_len);
	*at += 4;
	return 0;
}

static int
put_param(uint8_t *out, size_t size, size_t *at, uint16_t key,
	  const uint8_t *value, size_t value_len)
{
	if (put_param_head(out, size, at, key, value_len) != 0)
		return -1;
	memcpy(out + *at, value, value_len);
	*at += value_len;
	return 0;
}

/* Whether a key stays in the rewritten parameters. */
static int
key_kept(uint16_t key, const struct hint *v4, const struct hint *v6)
{
	if (key == SVC_KEY_IPV4HINT)
		return v4->len > 0;
	if (key == SVC_KEY_IPV6HINT)
		return v6->len > 0;
	return 1;
}

/*
 * mandatory without the keys that go; nothing when none is left (RFC
 * 9460 8: a mandatory key must be present, the list must not be empty).
 */
static int
put_mandatory(uint8_t *out, size_t size, size_t *at, const uint8_t *value,
	      size_t value_len, const struct hint *v4, const struct hint *v6)
{
	size_t head = *at, kept = 0;

	if (value_len % 2 ||
	    put_param_head(out, size, at, SVC_KEY_MANDATORY, value_len) != 0)
		return -1;
	for (size_t i = 0; i < value_len; i += 2)
		if (key_kept(read16(value + i), v4, v6)) {
			memcpy(out + *at + kept, value + i, 2);
			kept += 2;
		}
	write16(out + head + 2, (uint16_t)kept);
	*at = kept ? *at + kept : head;
	return 0;
}

/*
 * The parameters with hard's hints in place of those given, or without
 * them, and everything else as it was, in its order (keys ascending, as
 * RFC 9460 wants).  Returns the new length; -1 for parameters that
 * cannot be read.
 */
static long
rewrite_params(const uint8_t *params, size_t len, const struct hint *v4,
	       const struct hint *v6, uint8_t *out, size_t size)
{
	size_t at = 0, used = 0;

	while (at < len) {
		uint16_t key, value_len;
		const uint8_t *value;
		int failed;

		if (at + 4 > len || at + 4 + read16(params + at + 2) > len)
			return -1;
		key = read16(params + at);
		value_len = read16(params + at + 2);
		value = params + at + 4;
		at += 4 + (size_t)value_len;
		if (key == SVC_KEY_IPV4HINT || key == SVC_KEY_IPV6HINT) {
			const struct hint *hint = key == SVC_KEY_IPV4HINT ? v4 : v6;

			failed = hint->len && put_param(out, size, &used, key,
							hint->bytes, hint->len);
		} else if (key == SVC_KEY_MANDATORY) {
			failed = put_mandatory(out, size, &used, value,
					       value_len, v4, v6);
		} else {
			failed = put_param(out, size, &used, key, value, value_len);
		}
		if (failed)
			return -1;
	}
	return (long)used;
}

/*
 * An SVCB or HTTPS record whose owner or target is a configured name:
 * its hints become hard's available addresses of the target (the owner
 * when the target is "."), or go.  1 drops a record that cannot be read.
 */
static int
rewrite_svcb(struct rebuild *rb, ldns_rr *rr, const struct wire_name *owner)
{
	static struct hint v4, v6;
	static uint8_t params[DNS_MAX_UDP];
	const ldns_rdf *target_rdf, *old;
	struct wire_name target, spelled;
	struct name *by_owner, *by_target;
	ldns_rdf *fresh;
	long len;

	if (ldns_rr_rd_count(rr) < 3 ||
	    !params_have_hints(ldns_rdf_data(ldns_rr_rdf(rr, 2)),
			       ldns_rdf_size(ldns_rr_rdf(rr, 2))))
		return 0;
	target_rdf = ldns_rr_rdf(rr, 1);
	old = ldns_rr_rdf(rr, 2);
	if (target_rdf && ldns_rdf_size(target_rdf) == 1)
		target_rdf = ldns_rr_owner(rr);		/* "." */
	if (copy_wire_name(target_rdf, &target, 1) != 0 ||
	    copy_wire_name(target_rdf, &spelled, 0) != 0)
		return 1;
	by_owner = configured(rb, owner);
	by_target = configured(rb, &target);
	if (!by_owner && !by_target)
		return 0;
	hint_of(by_target, &spelled, TYPE_A, &v4);
	hint_of(by_target, &spelled, TYPE_AAAA, &v6);
	len = rewrite_params(ldns_rdf_data(old), ldns_rdf_size(old), &v4, &v6,
			     params, sizeof(params));
	note_change(rb, by_target ? by_target : by_owner, owner);
	if (len < 0)
		return 1;
	if (len == 0) {
		ldns_rdf_deep_free(ldns_rr_pop_rdf(rr));
		return 0;
	}
	fresh = ldns_rdf_new_frm_data(LDNS_RDF_TYPE_SVCPARAMS, (size_t)len, params);
	if (!fresh)
		return 1;
	ldns_rdf_deep_free(ldns_rr_set_rdf(rr, fresh, 2));
	return 0;
}

static int
svcb_hints(struct rebuild *rb, ldns_rr *rr, const struct wire_name *owner)
{
	ldns_rr_type type = ldns_rr_get_type(rr);

	if (type != LDNS_RR_TYPE_SVCB && type != LDNS_RR_TYPE_HTTPS)
		return 0;
	return rewrite_svcb(rb, rr, owner);
}

/* ---- signatures */

/* An RRSIG over records hard changed: it signs what is no longer there. */
static int
stale_signature(struct rebuild *rb, ldns_rr *rr, const struct wire_name *owner)
{
	if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_RRSIG)
		return 0;
	if (rb->changed_count > CHANGED_MAX)
		return 1;
	for (int i = 0; i < rb->changed_count; i++)
		if (same_name(&rb->changed[i], owner))
			return 1;
	return 0;
}

/* hard made the reply NOERROR: its OPT records must not say otherwise. */
static void
clear_extended_rcode(ldns_pkt *pkt)
{
	ldns_rr_list *additional = ldns_pkt_additional(pkt);

	for (size_t i = 0; i < ldns_rr_list_rr_count(additional); i++) {
		ldns_rr *rr = ldns_rr_list_rr(additional, i);

		if (ldns_rr_get_type(rr) == LDNS_RR_TYPE_OPT)
			ldns_rr_set_ttl(rr, ldns_rr_ttl(rr) & 0x00ffffff);
	}
}

/* Writes the packet into `rebuilt`; its length, 0 if it does not fit. */
static size_t
write_reply(ldns_pkt *pkt)
{
	uint8_t *wire = NULL;
	size_t size = 0;

	for (int i = QUESTION; i <= ADDITIONAL; i++)
		ldns_pkt_set_section_count(pkt, ldns_sections[i],
		    (uint16_t)ldns_rr_list_rr_count(section_list(pkt, (enum section)i)));
	if (ldns_pkt2wire(&wire, pkt, &size) != LDNS_STATUS_OK ||
	    size > sizeof(rebuilt) || size < HEADER_SIZE) {
		free(wire);
		return 0;
	}
	memcpy(rebuilt, wire, size);
	free(wire);
	return size;
}

enum rebuilt_as { REBUILT_SAME, REBUILT_CHANGED, REBUILT_SERVFAIL };

static void
apply_rewrites(struct rebuild *rb)
{
	if (rb->qtype)
		rewrite_chain(rb);
	if (rb->servfail)
		return;
	for (int s = ANSWER; s <= ADDITIONAL; s++) {
		drop_records(rb, (enum section)s, hard_answers_address);
		drop_records(rb, (enum section)s, svcb_hints);
	}
	append_records(rb, ANSWER, rb->own);
	append_records(rb, AUTHORITY, rb->own_authority);
	rb->own = rb->own_authority = NULL;
	for (int s = ANSWER; s <= ADDITIONAL; s++)
		drop_records(rb, (enum section)s, stale_signature);
	ldns_pkt_set_ad(rb->pkt, false);
	if (rb->rcode_set)
		clear_extended_rcode(rb->pkt);
}

/* The reply, read, rewritten and written into `rebuilt` (*out_len). */
static enum rebuilt_as
rebuild(struct registry *registry, const uint8_t *msg, size_t len,
	uint16_t qtype, size_t *out_len, const struct name **first)
{
	/* 17 KB of names, filled as they are used */
	static struct chain chain;
	static struct wire_name changed[CHANGED_MAX];
	struct rebuild rb = {
		.registry = registry, .qtype = qtype, .chain = &chain,
		.changed = changed,
	};
	enum rebuilt_as result = REBUILT_SERVFAIL;

	rb.pkt = read_reply(msg, len);
	if (rb.pkt)
		apply_rewrites(&rb);
	*first = rb.first;
	if (rb.pkt && !rb.servfail) {
		result = rb.changes ? REBUILT_CHANGED : REBUILT_SAME;
		if (rb.changes && (*out_len = write_reply(rb.pkt)) == 0)
			result = REBUILT_SERVFAIL;
	}
	ldns_rr_list_deep_free(rb.own);
	ldns_rr_list_deep_free(rb.own_authority);
	ldns_pkt_free(rb.pkt);
	return result;
}

/* --------------------------------------------------------- relaying */

/* The reply once the records of configured names in it are hard's. */
static uint8_t *
rewrite(struct registry *registry, uint8_t *reply, size_t *len,
	const struct scan *s)
{
	const struct name *first = NULL;
	size_t rebuilt_len = 0;
	enum rebuilt_as result = REBUILT_SERVFAIL;

	if (!s->broken && (read16(reply + 2) & FLAG_TC)) {
		/* some of the records: the client asks again over TCP */
		*len = keep_question_and_opt(reply, *len, s, 0);
		return reply;
	}
	if (!s->broken)
		result = rebuild(registry, reply, *len, s->qtype, &rebuilt_len,
				 &first);
	if (first)
		relay_last.name = first->config->title;
	switch (result) {
	case REBUILT_SAME:
		relay_last.rewritten = 0;
		return reply;
	case REBUILT_CHANGED:
		*len = rebuilt_len;
		return rebuilt;
	case REBUILT_SERVFAIL:
		break;
	}
	*len = make_servfail(reply, *len, s);
	return reply;
}

uint8_t *
relay_reply(struct registry *registry, uint8_t *reply, size_t *reply_len,
	    int over_tcp, double tcp_idle_timeout)
{
	struct scan scan;
	uint8_t *out = reply;
	size_t opt_rdata;
	int opts;

	relay_last.rewritten = 0;
	relay_last.name = NULL;
	relay_last.upstream_rcode = 0;
	if (*reply_len < HEADER_SIZE)
		return reply;
	scan_reply(registry, reply, *reply_len, &scan);
	opt_rdata = scan.opt_rdata;
	opts = scan.opts;
	/* RFC 6891 6.1.3: the OPT record holds the upper 8 bits */
	relay_last.upstream_rcode = (opt_rdata ? reply[opt_rdata - 6] << 4 : 0) |
	    (reply[3] & RCODE_MASK);
	if (scan.rewrite) {
		relay_last.rewritten = 1;
		relay_last.name = scan.name->config->title;
		out = rewrite(registry, reply, reply_len, &scan);
		if (relay_last.rewritten) {
			opt_rdata = find_opt(out, *reply_len, 0);
			opts = out == rebuilt ? scan.opts : 1;
		}
	}
	*reply_len = fix_keepalives(out, *reply_len, opt_rdata, opts, over_tcp,
				    tcp_idle_timeout);
	return out;
}
