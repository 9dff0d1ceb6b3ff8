/*
 * config.c - reads har.conf with libconfuse and turns it into a struct
 * config: every option defaulted, every value checked, and every mistake
 * reported as "FILE:LINE: reason" so that `hard -t` and a rejected SIGHUP
 * tell the operator exactly what to fix.  What each value may be (ranges,
 * keywords, the validators) is in config_values.c; addresses, endpoints
 * and host names are parsed in address.c.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <confuse.h>
#include <uriparser/Uri.h>

#include "har.h"

/* What one parse collects; libconfuse's callbacks reach it through this. */
struct config_parse {
	const char *file;
	const char *text;
	config_report_fn *report;
	int errors;
	char last_message[800];
};

static struct config_parse *current_parse;

static void
report_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
report_at(const char *file, int line, const char *fmt, ...)
{
	char reason[512], message[800];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(message, sizeof(message), "%s:%d: %s", file, line, reason);
	else
		snprintf(message, sizeof(message), "%s: %s", file, reason);
	current_parse->errors++;
	/* libconfuse may validate a list twice; say each thing once. */
	if (strcmp(message, current_parse->last_message) == 0)
		return;
	snprintf(current_parse->last_message,
		 sizeof(current_parse->last_message), "%s", message);
	current_parse->report(message);
}

void
config_report(int line, const char *fmt, ...)
{
	char reason[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	report_at(current_parse->file, line, "%s", reason);
}

/* What the lexer says while it finishes a leftover (lexer_reset). */
static void
ignore_syntax_error(cfg_t *cfg, const char *fmt, va_list ap)
{
	(void)cfg;
	(void)fmt;
	(void)ap;
}

/* libconfuse's own syntax errors (unknown option, missing brace, ...). */
static void
config_syntax_error(cfg_t *cfg, const char *fmt, va_list ap)
{
	char reason[512];

	vsnprintf(reason, sizeof(reason), fmt, ap);
	report_at(current_parse->file, cfg ? cfg->line : 0, "%s", reason);
}

static cfg_opt_t candidate_options[] = {
	CFG_STR("check_address", NULL, CFGF_NODEFAULT),
	CFG_STR_LIST("address", NULL, CFGF_NODEFAULT),
	CFG_STR("admin_state", "auto", CFGF_NONE),
	CFG_END()
};

/*
 * The options of a name, which a defaults section may set once for every
 * name (every one but candidate).  Whether a section set an option itself
 * is libconfuse's CFGF_MODIFIED (see struct name_settings).
 */
#ifndef CFGF_MODIFIED
#error "libconfuse 3.1 or later is needed (CFGF_MODIFIED)"
#endif

#define NAME_SETTINGS							\
	CFG_STR("check_method", "http", CFGF_NONE),			\
	CFG_FLOAT("check_frequency", 60, CFGF_NONE),			\
	CFG_FLOAT("check_timeout", 0, CFGF_NODEFAULT),			\
	CFG_FLOAT("check_jitter", 0.1, CFGF_NONE),			\
	CFG_FLOAT("recheck_frequency", 0, CFGF_NODEFAULT),		\
	CFG_FLOAT("idle_after", 3600, CFGF_NONE),			\
	CFG_FLOAT("idle_check_frequency", 0, CFGF_NODEFAULT),		\
	CFG_INT("rise", 1, CFGF_NONE),					\
	CFG_INT("fall", 1, CFGF_NONE),					\
	/* Strings, so that "200-299" can stand beside 200. */		\
	CFG_STR_LIST("expect_status", "{200}", CFGF_NONE),		\
	CFG_STR("http_method", NULL, CFGF_NODEFAULT),			\
	CFG_STR("expect_body", NULL, CFGF_NODEFAULT),			\
	CFG_STR_LIST("http_headers", NULL, CFGF_NODEFAULT),		\
	CFG_INT_LIST("drain_status", NULL, CFGF_NONE),			\
	CFG_STR("selection_method", "best_rtt", CFGF_NONE),		\
	CFG_STR("rtt_mode", "total", CFGF_NONE),			\
	CFG_FLOAT("max_rtt", 0, CFGF_NODEFAULT),			\
	CFG_FLOAT("group_rtt_threshold", 0, CFGF_NODEFAULT),		\
	CFG_FLOAT("overprovisioning", 0, CFGF_NONE),			\
	CFG_STR("failure_mode", "none", CFGF_NONE),			\
	CFG_INT("ttl", 0, CFGF_NONE),					\
	CFG_STR("ca_file", NULL, CFGF_NODEFAULT),			\
	CFG_FLOAT("tls_full_handshake_interval", 300, CFGF_NONE)

static cfg_opt_t name_options[] = {
	NAME_SETTINGS,
	CFG_SEC("candidate", candidate_options, CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES),
	CFG_END()
};

static cfg_opt_t defaults_options[] = {
	NAME_SETTINGS,
	CFG_END()
};

static cfg_opt_t global_options[] = {
	CFG_STR_LIST("nameservers", NULL, CFGF_NODEFAULT),
	CFG_STR_LIST("dns_bind_interfaces", "{127.0.0.1, ::1}", CFGF_NONE),
	CFG_INT("dns_listen_port", 53, CFGF_NONE),
	CFG_FLOAT("resolver_timeout", 1.0, CFGF_NONE),
	CFG_FLOAT("resolver_total_timeout", 3.0, CFGF_NONE),
	CFG_STR("data_file", "/var/lib/har/har.db", CFGF_NONE),
	CFG_FLOAT("data_file_interval", 60, CFGF_NONE),
	CFG_INT("data_file_bytes_per_check", 150, CFGF_NONE),
	CFG_STR("user", NULL, CFGF_NODEFAULT),
	CFG_INT("check_history", 1000, CFGF_NONE),
	CFG_FLOAT("tcp_idle_timeout", 10, CFGF_NONE),
	CFG_FLOAT("first_round_wait", 1, CFGF_NONE),
	CFG_INT("tcp_max_connections", 128, CFGF_NONE),
	CFG_BOOL("log_queries", cfg_false, CFGF_NONE),
	CFG_STR("metrics_listen", "", CFGF_NONE),
	/* Multi only so that a second one can be refused at its line. */
	CFG_SEC("defaults", defaults_options, CFGF_MULTI),
	CFG_SEC("name", name_options, CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES),
	CFG_END()
};

/* ------------------------------------------------------------ helpers */

static char *
xstrdup(const char *text)
{
	char *copy = strdup(text ? text : "");

	if (!copy) {
		log_error("out of memory");
		abort();
	}
	return copy;
}

static void *
xcalloc(size_t count, size_t size)
{
	void *memory = calloc(count ? count : 1, size);

	if (!memory) {
		log_error("out of memory");
		abort();
	}
	return memory;
}

/* Lower case, without the trailing dot: the form names are stored in. */
static char *
canonical_name(const char *title)
{
	char *name = xstrdup(title);
	size_t length = strlen(name);

	for (size_t i = 0; i < length; i++)
		name[i] = (char)tolower((unsigned char)name[i]);
	if (length > 1 && name[length - 1] == '.')
		name[length - 1] = '\0';
	return name;
}

/*
 * libconfuse knows a section's line only once the section has ended; the
 * operator wants the line where it starts.  So the text is searched for
 * the occurrence-th "KEYWORD TITLE" at or after line `from`.
 */
static int
title_matches(const char *token, size_t length, const char *canonical)
{
	size_t canonical_length = strlen(canonical);

	if (length > 0 && (token[0] == '"' || token[0] == '\'')) {
		token++;
		length = length >= 2 ? length - 2 : 0;
	}
	if (length == canonical_length + 1 && token[length - 1] == '.')
		length--;
	return length == canonical_length &&
	    strncasecmp(token, canonical, length) == 0;
}

static int
section_line(const char *keyword, const char *canonical, int from,
	     int occurrence)
{
	const char *at = current_parse->text;
	size_t keyword_length = strlen(keyword);
	int line = 1;

	for (; at && *at; line++) {
		const char *end = strchr(at, '\n');
		const char *p = at;

		while (*p == ' ' || *p == '\t')
			p++;
		if (line >= from && strncmp(p, keyword, keyword_length) == 0 &&
		    (p[keyword_length] == ' ' || p[keyword_length] == '\t')) {
			size_t length;

			p += keyword_length;
			while (*p == ' ' || *p == '\t')
				p++;
			length = strcspn(p, " \t{\n");
			if (title_matches(p, length, canonical) && occurrence-- == 0)
				return line;
		}
		at = end ? end + 1 : NULL;
	}
	return 0;
}

/*
 * The first line at or after `from` whose first word is WORD followed by
 * one of `after` (or the end of the line), else 0.
 */
static int
word_line(const char *word, int from, const char *after)
{
	const char *at = current_parse->text;
	size_t word_length = strlen(word);

	for (int line = 1; at && *at; line++) {
		const char *p = at + strspn(at, " \t");

		if (line >= from && strncmp(p, word, word_length) == 0 &&
		    (p[word_length] == '\n' || strchr(after, p[word_length])))
			return line;
		at = strchr(at, '\n');
		at = at ? at + 1 : NULL;
	}
	return 0;
}

/* The first line at or after `from` that sets OPTION, else `from`. */
static int
option_line(const char *option, int from)
{
	int line = word_line(option, from, " \t=");

	return line ? line : from;
}

/* The line that opens the occurrence-th defaults section, else 0. */
static int
defaults_line(int occurrence)
{
	int line = 0;

	for (int i = 0; i <= occurrence; i++) {
		line = word_line("defaults", line + 1, " \t{");
		if (line == 0)
			return 0;
	}
	return line;
}

/* ------------------------------------------------------ check targets */

static char *
uri_range(const UriTextRangeA *range)
{
	size_t length;
	char *text;

	if (!range->first || !range->afterLast)
		return xstrdup("");
	length = (size_t)(range->afterLast - range->first);
	text = xcalloc(length + 1, 1);
	memcpy(text, range->first, length);
	return text;
}

static int
parse_url(struct config_candidate *candidate, const char *file)
{
	UriUriA uri;
	const char *error_position;
	char *port_text = NULL, *scheme;
	int ok = 0;

	if (uriParseSingleUriA(&uri, candidate->check_address,
			       &error_position) != URI_SUCCESS) {
		report_at(file, candidate->line,
			  "check_address \"%s\" is not a URL (error at \"%s\")",
			  candidate->check_address, error_position);
		return -1;
	}
	scheme = uri_range(&uri.scheme);
	candidate->scheme = canonical_name(scheme);
	free(scheme);
	candidate->host = uri_range(&uri.hostText);
	port_text = uri_range(&uri.portText);
	if (strcmp(candidate->scheme, "http") != 0 &&
	    strcmp(candidate->scheme, "https") != 0) {
		report_at(file, candidate->line,
			  "check_address \"%s\": the scheme must be http or https",
			  candidate->check_address);
	} else if (candidate->host[0] == '\0') {
		report_at(file, candidate->line,
			  "check_address \"%s\" has no host",
			  candidate->check_address);
	} else if (port_text[0] && parse_port(port_text, &candidate->port) != 0) {
		report_at(file, candidate->line,
			  "check_address \"%s\" has a bad port",
			  candidate->check_address);
	} else {
		if (!port_text[0])
			candidate->port = strcmp(candidate->scheme, "https") == 0 ? 443 : 80;
		candidate->url = xstrdup(candidate->check_address);
		ok = 1;
	}
	free(port_text);
	uriFreeUriMembersA(&uri);
	return ok ? 0 : -1;
}

/* "tcp://HOST:PORT" or "HOST:PORT"; an http(s) URL names host and port too. */
static int
parse_tcp_target(struct config_candidate *candidate, const char *file)
{
	const char *target = candidate->check_address;
	char host[DNS_MAX_NAME + 1];
	int port = 0;

	if (strncmp(target, "http://", 7) == 0 ||
	    strncmp(target, "https://", 8) == 0)
		return parse_url(candidate, file);
	if (strncmp(target, "tcp://", 6) == 0)
		target += 6;
	if (split_host_port(target, host, sizeof(host), &port) != 0 ||
	    port == 0) {
		report_at(file, candidate->line,
			  "check_address \"%s\": a tcp check needs HOST:PORT",
			  candidate->check_address);
		return -1;
	}
	candidate->scheme = xstrdup("tcp");
	candidate->host = xstrdup(host);
	candidate->port = port;
	return 0;
}

/* Where the candidate's addresses come from: a list, a literal, or DNS. */
static int
candidate_addresses(struct config_candidate *candidate, cfg_t *section,
		    const char *file)
{
	unsigned count = cfg_size(section, "address");
	struct ip_address literal;
	uint8_t wire[DNS_MAX_NAME + 1];
	int wire_len;

	if (count > 0) {
		candidate->addresses = xcalloc(count, sizeof(struct ip_address));
		for (unsigned i = 0; i < count; i++) {
			if (ip_address_parse(cfg_getnstr(section, "address", i),
					     &candidate->addresses[i]) != 0)
				return -1;	/* reported by validate_ip */
		}
		candidate->address_count = (int)count;
		return 0;
	}
	if (ip_address_parse(candidate->host, &literal) == 0) {
		candidate->addresses = xcalloc(1, sizeof(struct ip_address));
		candidate->addresses[0] = literal;
		candidate->address_count = 1;
		return 0;
	}
	if (dns_name_to_wire(candidate->host, wire, &wire_len) != 0) {
		report_at(file, candidate->line,
			  "check_address host \"%s\" is not a host name or IP address",
			  candidate->host);
		return -1;
	}
	return 0;
}

static int choice_index(const char *value, const char *const *choices);

static int
title_has_control_character(const char *title)
{
	for (const unsigned char *c = (const unsigned char *)title; *c; c++)
		if (*c < 0x20 || *c == 0x7f)
			return 1;
	return 0;
}

static int
load_candidate(struct config_name *name, struct config_candidate *candidate,
	       cfg_t *section, int occurrence, const char *file)
{
	const char *check_address = cfg_getstr(section, "check_address");
	char default_address[DNS_MAX_NAME + 16];
	int result;

	candidate->title = canonical_name(cfg_title(section));
	candidate->line = section_line("candidate", candidate->title, name->line,
				       occurrence);
	if (candidate->line == 0)
		candidate->line = section->line;
	if (!check_address) {
		/* A tcp check of the default URL connects to port 80. */
		snprintf(default_address, sizeof(default_address),
			 "http://%s/", candidate->title);
		check_address = default_address;
	}
	candidate->check_address = xstrdup(check_address);
	if (title_has_control_character(candidate->title)) {
		/* Log lines, the data file's rows and har-status's output are
		 * one line per candidate: a newline or tab in a title would
		 * split or shift them. */
		report_at(file, candidate->line,
			  "a candidate title has a control character "
			  "(newline, tab, ...)");
		return -1;
	}
	candidate->admin_state = (enum admin_state)
	    choice_index(cfg_getstr(section, "admin_state"), admin_state_names);
	if (name->check_method == CHECK_TCP)
		result = parse_tcp_target(candidate, file);
	else
		result = parse_url(candidate, file);
	if (result != 0)
		return -1;
	return candidate_addresses(candidate, section, file);
}

/* ---------------------------------------------------------------- names */

static int
choice_index(const char *value, const char *const *choices)
{
	for (int i = 0; choices[i]; i++)
		if (strcmp(value, choices[i]) == 0)
			return i;
	return 0;	/* already reported by the validator */
}

/*
 * Where a name's options come from: what its own section writes, else
 * what the defaults section writes, else the built-in default (which is
 * in its own section).  libconfuse flags an option CFGF_MODIFIED once the
 * file sets it, and never for a default it fills in itself, so an option
 * left out of the name reads through to defaults whatever the order of
 * the sections.  A list (expect_status, http_headers) comes whole from
 * one place.  The defaults section itself is loaded as a name without
 * `shared`, so that its own mistakes are reported once, at its lines.
 */
struct name_settings {
	cfg_t *own;		/* the name's section, or the defaults section */
	cfg_t *shared;		/* the defaults section; NULL: none */
	int own_line;		/* where each section starts */
	int shared_line;
};

static int
written(cfg_t *section, const char *option)
{
	cfg_opt_t *opt = section ? cfg_getopt(section, option) : NULL;

	return opt && (opt->flags & CFGF_MODIFIED);
}

/* Whether OPTION comes from the defaults section. */
static int
inherited(const struct name_settings *settings, const char *option)
{
	return !written(settings->own, option) &&
	    written(settings->shared, option);
}

static cfg_opt_t *
setting(const struct name_settings *settings, const char *option)
{
	return cfg_getopt(inherited(settings, option) ? settings->shared :
			  settings->own, option);
}

/* The line that sets OPTION for this name: in the name or in defaults. */
static int
setting_line(const struct name_settings *settings, const char *option)
{
	if (inherited(settings, option))
		return option_line(option, settings->shared_line);
	if (written(settings->own, option))
		return option_line(option, settings->own_line);
	return settings->own_line;
}

static unsigned
setting_size(const struct name_settings *settings, const char *option)
{
	return cfg_opt_size(setting(settings, option));
}

static double
setting_float(const struct name_settings *settings, const char *option)
{
	return cfg_opt_getnfloat(setting(settings, option), 0);
}

static long
setting_int(const struct name_settings *settings, const char *option)
{
	return cfg_opt_getnint(setting(settings, option), 0);
}

static const char *
setting_string(const struct name_settings *settings, const char *option)
{
	return cfg_opt_getnstr(setting(settings, option), 0);
}

static int
setting_choice(const struct name_settings *settings, const char *option,
	       const char *const *choices)
{
	return choice_index(setting_string(settings, option), choices);
}

static double
optional_float(const struct name_settings *settings, const char *option,
	       double unset)
{
	return setting_size(settings, option) ?
	    setting_float(settings, option) : unset;
}

/*
 * A mistake in an option of this name.  One that comes from defaults was
 * reported where defaults was loaded (as a name of its own), or is no
 * mistake there: an option shared by every name may not fit one of them
 * (http_headers for a name checked over tcp), and is then left out of
 * that name, which chose otherwise in its own section.
 */
static void
report_setting(const struct name_settings *settings, const char *option,
	       const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
report_setting(const struct name_settings *settings, const char *option,
	       const char *fmt, ...)
{
	char reason[512];
	va_list ap;

	if (inherited(settings, option))
		return;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	report_at(current_parse->file, setting_line(settings, option), "%s",
		  reason);
}

/*
 * Options an operator sets to judge a check that cannot: a body a HEAD
 * response never has, a request a tcp check never sends.  Returns
 * whether OPTION applies to the name (so that it is loaded).
 */
static int
http_option_applies(const struct config_name *name,
		    const struct name_settings *settings, const char *option)
{
	if (name->check_method != CHECK_TCP || setting_size(settings, option) == 0)
		return 1;
	report_setting(settings, option,
		       "%s applies to http checks only, and this name's check_method is tcp",
		       option);
	return 0;
}

static void
load_http_options(struct config_name *name,
		  const struct name_settings *settings)
{
	if (http_option_applies(name, settings, "http_method") &&
	    setting_size(settings, "http_method"))
		name->http_method = (enum http_method)
		    setting_choice(settings, "http_method", http_methods);
	if (http_option_applies(name, settings, "expect_body") &&
	    setting_size(settings, "expect_body")) {
		if (name->http_method == HTTP_HEAD)
			report_setting(settings, "expect_body",
				       "expect_body needs http_method GET: a HEAD response has no body");
		else
			name->expect_body =
			    xstrdup(setting_string(settings, "expect_body"));
	}
	if (!http_option_applies(name, settings, "http_headers"))
		return;
	name->http_header_count = (int)setting_size(settings, "http_headers");
	name->http_headers = xcalloc((size_t)name->http_header_count,
				     sizeof(char *));
	for (int i = 0; i < name->http_header_count; i++)
		name->http_headers[i] = xstrdup(cfg_opt_getnstr(
		    setting(settings, "http_headers"), (unsigned)i));
}

/*
 * A drain status is an HTTP answer, so a tcp check cannot see one.  A
 * status in expect_status too is a drain: the more specific word wins,
 * so a range such as 200-299 may hold a drain status.
 */
static void
load_drain_status(struct config_name *name,
		  const struct name_settings *settings)
{
	cfg_opt_t *opt = setting(settings, "drain_status");

	if (name->check_method == CHECK_TCP && cfg_opt_size(opt) > 0) {
		report_setting(settings, "drain_status",
			       "drain_status needs check_method http: a tcp check "
			       "sees no HTTP status");
		return;
	}
	name->drain_status_count = (int)cfg_opt_size(opt);
	name->drain_status = xcalloc((size_t)name->drain_status_count,
				     sizeof(int));
	for (int i = 0; i < name->drain_status_count; i++)
		name->drain_status[i] = (int)cfg_opt_getnint(opt, (unsigned)i);
}

static void
load_expect_status(struct config_name *name,
		   const struct name_settings *settings)
{
	cfg_opt_t *opt = setting(settings, "expect_status");
	const struct number_range *range = find_number_range("expect_status");

	name->expect_status_count = (int)cfg_opt_size(opt);
	/* libconfuse runs no validator on an empty list. */
	if (name->expect_status_count == 0)
		report_setting(settings, "expect_status",
			       "expect_status is empty: no check could succeed; "
			       "give at least one HTTP status");
	name->expect_status = xcalloc((size_t)name->expect_status_count,
				      sizeof(struct status_range));
	for (int i = 0; i < name->expect_status_count; i++) {
		long low, high;

		/* A bad item was reported by the validator; it matches nothing. */
		if (parse_status_range(cfg_opt_getnstr(opt, (unsigned)i),
				       &low, &high) != 0 ||
		    low < range->low || high > range->high)
			continue;
		name->expect_status[i].low = (int)low;
		name->expect_status[i].high = (int)high;
	}
}

/*
 * Below 1, a group with every address up would shed answers to a farther
 * one; best_rtt answers one address, so it has no group to spill from.
 */
static void
load_overprovisioning(struct config_name *name,
		      const struct name_settings *settings)
{
	double value = setting_float(settings, "overprovisioning");

	if (value > 0 && value < 1)
		report_setting(settings, "overprovisioning",
			       "overprovisioning must be 0 (off) or between 1 and "
			       "100, not %g", value);
	else if (value > 0 && name->selection_method == SELECT_BEST_RTT)
		report_setting(settings, "overprovisioning",
			       "overprovisioning needs selection_method group_rtt_rr "
			       "or all, not best_rtt");
	else
		name->overprovisioning = value;
}

/*
 * The pace of checks besides check_frequency (check.c has the rules).
 * A recheck slower than the normal pace, or an idle pace faster than it,
 * would turn the option's meaning around, so check_frequency bounds both.
 * It bounds idle_after from below too: a name that idles between two
 * checks would go idle and wake again with every query.  Each stays
 * checked against its own documented range.
 */
static void
load_schedule_options(struct config_name *name,
		      const struct name_settings *settings)
{
	name->check_jitter = setting_float(settings, "check_jitter");
	name->recheck_frequency = fmin(name->check_frequency,
	    optional_float(settings, "recheck_frequency", 1.0));
	name->idle_after = setting_float(settings, "idle_after");
	if (name->idle_after > 0)	/* 0: never idle */
		name->idle_after = fmax(name->check_frequency, name->idle_after);
	name->idle_check_frequency = fmax(name->check_frequency,
	    optional_float(settings, "idle_check_frequency", 60.0));
}

static void
load_name_options(struct config_name *name,
		  const struct name_settings *settings)
{
	name->check_method = (enum check_method)
	    setting_choice(settings, "check_method", check_methods);
	name->check_frequency = setting_float(settings, "check_frequency");
	name->check_timeout = optional_float(settings, "check_timeout",
	    fmin(name->check_frequency, 10.0));
	load_schedule_options(name, settings);
	name->rise = (int)setting_int(settings, "rise");
	name->fall = (int)setting_int(settings, "fall");
	load_expect_status(name, settings);
	load_drain_status(name, settings);
	name->selection_method = (enum selection_method)
	    setting_choice(settings, "selection_method", selection_methods);
	name->rtt_mode = (enum rtt_mode)
	    setting_choice(settings, "rtt_mode", rtt_modes);
	name->max_rtt = optional_float(settings, "max_rtt", INFINITY);
	name->group_rtt_threshold =
	    optional_float(settings, "group_rtt_threshold", INFINITY);
	load_overprovisioning(name, settings);
	name->failure_mode = (enum failure_mode)
	    setting_choice(settings, "failure_mode", failure_modes);
	name->ttl = (uint32_t)setting_int(settings, "ttl");
	if (setting_size(settings, "ca_file"))
		name->ca_file = xstrdup(setting_string(settings, "ca_file"));
	name->tls_full_handshake_interval =
	    setting_float(settings, "tls_full_handshake_interval");
	load_http_options(name, settings);
}

static void
load_candidates(struct config_name *name, cfg_t *section, const char *file)
{
	name->candidate_count = (int)cfg_size(section, "candidate");
	if (name->candidate_count == 0)
		report_at(file, name->line, "name %s has no candidate",
			  name->title);
	name->candidates = xcalloc((size_t)name->candidate_count,
				   sizeof(struct config_candidate));
	for (int i = 0; i < name->candidate_count; i++) {
		cfg_t *candidate = cfg_getnsec(section, "candidate", (unsigned)i);
		char *title = canonical_name(cfg_title(candidate));
		int occurrence = 0;

		for (int j = 0; j < i; j++)
			if (strcmp(name->candidates[j].title, title) == 0)
				occurrence++;
		free(title);
		load_candidate(name, &name->candidates[i], candidate, occurrence,
			       file);
		if (occurrence > 0)
			report_at(file, name->candidates[i].line,
				  "candidate %s appears twice in name %s",
				  name->candidates[i].title, name->title);
	}
}

/* DEFAULTS_SECTION: the file's defaults section, or NULL. */
static void
load_name(struct config_name *name, cfg_t *section, int occurrence,
	  const struct config_name *defaults, cfg_t *defaults_section,
	  const char *file)
{
	struct name_settings settings = { .own = section };

	name->title = canonical_name(cfg_title(section));
	name->line = section_line("name", name->title, 1, occurrence);
	if (name->line == 0)
		name->line = section->line;
	if (dns_name_to_wire(name->title, name->wire, &name->wire_len) != 0)
		report_at(file, name->line, "name \"%s\" is not a valid host name",
			  cfg_title(section));
	settings.own_line = name->line;
	settings.shared = defaults_section;
	settings.shared_line = defaults->line;
	load_name_options(name, &settings);
	load_candidates(name, section, file);
}

/*
 * libconfuse's lexer is global, and a text that ends inside a string
 * ("expect_body = L\"" as the last line, say) leaves it holding what it
 * had not finished, although the parse returns success.  The next parse
 * then begins with that leftover: the next cfg_init, whose list defaults
 * ("{200}") it parses with the same lexer, fails, and libconfuse aborts
 * (hard -t, or hard itself at a reload).  Parsing an empty text with no
 * options lets the lexer finish with the leftover, where nothing depends
 * on it.
 */
static void
lexer_reset(void)
{
	static cfg_opt_t no_options[] = { CFG_END() };
	cfg_t *empty = cfg_init(no_options, CFGF_NONE);

	if (!empty)
		return;
	cfg_set_error_function(empty, ignore_syntax_error);
	cfg_parse_buf(empty, "");
	cfg_free(empty);
}

/*
 * The defaults section, checked as a name of its own (what it may hold
 * and how its options fit together are a name's rules); a second one is
 * an error.  Without one, the built-in defaults (line 0), so that a
 * reload can compare what names take from defaults either way.
 */
static struct config_name *
load_defaults(cfg_t *cfg, const char *file)
{
	struct config_name *defaults = xcalloc(1, sizeof(*defaults));
	unsigned count = cfg_size(cfg, "defaults");
	struct name_settings settings = { .own = NULL };
	cfg_t *built_in = NULL;

	defaults->title = xstrdup("defaults");
	if (count == 0) {
		built_in = cfg_init(defaults_options, CFGF_NONE);
		if (!built_in) {
			log_error("out of memory");
			abort();
		}
		settings.own = built_in;
	} else {
		settings.own = cfg_getnsec(cfg, "defaults", 0);
		defaults->line = defaults_line(0);
		if (defaults->line == 0)
			defaults->line = settings.own->line;
	}
	for (unsigned i = 1; i < count; i++)
		report_at(file, defaults_line((int)i),
			  "defaults is already given at line %d; write one "
			  "defaults section", defaults->line);
	settings.own_line = defaults->line;
	load_name_options(defaults, &settings);
	if (built_in)
		cfg_free(built_in);
	return defaults;
}

static void
check_duplicate_names(const struct config *config, const char *file)
{
	for (int i = 0; i < config->name_count; i++)
		for (int j = 0; j < i; j++)
			if (strcmp(config->names[i].title,
				   config->names[j].title) == 0)
				report_at(file, config->names[i].line,
					  "name %s is already defined at line %d",
					  config->names[i].title,
					  config->names[j].line);
}

/* ------------------------------------------------------- global options */

static int
nameservers_from_resolv_conf(struct config *config, const char *resolv_conf)
{
	FILE *stream = fopen(resolv_conf, "r");
	char line[512];

	if (!stream)
		return -1;
	while (fgets(line, sizeof(line), stream)) {
		char keyword[32], address[128];
		struct endpoint endpoint;
		char *percent;

		if (sscanf(line, "%31s %127s", keyword, address) != 2 ||
		    strcmp(keyword, "nameserver") != 0)
			continue;
		percent = strchr(address, '%');	/* drop an IPv6 zone */
		if (percent)
			*percent = '\0';
		if (endpoint_parse(address, 53, &endpoint) != 0)
			continue;
		config->nameservers = realloc(config->nameservers,
		    sizeof(struct endpoint) * (size_t)(config->nameserver_count + 1));
		if (!config->nameservers)
			abort();
		config->nameservers[config->nameserver_count++] = endpoint;
	}
	fclose(stream);
	config->nameservers_from_resolv_conf = 1;
	return 0;
}

/* A value that does not parse has been reported by its validator. */
static void
load_metrics_listen(struct config *config, cfg_t *cfg)
{
	const char *text = cfg_getstr(cfg, "metrics_listen");
	struct endpoint endpoint;

	if (!text || text[0] == '\0' || listen_endpoint_parse(text, &endpoint) != 0)
		return;
	if (endpoint_takes_dns_port(&endpoint, config)) {
		report_at(config->file, 0, "metrics_listen %s is a DNS "
			  "listener's address and port (dns_bind_interfaces, "
			  "dns_listen_port)", endpoint.text);
		return;
	}
	config->metrics_listen = endpoint;
}

static void
load_globals(struct config *config, cfg_t *cfg, const char *resolv_conf)
{
	unsigned count = cfg_size(cfg, "nameservers");

	if (count > 0) {
		config->nameservers = xcalloc(count, sizeof(struct endpoint));
		for (unsigned i = 0; i < count; i++)
			if (endpoint_parse(cfg_getnstr(cfg, "nameservers", i), 53,
					   &config->nameservers[i]) == 0)
				config->nameserver_count++;
	} else if (nameservers_from_resolv_conf(config, resolv_conf) != 0) {
		report_at(config->file, 0,
			  "no nameservers given and %s cannot be read",
			  resolv_conf);
	}
	count = cfg_size(cfg, "dns_bind_interfaces");
	if (count == 0)
		report_at(config->file, 0, "dns_bind_interfaces is empty");
	config->bind_interfaces = xcalloc(count, sizeof(char *));
	for (unsigned i = 0; i < count; i++)
		config->bind_interfaces[config->bind_interface_count++] =
		    xstrdup(cfg_getnstr(cfg, "dns_bind_interfaces", i));
	config->listen_port = (int)cfg_getint(cfg, "dns_listen_port");
	config->resolver_timeout = cfg_getfloat(cfg, "resolver_timeout");
	config->resolver_total_timeout = cfg_getfloat(cfg, "resolver_total_timeout");
	config->data_file = xstrdup(cfg_getstr(cfg, "data_file"));
	config->data_file_interval = cfg_getfloat(cfg, "data_file_interval");
	config->data_file_bytes_per_check =
	    (int)cfg_getint(cfg, "data_file_bytes_per_check");
	if (cfg_getstr(cfg, "user"))
		config->user = xstrdup(cfg_getstr(cfg, "user"));
	config->check_history = (int)cfg_getint(cfg, "check_history");
	config->tcp_idle_timeout = cfg_getfloat(cfg, "tcp_idle_timeout");
	config->first_round_wait = cfg_getfloat(cfg, "first_round_wait");
	config->tcp_max_connections = (int)cfg_getint(cfg, "tcp_max_connections");
	config->log_queries = cfg_getbool(cfg, "log_queries") ? 1 : 0;
	load_metrics_listen(config, cfg);
}

/* -------------------------------------------------------------- loading */

static struct config *
config_build(cfg_t *cfg, const char *file, const char *resolv_conf)
{
	struct config *config = xcalloc(1, sizeof(*config));
	cfg_t *defaults_section;

	config->file = xstrdup(file);
	load_globals(config, cfg, resolv_conf);
	config->defaults = load_defaults(cfg, file);
	defaults_section = cfg_size(cfg, "defaults") ?
	    cfg_getnsec(cfg, "defaults", 0) : NULL;
	config->name_count = (int)cfg_size(cfg, "name");
	config->names = xcalloc((size_t)config->name_count,
				sizeof(struct config_name));
	for (int i = 0; i < config->name_count; i++) {
		cfg_t *section = cfg_getnsec(cfg, "name", (unsigned)i);
		char *title = canonical_name(cfg_title(section));
		int occurrence = 0;

		for (int j = 0; j < i; j++)
			if (strcmp(config->names[j].title, title) == 0)
				occurrence++;
		free(title);
		load_name(&config->names[i], section, occurrence,
			  config->defaults, defaults_section, file);
	}
	check_duplicate_names(config, file);
	return config;
}

static char *
read_file(const char *file)
{
	FILE *stream = fopen(file, "r");
	char *text = NULL;
	size_t length = 0, size = 0;

	if (!stream)
		return NULL;
	for (;;) {
		size_t got;

		if (length + 4096 + 1 > size) {
			char *grown = realloc(text, size = length + 4096 * 4 + 1);

			if (!grown) {
				free(text);
				fclose(stream);
				errno = ENOMEM;
				return NULL;
			}
			text = grown;
		}
		got = fread(text + length, 1, size - length - 1, stream);
		length += got;
		if (got == 0)
			break;
	}
	if (ferror(stream)) {
		free(text);
		fclose(stream);
		errno = EIO;
		return NULL;
	}
	fclose(stream);
	text[length] = '\0';
	return text;
}

/*
 * The quoting both scans below share: whether text[*at] is part of a
 * quoted string (opening or closing it included), stepping over an
 * escaped character.
 */
static int
in_quotes(const char *text, size_t *at, char *quote)
{
	char c = text[*at];

	if (*quote) {
		if (c == '\\' && text[*at + 1])
			(*at)++;
		else if (c == *quote)
			*quote = 0;
		return 1;
	}
	if (c == '"' || c == '\'') {
		*quote = c;
		return 1;
	}
	return 0;
}

/*
 * Blanks out comments (#, // and slash-star blocks outside quotes), keeping
 * newline.  Debian's libconfuse 3.3 miscounts lines after a comment, and
 * the line numbers of our messages are only as good as its count.  As in
 * libconfuse, "//" inside a bare word (a URL) is not a comment.  Returns
 * the line of a slash-star comment that never ends (it would silently
 * swallow the rest of the file), else 0.
 */
static int
blank_comments(char *text)
{
	char quote = 0;
	int line = 1;

	for (size_t at = 0; text[at]; at++) {
		char *p = text + at;

		if (*p == '\n')
			line++;
		if (in_quotes(text, &at, &quote))
			continue;
		if (*p == '#' || (p[0] == '/' && p[1] == '/' &&
				  (p == text || strchr(" \t\n{}=,()", p[-1])))) {
			while (*p && *p != '\n')
				*p++ = ' ';
			if (!*p)
				break;
			line++;
		} else if (p[0] == '/' && p[1] == '*') {
			int opened = line;

			while (*p && !(p[0] == '*' && p[1] == '/')) {
				if (*p == '\n')
					line++;
				else
					*p = ' ';
				p++;
			}
			if (!*p)
				return opened;
			p[0] = p[1] = ' ';
			p++;
		}
		at = (size_t)(p - text);
	}
	return 0;
}

/*
 * libconfuse 3.3 takes the end of the file as the end of every open
 * section, so `name x {` with no `}` would pass.  Returns the line of
 * the outermost brace never closed, else 0.  Runs on blanked comments.
 */
static int
unclosed_brace_line(const char *text)
{
	char quote = 0;
	int line = 1, depth = 0, outermost = 0;

	for (size_t at = 0; text[at]; at++) {
		if (text[at] == '\n')
			line++;
		if (in_quotes(text, &at, &quote))
			continue;
		if (text[at] == '{') {
			if (depth++ == 0)
				outermost = line;
		} else if (text[at] == '}' && depth > 0) {
			depth--;
		}
	}
	return depth > 0 ? outermost : 0;
}

static struct config *
config_parse(const char *file, const char *text, const char *resolv_conf,
	     config_report_fn *report)
{
	struct config_parse parse = { .file = file, .text = text, .report = report };
	struct config *config = NULL;
	char *file_text = NULL;
	cfg_t *cfg;
	int result, unclosed;

	current_parse = &parse;
	file_text = text ? strdup(text) : read_file(file);
	if (!file_text) {
		report_at(file, 0, "cannot read: %s", strerror(errno));
		current_parse = NULL;
		return NULL;
	}
	unclosed = blank_comments(file_text);
	if (unclosed)
		report_at(file, unclosed, "this comment is never closed (no */)");
	parse.text = file_text;
	cfg = cfg_init(global_options, CFGF_NONE);
	if (!cfg) {
		report_at(file, 0, "cannot set up the configuration parser");
		free(file_text);
		current_parse = NULL;
		return NULL;
	}
	cfg_set_error_function(cfg, config_syntax_error);
	config_install_validators(cfg);
	result = cfg_parse_buf(cfg, parse.text);
	lexer_reset();
	if (result != CFG_SUCCESS && parse.errors == 0)
		report_at(file, 0, "cannot parse");
	unclosed = unclosed_brace_line(parse.text);
	if (result == CFG_SUCCESS && unclosed)
		report_at(file, unclosed,
			  "the { of this line is never closed (missing })");
	if (result == CFG_SUCCESS)
		config = config_build(cfg, file, resolv_conf);
	cfg_free(cfg);
	free(file_text);
	if (config && parse.errors > 0) {
		config_free(config);
		config = NULL;
	}
	current_parse = NULL;
	return config;
}

struct config *
config_load(const char *file, const char *resolv_conf, config_report_fn *report)
{
	return config_parse(file, NULL, resolv_conf, report);
}

struct config *
config_load_string(const char *text, const char *resolv_conf,
		   config_report_fn *report)
{
	return config_parse("(string)", text, resolv_conf, report);
}

/* ------------------------------------------------------------- freeing */

static void
free_candidate(struct config_candidate *candidate)
{
	free(candidate->title);
	free(candidate->check_address);
	free(candidate->scheme);
	free(candidate->host);
	free(candidate->url);
	free(candidate->addresses);
}

static void
free_name(struct config_name *name)
{
	for (int j = 0; j < name->candidate_count; j++)
		free_candidate(&name->candidates[j]);
	free(name->candidates);
	free(name->title);
	free(name->expect_status);
	free(name->expect_body);
	for (int j = 0; j < name->http_header_count; j++)
		free(name->http_headers[j]);
	free(name->http_headers);
	free(name->drain_status);
	free(name->ca_file);
}

void
config_free(struct config *config)
{
	if (!config)
		return;
	for (int i = 0; i < config->name_count; i++)
		free_name(&config->names[i]);
	free(config->names);
	if (config->defaults)	/* NULL in one made without config_load */
		free_name(config->defaults);
	free(config->defaults);
	for (int i = 0; i < config->bind_interface_count; i++)
		free(config->bind_interfaces[i]);
	free(config->bind_interfaces);
	free(config->nameservers);
	free(config->data_file);
	free(config->user);
	free(config->file);
	free(config);
}

/* ------------------------------------------------- what a check judges */

int
config_status_expected(const struct config_name *config, int status)
{
	for (int i = 0; i < config->expect_status_count; i++)
		if (status >= config->expect_status[i].low &&
		    status <= config->expect_status[i].high)
			return 1;
	return 0;
}

/* { 200, 201-299 } is { "200-299" }: compared by what they accept. */
int
config_same_expect_status(const struct config_name *a,
			  const struct config_name *b)
{
	if (a->expect_status_count == b->expect_status_count &&
	    memcmp(a->expect_status, b->expect_status,
		   sizeof(struct status_range) *
		   (size_t)a->expect_status_count) == 0)
		return 1;
	for (int status = 100; status <= 599; status++)
		if (config_status_expected(a, status) !=
		    config_status_expected(b, status))
			return 0;
	return 1;
}

static int
same_optional_text(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

int
config_same_http_request(const struct config_name *a,
			 const struct config_name *b)
{
	if (a->http_method != b->http_method ||
	    !same_optional_text(a->expect_body, b->expect_body) ||
	    a->http_header_count != b->http_header_count)
		return 0;
	for (int i = 0; i < a->http_header_count; i++)
		if (strcmp(a->http_headers[i], b->http_headers[i]) != 0)
			return 0;
	return 1;
}
