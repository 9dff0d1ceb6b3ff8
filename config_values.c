/*
 * config_values.c - what each har.conf option may hold: the documented
 * range of every number, the choices of every keyword, and the libconfuse
 * validators that check each value as it is read, so that one run of
 * `hard -t` reports every mistake at its line.  config.c reads the file
 * and builds the struct config.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <confuse.h>

#include "har.h"

/*
 * Value checks run as libconfuse finishes reading an option, so cfg->line
 * is the option's line.  They record the error and let parsing go on, so
 * one run of `hard -t` lists every mistake.
 */
typedef void value_check_fn(cfg_t *cfg, cfg_opt_t *opt, unsigned index);

static int
validate_each(cfg_t *cfg, cfg_opt_t *opt, value_check_fn *check)
{
	for (unsigned i = 0; i < cfg_opt_size(opt); i++)
		check(cfg, opt, i);
	return 0;
}

/*
 * The allowed range of every number in har.conf, in one place: the
 * validator reads it and har.conf.5 documents it.  A value outside its
 * range would overflow or make hard useless (a timeout of 1e300 seconds
 * fails every check at once; an empty expect_status passes none), so it
 * is refused where it is written, NaN and infinity included.  A new
 * numeric option needs one line here.
 */
static const struct number_range number_ranges[] = {
	{ "dns_listen_port", 1, 65535, NULL },
	{ "resolver_timeout", 0.001, 60, "seconds" },
	{ "resolver_total_timeout", 0.001, 60, "seconds" },
	{ "check_history", 1, 1000000, NULL },
	/* From the flush tick (half a second) to an hour. */
	{ "data_file_interval", 0.5, 3600, "seconds" },
	/* 0 turns the budget off; a megabyte a check is no budget either. */
	{ "data_file_bytes_per_check", 0, 1000000, "bytes" },
	{ "tcp_idle_timeout", 0.001, 86400, "seconds" },
	/* 0 answers at once; beyond 10 s the kernel's buffers fill. */
	{ "first_round_wait", 0, 10, "seconds" },
	{ "tcp_max_connections", 1, 1000000, NULL },
	{ "name|check_frequency", 0.01, 86400, "seconds" },
	{ "name|check_timeout", 0.001, 86400, "seconds" },
	/* A fraction of check_frequency: 1 lets intervals vary by half of it. */
	{ "name|check_jitter", 0, 1, NULL },
	{ "name|recheck_frequency", 0.01, 86400, "seconds" },
	/* Up to a year; 0 never idles. */
	{ "name|idle_after", 0, 31536000, "seconds" },
	{ "name|idle_check_frequency", 0.01, 86400, "seconds" },
	{ "name|rise", 1, 1000, NULL },
	{ "name|fall", 1, 1000, NULL },
	{ "name|expect_status", 100, 599, NULL },
	{ "name|drain_status", 100, 599, NULL },
	{ "name|max_rtt", 0, 86400, "seconds" },
	{ "name|group_rtt_threshold", 0, 86400, "seconds" },
	/* 0 is off; load_overprovisioning refuses what lies between 0 and 1. */
	{ "name|overprovisioning", 0, 100, NULL },
	{ "name|tls_full_handshake_interval", 0, 86400, "seconds" },
	/* RFC 2181 section 8: a TTL is at most 2^31 - 1. */
	{ "name|ttl", 0, 2147483647.0, "seconds" },
};

/* The table's line for an option: its name is the path's last part. */
const struct number_range *
find_number_range(const char *name)
{
	for (size_t i = 0; i < sizeof(number_ranges) / sizeof(number_ranges[0]);
	     i++) {
		const char *bar = strrchr(number_ranges[i].option, '|');
		const char *last = bar ? bar + 1 : number_ranges[i].option;

		if (strcmp(last, name) == 0)
			return &number_ranges[i];
	}
	return NULL;
}

/* Whole numbers in full (a TTL bound reads 2147483647, not 2.14748e+09). */
static void
format_number(double number, char *out, size_t size)
{
	if (isfinite(number) && fabs(number) < 1e15 && number == floor(number))
		snprintf(out, size, "%.0f", number);
	else
		snprintf(out, size, "%g", number);
}

/*
 * An expect_status item: "200" or "200-299" (digits only).  A number too
 * big for a long comes back as LONG_MAX, so that it reads as out of range.
 */
int
parse_status_range(const char *text, long *low, long *high)
{
	char *end;

	if (!isdigit((unsigned char)text[0]))
		return -1;
	*low = strtol(text, &end, 10);
	*high = *low;
	if (*end == '-') {
		if (!isdigit((unsigned char)end[1]))
			return -1;
		*high = strtol(end + 1, &end, 10);
	}
	return *end == '\0' ? 0 : -1;
}

static void
report_out_of_range(cfg_t *cfg, const char *option,
		    const struct number_range *range, const char *value)
{
	char low[32], high[32];

	format_number(range->low, low, sizeof(low));
	format_number(range->high, high, sizeof(high));
	config_report(cfg->line,
		  "%s must be between %s and %s%s%s, not %s", option, low,
		  high, range->unit ? " " : "", range->unit ? range->unit : "",
		  value);
}

/* A list of statuses and ranges is a string list; its bounds are the table's. */
static void
check_status_range(cfg_t *cfg, cfg_opt_t *opt, unsigned index,
		   const struct number_range *range)
{
	const char *value = cfg_opt_getnstr(opt, index);
	long low, high;

	if (parse_status_range(value, &low, &high) != 0)
		config_report(cfg->line,
			  "%s: \"%s\" is not an HTTP status or a range such as 200-299",
			  opt->name, value);
	else if (low < range->low || high > range->high ||
		 low > range->high || high < range->low)
		report_out_of_range(cfg, opt->name, range, value);
	else if (low > high)
		config_report(cfg->line,
			  "%s: range %s runs backwards; write it low-high",
			  opt->name, value);
}

static void
check_range(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	const struct number_range *range = find_number_range(opt->name);
	double number;
	char value[32];

	if (!range)
		return;
	if (opt->type == CFGT_STR) {
		check_status_range(cfg, opt, index, range);
		return;
	}
	if (opt->type == CFGT_INT)
		number = (double)cfg_opt_getnint(opt, index);
	else
		number = cfg_opt_getnfloat(opt, index);
	if (number >= range->low && number <= range->high)
		return;		/* false for NaN too */
	format_number(number, value, sizeof(value));
	report_out_of_range(cfg, opt->name, range, value);
}

static void
check_one_of(cfg_t *cfg, cfg_opt_t *opt, unsigned index,
	     const char *const *choices)
{
	const char *value = cfg_opt_getnstr(opt, index);
	char list[256] = "";

	for (int i = 0; choices[i]; i++) {
		if (strcmp(value, choices[i]) == 0)
			return;
		if (i > 0)
			strncat(list, ", ", sizeof(list) - strlen(list) - 1);
		strncat(list, choices[i], sizeof(list) - strlen(list) - 1);
	}
	config_report(cfg->line,
		  "%s: unknown value \"%s\" (expected %s)", opt->name, value, list);
}

const char *const check_methods[] = { "http", "tcp", NULL };
const char *const selection_methods[] = {
	"best_rtt", "group_rtt_rr", "all", NULL
};
const char *const rtt_modes[] = { "total", "connect", NULL };
const char *const failure_modes[] = { "none", "all", "servfail", NULL };
const char *const http_methods[] = { "GET", "HEAD", NULL };
const char *const admin_state_names[] = { "auto", "drain", "down", "up", NULL };

/* Every keyword option and its words; the last part of the path is the
 * option's name, which the validator looks its list up by. */
static const struct {
	const char *path;
	const char *const *choices;
} keyword_options[] = {
	{ "name|check_method", check_methods },
	{ "name|selection_method", selection_methods },
	{ "name|rtt_mode", rtt_modes },
	{ "name|failure_mode", failure_modes },
	{ "name|http_method", http_methods },
	{ "name|candidate|admin_state", admin_state_names },
};

static void
check_keyword(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	for (size_t i = 0; i < sizeof(keyword_options) / sizeof(keyword_options[0]);
	     i++) {
		const char *name = strrchr(keyword_options[i].path, '|') + 1;

		if (strcmp(name, opt->name) == 0) {
			check_one_of(cfg, opt, index, keyword_options[i].choices);
			return;
		}
	}
}

/* RFC 9110 section 5.6.2: the characters of a header's name. */
static int
is_token_char(char c)
{
	return isalnum((unsigned char)c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/*
 * A header goes into the request as written, so one with a line break
 * would smuggle a second header (or a second request) past -t.
 */
static void
check_http_header(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	const char *value = cfg_opt_getnstr(opt, index);
	size_t name_length = 0;

	while (is_token_char(value[name_length]))
		name_length++;
	if (strpbrk(value, "\r\n"))
		config_report(cfg->line,
			  "http_headers: a header must be one line, without CR or LF");
	else if (name_length == 0 || value[name_length] != ':')
		config_report(cfg->line,
			  "http_headers: \"%s\" is not \"Name: value\"", value);
	else if (value[name_length + 1 + strspn(value + name_length + 1, " \t")] == '\0')
		config_report(cfg->line,
			  "http_headers: \"%s\" has no value", value);
}

static void
check_expect_body(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	const char *value = cfg_opt_getnstr(opt, index);

	if (value[0] == '\0')
		config_report(cfg->line,
			  "expect_body is empty: every body would match");
	else if (strlen(value) > EXPECT_BODY_WINDOW)
		config_report(cfg->line,
			  "expect_body is longer than the %d bytes of body it is looked for in",
			  EXPECT_BODY_WINDOW);
}

static void
check_ip(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	struct ip_address ip;
	const char *value = cfg_opt_getnstr(opt, index);

	if (ip_address_parse(value, &ip) != 0)
		config_report(cfg->line,
			  "%s: \"%s\" is not an IPv4 or IPv6 address",
			  opt->name, value);
}

static void
check_endpoint(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	struct endpoint endpoint;
	const char *value = cfg_opt_getnstr(opt, index);

	if (endpoint_parse(value, 53, &endpoint) != 0)
		config_report(cfg->line,
			  "%s: \"%s\" is not IP, IP:PORT or [IPv6]:PORT",
			  opt->name, value);
}

static void
check_listen_endpoint(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	struct endpoint endpoint;
	const char *value = cfg_opt_getnstr(opt, index);

	if (value[0] != '\0' && listen_endpoint_parse(value, &endpoint) != 0)
		config_report(cfg->line,
			  "%s: \"%s\" is not PORT, IP:PORT or [IPv6]:PORT "
			  "(\"\" for none)", opt->name, value);
}

/*
 * What a start would trip over outside this file, checked here so that
 * `hard -t` and a reload refuse it too.  (The data file is not: a start
 * and a reload go on without it, and only -t reports it, store_check.)
 */
static void
check_user(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	const char *value = cfg_opt_getnstr(opt, index);

	if (!getpwnam(value))
		config_report(cfg->line,
			  "user \"%s\": no such user", value);
}

static void
check_readable_file(cfg_t *cfg, cfg_opt_t *opt, unsigned index)
{
	const char *value = cfg_opt_getnstr(opt, index);
	struct stat status;

	if (stat(value, &status) != 0 || access(value, R_OK) != 0)
		config_report(cfg->line, "%s \"%s\": %s",
			  opt->name, value, strerror(errno));
	else if (S_ISDIR(status.st_mode))
		config_report(cfg->line,
			  "%s \"%s\" is a directory, not a file", opt->name, value);
}

#define VALIDATOR(function, check) \
	static int function(cfg_t *cfg, cfg_opt_t *opt) \
	{ return validate_each(cfg, opt, check); }

VALIDATOR(validate_http_header, check_http_header)
VALIDATOR(validate_expect_body, check_expect_body)
VALIDATOR(validate_keyword, check_keyword)
VALIDATOR(validate_ip, check_ip)
VALIDATOR(validate_endpoint, check_endpoint)
VALIDATOR(validate_listen_endpoint, check_listen_endpoint)
VALIDATOR(validate_range, check_range)
VALIDATOR(validate_user, check_user)
VALIDATOR(validate_readable_file, check_readable_file)

/*
 * A validator of a name's option checks it in a defaults section too,
 * where a bad value is reported at its own line.  Candidates' options
 * have no place in defaults.
 */
static void
install(cfg_t *cfg, const char *path, cfg_validate_callback_t check)
{
	static const char name_prefix[] = "name|";
	static const char candidate_prefix[] = "name|candidate|";
	char defaults_path[128];

	cfg_set_validate_func(cfg, path, check);
	if (strncmp(path, name_prefix, strlen(name_prefix)) != 0 ||
	    strncmp(path, candidate_prefix, strlen(candidate_prefix)) == 0)
		return;
	snprintf(defaults_path, sizeof(defaults_path), "defaults|%s",
		 path + strlen(name_prefix));
	cfg_set_validate_func(cfg, defaults_path, check);
}

void
config_install_validators(cfg_t *cfg)
{
	static const struct {
		const char *option;
		cfg_validate_callback_t check;
	} validators[] = {
		{ "nameservers", validate_endpoint },
		{ "metrics_listen", validate_listen_endpoint },
		{ "dns_bind_interfaces", validate_ip },
		{ "user", validate_user },
		{ "name|http_headers", validate_http_header },
		{ "name|expect_body", validate_expect_body },
		{ "name|ca_file", validate_readable_file },
		{ "name|candidate|address", validate_ip },
	};

	for (size_t i = 0; i < sizeof(validators) / sizeof(validators[0]); i++)
		install(cfg, validators[i].option, validators[i].check);
	for (size_t i = 0; i < sizeof(keyword_options) / sizeof(keyword_options[0]);
	     i++)
		install(cfg, keyword_options[i].path, validate_keyword);
	for (size_t i = 0; i < sizeof(number_ranges) / sizeof(number_ranges[0]);
	     i++)
		install(cfg, number_ranges[i].option, validate_range);
}
