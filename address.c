/*
 * address.c - addresses, endpoints and host names: parsing IP literals,
 * "HOST:PORT", nameserver and metrics_listen endpoints, host names into
 * DNS wire form, and the guards that keep hard from using its own
 * listener as a nameserver or its metrics listener on a DNS one.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "har.h"

/* ---------------------------------------------------- addresses, ports */

int
ip_address_parse(const char *text, struct ip_address *out)
{
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, text, out->bytes) == 1) {
		out->family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, text, out->bytes) == 1) {
		out->family = AF_INET6;
		return 0;
	}
	return -1;
}

void
ip_address_format(const struct ip_address *ip, char *out, size_t size)
{
	if (!inet_ntop(ip->family, ip->bytes, out, size) && size > 0)
		out[0] = '\0';
}

int
parse_port(const char *text, int *port)
{
	char *end;
	long number;

	errno = 0;
	number = strtol(text, &end, 10);
	if (errno || end == text || *end || number < 1 || number > 65535)
		return -1;
	*port = (int)number;
	return 0;
}

/*
 * Splits "HOST:PORT", "[IPv6]:PORT", "[IPv6]" or "HOST" into host and
 * port.  A bare IPv6 address (two or more colons, no brackets) has no port.
 */
int
split_host_port(const char *text, char *host, size_t host_size, int *port)
{
	const char *colon;
	size_t length;

	if (text[0] == '[') {
		const char *close = strchr(text, ']');

		if (!close)
			return -1;
		length = (size_t)(close - text - 1);
		if (close[1] == ':') {
			if (parse_port(close + 2, port) != 0)
				return -1;
		} else if (close[1] != '\0') {
			return -1;
		}
		if (length == 0 || length >= host_size)
			return -1;
		memcpy(host, text + 1, length);
		host[length] = '\0';
		return 0;
	}
	colon = strchr(text, ':');
	if (colon && strchr(colon + 1, ':'))
		colon = NULL;
	length = colon ? (size_t)(colon - text) : strlen(text);
	if (length == 0 || length >= host_size)
		return -1;
	memcpy(host, text, length);
	host[length] = '\0';
	if (colon && parse_port(colon + 1, port) != 0)
		return -1;
	return 0;
}

int
endpoint_parse(const char *text, int default_port, struct endpoint *out)
{
	char host[64];
	int port = default_port;
	struct ip_address ip;

	memset(out, 0, sizeof(*out));
	if (split_host_port(text, host, sizeof(host), &port) != 0)
		return -1;
	if (ip_address_parse(host, &ip) != 0)
		return -1;
	if (ip.family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&out->addr;

		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		memcpy(&sin->sin_addr, ip.bytes, 4);
		out->addr_len = sizeof(*sin);
		snprintf(out->text, sizeof(out->text), "%s:%d", host, port);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->addr;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		memcpy(&sin6->sin6_addr, ip.bytes, 16);
		out->addr_len = sizeof(*sin6);
		snprintf(out->text, sizeof(out->text), "[%s]:%d", host, port);
	}
	return 0;
}

/*
 * A listening endpoint of hard's own (metrics_listen): "PORT" alone, on
 * 127.0.0.1, or "IP:PORT", "[IPv6]:PORT"; unlike a nameserver, the port
 * is never implied.
 */
int
listen_endpoint_parse(const char *text, struct endpoint *out)
{
	char host[64], on_loopback[32];
	int port = 0;

	if (parse_port(text, &port) == 0) {
		snprintf(on_loopback, sizeof(on_loopback), "127.0.0.1:%d", port);
		return endpoint_parse(on_loopback, port, out);
	}
	if (split_host_port(text, host, sizeof(host), &port) != 0 || port == 0)
		return -1;
	return endpoint_parse(text, port, out);
}

/*
 * Converts a host name to lower-case wire form.  A trailing dot is
 * optional; labels are 1-63 octets of letters, digits, '-' or '_'.
 */
int
dns_name_to_wire(const char *name, uint8_t *wire, int *wire_len)
{
	int length = 0;
	const char *label = name;

	if (strcmp(name, ".") == 0 || name[0] == '\0')
		return -1;
	while (*label) {
		const char *end = strchr(label, '.');
		int label_len = end ? (int)(end - label) : (int)strlen(label);

		if (label_len < 1 || label_len > 63)
			return -1;
		if (length + 1 + label_len + 1 > DNS_MAX_NAME)
			return -1;
		wire[length++] = (uint8_t)label_len;
		for (int i = 0; i < label_len; i++) {
			unsigned char c = (unsigned char)label[i];

			if (!isalnum(c) && c != '-' && c != '_')
				return -1;
			wire[length++] = (uint8_t)tolower(c);
		}
		if (!end)
			break;
		label = end + 1;
	}
	wire[length++] = 0;
	*wire_len = length;
	return 0;
}

/* ------------------------------------------------ forwarding loop guard */

static int
ip_is_wildcard(const struct ip_address *ip)
{
	static const uint8_t zero[16];

	return memcmp(ip->bytes, zero, ip->family == AF_INET ? 4 : 16) == 0;
}

static int
ip_is_loopback(int family, const uint8_t *bytes)
{
	static const uint8_t loopback6[16] = { [15] = 1 };

	if (family == AF_INET)
		return bytes[0] == 127;
	return memcmp(bytes, loopback6, 16) == 0;
}

/* The endpoint's address, as raw bytes of its family, and its port. */
static const uint8_t *
endpoint_bytes(const struct endpoint *endpoint, int *port)
{
	const struct sockaddr *sa = (const struct sockaddr *)&endpoint->addr;
	const struct sockaddr_in *sin = (const void *)sa;
	const struct sockaddr_in6 *sin6 = (const void *)sa;

	if (sa->sa_family == AF_INET) {
		*port = ntohs(sin->sin_port);
		return (const uint8_t *)&sin->sin_addr;
	}
	*port = ntohs(sin6->sin6_port);
	return (const uint8_t *)&sin6->sin6_addr;
}

/*
 * Whether endpoint meets one of the DNS listeners (dns_bind_interfaces on
 * dns_listen_port).  A nameserver does when it is one of them, or any
 * loopback address while one is a wildcard (a wildcard listener hears
 * every local address; loopback at least is surely ours).  A listener to
 * be bound (for_bind) does also with a wildcard on either side: Linux
 * refuses the second bind of such a pair.
 */
static int
meets_dns_listener(const struct endpoint *endpoint, const struct config *config,
		   int for_bind)
{
	int port, family = endpoint->addr.ss_family;
	const uint8_t *bytes = endpoint_bytes(endpoint, &port);
	struct ip_address ip = { .family = family };
	size_t size = family == AF_INET ? 4 : 16;

	if (port != config->listen_port)
		return 0;
	memcpy(ip.bytes, bytes, size);
	for (int i = 0; i < config->bind_interface_count; i++) {
		struct ip_address listener;

		if (ip_address_parse(config->bind_interfaces[i], &listener) != 0 ||
		    listener.family != family)
			continue;
		if (memcmp(listener.bytes, ip.bytes, size) == 0)
			return 1;
		if (ip_is_wildcard(&listener) &&
		    (for_bind || ip_is_loopback(family, ip.bytes)))
			return 1;
		if (for_bind && ip_is_wildcard(&ip))
			return 1;
	}
	return 0;
}

static int
endpoint_is_listener(const struct endpoint *endpoint, const struct config *config)
{
	return meets_dns_listener(endpoint, config, 0);
}

int
endpoint_is_loopback(const struct endpoint *endpoint)
{
	int port;
	const uint8_t *bytes = endpoint_bytes(endpoint, &port);

	return ip_is_loopback(endpoint->addr.ss_family, bytes);
}

/* Whether a TCP listener on endpoint (metrics_listen) and a DNS listener
 * would want the same address and port. */
int
endpoint_takes_dns_port(const struct endpoint *endpoint,
			const struct config *config)
{
	return meets_dns_listener(endpoint, config, 1);
}

int
config_drop_own_listeners(struct config *config, config_report_fn *report)
{
	int kept = 0;

	for (int i = 0; i < config->nameserver_count; i++) {
		if (endpoint_is_listener(&config->nameservers[i], config)) {
			char message[160];

			snprintf(message, sizeof(message),
				 "nameserver %s is hard's own listener; not forwarding to it",
				 config->nameservers[i].text);
			if (!config->nameservers_from_resolv_conf)
				report(message);
			continue;
		}
		config->nameservers[kept++] = config->nameservers[i];
	}
	config->nameserver_count = kept;
	return kept;
}
