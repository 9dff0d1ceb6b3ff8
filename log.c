/*
 * log.c - where hard's messages go: stderr in the foreground, syslog
 * (facility daemon) otherwise.  Debug lines are dropped unless -d.
 *
 * When stderr is the systemd journal (JOURNAL_STREAM names stderr's
 * device and inode, sd-daemon(3)), each line starts with its syslog
 * priority, "<3>" to "<7>", which the journal strips and keeps, so that
 * `journalctl -p err` finds hard's errors.  Anywhere else (a terminal, a
 * file, a pipe) lines stay as they are.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "har.h"

static const char *log_program = "hard";
static int log_to_stderr = 1;
static int log_debugging;
static int log_to_journal;

/* JOURNAL_STREAM is inherited by children whose stderr may go elsewhere,
 * hence the comparison with stderr itself. */
static int
stderr_is_journal(void)
{
	const char *stream = getenv("JOURNAL_STREAM");
	unsigned long long device, inode;
	struct stat status;

	if (!stream || sscanf(stream, "%llu:%llu", &device, &inode) != 2)
		return 0;
	if (fstat(STDERR_FILENO, &status) != 0)
		return 0;
	return (unsigned long long)status.st_dev == device &&
	    (unsigned long long)status.st_ino == inode;
}

const char *
log_stderr_prefix(int priority)
{
	static const char *prefixes[] = {
		"<0>", "<1>", "<2>", "<3>", "<4>", "<5>", "<6>", "<7>"
	};

	if (!log_to_journal || priority < 0 || priority > LOG_DEBUG)
		return "";
	return prefixes[priority];
}

void
log_init(const char *program, int foreground, int debug)
{
	log_program = program;
	log_to_journal = stderr_is_journal();
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
		fprintf(stderr, "%s%s: %s\n", log_stderr_prefix(priority),
			log_program, message);
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

/* The query log: debug priority, but written whenever it is on, -d or
 * not. */
void
log_query(const char *fmt, ...)
{
	va_list ap;

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
