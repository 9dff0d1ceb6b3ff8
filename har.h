/*
 * har.h - the types shared by hard's modules and each module's interface.
 *
 * Two worlds live here.  The configuration (struct config and below) is
 * plain data made by config_load(); it never changes once loaded.  The
 * runtime (struct registry and below) is what the daemon answers from:
 * names, their candidates, and each candidate's checked addresses with
 * their health.  A reload builds a new registry from a new config and
 * moves the surviving addresses into it, so their state and schedules go
 * on untouched.
 */
#ifndef HAR_H
#define HAR_H

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <ev.h>

#define HAR_VERSION "0.1.0"

#define DNS_MAX_NAME 255
#define DNS_MAX_UDP 65535
#define DNS_EDNS_ADVERTISED 1232

/* Big-endian 16-bit fields of DNS messages (dns.c, relay.c). */
static inline uint16_t
read16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline void
write16(uint8_t *p, uint16_t value)
{
	p[0] = (uint8_t)(value >> 8);
	p[1] = (uint8_t)value;
}

/* ---------------------------------------------------------------- log.c */

void log_init(const char *program, int foreground, int debug);
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warning(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_query(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "<3>" and the like when stderr is the journal, else "" (for the lines
 * written to stderr before logging starts: configuration errors). */
const char *log_stderr_prefix(int priority);

/*
 * A repeating condition (a data file that stays locked, an upstream that
 * stays down) is logged when it starts and when it ends, not every time.
 */
struct log_streak {
	int active;
	unsigned long count;
};
int log_streak_fail(struct log_streak *streak);	/* 1: first of a streak */
/* The failures of the streak that just ended, or 0. */
unsigned long log_streak_ok(struct log_streak *streak);

/* ------------------------------------------------------------- notify.c */

/*
 * The service manager's readiness protocol on $NOTIFY_SOCKET (systemd's
 * Type=notify).  Without that variable every call does nothing.  Each
 * message carries STATUS= with the formatted text.
 */
void notify_open(void);
void notify_close(void);
void notify_ready(const char *status_fmt, ...)
    __attribute__((format(printf, 1, 2)));
void notify_reloading(const char *status_fmt, ...)
    __attribute__((format(printf, 1, 2)));
void notify_stopping(const char *status_fmt, ...)
    __attribute__((format(printf, 1, 2)));
/* STATUS= alone, for a change of state that is neither start nor reload. */
void notify_status(const char *status_fmt, ...)
    __attribute__((format(printf, 1, 2)));
/* Half of WATCHDOG_USEC in seconds, 0 without a watchdog; WATCHDOG=1. */
double notify_watchdog_interval(void);
void notify_watchdog(void);

/* ------------------------------------------------------------- config.c */

enum check_method { CHECK_HTTP, CHECK_TCP };
enum http_method { HTTP_GET, HTTP_HEAD };
enum selection_method { SELECT_BEST_RTT, SELECT_GROUP_RTT_RR, SELECT_ALL };
enum rtt_mode { RTT_TOTAL, RTT_CONNECT };
enum failure_mode { FAILURE_NONE, FAILURE_ALL, FAILURE_SERVFAIL };
/* The operator's word on a candidate, over what its checks say. */
enum admin_state { ADMIN_AUTO, ADMIN_DRAIN, ADMIN_DOWN, ADMIN_UP };
extern const char *const admin_state_names[];	/* by enum admin_state */

/* An IP address of either family, as raw network-order bytes. */
struct ip_address {
	int family;		/* AF_INET or AF_INET6 */
	uint8_t bytes[16];
};

/* An IP address and port: a nameserver or a listener. */
struct endpoint {
	struct sockaddr_storage addr;
	socklen_t addr_len;
	char text[80];		/* "127.0.0.1:53", "[::1]:53" */
};

struct config_candidate {
	char *title;		/* lower case, no trailing dot */
	char *check_address;	/* as configured, or the default */
	char *scheme;		/* "http", "https" or "tcp" */
	char *host;		/* host part: Host header, SNI, what to resolve */
	int port;
	char *url;		/* the URL GET for http/https */
	struct ip_address *addresses;	/* fixed: `address` or an IP literal host */
	int address_count;	/* 0: resolve host through upstream */
	enum admin_state admin_state;
	int line;
};

/* HTTP statuses low to high, both included. */
struct status_range {
	int low, high;
};

/* How much of a body expect_body looks at. */
#define EXPECT_BODY_WINDOW 65536

struct config_name {
	char *title;		/* lower case, no trailing dot */
	uint8_t wire[DNS_MAX_NAME + 1];	/* lower-case wire form */
	int wire_len;
	enum check_method check_method;
	double check_frequency;
	double check_timeout;
	double check_jitter;	/* a fraction of check_frequency; 0: none */
	double recheck_frequency;	/* while a check disagrees with health */
	double idle_after;	/* unqueried this long: idle; 0: never */
	double idle_check_frequency;	/* the pace of an idle name */
	int rise;
	int fall;
	struct status_range *expect_status;	/* a lone status: low == high */
	int expect_status_count;
	enum http_method http_method;
	char *expect_body;	/* NULL: the body is discarded unread */
	char **http_headers;	/* "Name: value", sent with each check */
	int http_header_count;
	int *drain_status;	/* HTTP statuses that ask for a drain */
	int drain_status_count;
	enum selection_method selection_method;
	enum rtt_mode rtt_mode;
	double max_rtt;		/* INFINITY when unset */
	double group_rtt_threshold;	/* INFINITY when unset */
	double overprovisioning;	/* spill to the next latency group; 0: off */
	enum failure_mode failure_mode;
	uint32_t ttl;
	char *ca_file;		/* NULL: the system's CAs */
	/* HTTPS: the longest time a TLS session is resumed without a full
	 * handshake that verifies the certificate; 0: always a full one */
	double tls_full_handshake_interval;
	struct config_candidate *candidates;
	int candidate_count;
	int line;
};

struct config {
	char *file;
	struct endpoint *nameservers;
	int nameserver_count;
	int nameservers_from_resolv_conf;
	char **bind_interfaces;
	int bind_interface_count;
	int listen_port;
	double resolver_timeout;	/* one try of one nameserver */
	double resolver_total_timeout;	/* a forwarded query, all tries */
	char *data_file;	/* "" disables the store */
	/* how often what changed but health is written to the data file */
	double data_file_interval;
	/* the disk budget that can defer those writes further; 0: none */
	int data_file_bytes_per_check;
	char *user;		/* NULL: stay who we are */
	int check_history;
	double tcp_idle_timeout;
	double first_round_wait;	/* a cold start holds its listeners so long */
	int tcp_max_connections;
	int log_queries;	/* the query log on at start and reload */
	struct endpoint metrics_listen;	/* addr_len 0: no metrics served */
	/* The defaults section, read as a name without candidates (every
	 * name already holds what it takes from it); line 0: the file has
	 * none, and these are the built-in defaults. */
	struct config_name *defaults;
	struct config_name *names;
	int name_count;
};

/*
 * Parses and validates FILE.  On failure returns NULL after printing every
 * error ("FILE:LINE: reason") through report.  resolv_conf is the file the
 * default nameservers come from (normally /etc/resolv.conf).
 */
typedef void config_report_fn(const char *message);
struct config *config_load(const char *file, const char *resolv_conf,
			   config_report_fn *report);
struct config *config_load_string(const char *text, const char *resolv_conf,
				  config_report_fn *report);
void config_free(struct config *config);

/* Whether status is in the name's expect_status. */
int config_status_expected(const struct config_name *config, int status);
/* Whether a and b accept the same statuses, however written. */
int config_same_expect_status(const struct config_name *a,
			      const struct config_name *b);
/* Whether a and b send the same HTTP request and judge its body alike. */
int config_same_http_request(const struct config_name *a,
			     const struct config_name *b);

/* ------------------------------------------------------------ address.c */

int ip_address_parse(const char *text, struct ip_address *out);
void ip_address_format(const struct ip_address *ip, char *out, size_t size);
int endpoint_parse(const char *text, int default_port, struct endpoint *out);
/* "PORT" (on 127.0.0.1), "IP:PORT" or "[IPv6]:PORT": a port is required. */
int listen_endpoint_parse(const char *text, struct endpoint *out);
int endpoint_is_loopback(const struct endpoint *endpoint);
/* Whether a TCP listener on endpoint would collide with a DNS listener. */
int endpoint_takes_dns_port(const struct endpoint *endpoint,
			    const struct config *config);
int dns_name_to_wire(const char *name, uint8_t *wire, int *wire_len);
/* A port 1-65535 in decimal; -1 otherwise. */
int parse_port(const char *text, int *port);
/* "HOST:PORT", "[IPv6]:PORT", "[IPv6]" or "HOST"; port is left alone
 * when the text has none. */
int split_host_port(const char *text, char *host, size_t host_size, int *port);

/* Drops nameservers that are our own listeners; 0 if none remain. */
int config_drop_own_listeners(struct config *config, config_report_fn *report);

/* --------------------------------------------------------- activation.c */

/*
 * Listening sockets passed by the service manager (socket activation:
 * LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES, as sd_listen_fds(3) reads them).
 * activation_read takes them at start and unsets the variables.
 * activation_take gives the passed socket for endpoint and type
 * (SOCK_DGRAM or SOCK_STREAM), -1 when none was passed; a socket given
 * back (1: fd was a passed one) stays open for a later reload, as the
 * manager still holds its address.
 */
void activation_read(void);
int activation_take(const struct endpoint *endpoint, int type);
int activation_give_back(int fd);
/* Warns of each passed socket no listener took. */
void activation_log_unused(void);
void activation_close(void);

/* ----------------------------------------------------------- registry.c */

enum health { HEALTH_UNKNOWN = -1, HEALTH_DOWN = 0, HEALTH_UP = 1 };

/*
 * last_check_status: an HTTP status, 0 for a TCP success, or one of these.
 */
enum check_status {
	STATUS_TIMEOUT = -1,
	STATUS_CONNECT_ERROR = -2,	/* refused, unreachable */
	STATUS_RESPONSE_ERROR = -3,	/* malformed or empty HTTP response */
	STATUS_TLS_ERROR = -4,
	STATUS_RESOLVE_ERROR = -5,
	STATUS_OTHER_ERROR = -6,
	STATUS_BODY_MISMATCH = -7,	/* expect_body not in the body */
};

struct check;
struct candidate;
struct name;
struct resolution;

/* One checked IP address of one candidate: the unit of health. */
struct address {
	struct candidate *candidate;
	struct ip_address ip;
	char text[46];
	int health;
	int successes_in_row;
	int failures_in_row;
	double srtt;		/* smoothed RTT per rtt_mode; NAN when none */
	double last_rtt;
	double connect_time;	/* of the last success */
	double response_time;
	double last_check_time;
	double last_success_time;
	double last_failure_time;
	int last_status;
	uint64_t successes;
	uint64_t timeouts;
	uint64_t connect_errors;
	uint64_t response_errors;
	uint64_t other_errors;
	uint64_t check_count;	/* checks completed; history ring index */
	int check_changed;	/* a reload changed the check: next result decides */
	int draining;		/* the server answered with a drain_status */
	/* The operator's word on this IP in its name: the strongest
	 * admin_state of the candidates that list it (select.c sets it) */
	enum admin_state admin;
	/* select.c's placement, shown in the data file: the latency group
	 * (1 the nearest; 0 when the name does not spill) and the fraction
	 * of the family's answers that carry the address */
	int latency_group;
	double share;
	int store_dirty;	/* changed since last written to the data file */
	ev_timer timer;		/* the next check */
	struct check *check;	/* in flight, or NULL */
	/* The schedule (check.c): where in each interval this address is
	 * checked, as a fraction of it, given when it is first scheduled. */
	double phase;
	int has_phase;
	double last_started;	/* monotonic start of the last check; 0: none */
	double scheduled_period;	/* the interval the timer was set for */
	int rechecking;		/* the timer is a recheck_frequency one */
};

struct candidate {
	struct name *name;
	const struct config_candidate *config;
	struct address **addresses;
	int address_count;
	ev_timer resolve_timer;
	struct resolution *resolution;	/* in flight, or NULL */
	struct log_streak resolve_streak;
	/*
	 * [0] A, [1] AAAA: whether the addresses of that family are known,
	 * fixed or from a lookup that succeeded (even with none).
	 */
	int known[2];
};
/* The most addresses a candidate's host resolves to (and is restored with). */
#define CANDIDATE_RESOLVED_MAX 128

/*
 * The answer for one family of one name, recomputed by select.c whenever a
 * check result changes it, so a query only copies bytes.
 */
enum answer_kind { ANSWER_ADDRESSES, ANSWER_NODATA, ANSWER_FORWARD, ANSWER_SERVFAIL };

/*
 * The addresses of one latency group that take answers, as a slice of
 * the set's ips, and the bound that chooses it: a query whose point
 * (select_answer) is below it and above the previous group's bound.
 */
struct answer_group {
	int first;
	int count;
	uint64_t below;		/* of 2^32, the whole of the answers */
};

struct answer_set {
	enum answer_kind kind;
	int count;
	int capacity;		/* of ips and of groups */
	struct ip_address *ips;	/* in answer order, group after group */
	struct answer_group *groups;	/* nearest first; one unless spilling */
	int group_count;
	int rotate;		/* group_rtt_rr: answer one, rotating */
	unsigned next;		/* queries so far: the rotation position */
	int failure_mode;	/* chosen by failure_mode: none was available */
};

/*
 * What hard did with a name's queries since it started, for monitoring
 * (dns.c counts, store_writer.c writes): a reply with addresses, NODATA or
 * SERVFAIL, and which failure_mode was used when no address was
 * available (none: the query was forwarded).
 */
struct name_counters {
	uint64_t answered;	/* with addresses, failure_mode all included */
	uint64_t nodata;
	uint64_t servfail;	/* failure_mode servfail included */
	uint64_t failure_all;
	uint64_t failure_servfail;
	uint64_t failure_none;
};

struct name {
	const struct config_name *config;
	struct candidate *candidates;
	int candidate_count;
	uint64_t queries;	/* A and AAAA answered by us */
	uint64_t stored_queries;	/* as last written to the data file */
	struct name_counters counters;
	struct name_counters stored_counters;	/* as last written */
	struct answer_set answers[2];	/* [0] A, [1] AAAA */
	int stale;		/* RTTs moved since the answers were chosen */
	/*
	 * Activity (check.c): dns.c sets queried on the answer path, and
	 * check.c's sweep turns it into last_query_time and decides idle.
	 */
	int queried;
	double last_query_time;	/* wall clock; NAN: none known */
	double quiet_since;	/* unqueried since (wall clock); NAN: not yet */
	int idle;		/* checked at idle_check_frequency */
	int store_dirty;	/* last_query_time or idle not yet written */
	/* an address changed health or drain: its rows go out at once */
	int store_urgent;
};

#define REGISTRY_SHAPE_BITS 1024
struct registry {
	struct config *config;
	struct name *names;
	int name_count;
	struct name **table;	/* open addressing on the wire name */
	unsigned table_mask;
	/* a bit for each configured (wire length, label count): a quick
	 * "not configured" for most names before a lookup hashes them */
	uint64_t shapes[REGISTRY_SHAPE_BITS / 64];
};

struct registry *registry_create(struct config *config);
/* Moves every address that exists in both into new_registry, then frees old. */
void registry_take_over(struct registry *new_registry, struct registry *old);
void registry_free(struct registry *registry);
struct name *registry_lookup(const struct registry *registry,
			     const uint8_t *lower_wire, int wire_len);
/* 0 when no configured name has this wire length and label count. */
int registry_may_hold(const struct registry *registry, int wire_len,
		      int labels);
/* By title as stored: lower case, no trailing dot; NULL if none. */
struct name *registry_find_name(struct registry *registry, const char *title);
struct candidate *name_find_candidate(struct name *name, const char *title);
struct address *address_create(struct candidate *candidate,
			       const struct ip_address *ip);
void address_free(struct address *address);
/* Replaces a candidate's address list, keeping addresses that stay. */
void candidate_set_addresses(struct candidate *candidate,
			     const struct ip_address *ips, int count);
int family_index(int family);

/* ------------------------------------------------------------- select.c */

/* Recomputes name->answers[family_index] from its addresses. */
void select_update(struct name *name, int family);
void select_update_all(struct name *name);
/*
 * The answer path's part: which of set's ips one query gets, as *first
 * and the returned count (0 unless the set holds addresses).  It picks
 * a latency group by the set's shares and, for group_rtt_rr, the next
 * address of that group in turn.  No allocation; a few instructions.
 */
int select_answer(struct answer_set *set, int *first);
void select_free_answers(struct answer_set *set);
/*
 * Health bookkeeping of one finished check: rise/fall, the smoothed RTT,
 * counters.  Returns 1 when the address changed health.
 */
int select_record_result(struct address *address, int status, int success,
			 double connect_time, double total_time, double now);
/* Up by its checks and within max_rtt, admin_state aside. */
int address_available(const struct address *address);
/*
 * Where an address stands in the answers, best first: the healthy are
 * answered; the draining only when no healthy one remains; the rest
 * only by failure_mode = all; admin down never.
 */
enum address_tier { TIER_HEALTHY, TIER_DRAINING, TIER_UNAVAILABLE, TIER_ADMIN_DOWN };
enum address_tier address_tier(const struct address *address);
/* Whether an HTTP status is one of the name's drain_status. */
int select_drain_status(const struct config_name *config, int status);
extern const double select_rtt_weight;

/* ---------------------------------------------------------------- dns.c */

enum dns_verdict { DNS_DROP, DNS_REPLY, DNS_FORWARD };

/* What dns_answer did with a query, in more detail, for the query log. */
enum dns_outcome {
	OUTCOME_ANSWERED,		/* with the selected addresses */
	OUTCOME_NODATA,
	OUTCOME_FAILURE_ALL,		/* failure_mode all: every address */
	OUTCOME_FAILURE_SERVFAIL,
	OUTCOME_FAILURE_FORWARD,	/* failure_mode none: forwarded */
	OUTCOME_NO_ADDRESS,		/* SERVFAIL: ANY with nothing to give, or
					 * every address set down */
	OUTCOME_FORWARD,		/* not a name (or type) of ours */
	OUTCOME_ERROR,			/* FORMERR, NOTIMP, BADVERS */
	OUTCOME_DROP_SHORT,		/* shorter than a header */
	OUTCOME_DROP_RESPONSE,		/* QR set */
};
/*
 * What the last dns_answer call saw and did beyond its verdict, set on
 * every call (a store or two): for a forwarded query's way back and for
 * the query log.
 */
struct dns_last_query {
	enum dns_outcome outcome;
	int had_opt;		/* the query carried an OPT record */
};
extern struct dns_last_query dns_last;

/*
 * hard's totals since it started, for monitoring: plain increments where
 * each thing happens (dns.c, server.c, store.c), copied into the data
 * file with each flush.  Nothing on the answer path does more.
 */
enum drop_reason {
	DROP_SHORT,		/* shorter than a header */
	DROP_RESPONSE,		/* QR set */
	DROP_OVERSIZE,		/* a UDP datagram over 4096 bytes */
	DROP_TCP_LENGTH,	/* a TCP length under 12 or over 4096 */
	DROP_REASON_COUNT
};
enum malformed_reason {
	MALFORMED_FORMERR, MALFORMED_NOTIMP, MALFORMED_BADVERS,
	MALFORMED_REASON_COUNT
};
enum tcp_close_reason {
	TCP_CLOSED_LIMIT,	/* to make room at tcp_max_connections */
	TCP_CLOSED_IDLE,	/* tcp_idle_timeout */
	TCP_CLOSED_SHED,	/* the most unsent output over the total */
	TCP_CLOSED_REASON_COUNT
};
struct totals {
	uint64_t queries[2];	/* [0] UDP, [1] TCP: every message received */
	uint64_t forwarded;
	uint64_t forward_failures;	/* answered SERVFAIL for want of upstream */
	uint64_t dropped[DROP_REASON_COUNT];
	uint64_t malformed[MALFORMED_REASON_COUNT];
	int64_t tcp_open;	/* a gauge: connections open now */
	uint64_t tcp_accepted;
	uint64_t tcp_refused;	/* accept failed: out of descriptors or memory */
	uint64_t tcp_closed[TCP_CLOSED_REASON_COUNT];
	uint64_t checks;
	uint64_t checks_failed;
};
extern struct totals totals;

/*
 * The answer path: query bytes in, response bytes out, with no I/O and
 * no allocation.  DNS_FORWARD leaves the query to upstream.c;
 * *client_limit is then the largest reply the client takes over UDP.
 */
enum dns_verdict dns_answer(struct registry *registry, const uint8_t *query,
			    size_t query_len, int over_tcp, uint8_t *response,
			    size_t response_size, size_t *response_len,
			    size_t *client_limit);
/* A reply with rcode and the query's question, or 0 if none can be made. */
size_t dns_error_reply(const uint8_t *query, size_t query_len, int rcode,
		       uint8_t *response, size_t response_size);
/* Cuts an upstream reply to fit limit, setting TC; returns its length. */
size_t dns_truncate_reply(uint8_t *reply, size_t reply_len, size_t limit,
			  int client_opt);
/*
 * A reply's 12-bit RCODE (RFC 6891 section 6.1.3): the OPT record's upper
 * bits, if it has one, above the header's four.  Counters keep 0 to 23
 * (the assigned ones) apart and DNS_RCODE_BUCKETS - 1 for any higher.
 */
#define DNS_RCODE_BUCKETS 25
int dns_reply_rcode(const uint8_t *reply, size_t reply_len);
/* NOERROR, ..., BADVERS, ... BADCOOKIE for 0 to 23 (RCODE11 to RCODE15
 * for 11 to 15); NULL for any other. */
const char *dns_rcode_name(int rcode);

/*
 * hard's own answer for a configured name that a relayed reply reaches
 * (relay.c), as dns_answer writes it for an A, AAAA or ANY query of
 * wire_name, and what it is; nothing is counted.
 */
enum dns_outcome dns_name_answer(struct name *name, const uint8_t *wire_name,
				 int wire_len, uint16_t type, uint8_t *response,
				 size_t response_size, size_t *response_len);

/* -------------------------------------------------------------- relay.c */

/*
 * The last step of a forwarded query's way back: the upstream's reply
 * (with the client's ID) becomes what the client gets.  The records of
 * configured names in it become hard's own (a CNAME chain that reaches
 * one, their A and AAAA records, the address hints of SVCB and HTTPS
 * records), and edns-tcp-keepalive speaks of hard's connection to the
 * client: removed over UDP, tcp_idle_timeout over TCP.  Returns the
 * reply to send, reply itself (changed in place, or not at all, as for
 * nearly every reply) or relay.c's own buffer, valid until the next
 * call; *reply_len is its length.  It is not cut to the client's size.
 */
uint8_t *relay_reply(struct registry *registry, uint8_t *reply,
		     size_t *reply_len, int over_tcp, double tcp_idle_timeout);
/*
 * What the last relay_reply did beyond keepalive, for the query log:
 * whether it changed the reply's records or rcode, the upstream's rcode,
 * and the configured name that made it (its title).
 */
struct relay_last {
	int rewritten;
	int upstream_rcode;
	const char *name;
};
extern struct relay_last relay_last;

/* ----------------------------------------------------------- querylog.c */

/* On with -d or log_queries; SIGUSR1 toggles it.  Test it before calling. */
extern int query_log_enabled;
void query_log_set(int on, const char *why);
void query_log_toggle(void);
/* One line: who asked what, what hard did, and the reply (NULL: none). */
void query_log_write(const struct sockaddr_storage *client, int over_tcp,
		     const uint8_t *query, size_t query_len,
		     enum dns_outcome outcome, const uint8_t *reply,
		     size_t reply_len);

/* ------------------------------------------------------------- server.c */

struct dns_server;
/* Binds every listener (reusing previous's sockets where they match). */
struct dns_server *dns_server_start(struct ev_loop *loop,
				    const struct config *config,
				    struct dns_server *previous);
void dns_server_configure(struct dns_server *server, const struct config *config);
void dns_server_stop(struct dns_server *server);
void dns_server_set_registry(struct registry *registry);
/* descriptors.c: the most TCP clients served at once, the open file limit
 * raised as far as it may be first (logged when it falls short). */
int descriptors_check(const struct config *config);

/* Bind the next server's listeners without reading them, until release. */
void dns_server_hold(void);
void dns_server_release(struct dns_server *server);

/* ----------------------------------------------------------- upstream.c */

/*
 * Called with the upstream's reply (ID already the client's; the buffer
 * is the caller's to change until it returns) or, when reply is NULL,
 * after upstream failed; the caller answers SERVFAIL.
 */
typedef void upstream_reply_fn(void *context, uint8_t *reply,
			       size_t reply_len);
typedef void upstream_addresses_fn(void *context, int ok,
				   const struct ip_address *ips, int count,
				   double ttl);

int upstream_start(struct ev_loop *loop, const struct config *config);
int upstream_reconfigure(const struct config *config);
void upstream_stop(void);
/* The most sockets forwarding can hold at once under config. */
int upstream_descriptors_needed(const struct config *config);
int upstream_forward(const uint8_t *query, size_t query_len, int over_tcp,
		     upstream_reply_fn *done, void *context);
/* One nameserver's counters since it was configured, for monitoring. */
struct upstream_counters {
	char nameserver[80];	/* as in struct endpoint */
	int up;
	uint64_t queries;	/* tries sent: forwarded, probes, lookups */
	uint64_t replies[DNS_RCODE_BUCKETS];	/* by rcode, see dns_reply_rcode */
	uint64_t timeouts;	/* no reply within resolver_total_timeout */
	uint64_t errors;	/* refused or failed at once */
	double srtt;		/* smoothed reply time; NAN before a reply */
};
/* Fills out with up to max nameservers, in order; returns how many. */
int upstream_get_counters(struct upstream_counters *out, int max);
/* Resolves host's records of family (A or AAAA); done is called once. */
void upstream_resolve(const char *host, int family, upstream_addresses_fn *done,
		      void *context);

/* -------------------------------------------------------------- check.c */

int check_start_all(struct ev_loop *loop, struct registry *registry);
/*
 * The schedule's arithmetic, without timers, for check.c and its tests.
 * Times are monotonic seconds; origin is where every address's grid of
 * check times starts.  phase_of(n) is the phase of the n-th address
 * ever scheduled: a low-discrepancy sequence turned by rotation, so any
 * run of consecutive addresses is spread evenly over the interval.
 */
double schedule_phase_of(unsigned long sequence, double rotation);
/* The delay of an address's first check: at once, spread over at most a
 * second when its health is unknown; at its phase of the interval when
 * restored from the data file. */
double schedule_first_delay(double phase, double frequency, int restored);
/* The first grid time (origin + (phase + k) * period) at or after
 * not_before, moved by jitter * period * (u - 0.5) / 2, u in [0, 1). */
double schedule_grid_start(double origin, double phase, double period,
			   double not_before, double jitter, double u);
/* The interval the name's addresses are checked at now. */
double schedule_period(const struct name *name);
/* Whether the check just recorded disagrees with the address's health. */
int schedule_disagrees(const struct address *address, int success);
/* When the next check of address starts after one that started at
 * started; sets address->rechecking. */
double schedule_next_start(struct address *address, int success,
			   double started, double origin, double u);
/* One sweep of a name's activity at wall time now: what changed. */
enum activity_change { ACTIVITY_SAME, ACTIVITY_IDLED, ACTIVITY_WOKEN };
enum activity_change check_name_activity(struct name *name, double now);
void check_cancel(struct address *address);
/* Cancels a check in flight and starts a new one at once. */
void check_restart(struct address *address);
void check_stop(void);
/*
 * A cold start: 1 when some address has neither been checked since the
 * start nor restored from a recent check (or a host name has not
 * resolved), and done() is called once every one has; 0 when none is
 * missing.  check_first_round_forget() drops done (the wait timed out).
 */
int check_first_round_wait(void (*done)(void));
void check_first_round_forget(void);
void resolve_start(struct candidate *candidate, double delay);
void resolve_cancel(struct candidate *candidate);

/* check_http.c and check_tcp.c: one check, reporting through check_done */
struct check {
	struct address *address;
	double started;		/* monotonic seconds */
	enum check_method transport_kind;
	void *transport;	/* the HTTP transfer or the TCP probe */
};
int check_http_init(struct ev_loop *loop);
void check_http_cleanup(void);
/* A reload: every HTTPS check's next handshake is a full one. */
void check_http_reloaded(void);
/*
 * 0 when started (or postponed: check_postpone), or the STATUS_* of a
 * check that failed at once.
 */
int check_http_start(struct check *check);
void check_http_cancel(struct check *check);
int check_tcp_start(struct ev_loop *loop, struct check *check);
void check_tcp_cancel(struct ev_loop *loop, struct check *check);
void check_done(struct check *check, int status, int success,
		double connect_time, double total_time);
/* Whether a socket that cannot be opened for error is hard's own shortage. */
int check_short_of_sockets(int error);
/* A check that got no socket for hard's own shortage: tried again soon. */
void check_postpone(struct check *check, int error);
double monotonic_now(void);
double wall_now(void);

/* -------------------------------------------------------------- store.c */

/*
 * The data file.  Results are kept in memory and written behind, in one
 * transaction per batch; a data file that cannot be written is retried
 * and nothing is lost while the process lives.
 */
int store_open(struct ev_loop *loop, const struct config *config,
	       const char *user);
/* For -t: 0 when a start could open or make the data file as it is now
 * (changing nothing), else -1 and store_open_error() says why. */
int store_check(const struct config *config, const char *user);
/* Why store_open failed, e.g. "Is a directory". */
const char *store_open_error(void);
/* While the data file cannot be opened, why ("" when it can); changed()
 * is called from the loop whenever that starts or stops being so. */
const char *store_problem(void);
void store_on_problem_change(void (*changed)(void));
void store_restore(struct registry *registry);
void store_start(void);
/* Before the daemon forks: the data file's connection stays behind. */
void store_before_fork(void);
/* health_changed: the check changed the address's health or drain. */
void store_record_check(const struct address *address, int success,
			int health_changed);
void store_note_addresses_changed(void);
void store_reconfigure(const struct config *config, struct registry *registry);
/* A reload that failed: the daemon table and the metrics say so. */
void store_note_reload_failed(void);
void store_close(void);

/*
 * The daemon's own state for monitoring (the daemon table, metrics.c):
 * store.c keeps it, as it sees every load of the configuration and the
 * data file's writes.
 */
struct daemon_status {
	const char *config_file;
	double start_time;
	double config_load_time;	/* the last load that succeeded */
	double reload_time;		/* the last load tried: start or SIGHUP */
	int reload_ok;
	int has_data_file;		/* data_file is not "" */
	int data_file_writable;	/* open, and its last write went in */
	double data_file_write_time;	/* its last write that went in; NAN: none */
};
void store_daemon_status(struct daemon_status *out);

/* ---------------------------------------------- metrics.c, metrics_text.c */

/*
 * GET /metrics on metrics_listen: hard's state in the Prometheus text
 * format (version 0.0.4), from memory, served from the loop (metrics.c)
 * in parts that metrics_text.c writes a name at a time, so a large text
 * never holds the loop for long.  The metric names and labels are those
 * of contrib/har-status --prometheus.
 */
#define METRICS_MAX_CONNECTIONS 8	/* scrapes served at once */
/* Binds config's metrics_listen (a failure is logged and retried). */
void metrics_start(struct ev_loop *loop, const struct config *config);
/* A reload: the same endpoint keeps its socket; another is bound anew. */
void metrics_reconfigure(const struct config *config);
void metrics_set_registry(struct registry *registry);
void metrics_stop(void);

/* metrics_text.c: one scrape's text, written a part at a time. */
struct metrics_buffer {
	char *data;
	size_t length;
	size_t capacity;
	int failed;		/* out of memory: the text is not whole */
};
struct metrics_text {
	int family;		/* the family being written */
	int item;		/* its next name or nameserver */
	int header_written;	/* its HELP and TYPE lines */
	struct daemon_status daemon;
	struct upstream_counters *nameservers;
	int nameserver_count;
};
/* Takes the daemon's and the nameservers' state for one scrape. */
int metrics_text_begin(struct metrics_text *text);
/* Appends the next part to out, whole names at a time, until out holds
 * at least want bytes or the text ends (returns 1). */
int metrics_text_next(struct metrics_text *text, const struct registry *registry,
		      struct metrics_buffer *out, size_t want);
void metrics_text_end(struct metrics_text *text);

/* -------------------------------- config internals: config*.c only */

/*
 * The allowed range of a number in har.conf (config_values.c has the
 * table, har.conf.5 documents it).
 */
struct number_range {
	const char *option;	/* as libconfuse spells it: "name|ttl" */
	double low, high;
	const char *unit;	/* "seconds", or NULL for a plain count */
};

/* The keywords each choice option takes, in the order of its enum. */
extern const char *const check_methods[];
extern const char *const selection_methods[];
extern const char *const rtt_modes[];
extern const char *const failure_modes[];
extern const char *const http_methods[];

const struct number_range *find_number_range(const char *name);
/* "200" or "200-299"; 0 when it is one of them. */
int parse_status_range(const char *text, long *low, long *high);
/* Records a mistake at LINE of the file being parsed (0: no line). */
void config_report(int line, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Sets a validator on every option that has one. */
struct cfg_t;
void config_install_validators(struct cfg_t *cfg);

/* ---------------------------------- store internals: store*.c only */

/*
 * What store.c (the loop side) and store_writer.c (the writer thread and
 * its SQL) share: a file, its writer and the batches handed to it.  No
 * other module uses these.
 */
struct sqlite3;
struct sqlite3_stmt;

#define FLUSH_INTERVAL 0.5
#define REOPEN_INTERVAL 5.0
/* How long a file being closed (SIGTERM, a new data_file) may stay
 * unwritable before what it was still to write is given up. */
#define CLOSE_PATIENCE 2.0
/* How long a start waits for another hard's lock on its data file: a hard
 * that is stopping lets go within CLOSE_PATIENCE, the rest is for a
 * loaded machine. */
#define LOCK_PATIENCE (CLOSE_PATIENCE + 3.0)

enum statement {
	UPSERT_NAME,
	UPSERT_CANDIDATE,
	INSERT_CHECK,
	STATEMENT_COUNT
};

/*
 * What one flush writes, copied out of the live state so the writer
 * thread never touches it: the addresses that changed, the names whose
 * counters moved, the check history, and (after a reload or a new
 * resolution) every configured name and the keys of every address still
 * checked.
 */
struct row_key {
	char name[DNS_MAX_NAME + 1];
	char candidate[DNS_MAX_NAME + 1];
	char ip[46];
};

struct history_row {
	struct row_key key;
	long long slot;
	double time;
	int status;
	int success;
	double connect_time;
	double response_time;
};

struct candidate_row {
	struct row_key key;
	int family;
	int health;
	int has_status;
	int status;
	double last_check_time, last_success_time, last_failure_time;
	double connect_time, response_time, rtt, last_rtt;
	uint64_t successes, timeouts, connect_errors, response_errors;
	uint64_t other_errors, checks;
	const char *admin_state;
	int draining;
	int latency_group;	/* 0: NULL */
	double share;
};

struct name_row {
	char name[DNS_MAX_NAME + 1];
	uint64_t queries;
	double last_query_time;	/* NAN: none known */
	int idle;
	const char *selection_method, *rtt_mode, *failure_mode;
	double max_rtt, group_rtt_threshold, overprovisioning;
	uint32_t ttl;
};

struct batch {
	struct candidate_row *candidates;
	int candidate_count;
	struct name_row *names;
	int name_count;
	struct history_row *history;
	int history_count;
	struct row_key *live;	/* NULL: no pruning this time */
	int live_count;
	int history_slots;	/* check_history when the batch was taken */
	struct counters_snapshot *counters;	/* NULL: unchanged */
	struct name_counters_row *name_counters;
	int name_counters_count;
	struct batch *next;	/* in a writer's queue */
};

#define COUNTERS_MAX_NAMESERVERS 32

struct counters_snapshot {
	char version[16];
	long pid;
	double start_time;
	double config_load_time;
	double reload_time;
	int reload_ok;
	char config_file[4096];
	struct totals totals;
	struct upstream_counters nameservers[COUNTERS_MAX_NAMESERVERS];
	int nameserver_count;
};

struct name_counters_row {
	char name[DNS_MAX_NAME + 1];
	struct name_counters counters;
};

/*
 * One data file and the thread that writes it.  The loop hands it batches
 * through the queue; everything else in it is the writer thread's once
 * that thread runs (before, at start, the loop opens the file and reads
 * the previous state from it).
 */
struct store_file {
	char *path;
	struct sqlite3 *db;
	struct sqlite3_stmt *statements[STATEMENT_COUNT];
	int system_error;	/* errno of the last failed open, or 0 */
	int wal_frames;		/* in the WAL after the last commit */
	/* the counters as last committed; NULL: none since the open */
	struct counters_snapshot *counters_written;
	int lock_fd;		/* the flock on DATA_FILE.lock, or -1 */
	long lock_holder;	/* the pid that had it when taking it failed */
	int lock_error;		/* errno when the lock file could not be made */
	struct log_streak write_streak;
	struct log_streak open_streak;
	pthread_t thread;
	int thread_running;	/* the loop's own flag */
	pthread_mutex_t lock;	/* guards the eight fields below */
	pthread_cond_t wake;
	struct batch *queue;	/* handed over, not yet written, oldest first */
	int closing;		/* write what is queued, then end */
	double give_up_at;	/* monotonic time, once closing */
	int finished;		/* the thread has ended and may be joined */
	int cannot_open;	/* the last open failed: state in memory only */
	int write_failed;	/* the last write did not go in */
	double last_write_time;	/* wall clock of the last that did; NAN: none */
	long long last_batch_bytes;	/* what it cost the disk; -1: unknown */
	struct store_file *next;	/* in closing_files */
};

extern struct ev_loop *store_loop;
extern ev_async file_closed;		/* a closing file's thread ended */

/* store.c */
void batch_free(struct batch *batch);
void batches_free(struct batch *batch);
void set_owner(const char *path);
int make_directory(const char *path, char *failed, size_t size);

/* store_lock.c: one hard per data file */
/* 0: taken (or held already); 1: another process has it, *holder its pid
 * (0 if unknown); -1: the lock file cannot be opened (errno). */
int lock_take(struct store_file *file, long *holder);
/* Writes this process's pid into the lock file (again, after a fork). */
void lock_note_pid(struct store_file *file);
void lock_release(struct store_file *file);
const char *lock_holder_text(long holder, char *out, size_t size);

/* store_writer.c */
int open_database(struct store_file *file);
void close_database(struct store_file *file);
void *writer_main(void *argument);

/* ------------------------------------ upstream.c and upstream_udp.c */

/*
 * What upstream.c (which nameserver, when, how often) and upstream_udp.c
 * (the UDP sockets a try leaves from) share; no other file uses it.
 */
/* Tries a UDP socket sends before the next one goes from a new socket
 * (a new source port). */
#define UPSTREAM_QUERIES_PER_SOCKET 32
/* The UDP sockets forwarding holds at once, every nameserver together.
 * At the limit a nameserver's current socket takes more than
 * UPSTREAM_QUERIES_PER_SOCKET tries rather than a new one being opened;
 * a nameserver without a socket may always open one. */
#define UPSTREAM_UDP_SOCKETS_MAX 256

struct try;		/* upstream.c: one send of a query to one nameserver */
struct udp_socket;	/* upstream_udp.c */

/* A try's place on a UDP socket, while it is in flight. */
struct udp_try {
	struct try *owner;
	struct udp_socket *sock;	/* NULL when not in flight */
	struct udp_try *prev, *next;	/* the socket's tries in flight */
	const uint8_t *question;	/* the query's, for matching the reply */
	size_t question_len;		/* name, type and class */
	uint16_t id;
};

/* The UDP sockets to one nameserver. */
struct udp_link {
	const struct endpoint *endpoint;
	struct udp_socket *current;	/* takes the next try; NULL: opens one */
	struct udp_socket *sockets;	/* every open one, current included */
	int refused;			/* an errno a send got, for refuse_event */
	ev_timer refuse_event;		/* fed, never started: fails the tries */
};

/* A random query ID (RFC 5452), from the kernel's random source. */
uint16_t upstream_random_id(void);

void udp_start(struct ev_loop *loop);
void udp_link_init(struct udp_link *link, const struct endpoint *endpoint);
/* Once no try of the link is in flight (none is then open). */
void udp_link_close(struct udp_link *link);
/*
 * Sends query from one of the link's sockets, with an ID of its own
 * written into the query.  0: in flight until upstream_udp_done or
 * udp_cancel.  Otherwise nothing is in flight: a negative errno when hard
 * itself could not send (no socket: logged here), a positive one when the
 * nameserver cannot be reached.
 */
int udp_send(struct udp_link *link, struct udp_try *try, uint8_t *query,
	     size_t query_len);
/* Takes a try out of flight without a call of upstream_udp_done. */
void udp_cancel(struct udp_try *try);
/* Ends every try of the link with ECANCELED (hard is stopping). */
void udp_link_cancel_all(struct udp_link *link);

/*
 * upstream.c: the end of a UDP try, out of flight by now: its reply
 * (error 0), ECANCELED, or the error the socket got, which every try in
 * flight to that nameserver gets at once (an ICMP port unreachable is
 * reported to one socket call, whichever query it was for).
 */
void upstream_udp_done(struct udp_try *try, int error, const uint8_t *reply,
		       size_t reply_len);

#endif
