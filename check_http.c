/*
 * check_http.c - HTTP and HTTPS checks with libcurl's multi interface on
 * hard's libev loop: curl tells us which sockets to watch and when its
 * next timeout is; we tell curl when a socket is ready or time is up.
 *
 * Each check connects to one address while the URL keeps its host name,
 * so the Host header, SNI and certificate verification are those of the
 * URL (CURLOPT_CONNECT_TO).  Nothing is reused from one check to the
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

static int
status_expected(const struct config_name *config, long status)
{
	for (int i = 0; i < config->expect_status_count; i++)
		if (config->expect_status[i] == status)
			return 1;
	return 0;
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

static void
finish_transfer(CURL *easy, CURLcode result)
{
	struct check *check = NULL;
	const struct config_name *config;
	curl_off_t connect_us = 0, total_us = 0;
	long status = 0;

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&check);
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(easy, CURLINFO_CONNECT_TIME_T, &connect_us);
	curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &total_us);
	curl_multi_remove_handle(multi, easy);
	curl_easy_cleanup(easy);
	curl_slist_free_all(check->connect_to);
	check->transport = NULL;
	check->connect_to = NULL;
	config = check->address->candidate->name->config;
	if (result != CURLE_OK) {
		log_debug("check of %s: %s", check->address->text,
			  curl_easy_strerror(result));
		check_done(check, failure_status(result), 0, 0, 0);
		return;
	}
	check_done(check, (int)status, status_expected(config, status),
		   (double)connect_us / 1e6, (double)total_us / 1e6);
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

int
check_http_start(struct check *check)
{
	const struct config_name *config = check->address->candidate->name->config;
	const struct config_candidate *candidate = check->address->candidate->config;
	long timeout_ms = (long)(config->check_timeout * 1000);
	struct curl_slist *connect_to;
	char spec[DNS_MAX_NAME + 80];
	CURL *easy = curl_easy_init();

	if (!easy)
		return STATUS_OTHER_ERROR;
	if (timeout_ms < 1)
		timeout_ms = 1;
	connect_to_spec(check, spec, sizeof(spec));
	connect_to = curl_slist_append(NULL, spec);
	if (!connect_to) {
		curl_easy_cleanup(easy);
		return STATUS_OTHER_ERROR;
	}
	check->transport_kind = CHECK_HTTP;
	check->transport = easy;
	check->connect_to = connect_to;
	curl_easy_setopt(easy, CURLOPT_URL, candidate->url);
	curl_easy_setopt(easy, CURLOPT_CONNECT_TO, connect_to);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, check);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
	curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_USERAGENT, "har/" HAR_VERSION);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard_body);
	if (config->ca_file)
		curl_easy_setopt(easy, CURLOPT_CAINFO, config->ca_file);
	if (curl_multi_add_handle(multi, easy) != CURLM_OK) {
		curl_easy_cleanup(easy);
		curl_slist_free_all(connect_to);
		check->transport = NULL;
		check->connect_to = NULL;
		return STATUS_OTHER_ERROR;
	}
	return 0;
}

void
check_http_cancel(struct check *check)
{
	if (check->transport) {
		curl_multi_remove_handle(multi, check->transport);
		curl_easy_cleanup(check->transport);
		check->transport = NULL;
	}
	curl_slist_free_all(check->connect_to);
	check->connect_to = NULL;
}
