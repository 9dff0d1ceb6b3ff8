/*
 * log.c - where hard's messages go: stderr in the foreground, syslog
 * (facility daemon) otherwise.  Debug lines are dropped unless -d.
 */
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "har.h"

static const char *log_program = "hard";
static int log_to_stderr = 1;
static int log_debugging;

void
log_init(const char *program, int foreground, int debug)
{
	log_program = program;
	log_to_stderr = foreground;
	log_debugging = debug;
	if (!foreground)
		openlog(program, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

static void
log_write(int priority, const char *fmt, va_list ap)
{
	char message[1024];

	vsnprintf(message, sizeof(message), fmt, ap);
	if (log_to_stderr) {
		fprintf(stderr, "%s: %s\n", log_program, message);
		return;
	}
	syslog(priority, "%s", message);
}

void
log_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_write(LOG_ERR, fmt, ap);
	va_end(ap);
}

void
log_warning(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_write(LOG_WARNING, fmt, ap);
	va_end(ap);
}

void
log_info(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_write(LOG_INFO, fmt, ap);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list ap;

	if (!log_debugging)
		return;
	va_start(ap, fmt);
	log_write(LOG_DEBUG, fmt, ap);
	va_end(ap);
}

/*
 * A streak is a run of failures of the same kind.  The caller logs only
 * when log_streak_fail() says the streak just began, and says how many
 * there were when log_streak_ok() reports that it ended.
 */
int
log_streak_fail(struct log_streak *streak)
{
	streak->count++;
	if (streak->active)
		return 0;
	streak->active = 1;
	return 1;
}

unsigned long
log_streak_ok(struct log_streak *streak)
{
	unsigned long failures = streak->active ? streak->count : 0;

	streak->active = 0;
	streak->count = 0;
	return failures;
}
