/*
 * check_http.c - HTTP and HTTPS checks with libcurl's multi interface on
 * hard's libev loop: curl tells us which sockets to watch and when its
 * next timeout is; we tell curl when a socket is ready or time is up.
 *
 * Each check connects to one address while the URL keeps its host name,
 * so the Host header, SNI and certificate verification are those of the
 * URL (CURLOPT_CONNECT_TO); a Host line of http_headers changes the
 * header alone.  Nothing is reused from one check to the
 * next: a check that rode on an old connection would prove nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "har.h"

struct curl_socket_watch {
	ev_io io;
	curl_socket_t fd;
};

enum body_verdict { BODY_UNJUDGED, BODY_FOUND, BODY_MISSING };

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

static void
transfer_free(struct http_transfer *transfer)
{
	if (transfer->easy) {
		curl_multi_remove_handle(multi, transfer->easy);
		curl_easy_cleanup(transfer->easy);
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
	/* Our own stop once the body was judged is no failure. */
	if (result == CURLE_WRITE_ERROR && transfer->verdict != BODY_UNJUDGED)
		result = CURLE_OK;
	if (result != CURLE_OK) {
		transfer_free(transfer);
		log_debug("check of %s: %s", check->address->text,
			  curl_easy_strerror(result));
		check_done(check, failure_status(result), 0, 0, 0);
		return;
	}
	status = judge_response(check, transfer, status, &success);
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

int
check_http_init(struct ev_loop *loop)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		log_error("cannot initialise libcurl");
		return -1;
	}
	multi = curl_multi_init();
	if (!multi) {
		log_error("cannot create the libcurl multi handle");
		return -1;
	}
	http_loop = loop;
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
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "har/" HAR_VERSION);
	if (config->http_method == HTTP_HEAD)
		curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
	if (config->ca_file)
		curl_easy_setopt(easy, CURLOPT_CAINFO, config->ca_file);
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

int
check_http_start(struct check *check)
{
	const struct config_name *config = check->address->candidate->name->config;
	struct http_transfer *transfer = transfer_new(config->expect_body);
	char spec[DNS_MAX_NAME + 80];

	if (!transfer)
		return STATUS_OTHER_ERROR;
	transfer->check = check;
	transfer->easy = curl_easy_init();
	connect_to_spec(check, spec, sizeof(spec));
	if (transfer->easy)
		transfer->connect_to = curl_slist_append(NULL, spec);
	if (!transfer->easy || !transfer->connect_to ||
	    add_headers(transfer, config) != 0) {
		transfer_free(transfer);
		return STATUS_OTHER_ERROR;
	}
	set_request(transfer->easy, config, check->address->candidate->config);
	set_body_reader(transfer);
	curl_easy_setopt(transfer->easy, CURLOPT_CONNECT_TO, transfer->connect_to);
	curl_easy_setopt(transfer->easy, CURLOPT_PRIVATE, transfer);
	if (curl_multi_add_handle(multi, transfer->easy) != CURLM_OK) {
		curl_easy_cleanup(transfer->easy);
		transfer->easy = NULL;
		transfer_free(transfer);
		return STATUS_OTHER_ERROR;
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
