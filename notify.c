/*
 * notify.c - the service manager's readiness protocol (sd_notify(3)):
 * one datagram of "KEY=value" lines per change of state, sent to the
 * AF_UNIX socket named by $NOTIFY_SOCKET, a path or, with a leading '@',
 * an abstract name.  systemd sets that variable for a Type=notify unit;
 * without it every call here does nothing, so hard runs as it always did.
 * The protocol is a few lines of socket code: no libsystemd.
 *
 * With WatchdogSec= the manager also sets WATCHDOG_USEC: hard then sends
 * WATCHDOG=1 at half that period from a timer of its event loop, so the
 * pings stop when the loop stops turning and the manager kills and
 * restarts a hard that hangs.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "har.h"

static int notify_socket = -1;
static struct sockaddr_un notify_address;
static socklen_t notify_address_length;
/* The process the manager started: a message from another one (the
 * daemon after it detached) names itself in MAINPID=. */
static pid_t started_as;
/* Seconds between WATCHDOG=1 messages; 0 when the manager wants none. */
static double watchdog_interval;

/* Fills notify_address from the variable's text; -1 if it names none. */
static int
parse_address(const char *text)
{
	size_t length = strlen(text);

	if ((text[0] != '/' && text[0] != '@') || length < 2 ||
	    length >= sizeof(notify_address.sun_path))
		return -1;
	memset(&notify_address, 0, sizeof(notify_address));
	notify_address.sun_family = AF_UNIX;
	memcpy(notify_address.sun_path, text, length);
	notify_address_length =
	    (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length);
	if (text[0] == '@')
		notify_address.sun_path[0] = '\0';	/* abstract: no NUL */
	else
		notify_address_length++;		/* a path: with its NUL */
	return 0;
}

/*
 * WATCHDOG_PID, when set, names the process the manager watches: a
 * variable inherited by some other process is not meant for it.
 */
static void
watchdog_read(void)
{
	const char *period = getenv("WATCHDOG_USEC");
	const char *pid = getenv("WATCHDOG_PID");
	unsigned long long microseconds;
	char *end;

	if (!period || !*period)
		return;
	if (pid && *pid && strtol(pid, NULL, 10) != (long)getpid())
		return;
	errno = 0;
	microseconds = strtoull(period, &end, 10);
	if (errno || *end || microseconds == 0) {
		log_warning("WATCHDOG_USEC=\"%s\" is not a number of "
			    "microseconds; not sending WATCHDOG=1", period);
		return;
	}
	watchdog_interval = (double)microseconds / 2e6;
}

/*
 * NOTIFY_SOCKET stays in the environment: hard runs no other program
 * that could inherit it and speak for the service by mistake.
 */
void
notify_open(void)
{
	const char *text = getenv("NOTIFY_SOCKET");

	if (!text || !*text)
		return;
	if (parse_address(text) != 0) {
		log_warning("NOTIFY_SOCKET=\"%s\" is neither a path nor an "
			    "@abstract name; not telling the service manager "
			    "anything", text);
		return;
	}
	notify_socket = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (notify_socket < 0) {
		log_warning("cannot create a socket for NOTIFY_SOCKET %s: %s",
			    text, strerror(errno));
		return;
	}
	started_as = getpid();
	watchdog_read();
}

double
notify_watchdog_interval(void)
{
	return notify_socket < 0 ? 0 : watchdog_interval;
}

/* Alone, without STATUS=: systemctl status keeps the last status. */
void
notify_watchdog(void)
{
	static const char ping[] = "WATCHDOG=1\n";

	if (notify_socket < 0)
		return;
	if (sendto(notify_socket, ping, sizeof(ping) - 1, MSG_NOSIGNAL,
		   (struct sockaddr *)&notify_address, notify_address_length) < 0)
		log_warning("cannot send WATCHDOG=1 on NOTIFY_SOCKET: %s",
			    strerror(errno));
}

void
notify_close(void)
{
	if (notify_socket < 0)
		return;
	close(notify_socket);
	notify_socket = -1;
}

/* One message: the state lines, then STATUS= with the formatted text. */
static void
notify_send(const char *state, const char *status_fmt, va_list ap)
{
	/* Room for any state (under 100 bytes) and status: never cut. */
	char status[512], message[1024];
	int length;

	if (notify_socket < 0)
		return;
	vsnprintf(status, sizeof(status), status_fmt, ap);
	length = snprintf(message, sizeof(message), "%sSTATUS=%s\n", state,
			  status);
	if (length < 0)
		return;
	if (sendto(notify_socket, message, (size_t)length, MSG_NOSIGNAL,
		   (struct sockaddr *)&notify_address, notify_address_length) < 0)
		log_warning("cannot tell the service manager \"%.*s\" on "
			    "NOTIFY_SOCKET: %s", (int)strcspn(state, "\n"), state,
			    strerror(errno));
}

void
notify_ready(const char *status_fmt, ...)
{
	char state[64] = "READY=1\n";
	va_list ap;

	if (getpid() != started_as)
		snprintf(state, sizeof(state), "READY=1\nMAINPID=%ld\n",
			 (long)getpid());
	va_start(ap, status_fmt);
	notify_send(state, status_fmt, ap);
	va_end(ap);
}

/*
 * MONOTONIC_USEC= lets systemd 253 and later (Type=notify-reload) tell
 * this reload from an earlier one; older versions ignore it.
 */
void
notify_reloading(const char *status_fmt, ...)
{
	char state[96];
	struct timespec now;
	va_list ap;

	clock_gettime(CLOCK_MONOTONIC, &now);
	snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu\n",
		 (unsigned long long)now.tv_sec * 1000000ULL +
		 (unsigned long long)now.tv_nsec / 1000ULL);
	va_start(ap, status_fmt);
	notify_send(state, status_fmt, ap);
	va_end(ap);
}

void
notify_status(const char *status_fmt, ...)
{
	va_list ap;

	va_start(ap, status_fmt);
	notify_send("", status_fmt, ap);
	va_end(ap);
}

void
notify_stopping(const char *status_fmt, ...)
{
	va_list ap;

	va_start(ap, status_fmt);
	notify_send("STOPPING=1\n", status_fmt, ap);
	va_end(ap);
}
