/*
 * metrics_text.c - the Prometheus text (exposition format 0.0.4) of
 * hard's state, from memory: the daemon, its totals, every name's
 * counters, every nameserver's and every checked address's state.  The
 * metric names, types, help texts and labels are those of
 * contrib/har-status --prometheus, which prints the same from the data
 * file: one vocabulary for the two (hard.8 lists it).
 *
 * A scrape takes its text a part at a time (metrics_text_next), a family
 * of the daemon or a name or nameserver at a time, so that metrics.c can
 * send a large text without holding the loop for long.  The daemon's and
 * the nameservers' state are copied once, when the scrape begins; the
 * names are read as each part is written, from the registry of the
 * moment (metrics.c ends a scrape that a reload overtakes).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "har.h"

struct writer {
	struct metrics_text *text;
	struct metrics_buffer *out;
	const struct family *family;
};

/*
 * A metric family: its lines come from one of the four writers, for the
 * daemon once, or for each name, nameserver or checked address.  A
 * family of plain totals names its counts instead (counts, and label
 * and kinds when it has several).
 */
struct family {
	const char *name;	/* as in its TYPE line: har_checks_total */
	const char *type;
	const char *help;
	void (*daemon)(struct writer *w);
	void (*per_name)(struct writer *w, const struct name *name);
	void (*per_nameserver)(struct writer *w, const struct upstream_counters *ns);
	void (*per_address)(struct writer *w, const struct address *address);
	const uint64_t *counts;
	const char *label;
	const char *const *kinds;
	int kind_count;
};

/* ---------------------------------------------------------- the buffer */

#define BUFFER_MIN 4096

static int
grow(struct metrics_buffer *out, size_t needed)
{
	size_t capacity = out->capacity ? out->capacity : BUFFER_MIN;
	char *grown;

	while (capacity < needed)
		capacity *= 2;
	if (capacity == out->capacity)
		return 0;
	grown = realloc(out->data, capacity);
	if (!grown) {
		out->failed = 1;
		return -1;
	}
	out->data = grown;
	out->capacity = capacity;
	return 0;
}

static void append(struct metrics_buffer *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
append(struct metrics_buffer *out, const char *fmt, ...)
{
	va_list ap;
	int needed;

	if (out->failed || grow(out, out->length + 1) != 0)
		return;
	for (;;) {
		size_t room = out->capacity - out->length;

		va_start(ap, fmt);
		needed = vsnprintf(out->data + out->length, room, fmt, ap);
		va_end(ap);
		if (needed < 0) {
			out->failed = 1;
			return;
		}
		if ((size_t)needed < room) {
			out->length += (size_t)needed;
			return;
		}
		if (grow(out, out->length + (size_t)needed + 1) != 0)
			return;
	}
}

/* Most of the text is copied as it is, without a format to read. */
static void
append_bytes(struct metrics_buffer *out, const char *bytes, size_t length)
{
	if (out->length + length + 1 > out->capacity &&
	    grow(out, out->length + length + 1) != 0)
		return;
	if (out->failed)
		return;
	memcpy(out->data + out->length, bytes, length);
	out->length += length;
}

static void
append_text(struct metrics_buffer *out, const char *text)
{
	append_bytes(out, text, strlen(text));
}

/* A count in decimal, without a format to read (most values are counts,
 * or gauges of whole numbers: up, states, groups). */
static void
append_count(struct metrics_buffer *out, uint64_t value)
{
	char digits[24];
	size_t at = sizeof(digits);

	do {
		digits[--at] = (char)('0' + value % 10);
		value /= 10;
	} while (value);
	append_bytes(out, digits + at, sizeof(digits) - at);
}

/* A label value: backslash, double quote and line feed escaped. */
static void
append_escaped(struct metrics_buffer *out, const char *value)
{
	for (;;) {
		size_t plain = strcspn(value, "\\\"\n");

		append_bytes(out, value, plain);
		value += plain;
		if (*value == '\0')
			return;
		append_text(out, *value == '\\' ? "\\\\" :
			    *value == '"' ? "\\\"" : "\\n");
		value++;
	}
}

/* ---------------------------------------------------------- samples */

/* The family's HELP and TYPE lines, before its first sample: a family
 * without samples is left out, as har-status leaves it out. */
static void
begin_sample(struct writer *w)
{
	const struct family *f = w->family;

	if (w->text->header_written)
		return;
	append(w->out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help,
	       f->name, f->type);
	w->text->header_written = 1;
}

/* The metric name and its labels: NAME, VALUE pairs up to a NULL. */
static void
put_series(struct writer *w, va_list labels)
{
	const char *label;
	int first = 1;

	begin_sample(w);
	append_text(w->out, w->family->name);
	while ((label = va_arg(labels, const char *)) != NULL) {
		append_text(w->out, first ? "{" : ",");
		append_text(w->out, label);
		append_text(w->out, "=\"");
		append_escaped(w->out, va_arg(labels, const char *));
		append_text(w->out, "\"");
		first = 0;
	}
	if (!first)
		append_text(w->out, "}");
}

static void put_count(struct writer *w, uint64_t value, ...)
    __attribute__((sentinel));

static void
put_count(struct writer *w, uint64_t value, ...)
{
	va_list labels;

	va_start(labels, value);
	put_series(w, labels);
	va_end(labels);
	append_bytes(w->out, " ", 1);
	append_count(w->out, value);
	append_bytes(w->out, "\n", 1);
}

/* A gauge that is NaN (no RTT yet, say) has no sample. */
static void put_gauge(struct writer *w, double value, ...)
    __attribute__((sentinel));

static void
put_gauge(struct writer *w, double value, ...)
{
	va_list labels;

	if (isnan(value))
		return;
	va_start(labels, value);
	put_series(w, labels);
	va_end(labels);
	if (isinf(value)) {
		append_text(w->out, value > 0 ? " +Inf\n" : " -Inf\n");
	} else if (value >= 0 && value < 1e15 && value == floor(value)) {
		append_bytes(w->out, " ", 1);
		append_count(w->out, (uint64_t)value);
		append_bytes(w->out, "\n", 1);
	} else {
		append(w->out, " %.15g\n", value);
	}
}

/* ---------------------------------------------------------- the daemon */

static void
daemon_info(struct writer *w)
{
	put_gauge(w, 1, "version", HAR_VERSION, "config_file",
		  w->text->daemon.config_file, NULL);
}

static void
daemon_up(struct writer *w)
{
	put_gauge(w, 1, NULL);
}

static void
daemon_start_time(struct writer *w)
{
	put_gauge(w, w->text->daemon.start_time, NULL);
}

static void
daemon_load_time(struct writer *w)
{
	put_gauge(w, w->text->daemon.config_load_time, NULL);
}

static void
daemon_reload_time(struct writer *w)
{
	put_gauge(w, w->text->daemon.reload_time, NULL);
}

static void
daemon_reload_ok(struct writer *w)
{
	put_gauge(w, w->text->daemon.reload_ok, NULL);
}

static void
data_file_writable(struct writer *w)
{
	if (w->text->daemon.has_data_file)
		put_gauge(w, w->text->daemon.data_file_writable, NULL);
}

static void
data_file_write_time(struct writer *w)
{
	if (w->text->daemon.has_data_file)
		put_gauge(w, w->text->daemon.data_file_write_time, NULL);
}

static void
tcp_open(struct writer *w)
{
	put_gauge(w, (double)totals.tcp_open, NULL);
}

/* A family of plain totals: one count, or one per kind. */
static void
plain_totals(struct writer *w)
{
	const struct family *f = w->family;

	if (!f->label) {
		put_count(w, f->counts[0], NULL);
		return;
	}
	for (int i = 0; i < f->kind_count; i++)
		put_count(w, f->counts[i], f->label, f->kinds[i], NULL);
}

/* ------------------------------------------------------------ names */

static void
name_queries(struct writer *w, const struct name *name)
{
	const struct name_counters *c = &name->counters;
	const char *title = name->config->title;

	put_count(w, c->answered, "name", title, "result", "answered", NULL);
	put_count(w, c->nodata, "name", title, "result", "nodata", NULL);
	put_count(w, c->servfail, "name", title, "result", "servfail", NULL);
	put_count(w, c->failure_none, "name", title, "result", "forwarded", NULL);
}

static void
name_failure_modes(struct writer *w, const struct name *name)
{
	const struct name_counters *c = &name->counters;
	const char *title = name->config->title;

	put_count(w, c->failure_all, "name", title, "mode", "all", NULL);
	put_count(w, c->failure_servfail, "name", title, "mode", "servfail", NULL);
	put_count(w, c->failure_none, "name", title, "mode", "none", NULL);
}

/* ------------------------------------------------------- nameservers */

static void
nameserver_up(struct writer *w, const struct upstream_counters *ns)
{
	put_gauge(w, ns->up, "nameserver", ns->nameserver, NULL);
}

static void
nameserver_queries(struct writer *w, const struct upstream_counters *ns)
{
	put_count(w, ns->queries, "nameserver", ns->nameserver, NULL);
}

/* The rcodes it has replied with, as the data file keeps them. */
static void
nameserver_replies(struct writer *w, const struct upstream_counters *ns)
{
	for (int rcode = 0; rcode < DNS_RCODE_BUCKETS; rcode++) {
		const char *name = dns_rcode_name(rcode);

		if (ns->replies[rcode] == 0)
			continue;
		/* The last bucket holds every rcode above the assigned ones. */
		put_count(w, ns->replies[rcode], "nameserver", ns->nameserver,
			  "rcode", name ? name : "OTHER", NULL);
	}
}

static void
nameserver_timeouts(struct writer *w, const struct upstream_counters *ns)
{
	put_count(w, ns->timeouts, "nameserver", ns->nameserver, NULL);
}

static void
nameserver_errors(struct writer *w, const struct upstream_counters *ns)
{
	put_count(w, ns->errors, "nameserver", ns->nameserver, NULL);
}

static void
nameserver_rtt(struct writer *w, const struct upstream_counters *ns)
{
	put_gauge(w, ns->srtt, "nameserver", ns->nameserver, NULL);
}

/* ---------------------------------------------------------- addresses */

/* The labels of an address, as the candidates table keys it. */
#define ADDRESS_LABELS(a) \
	"name", (a)->candidate->name->config->title, \
	"candidate", (a)->candidate->config->title, "address", (a)->text

static void
address_up(struct writer *w, const struct address *a)
{
	if (a->health != HEALTH_UNKNOWN)
		put_gauge(w, a->health == HEALTH_UP, ADDRESS_LABELS(a), NULL);
}

static void
address_rtt(struct writer *w, const struct address *a)
{
	put_gauge(w, a->srtt, ADDRESS_LABELS(a), NULL);
}

static void
address_checks(struct writer *w, const struct address *a)
{
	put_count(w, a->check_count, ADDRESS_LABELS(a), NULL);
}

static void
address_check_failures(struct writer *w, const struct address *a)
{
	uint64_t failures = a->check_count > a->successes ?
	    a->check_count - a->successes : 0;

	put_count(w, failures, ADDRESS_LABELS(a), NULL);
}

/* As the data file's admin_state: the candidate's own, as configured. */
static void
address_admin_state(struct writer *w, const struct address *a)
{
	enum admin_state current = a->candidate->config->admin_state;

	for (int state = ADMIN_AUTO; state <= ADMIN_UP; state++)
		put_gauge(w, state == (int)current, ADDRESS_LABELS(a), "state",
			  admin_state_names[state], NULL);
}

static void
address_draining(struct writer *w, const struct address *a)
{
	put_gauge(w, a->draining != 0, ADDRESS_LABELS(a), NULL);
}

/* Only for a name that spills, as the data file's NULL says otherwise. */
static void
address_latency_group(struct writer *w, const struct address *a)
{
	if (a->latency_group > 0)
		put_gauge(w, a->latency_group, ADDRESS_LABELS(a), NULL);
}

static void
address_share(struct writer *w, const struct address *a)
{
	put_gauge(w, a->share, ADDRESS_LABELS(a), NULL);
}

static void
each_address(struct writer *w, const struct name *name)
{
	for (int i = 0; i < name->candidate_count; i++) {
		const struct candidate *candidate = &name->candidates[i];

		for (int j = 0; j < candidate->address_count; j++)
			w->family->per_address(w, candidate->addresses[j]);
	}
}

/* ---------------------------------------------------------- the families */

static const char *const transports[] = { "udp", "tcp" };
static const char *const drop_reasons[DROP_REASON_COUNT] = {
	"short", "response", "oversize", "tcp_length" };
static const char *const malformed_reasons[MALFORMED_REASON_COUNT] = {
	"formerr", "notimp", "badvers" };
static const char *const close_reasons[TCP_CLOSED_REASON_COUNT] = {
	"limit", "idle", "shed" };

#define COUNTER "counter"
#define GAUGE "gauge"
#define TOTAL(field) .daemon = plain_totals, .counts = &totals.field
#define TOTALS(field, what, names) .daemon = plain_totals, \
	.counts = totals.field, .label = what, .kinds = names, \
	.kind_count = (int)(sizeof(names) / sizeof(names[0]))

/* In har-status's order; the help texts are its own, word for word. */
static const struct family families[] = {
	{ "har_up", GAUGE, "1 while the hard that writes the data file runs; "
	  "0 (from har-status) once it has stopped.", .daemon = daemon_up },
	{ "har_info", GAUGE, "The hard that writes the data file: version and "
	  "configuration file.", .daemon = daemon_info },
	{ "har_start_time_seconds", GAUGE, "When hard started, in seconds since "
	  "the Unix epoch.", .daemon = daemon_start_time },
	{ "har_config_last_load_timestamp_seconds", GAUGE, "When hard last "
	  "loaded its configuration (start or SIGHUP), in seconds since the "
	  "Unix epoch.", .daemon = daemon_load_time },
	{ "har_config_last_reload_timestamp_seconds", GAUGE, "When hard last "
	  "tried to load its configuration (start or SIGHUP), whether or not "
	  "that succeeded, in seconds since the Unix epoch.",
	  .daemon = daemon_reload_time },
	{ "har_config_last_reload_successful", GAUGE, "1 if the last load of "
	  "the configuration succeeded, 0 if it failed (the previous one still "
	  "runs).", .daemon = daemon_reload_ok },
	{ "har_data_file_writable", GAUGE, "1 while the data file is open and "
	  "its last write went in, 0 while it cannot be opened or written.",
	  .daemon = data_file_writable },
	{ "har_data_file_last_write_timestamp_seconds", GAUGE, "When the data "
	  "file was last written, in seconds since the Unix epoch.",
	  .daemon = data_file_write_time },
	{ "har_queries_total", COUNTER, "DNS messages received, by transport.",
	  TOTALS(queries, "transport", transports) },
	{ "har_queries_forwarded_total", COUNTER, "Queries forwarded to the "
	  "upstream nameservers.", TOTAL(forwarded) },
	{ "har_forward_failures_total", COUNTER, "Forwarded queries answered "
	  "SERVFAIL because no nameserver replied in time.",
	  TOTAL(forward_failures) },
	{ "har_queries_dropped_total", COUNTER, "Messages dropped without a "
	  "reply, by reason.", TOTALS(dropped, "reason", drop_reasons) },
	{ "har_queries_malformed_total", COUNTER, "Queries answered with an "
	  "error code (FORMERR, NOTIMP, BADVERS), by reason.",
	  TOTALS(malformed, "reason", malformed_reasons) },
	{ "har_tcp_connections_open", GAUGE, "DNS over TCP connections open.",
	  .daemon = tcp_open },
	{ "har_tcp_connections_accepted_total", COUNTER, "DNS over TCP "
	  "connections accepted.", TOTAL(tcp_accepted) },
	{ "har_tcp_connections_refused_total", COUNTER, "Attempts to accept a "
	  "DNS over TCP connection that failed (out of descriptors or memory; "
	  "retried every 0.1 s while it lasts).", TOTAL(tcp_refused) },
	{ "har_tcp_connections_closed_total", COUNTER, "DNS over TCP "
	  "connections closed by hard, by reason.",
	  TOTALS(tcp_closed, "reason", close_reasons) },
	{ "har_checks_total", COUNTER, "Health checks completed.", TOTAL(checks) },
	{ "har_checks_failed_total", COUNTER, "Health checks that failed.",
	  TOTAL(checks_failed) },
	{ "har_name_queries_total", COUNTER, "Queries for a configured name, by "
	  "what hard did: answered (with addresses), nodata, servfail, "
	  "forwarded (failure_mode none).", .per_name = name_queries },
	{ "har_name_failure_mode_total", COUNTER, "Queries answered by the "
	  "name's failure_mode (no address available), by mode.",
	  .per_name = name_failure_modes },
	{ "har_nameserver_up", GAUGE, "1 while hard considers the upstream "
	  "nameserver up, 0 after a timeout until it replies again.",
	  .per_nameserver = nameserver_up },
	{ "har_nameserver_queries_total", COUNTER, "Queries sent to the upstream "
	  "nameserver (forwarded, probes, candidate lookups).",
	  .per_nameserver = nameserver_queries },
	{ "har_nameserver_replies_total", COUNTER, "Replies from the upstream "
	  "nameserver, by rcode.", .per_nameserver = nameserver_replies },
	{ "har_nameserver_timeouts_total", COUNTER, "Queries the upstream "
	  "nameserver never replied to.", .per_nameserver = nameserver_timeouts },
	{ "har_nameserver_errors_total", COUNTER, "Queries to the upstream "
	  "nameserver that failed at once (refused, broken reply).",
	  .per_nameserver = nameserver_errors },
	{ "har_nameserver_rtt_seconds", GAUGE, "Smoothed reply time of the "
	  "upstream nameserver.", .per_nameserver = nameserver_rtt },
	{ "har_address_up", GAUGE, "1 if the address is healthy, 0 if not; "
	  "absent until its first check.", .per_address = address_up },
	{ "har_address_rtt_seconds", GAUGE, "Smoothed RTT of the address's "
	  "checks, as ranked.", .per_address = address_rtt },
	{ "har_address_checks_total", COUNTER, "Checks of the address "
	  "completed.", .per_address = address_checks },
	{ "har_address_check_failures_total", COUNTER, "Checks of the address "
	  "that failed.", .per_address = address_check_failures },
	{ "har_address_admin_state", GAUGE, "The address's administrative "
	  "state: 1 for the current one.", .per_address = address_admin_state },
	{ "har_address_draining", GAUGE, "1 while the address's server asks "
	  "for a drain (its last successful check answered a drain_status), "
	  "else 0.", .per_address = address_draining },
	{ "har_address_latency_group", GAUGE, "The address's latency group, 1 "
	  "the nearest; absent unless its name spills (overprovisioning).",
	  .per_address = address_latency_group },
	{ "har_address_share", GAUGE, "The fraction of its family's answers "
	  "that carry the address.", .per_address = address_share },
};

#define FAMILY_COUNT ((int)(sizeof(families) / sizeof(families[0])))

/* ---------------------------------------------------------- a scrape */

int
metrics_text_begin(struct metrics_text *text)
{
	int capacity = COUNTERS_MAX_NAMESERVERS;

	memset(text, 0, sizeof(*text));
	store_daemon_status(&text->daemon);
	/* As many as there are: a full array may have left some out. */
	for (;;) {
		struct upstream_counters *grown = realloc(text->nameservers,
		    sizeof(*grown) * (size_t)capacity);

		if (!grown)
			return -1;
		text->nameservers = grown;
		text->nameserver_count = upstream_get_counters(grown, capacity);
		if (text->nameserver_count < capacity)
			return 0;
		capacity *= 2;
	}
}

static int
items_of(const struct family *f, const struct metrics_text *text,
	 const struct registry *registry)
{
	if (f->per_nameserver)
		return text->nameserver_count;
	return registry ? registry->name_count : 0;
}

static void
next_family(struct metrics_text *text)
{
	text->family++;
	text->item = 0;
	text->header_written = 0;
}

int
metrics_text_next(struct metrics_text *text, const struct registry *registry,
		  struct metrics_buffer *out, size_t want)
{
	struct writer w = { .text = text, .out = out };

	while (text->family < FAMILY_COUNT && out->length < want && !out->failed) {
		const struct family *f = &families[text->family];

		w.family = f;
		if (f->daemon) {
			f->daemon(&w);
			next_family(text);
			continue;
		}
		if (text->item >= items_of(f, text, registry)) {
			next_family(text);
			continue;
		}
		if (f->per_nameserver)
			f->per_nameserver(&w, &text->nameservers[text->item]);
		else if (f->per_name)
			f->per_name(&w, &registry->names[text->item]);
		else
			each_address(&w, &registry->names[text->item]);
		text->item++;
	}
	return text->family == FAMILY_COUNT;
}

void
metrics_text_end(struct metrics_text *text)
{
	free(text->nameservers);
	text->nameservers = NULL;
}
