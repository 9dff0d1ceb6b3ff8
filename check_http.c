/*
 * check_http.c - HTTP and HTTPS checks with libcurl's multi interface on
 * hard's libev loop: curl tells us which sockets to watch and when its
 * next timeout is; we tell curl when a socket is ready or time is up.
 *
 * Each check connects to one address while the URL keeps its host name,
 * so the Host header, SNI and certificate verification are those of the
 * URL (CURLOPT_CONNECT_TO); a Host line of http_headers changes the
 * header alone.  Every check makes a new connection, closed when it ends:
 * a check that rode on an old connection would prove nothing.
 *
 * What a check costs is paid on every host, all the time, so what can
 * outlive a check does: curl handles (reset between checks), the parsed
 * CAs of each ca_file, and for HTTPS the TLS sessions that spare most
 * checks a full handshake, within the bounds set out at struct tls_target.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "har.h"

struct curl_socket_watch {
	ev_io io;
	curl_socket_t fd;
};

enum body_verdict { BODY_UNJUDGED, BODY_FOUND, BODY_MISSING };

/* The two pools of idle curl handles: see handle_take. */
enum handle_pool { POOL_UNSHARED, POOL_SHARED, POOL_COUNT };

struct tls_target;
struct ca_store;

/*
 * One check in flight: the curl handle and what curl reads from us for
 * as long as it runs.  With expect_body, the string is matched as the
 * body streams in (Knuth-Morris-Pratt, so a match split between two
 * reads is found without keeping the body): fallback[i] is how much of
 * the string still matches after a mismatch following i + 1 matched bytes.
 * The string is copied, as a reload may free the configuration it came
 * from while the check runs.
 */
struct http_transfer {
	CURL *easy;
	struct check *check;
	struct curl_slist *connect_to;
	struct curl_slist *headers;
	enum handle_pool pool;	/* where easy came from and goes back to */
	struct ca_store *ca;	/* HTTPS: the CAs it verifies with */
	struct tls_target *target;	/* HTTPS: whose sessions it may use */
	CURLSH *share;		/* HTTPS: target's sessions it uses, counted
				 * in target->in_use; NULL: none */
	int full_handshake;	/* HTTPS: no session was offered */
	int socket_error;	/* errno when its socket could not be opened */
	unsigned long reload_generation;	/* HTTPS: at its start */
	unsigned long ca_generation;
	enum body_verdict verdict;
	size_t body_seen;
	size_t matched;
	size_t expected_length;
	const char *expected;	/* NULL: the body is discarded */
	size_t fallback[];	/* then the expected string */
};

static struct ev_loop *http_loop;
static CURLM *multi;
static ev_timer multi_timer;

static size_t
discard_body(char *data, size_t size, size_t count, void *context)
{
	(void)data;
	(void)context;
	return size * count;
}

/*
 * Stops the transfer (curl then ends it with CURLE_WRITE_ERROR) as soon
 * as the string is found or the window is read: the rest of the body
 * could change nothing.
 */
static size_t
search_body(char *data, size_t size, size_t count, void *context)
{
	struct http_transfer *transfer = context;
	size_t length = size * count;
	size_t look = EXPECT_BODY_WINDOW - transfer->body_seen;

	if (look > length)
		look = length;
	for (size_t i = 0; i < look; i++) {
		while (transfer->matched > 0 &&
		       data[i] != transfer->expected[transfer->matched])
			transfer->matched = transfer->fallback[transfer->matched - 1];
		if (data[i] == transfer->expected[transfer->matched])
			transfer->matched++;
		if (transfer->matched == transfer->expected_length) {
			transfer->verdict = BODY_FOUND;
			return 0;
		}
	}
	transfer->body_seen += look;
	if (transfer->body_seen >= EXPECT_BODY_WINDOW) {
		transfer->verdict = BODY_MISSING;
		return 0;
	}
	return length;
}

static void
build_fallback(struct http_transfer *transfer)
{
	const char *expected = transfer->expected;
	size_t matched = 0;

	transfer->fallback[0] = 0;
	for (size_t i = 1; i < transfer->expected_length; i++) {
		while (matched > 0 && expected[i] != expected[matched])
			matched = transfer->fallback[matched - 1];
		if (expected[i] == expected[matched])
			matched++;
		transfer->fallback[i] = matched;
	}
}

static struct http_transfer *
transfer_new(const char *expected)
{
	size_t length = expected ? strlen(expected) : 0;
	struct http_transfer *transfer =
	    calloc(1, sizeof(*transfer) + length * sizeof(size_t) + length + 1);
	char *copy;

	if (!transfer)
		return NULL;
	if (length == 0)	/* no expect_body: the body is discarded */
		return transfer;
	copy = (char *)(transfer->fallback + length);
	memcpy(copy, expected, length + 1);
	transfer->expected = copy;
	transfer->expected_length = length;
	build_fallback(transfer);
	return transfer;
}

/* ------------------------------------------------------- easy handles */

/*
 * Finished transfers' handles, reset and kept for the next checks: a
 * handle costs more to make than to reset.  Reset clears every option,
 * so nothing set for one check (headers, HEAD, the body reader) reaches
 * the next; connections are not the handle's but the multi's, and
 * CURLOPT_FORBID_REUSE closes each one when its check ends.
 *
 * A handle stays on one side for its life: it checks either always
 * with a share handle of TLS sessions (POOL_SHARED) or never
 * (POOL_UNSHARED: HTTP, and HTTPS offering no session).  libcurl (7.88)
 * gives a handle that starts a transfer without a share a TLS session
 * cache of its own, which a reset keeps and which CURLOPT_SHARE then
 * replaces without freeing: a handle passed from an HTTP check to an
 * HTTPS one lost that cache, about 1 KB, every time.  An unshared
 * handle's own cache never holds a session: HTTP makes none, and its
 * HTTPS checks turn the cache off.
 */
#define IDLE_HANDLES_KEPT 256

static CURL *idle_handles[POOL_COUNT][IDLE_HANDLES_KEPT];
static int idle_handle_count[POOL_COUNT];

static CURL *
handle_take(enum handle_pool pool)
{
	if (idle_handle_count[pool] > 0)
		return idle_handles[pool][--idle_handle_count[pool]];
	return curl_easy_init();
}

static void
handle_give_back(CURL *easy, enum handle_pool pool)
{
	if (idle_handle_count[pool] == IDLE_HANDLES_KEPT) {
		curl_easy_cleanup(easy);
		return;
	}
	curl_easy_setopt(easy, CURLOPT_SHARE, NULL);
	curl_easy_reset(easy);
	idle_handles[pool][idle_handle_count[pool]++] = easy;
}

static void
handles_free(void)
{
	for (int pool = 0; pool < POOL_COUNT; pool++)
		while (idle_handle_count[pool] > 0)
			curl_easy_cleanup(idle_handles[pool][--idle_handle_count[pool]]);
}

/* ----------------------------------------------------------- CA stores */

/*
 * The CAs of each ca_file (path NULL: curl's own default bundle and
 * directory), parsed once and handed to each HTTPS check's TLS context
 * instead of curl parsing the file for every check.  A file is looked at
 * (stat) at every check and parsed again when it is another file or was
 * written; each parse has its own generation, which ends the TLS sessions
 * verified with the one before.  A file that cannot be read or parsed
 * fails its checks, is warned about once (until its state changes) and
 * is not parsed again until it changes.  Stores are kept for the life of
 * hard, one per ca_file path ever configured: few, and small.
 */
enum ca_problem { CA_FINE, CA_MISSING, CA_UNPARSABLE };

struct ca_store {
	char *path;
	X509_STORE *store;	/* NULL until loaded, or when the file is bad */
	dev_t device;		/* the file last parsed, good or bad */
	ino_t inode;
	off_t size;
	struct timespec modified;
	struct timespec changed;
	unsigned long generation;
	enum ca_problem problem;
	int missing_errno;	/* CA_MISSING: why */
	struct ca_store *next;
};

static struct ca_store *ca_stores;
static char *default_ca_file;	/* curl's built-in defaults, or NULL */
static char *default_ca_directory;
static unsigned long ca_generations;

static int
same_file(const struct ca_store *ca, const struct stat *info)
{
	return ca->device == info->st_dev && ca->inode == info->st_ino &&
	    ca->size == info->st_size &&
	    ca->modified.tv_sec == info->st_mtim.tv_sec &&
	    ca->modified.tv_nsec == info->st_mtim.tv_nsec &&
	    ca->changed.tv_sec == info->st_ctim.tv_sec &&
	    ca->changed.tv_nsec == info->st_ctim.tv_nsec;
}

static void
remember_file(struct ca_store *ca, const struct stat *info)
{
	ca->device = info->st_dev;
	ca->inode = info->st_ino;
	ca->size = info->st_size;
	ca->modified = info->st_mtim;
	ca->changed = info->st_ctim;
}

static X509_STORE *
ca_store_load(const char *path)
{
	const char *file = path ? path : default_ca_file;
	X509_STORE *store = X509_STORE_new();

	if (!store) {
		log_error("out of memory reading the CAs of %s", file ? file : "curl");
		return NULL;
	}
	/* As curl sets on the store it would load: a ca_file may hold an
	 * intermediate or the server's own certificate as its anchor. */
	X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN |
			     X509_V_FLAG_TRUSTED_FIRST);
	if (file && X509_STORE_load_file(store, file) != 1) {
		ERR_clear_error();
		X509_STORE_free(store);
		return NULL;
	}
	/* Certificates in the directory are read when a chain needs them,
	 * as curl would. */
	if (!path && default_ca_directory &&
	    X509_STORE_load_path(store, default_ca_directory) != 1)
		ERR_clear_error();
	return store;
}

static struct ca_store *
ca_store_find(const char *path)
{
	struct ca_store *ca;

	for (ca = ca_stores; ca; ca = ca->next)
		if (path ? ca->path && strcmp(ca->path, path) == 0 : !ca->path)
			return ca;
	ca = calloc(1, sizeof(*ca));
	if (ca && path && !(ca->path = strdup(path))) {
		free(ca);
		ca = NULL;
	}
	if (!ca) {
		log_error("out of memory keeping the CAs of %s", path ? path : "curl");
		return NULL;
	}
	ca->next = ca_stores;
	ca_stores = ca;
	return ca;
}

/* The file is bad: its checks fail, with one warning per change of why. */
static void
ca_store_fail(struct ca_store *ca, const char *file, enum ca_problem problem,
	      int error)
{
	X509_STORE_free(ca->store);
	ca->store = NULL;
	if (ca->problem == problem &&
	    (problem != CA_MISSING || ca->missing_errno == error))
		return;
	ca->problem = problem;
	ca->missing_errno = error;
	if (problem == CA_MISSING)
		log_warning("ca_file %s: %s; its HTTPS checks fail", file,
			    strerror(error));
	else
		log_warning("ca_file %s: no certificate could be read from it; "
			    "its HTTPS checks fail", file);
}

/* The store for a check of this ca_file, up to date, or NULL. */
static struct ca_store *
ca_store_get(const char *path)
{
	struct ca_store *ca = ca_store_find(path);
	const char *file = path ? path : default_ca_file;
	struct stat info;
	X509_STORE *store;

	if (!ca)
		return NULL;
	if (file && stat(file, &info) != 0) {
		ca_store_fail(ca, file, CA_MISSING, errno);
		ca->generation = 0;	/* whatever comes back is parsed */
		return NULL;
	}
	if (ca->generation > 0 && (!file || same_file(ca, &info)))
		return ca->store ? ca : NULL;	/* parsed already, good or bad */
	if (file)
		remember_file(ca, &info);
	ca->generation = ++ca_generations;
	store = ca_store_load(path);
	if (!store) {
		ca_store_fail(ca, file, CA_UNPARSABLE, 0);
		return NULL;
	}
	if (ca->problem != CA_FINE)
		log_info("ca_file %s: read again", file);
	ca->problem = CA_FINE;
	X509_STORE_free(ca->store);
	ca->store = store;
	return ca;
}

static void
ca_stores_free(void)
{
	while (ca_stores) {
		struct ca_store *ca = ca_stores;

		ca_stores = ca->next;
		X509_STORE_free(ca->store);
		free(ca->path);
		free(ca);
	}
	free(default_ca_file);
	free(default_ca_directory);
	default_ca_file = default_ca_directory = NULL;
}

/* curl's built-in CA bundle and directory, which a check without ca_file uses. */
static void
find_default_cas(void)
{
	CURL *easy = curl_easy_init();
	char *file = NULL, *directory = NULL;

	if (!easy)
		return;
	curl_easy_getinfo(easy, CURLINFO_CAINFO, &file);
	curl_easy_getinfo(easy, CURLINFO_CAPATH, &directory);
	if (file)
		default_ca_file = strdup(file);
	if (directory)
		default_ca_directory = strdup(directory);
	curl_easy_cleanup(easy);
}

/*
 * curl's hook into each new TLS context: verification uses the parsed
 * store.  curl checks the verification's result itself after the
 * handshake, as with a store it had loaded.
 */
static CURLcode
use_ca_store(CURL *easy, void *ssl_context, void *context)
{
	struct ca_store *ca = context;

	(void)easy;
	if (!ca->store || X509_STORE_up_ref(ca->store) != 1)
		return CURLE_SSL_CACERT_BADFILE;
	SSL_CTX_set_cert_store(ssl_context, ca->store);
	return CURLE_OK;
}

/* --------------------------------------------------------- TLS sessions */

/*
 * What is needed to resume TLS sessions safely, per checked target: one
 * address of one candidate of one name, checked through one URL.  Every
 * reload, and every new parse of the target's ca_file, makes the next
 * check of every target a full handshake, so a session verified under
 * one configuration is never offered under another (even one that went
 * away and came back).  The sessions live in a share handle of the
 * target's own, so no two targets ever offer each other's sessions (and
 * curl keys them by host, port and connect-to address as well).
 *
 * A full handshake, which verifies the certificate, is made on the first
 * check, after any failed check, and once the last full one is
 * tls_full_handshake_interval old; in between the server's session
 * ticket vouches for the certificate it verified.  A full handshake
 * starts from a new share handle, so the sessions it stores are the only
 * ones offered until the next.
 */
struct tls_target {
	char *key;
	unsigned hash;
	CURLSH *share;		/* NULL: none yet */
	double verified;	/* monotonic start of the last good full handshake */
	double used;		/* monotonic start of the last check */
	double interval;	/* tls_full_handshake_interval at the last check */
	int must_verify;
	unsigned long reload_generation;	/* of the last check */
	unsigned long ca_generation;
	int in_use;		/* transfers using share */
	struct tls_target *next;	/* in its hash bucket */
};

#define TARGET_SWEEP_INTERVAL 60.0

static struct tls_target **target_buckets;
static unsigned target_bucket_count;
static unsigned target_count;
static double target_swept;
static unsigned long reload_generation;

static unsigned
text_hash(const char *text)
{
	unsigned hash = 2166136261u;	/* FNV-1a */

	for (; *text; text++)
		hash = (hash ^ (unsigned char)*text) * 16777619u;
	return hash;
}

static void
target_free(struct tls_target *target)
{
	if (target->share)
		curl_share_cleanup(target->share);
	free(target->key);
	free(target);
}

static int
targets_grow(void)
{
	unsigned count = target_bucket_count ? target_bucket_count * 2 : 256;
	struct tls_target **buckets = calloc(count, sizeof(*buckets));

	if (!buckets)
		return -1;
	for (unsigned i = 0; i < target_bucket_count; i++)
		while (target_buckets[i]) {
			struct tls_target *target = target_buckets[i];

			target_buckets[i] = target->next;
			target->next = buckets[target->hash % count];
			buckets[target->hash % count] = target;
		}
	free(target_buckets);
	target_buckets = buckets;
	target_bucket_count = count;
	return 0;
}

/*
 * Targets not checked for longer than their interval could only start
 * again with a full handshake: removed addresses and old configurations
 * end here.
 */
static void
targets_sweep(double now)
{
	if (now - target_swept < TARGET_SWEEP_INTERVAL)
		return;
	target_swept = now;
	for (unsigned i = 0; i < target_bucket_count; i++) {
		struct tls_target **link = &target_buckets[i];

		while (*link) {
			struct tls_target *target = *link;

			if (target->in_use == 0 &&
			    now - target->used > target->interval + TARGET_SWEEP_INTERVAL) {
				*link = target->next;
				target_free(target);
				target_count--;
			} else {
				link = &target->next;
			}
		}
	}
}

static struct tls_target *
target_find(const char *key, unsigned hash)
{
	struct tls_target *target;

	if (target_bucket_count == 0)
		return NULL;
	for (target = target_buckets[hash % target_bucket_count]; target;
	     target = target->next)
		if (target->hash == hash && strcmp(target->key, key) == 0)
			return target;
	return NULL;
}

static struct tls_target *
target_get(const char *key)
{
	unsigned hash = text_hash(key);
	struct tls_target *target = target_find(key, hash);

	if (target)
		return target;
	if (target_count >= target_bucket_count && targets_grow() != 0) {
		log_error("out of memory keeping TLS sessions");
		return NULL;
	}
	target = calloc(1, sizeof(*target));
	if (!target || !(target->key = strdup(key))) {
		log_error("out of memory keeping TLS sessions");
		free(target);
		return NULL;
	}
	target->hash = hash;
	target->must_verify = 1;
	target->next = target_buckets[hash % target_bucket_count];
	target_buckets[hash % target_bucket_count] = target;
	target_count++;
	return target;
}

static void
targets_free(void)
{
	for (unsigned i = 0; i < target_bucket_count; i++)
		while (target_buckets[i]) {
			struct tls_target *target = target_buckets[i];

			target_buckets[i] = target->next;
			target_free(target);
		}
	free(target_buckets);
	target_buckets = NULL;
	target_bucket_count = target_count = 0;
}

/* A share handle holding TLS sessions only. */
static CURLSH *
session_share_new(void)
{
	CURLSH *share = curl_share_init();

	if (share &&
	    curl_share_setopt(share, CURLSHOPT_SHARE,
			      CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
		curl_share_cleanup(share);
		share = NULL;
	}
	if (!share)
		log_error("cannot create a libcurl share handle for TLS sessions");
	return share;
}

/*
 * Decides whether this check may resume a session of its target, and
 * if it may use the share handle that holds them.  0, or -1 when out of
 * memory.
 */
static int
use_sessions(struct http_transfer *transfer, struct tls_target *target,
	     double interval, double now)
{
	int full;

	if (target->reload_generation != transfer->reload_generation ||
	    target->ca_generation != transfer->ca_generation)
		target->must_verify = 1;
	target->reload_generation = transfer->reload_generation;
	target->ca_generation = transfer->ca_generation;
	full = target->must_verify || now - target->verified >= interval;
	target->used = now;
	target->interval = interval;
	transfer->target = target;
	transfer->full_handshake = full;
	if (full && target->in_use > 0) {
		/* Another check holds the sessions (a check of a candidate
		 * that a reload removed and added again can overlap the new
		 * one's): this one neither offers nor stores any. */
		return 0;
	}
	if (full) {
		CURLSH *share = session_share_new();

		if (!share)
			return -1;
		if (target->share)
			curl_share_cleanup(target->share);
		target->share = share;
	}
	transfer->share = target->share;
	target->in_use++;
	return 0;
}

/*
 * After the check: what its result means for its target's sessions.  A
 * full handshake verifies the target only if no reload or new CA parse
 * came while it ran.
 */
static void
sessions_after(struct http_transfer *transfer, int success)
{
	struct tls_target *target = transfer->target;

	if (!target)
		return;
	if (transfer->share)
		target->in_use--;
	transfer->share = NULL;
	transfer->target = NULL;
	if (!success) {
		target->must_verify = 1;
		return;
	}
	if (transfer->full_handshake &&
	    target->reload_generation == transfer->reload_generation &&
	    target->ca_generation == transfer->ca_generation) {
		target->verified = transfer->check->started;
		target->must_verify = 0;
	}
}

/*
 * The key of a check's target: the name, the candidate, the address and
 * the URL (host, port).  NULL when out of memory.
 */
static char *
target_key(const struct check *check)
{
	const struct candidate *candidate = check->address->candidate;
	char *key;

	if (asprintf(&key, "%s %s %s %s", candidate->name->config->title,
		     candidate->config->title, check->address->text,
		     candidate->config->url) < 0) {
		log_error("out of memory keeping TLS sessions");
		return NULL;
	}
	return key;
}

/* A check that failed before its handshake: the next one is full. */
static void
sessions_forget(const struct check *check)
{
	char *key = target_key(check);
	struct tls_target *target;

	if (!key)
		return;
	target = target_find(key, text_hash(key));
	if (target)
		target->must_verify = 1;
	free(key);
}

void
check_http_reloaded(void)
{
	reload_generation++;
}

/* ------------------------------------------------------------ transfers */

static void
transfer_free(struct http_transfer *transfer)
{
	sessions_after(transfer, 0);
	if (transfer->easy) {
		curl_multi_remove_handle(multi, transfer->easy);
		handle_give_back(transfer->easy, transfer->pool);
	}
	curl_slist_free_all(transfer->connect_to);
	curl_slist_free_all(transfer->headers);
	free(transfer);
}

static int
failure_status(CURLcode result)
{
	switch (result) {
	case CURLE_OPERATION_TIMEDOUT:
		return STATUS_TIMEOUT;
	case CURLE_COULDNT_CONNECT:
		return STATUS_CONNECT_ERROR;
	case CURLE_GOT_NOTHING:
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
		return STATUS_RESPONSE_ERROR;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_USE_SSL_FAILED:
		return STATUS_TLS_ERROR;
	case CURLE_COULDNT_RESOLVE_HOST:
		return STATUS_RESOLVE_ERROR;
	default:
		return STATUS_OTHER_ERROR;
	}
}

/*
 * The check's status and, through success, whether it passed.  A body is
 * judged only once the status passed: a 503 stays a 503 in the data file,
 * whatever its body says.
 */
static int
judge_response(const struct check *check,
	       const struct http_transfer *transfer, long status, int *success)
{
	const struct config_name *config = check->address->candidate->name->config;

	*success = 0;
	if (!config_status_expected(config, (int)status))
		return (int)status;
	/* A drain request is judged by its status alone: a server saying
	 * "drain me" need not serve its usual body with it. */
	if (transfer->expected && transfer->verdict != BODY_FOUND &&
	    !select_drain_status(config, (int)status))
		return STATUS_BODY_MISMATCH;
	*success = 1;
	return (int)status;
}

static void
finish_transfer(CURL *easy, CURLcode result)
{
	struct http_transfer *transfer = NULL;
	struct check *check;
	curl_off_t connect_us = 0, total_us = 0;
	long status = 0;
	int success;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&transfer);
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(easy, CURLINFO_CONNECT_TIME_T, &connect_us);
	curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &total_us);
	check = transfer->check;
	check->transport = NULL;
	if (result != CURLE_OK && check_short_of_sockets(transfer->socket_error)) {
		int error = transfer->socket_error;

		transfer_free(transfer);
		check_postpone(check, error);
		return;
	}
	/* Our own stop once the body was judged is no failure. */
	if (result == CURLE_WRITE_ERROR && transfer->verdict != BODY_UNJUDGED)
		result = CURLE_OK;
	if (result != CURLE_OK) {
		sessions_after(transfer, 0);
		transfer_free(transfer);
		log_debug("check of %s: %s", check->address->text,
			  curl_easy_strerror(result));
		check_done(check, failure_status(result), 0, 0, 0);
		return;
	}
	status = judge_response(check, transfer, status, &success);
	sessions_after(transfer, success);
	transfer_free(transfer);
	check_done(check, (int)status, success, (double)connect_us / 1e6,
		   (double)total_us / 1e6);
}

static void
finish_transfers(void)
{
	CURLMsg *message;
	int left;

	while ((message = curl_multi_info_read(multi, &left)))
		if (message->msg == CURLMSG_DONE)
			finish_transfer(message->easy_handle, message->data.result);
}

static void
socket_ready(struct ev_loop *loop, ev_io *io, int revents)
{
	int running, action = 0;

	(void)loop;
	if (revents & EV_READ)
		action |= CURL_CSELECT_IN;
	if (revents & EV_WRITE)
		action |= CURL_CSELECT_OUT;
	curl_multi_socket_action(multi, io->fd, action, &running);
	finish_transfers();
}

static void
timer_expired(struct ev_loop *loop, ev_timer *timer, int revents)
{
	int running;

	(void)loop;
	(void)timer;
	(void)revents;
	curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	finish_transfers();
}

static int
socket_changed(CURL *easy, curl_socket_t fd, int what, void *context,
	       void *socket_context)
{
	struct curl_socket_watch *watch = socket_context;

	(void)easy;
	(void)context;
	if (what == CURL_POLL_REMOVE) {
		if (watch) {
			ev_io_stop(http_loop, &watch->io);
			free(watch);
			curl_multi_assign(multi, fd, NULL);
		}
		return 0;
	}
	if (!watch) {
		watch = calloc(1, sizeof(*watch));
		if (!watch) {
			log_error("out of memory watching a check socket");
			return -1;
		}
		watch->fd = fd;
		curl_multi_assign(multi, fd, watch);
	}
	ev_io_stop(http_loop, &watch->io);
	ev_io_init(&watch->io, socket_ready, fd,
		   ((what & CURL_POLL_IN) ? EV_READ : 0) |
		   ((what & CURL_POLL_OUT) ? EV_WRITE : 0));
	ev_io_start(http_loop, &watch->io);
	return 0;
}

static int
timer_changed(CURLM *handle, long timeout_ms, void *context)
{
	(void)handle;
	(void)context;
	ev_timer_stop(http_loop, &multi_timer);
	if (timeout_ms < 0)
		return 0;
	ev_timer_set(&multi_timer, (double)timeout_ms / 1000.0, 0);
	ev_timer_start(http_loop, &multi_timer);
	return 0;
}

/*
 * The CA stores and TLS sessions are OpenSSL objects handed to curl's TLS
 * context: a libcurl built on another TLS library (or another OpenSSL
 * major version than hard's) would ignore or misread them.
 */
static int
curl_uses_our_openssl(void)
{
	const curl_version_info_data *version = curl_version_info(CURLVERSION_NOW);
	char expected[32];

	snprintf(expected, sizeof(expected), "OpenSSL/%d.", OPENSSL_VERSION_MAJOR);
	if (version && version->ssl_version &&
	    strncmp(version->ssl_version, expected, strlen(expected)) == 0)
		return 1;
	log_error("libcurl uses %s for TLS; hard needs one built with %s "
		  "(OpenSSL %d) for its HTTPS checks",
		  version && version->ssl_version ? version->ssl_version : "no library",
		  OPENSSL_VERSION_TEXT, OPENSSL_VERSION_MAJOR);
	return 0;
}

int
check_http_init(struct ev_loop *loop)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		log_error("cannot initialise libcurl");
		return -1;
	}
	if (!curl_uses_our_openssl())
		return -1;
	multi = curl_multi_init();
	if (!multi) {
		log_error("cannot create the libcurl multi handle");
		return -1;
	}
	http_loop = loop;
	find_default_cas();
	ev_timer_init(&multi_timer, timer_expired, 0, 0);
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_changed);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_changed);
	return 0;
}

void
check_http_cleanup(void)
{
	if (!multi)
		return;
	ev_timer_stop(http_loop, &multi_timer);
	curl_multi_cleanup(multi);
	multi = NULL;
	handles_free();
	targets_free();
	ca_stores_free();
	curl_global_cleanup();
}

/*
 * ":port:address:port": whatever the URL's host (a name, or an IPv6
 * literal curl would want bracketed), connect to this address instead.
 */
static void
connect_to_spec(const struct check *check, char *out, size_t size)
{
	const struct config_candidate *candidate = check->address->candidate->config;
	const struct address *address = check->address;

	if (address->ip.family == AF_INET6)
		snprintf(out, size, ":%d:[%s]:%d", candidate->port,
			 address->text, candidate->port);
	else
		snprintf(out, size, ":%d:%s:%d", candidate->port,
			 address->text, candidate->port);
}

/* "Name: value" lines of http_headers; a Host line replaces curl's. */
static int
add_headers(struct http_transfer *transfer, const struct config_name *config)
{
	for (int i = 0; i < config->http_header_count; i++) {
		struct curl_slist *headers =
		    curl_slist_append(transfer->headers, config->http_headers[i]);

		if (!headers)
			return -1;
		transfer->headers = headers;
	}
	if (transfer->headers)
		curl_easy_setopt(transfer->easy, CURLOPT_HTTPHEADER,
				 transfer->headers);
	return 0;
}

/*
 * When curl closes a check's connection the check is over, whatever was
 * left unsent or unread: a reset instead of the FIN exchange leaves
 * neither side a TIME_WAIT socket nor the packets of a graceful close.
 */
static int
reset_on_close(void *context, curl_socket_t fd, curlsocktype purpose)
{
	struct linger linger = { .l_onoff = 1, .l_linger = 0 };

	(void)context;
	if (purpose == CURLSOCKTYPE_IPCXN)
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
	return CURL_SOCKOPT_OK;
}

/*
 * The check's socket, opened here rather than by curl to learn why when
 * it cannot be: curl would report any failure as "could not connect",
 * while a socket that hard itself has no descriptor for says nothing
 * about the server (check_postpone).
 */
static curl_socket_t
open_socket(void *context, curlsocktype purpose, struct curl_sockaddr *address)
{
	struct http_transfer *transfer = context;
	int fd;

	(void)purpose;
	fd = socket(address->family, address->socktype | SOCK_CLOEXEC,
		    address->protocol);
	if (fd < 0) {
		transfer->socket_error = errno;
		return CURL_SOCKET_BAD;
	}
	return fd;
}

/*
 * The options a check needs on a reset handle.  A new connection for
 * every check, closed after it: a check that rode on an old connection
 * would prove nothing.  No proxy, whatever the environment says;
 * redirects are not followed (the reset's default).
 */
static void
set_request(CURL *easy, const struct config_name *config,
	    const struct config_candidate *candidate)
{
	long timeout_ms = (long)(config->check_timeout * 1000);

	if (timeout_ms < 1)
		timeout_ms = 1;
	curl_easy_setopt(easy, CURLOPT_URL, candidate->url);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
	curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
	curl_easy_setopt(easy, CURLOPT_SOCKOPTFUNCTION, reset_on_close);
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "har/" HAR_VERSION);
	/* The address is a literal: a cache of it would only grow with
	 * the address count, and curl prunes it on every lookup. */
	curl_easy_setopt(easy, CURLOPT_DNS_CACHE_TIMEOUT, 0L);
	if (config->http_method == HTTP_HEAD)
		curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
}

/*
 * HTTPS, before the check has a handle: the parsed CAs and, where
 * allowed, the sessions to resume (transfer->share).  0, or the STATUS_*
 * of a check that cannot start.
 */
static int
choose_tls(struct http_transfer *transfer, const struct check *check)
{
	const struct config_name *config = check->address->candidate->name->config;
	struct tls_target *target;
	char *key;

	transfer->ca = ca_store_get(config->ca_file);
	if (!transfer->ca) {
		log_debug("check of %s: no CAs to verify with", check->address->text);
		return STATUS_TLS_ERROR;
	}
	targets_sweep(check->started);
	if (config->tls_full_handshake_interval <= 0)
		return 0;	/* every check a full handshake */
	transfer->reload_generation = reload_generation;
	transfer->ca_generation = transfer->ca->generation;
	key = target_key(check);
	if (!key)
		return STATUS_OTHER_ERROR;
	target = target_get(key);
	free(key);
	if (!target || use_sessions(transfer, target,
				    config->tls_full_handshake_interval,
				    check->started) != 0)
		return STATUS_OTHER_ERROR;
	return 0;
}

/* HTTPS: what choose_tls chose, on the check's handle. */
static void
set_tls(const struct http_transfer *transfer)
{
	CURL *easy = transfer->easy;

	/* Not curl's own cache of one store per multi handle, keyed by
	 * the file name alone: without a file name it would hand the first
	 * store to every check. */
	curl_easy_setopt(easy, CURLOPT_CA_CACHE_TIMEOUT, 0L);
	curl_easy_setopt(easy, CURLOPT_CAINFO, NULL);
	curl_easy_setopt(easy, CURLOPT_CAPATH, NULL);
	curl_easy_setopt(easy, CURLOPT_SSL_CTX_FUNCTION, use_ca_store);
	curl_easy_setopt(easy, CURLOPT_SSL_CTX_DATA, transfer->ca);
	if (transfer->share)
		curl_easy_setopt(easy, CURLOPT_SHARE, transfer->share);
	else	/* no session offered or kept in the handle's own cache */
		curl_easy_setopt(easy, CURLOPT_SSL_SESSIONID_CACHE, 0L);
}

static void
set_body_reader(struct http_transfer *transfer)
{
	if (transfer->expected) {
		curl_easy_setopt(transfer->easy, CURLOPT_WRITEFUNCTION,
				 search_body);
		curl_easy_setopt(transfer->easy, CURLOPT_WRITEDATA, transfer);
	} else {
		curl_easy_setopt(transfer->easy, CURLOPT_WRITEFUNCTION,
				 discard_body);
	}
}

/* A check that cannot start: the next of its target is a full handshake. */
static int
start_failed(struct http_transfer *transfer, const struct check *check,
	     int status)
{
	if (transfer)
		transfer_free(transfer);
	if (strcmp(check->address->candidate->config->scheme, "https") == 0)
		sessions_forget(check);
	return status;
}

int
check_http_start(struct check *check)
{
	const struct config_name *config = check->address->candidate->name->config;
	struct http_transfer *transfer = transfer_new(config->expect_body);
	int https = strcmp(check->address->candidate->config->scheme, "https") == 0;
	char spec[DNS_MAX_NAME + 80];

	if (!transfer) {
		log_error("out of memory starting a check of %s",
			  check->address->text);
		return start_failed(NULL, check, STATUS_OTHER_ERROR);
	}
	transfer->check = check;
	if (https) {
		int status = choose_tls(transfer, check);

		if (status != 0)
			return start_failed(transfer, check, status);
	}
	transfer->pool = transfer->share ? POOL_SHARED : POOL_UNSHARED;
	transfer->easy = handle_take(transfer->pool);
	connect_to_spec(check, spec, sizeof(spec));
	if (transfer->easy)
		transfer->connect_to = curl_slist_append(NULL, spec);
	if (!transfer->easy || !transfer->connect_to ||
	    add_headers(transfer, config) != 0) {
		log_error("out of memory starting a check of %s",
			  check->address->text);
		return start_failed(transfer, check, STATUS_OTHER_ERROR);
	}
	set_request(transfer->easy, config, check->address->candidate->config);
	if (https)
		set_tls(transfer);
	set_body_reader(transfer);
	curl_easy_setopt(transfer->easy, CURLOPT_OPENSOCKETFUNCTION, open_socket);
	curl_easy_setopt(transfer->easy, CURLOPT_OPENSOCKETDATA, transfer);
	curl_easy_setopt(transfer->easy, CURLOPT_CONNECT_TO, transfer->connect_to);
	curl_easy_setopt(transfer->easy, CURLOPT_PRIVATE, transfer);
	if (curl_multi_add_handle(multi, transfer->easy) != CURLM_OK) {
		log_error("cannot start a check of %s", check->address->text);
		sessions_after(transfer, 0);
		handle_give_back(transfer->easy, transfer->pool);
		transfer->easy = NULL;
		return start_failed(transfer, check, STATUS_OTHER_ERROR);
	}
	check->transport_kind = CHECK_HTTP;
	check->transport = transfer;
	return 0;
}

void
check_http_cancel(struct check *check)
{
	if (check->transport)
		transfer_free(check->transport);
	check->transport = NULL;
}
