/*
 * har.c - hard's entry point: the command line, start-up in an order that
 * reports every failure before the daemon detaches, the one libev loop,
 * the signals that reload the configuration or stop it, and when to tell
 * the service manager so (notify.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "har.h"

#define DEFAULT_CONFIG "/etc/har.conf"
#define RESOLV_CONF "/etc/resolv.conf"

struct options {
	const char *config_file;
	const char *pid_file;
	const char *user;
	int foreground;
	int debug;
	int test_only;
};

static struct options options = { .config_file = DEFAULT_CONFIG };
static struct config *running_config;
static struct registry *registry;
static struct dns_server *server;
static struct ev_loop *loop;
static int pid_file_written;
static int detached;		/* stderr is /dev/null: errors go to syslog */

static void
usage(FILE *stream)
{
	fprintf(stream,
		"usage: hard [-f] [-d] [-t] [-c FILE] [-p PIDFILE] [-u USER] [-V] [-h] [FILE]\n"
		"  -c FILE     configuration file (default " DEFAULT_CONFIG ")\n"
		"  -f          stay in the foreground, log to stderr\n"
		"  -d          debug logging\n"
		"  -t          check the configuration, print ok or the errors, exit\n"
		"  -p PIDFILE  write the process ID to PIDFILE\n"
		"  -u USER     run as USER after binding the listeners\n"
		"  -V          print the version\n"
		"  -h          this help\n");
}

static void
report_to_stderr(const char *message)
{
	fprintf(stderr, "%s%s\n", log_stderr_prefix(LOG_ERR), message);
}

static void
report_to_log(const char *message)
{
	log_error("%s", message);
}

static __attribute__((noreturn)) void
usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "hard: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	usage(stderr);
	exit(1);
}

/*
 * One configuration file, named once: with two (-c A B, -c A -c B) an
 * operator cannot tell which one -t checked or a start runs.
 */
static void
parse_arguments(int argc, char **argv)
{
	const char *config_option = NULL;
	int option;

	while ((option = getopt(argc, argv, "fdtc:p:u:Vh")) != -1) {
		switch (option) {
		case 'f': options.foreground = 1; break;
		case 'd': options.debug = 1; break;
		case 't': options.test_only = 1; break;
		case 'c':
			if (config_option)
				usage_error("-c is given twice (%s and %s); give "
					    "one configuration file",
					    config_option, optarg);
			config_option = optarg;
			break;
		case 'p': options.pid_file = optarg; break;
		case 'u': options.user = optarg; break;
		case 'V':
			printf("hard %s\n", HAR_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(1);
		}
	}
	if (config_option && optind < argc)
		usage_error("two configuration files: -c %s and %s; give one, "
			    "with -c or as FILE", config_option, argv[optind]);
	if (config_option)
		options.config_file = config_option;
	else if (optind < argc)
		options.config_file = argv[optind++];
	if (optind < argc)
		usage_error("unexpected argument \"%s\"", argv[optind]);
}

static __attribute__((noreturn)) void
fail_start(const char *fmt, ...)
{
	char message[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	if (detached)
		log_error("%s", message);
	else
		fprintf(stderr, "%shard: %s\n", log_stderr_prefix(LOG_ERR),
			message);
	exit(1);
}

/* ------------------------------------------------------------ pidfile */

static void
check_pid_file(const char *path)
{
	FILE *stream = fopen(path, "r");
	long pid = 0;

	if (!stream)
		return;
	if (fscanf(stream, "%ld", &pid) != 1)
		pid = 0;
	fclose(stream);
	if (pid > 0 && pid != getpid() &&
	    (kill((pid_t)pid, 0) == 0 || errno == EPERM))
		fail_start("already running as process %ld (pid file %s)", pid, path);
}

static void
write_pid_file(const char *path)
{
	FILE *stream = fopen(path, "w");

	if (!stream || fprintf(stream, "%ld\n", (long)getpid()) < 0 ||
	    fclose(stream) != 0)
		fail_start("cannot write pid file %s: %s", path, strerror(errno));
	pid_file_written = 1;
}

/* The pid file's directory: "." or "/" included. */
static void
pid_directory(const char *path, char *out, size_t size)
{
	char *slash;

	snprintf(out, size, "%s", path);
	slash = strrchr(out, '/');
	if (!slash)
		snprintf(out, size, ".");
	else if (slash == out)
		slash[1] = '\0';
	else
		*slash = '\0';
}

/*
 * The pid file is removed at stop by hard running as USER, which needs
 * write permission on the file's directory (not on the file).  A missing
 * directory (/run/har after a reboot) is made here and given to USER, so
 * that `-u USER -p /run/har/hard.pid` works without any set-up.  An
 * existing directory is left as it is.
 */
static void
make_pid_directory(const char *path, const char *user)
{
	char directory[4096];
	struct passwd *account;

	pid_directory(path, directory, sizeof(directory));
	if (mkdir(directory, 0755) != 0) {
		if (errno != EEXIST)
			fail_start("cannot create %s for the pid file: %s",
				   directory, strerror(errno));
		return;
	}
	account = user ? getpwnam(user) : NULL;
	if (account && geteuid() == 0 &&
	    chown(directory, account->pw_uid, account->pw_gid) != 0)
		fail_start("cannot give %s to user %s: %s", directory, user,
			   strerror(errno));
}

/* Called as USER: can it remove the pid file at stop? */
static void
warn_if_pid_file_stays(const char *path, const char *user)
{
	char directory[4096];

	pid_directory(path, directory, sizeof(directory));
	if (access(directory, W_OK | X_OK) != 0)
		log_warning("the pid file %s will be left behind at stop: user %s "
			    "may not write its directory; use a directory %s owns, "
			    "such as /run/har (see hard(8))", path, user, user);
}

static void
remove_pid_file(void)
{
	if (!pid_file_written || unlink(options.pid_file) == 0)
		return;
	if (errno == EACCES || errno == EPERM)
		log_error("cannot remove pid file %s: %s (its directory is not "
			  "writable by the user hard runs as; see hard(8))",
			  options.pid_file, strerror(errno));
	else
		log_error("cannot remove pid file %s: %s", options.pid_file,
			  strerror(errno));
}

/* --------------------------------------------------------- privileges */

static void
drop_privileges(const char *user)
{
	struct passwd *account = getpwnam(user);

	if (!account)
		fail_start("unknown user \"%s\"", user);
	if (account->pw_uid == geteuid() && account->pw_gid == getegid())
		return;
	/* Started unprivileged (a service manager's DynamicUser=, say): a
	 * reload accepts the same file, so the start must not refuse it. */
	if (geteuid() != 0) {
		log_warning("not started as root: cannot become user %s, so "
			    "hard stays user %ld", user, (long)geteuid());
		return;
	}
	if (setgroups(1, &account->pw_gid) != 0 ||
	    setgid(account->pw_gid) != 0 || setuid(account->pw_uid) != 0)
		fail_start("cannot become user %s: %s", user, strerror(errno));
	if (account->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0))
		fail_start("still able to regain root after becoming %s", user);
	log_info("running as user %s", user);
}

/* The daemon detaches only after everything that can fail at start did. */
static void
daemonize(void)
{
	pid_t pid;
	int null;

	store_before_fork();
	pid = fork();
	if (pid < 0)
		fail_start("cannot fork: %s", strerror(errno));
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		fail_start("setsid: %s", strerror(errno));
	pid = fork();
	if (pid < 0)
		fail_start("cannot fork: %s", strerror(errno));
	if (pid > 0)
		_exit(0);
	if (chdir("/") != 0)
		log_warning("cannot chdir to /: %s", strerror(errno));
	null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
		if (null > STDERR_FILENO)
			close(null);
	}
	detached = 1;
	ev_loop_fork(loop);
}

/* ------------------------------------------------------------ reload */

/* Equal strings, where NULL (unset) equals only NULL. */
static int
same_text(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

static int
same_endpoints(const struct config *a, const struct config *b)
{
	if (a->listen_port != b->listen_port ||
	    a->bind_interface_count != b->bind_interface_count)
		return 0;
	for (int i = 0; i < a->bind_interface_count; i++)
		if (strcmp(a->bind_interfaces[i], b->bind_interfaces[i]) != 0)
			return 0;
	return 1;
}

static int
same_upstream(const struct config *a, const struct config *b)
{
	if (a->nameserver_count != b->nameserver_count ||
	    a->resolver_timeout != b->resolver_timeout ||
	    a->resolver_total_timeout != b->resolver_total_timeout)
		return 0;
	for (int i = 0; i < a->nameserver_count; i++)
		if (strcmp(a->nameservers[i].text, b->nameservers[i].text) != 0)
			return 0;
	return 1;
}

static const struct config_name *
find_config_name(const struct config *config, const char *title)
{
	for (int i = 0; i < config->name_count; i++)
		if (strcmp(config->names[i].title, title) == 0)
			return &config->names[i];
	return NULL;
}

static int
same_candidate(const struct config_candidate *a, const struct config_candidate *b)
{
	return strcmp(a->title, b->title) == 0 &&
	    strcmp(a->check_address, b->check_address) == 0 &&
	    a->admin_state == b->admin_state &&
	    a->address_count == b->address_count && (a->address_count == 0 ||
	    memcmp(a->addresses, b->addresses,
		   sizeof(struct ip_address) * (size_t)a->address_count) == 0);
}

static int
same_name(const struct config_name *a, const struct config_name *b)
{
	if (a->check_method != b->check_method ||
	    a->check_frequency != b->check_frequency ||
	    a->check_timeout != b->check_timeout || a->rise != b->rise ||
	    a->fall != b->fall || a->selection_method != b->selection_method ||
	    a->rtt_mode != b->rtt_mode || a->max_rtt != b->max_rtt ||
	    a->group_rtt_threshold != b->group_rtt_threshold ||
	    a->overprovisioning != b->overprovisioning ||
	    a->check_jitter != b->check_jitter ||
	    a->recheck_frequency != b->recheck_frequency ||
	    a->idle_after != b->idle_after ||
	    a->idle_check_frequency != b->idle_check_frequency ||
	    a->failure_mode != b->failure_mode || a->ttl != b->ttl ||
	    a->drain_status_count != b->drain_status_count ||
	    a->candidate_count != b->candidate_count ||
	    !same_text(a->ca_file, b->ca_file) ||
	    !config_same_expect_status(a, b) ||
	    !config_same_http_request(a, b))
		return 0;
	if (a->drain_status_count > 0 &&
	    memcmp(a->drain_status, b->drain_status,
		   sizeof(int) * (size_t)a->drain_status_count) != 0)
		return 0;
	for (int i = 0; i < a->candidate_count; i++)
		if (!same_candidate(&a->candidates[i], &b->candidates[i]))
			return 0;
	return 1;
}

/*
 * Every name already holds what it takes from defaults, so a changed
 * default counts as a change of each name that takes it (and the names
 * are rechecked or rescheduled as for their own change); "defaults
 * changed" says why so many did.
 */
static int
same_defaults(const struct config *a, const struct config *b)
{
	if (!a->defaults || !b->defaults)
		return a->defaults == b->defaults;
	return same_name(a->defaults, b->defaults);
}

static void
log_reload_summary(const struct config *old, const struct config *fresh)
{
	int added = 0, removed = 0, changed = 0;

	for (int i = 0; i < fresh->name_count; i++) {
		const struct config_name *before =
		    find_config_name(old, fresh->names[i].title);

		if (!before)
			added++;
		else if (!same_name(before, &fresh->names[i]))
			changed++;
	}
	for (int i = 0; i < old->name_count; i++)
		if (!find_config_name(fresh, old->names[i].title))
			removed++;
	log_info("reloaded %s: %d names (%d added, %d removed, %d changed)%s%s%s",
		 fresh->file, fresh->name_count, added, removed, changed,
		 same_defaults(old, fresh) ? "" : ", defaults changed",
		 same_endpoints(old, fresh) ? "" : ", listeners re-bound",
		 same_upstream(old, fresh) ? "" : ", nameservers changed");
}

/*
 * Everything that can fail is tried before anything changes, so a bad
 * file or an address that cannot be bound leaves the old set-up serving.
 * Returns 0 when the new file is in use, -1 when the old one still is.
 */
static int
reload(void)
{
	struct config *fresh = config_load(options.config_file, RESOLV_CONF,
					   report_to_log);
	struct registry *fresh_registry;

	if (!fresh) {
		log_error("reload of %s failed; still running the previous configuration",
			  options.config_file);
		store_note_reload_failed();
		return -1;
	}
	if (config_drop_own_listeners(fresh, report_to_log) == 0) {
		log_error("reload of %s failed: no upstream nameserver left; "
			  "still running the previous configuration",
			  options.config_file);
		config_free(fresh);
		store_note_reload_failed();
		return -1;
	}
	if (!same_endpoints(running_config, fresh)) {
		struct dns_server *rebound = dns_server_start(loop, fresh, server);

		if (!rebound) {
			log_error("reload of %s failed: cannot bind the new listeners; "
				  "still running the previous configuration",
				  options.config_file);
			config_free(fresh);
			store_note_reload_failed();
			return -1;
		}
		server = rebound;
	}
	dns_server_configure(server, fresh);
	if (!same_upstream(running_config, fresh) &&
	    upstream_reconfigure(fresh) != 0)
		log_error("keeping the previous nameservers");
	log_reload_summary(running_config, fresh);
	if (!options.user && !same_text(running_config->user, fresh->user))
		log_warning("a change of user takes effect only when hard restarts");
	fresh_registry = registry_create(fresh);
	registry_take_over(fresh_registry, registry);
	registry = fresh_registry;
	dns_server_set_registry(registry);
	metrics_set_registry(registry);
	check_start_all(loop, registry);
	store_reconfigure(fresh, registry);
	/* Not refused for it: a listener that cannot be bound is retried. */
	metrics_reconfigure(fresh);
	/* A SIGUSR1 choice stands until the file itself changes its mind. */
	if (fresh->log_queries != running_config->log_queries)
		query_log_set(fresh->log_queries || options.debug, "log_queries");
	config_free(running_config);
	running_config = fresh;
	return 0;
}

/* "3 names", "1 name": the start's log line and the service status. */
static const char *
names_word(int count)
{
	return count == 1 ? "name" : "names";
}

/*
 * The manager shows it with the unit's state: what hard answers now, and
 * that its state is in memory only while the data file cannot be opened.
 */
static void
format_status(char *out, size_t size)
{
	const char *problem = store_problem();

	snprintf(out, size, "answering %d %s on port %d%s%s%s",
		 running_config->name_count,
		 names_word(running_config->name_count),
		 running_config->listen_port,
		 problem[0] ? "; state in memory only, data file: " : "",
		 problem, problem[0] ? " (retrying)" : "");
}

static void
notify_answering(const char *before)
{
	char status[512];

	format_status(status, sizeof(status));
	notify_ready("%s%s", before, status);
}

static void
on_store_problem(void)
{
	char status[512];

	format_status(status, sizeof(status));
	notify_status("%s", status);
}

/* RELOADING=1, then READY=1 whatever the outcome: hard keeps answering. */
static void
reload_and_notify(void)
{
	notify_reloading("reloading %s", options.config_file);
	if (reload() == 0)
		notify_answering("");
	else
		notify_answering("reload failed (see the log); still ");
}

static void
on_signal(struct ev_loop *signal_loop, ev_signal *watcher, int revents)
{
	(void)revents;
	if (watcher->signum == SIGHUP) {
		log_info("SIGHUP: reloading %s", options.config_file);
		reload_and_notify();
		return;
	}
	if (watcher->signum == SIGUSR1) {
		query_log_toggle();
		return;
	}
	log_info("%s: stopping", watcher->signum == SIGTERM ? "SIGTERM" : "SIGINT");
	notify_stopping("stopping");
	ev_break(signal_loop, EVBREAK_ALL);
}

/* From the loop itself: a loop that stops turning stops the pings. */
static void
on_watchdog(struct ev_loop *timer_loop, ev_timer *timer, int revents)
{
	(void)timer_loop;
	(void)timer;
	(void)revents;
	notify_watchdog();
}

/* ----------------------------------------------------------- start-up */

static ev_timer first_round_timer;

/*
 * Listeners bound, data file open, detached, privileges dropped, first
 * round checked: from now on hard reads its listeners, and a query sent
 * is answered, so the service manager may call hard ready.
 */
static void
start_answering(void)
{
	ev_timer_stop(loop, &first_round_timer);
	dns_server_release(server);
	log_info("hard %s answering %d %s on port %d", HAR_VERSION,
		 running_config->name_count,
		 names_word(running_config->name_count),
		 running_config->listen_port);
	notify_answering("");
}

static void
on_first_round_wait_over(struct ev_loop *timer_loop, ev_timer *timer,
			 int revents)
{
	(void)timer_loop;
	(void)timer;
	(void)revents;
	check_first_round_forget();
	log_info("answering before every first check has ended (%g s "
		 "after the start, first_round_wait)",
		 running_config->first_round_wait);
	start_answering();
}

/*
 * A start with nothing restored (or only state older than the interval)
 * would answer from whichever checks end first: SERVFAIL for names whose
 * servers are up, a far server before the near one is seen.  The kernel
 * holds the queries meanwhile, so waiting for the round costs a cold
 * start's first queries at most first_round_wait, and no answer.
 */
static void
hold_for_first_round(void)
{
	ev_timer_init(&first_round_timer, on_first_round_wait_over,
		      running_config->first_round_wait, 0);
	if (running_config->first_round_wait <= 0 ||
	    check_first_round_wait(start_answering) == 0) {
		start_answering();
		return;
	}
	ev_timer_start(loop, &first_round_timer);
}

/*
 * Everything a start would refuse in the configuration is found here,
 * all of it in one run, before anything is bound or written; -t stops
 * after it.
 */
static struct config *
load_config_or_exit(void)
{
	struct config *config = config_load(options.config_file, RESOLV_CONF,
					    report_to_stderr);
	int failed = !config;

	if (options.user && !getpwnam(options.user)) {
		fprintf(stderr, "%shard: -u %s: no such user\n",
			log_stderr_prefix(LOG_ERR), options.user);
		failed = 1;
	}
	if (config && config_drop_own_listeners(config, report_to_stderr) == 0) {
		fprintf(stderr, "%s%s: no upstream nameserver left (every one "
			"is hard's own listener); set nameservers\n",
			log_stderr_prefix(LOG_ERR), options.config_file);
		failed = 1;
	}
	if (failed) {
		config_free(config);
		exit(1);
	}
	if (options.test_only && store_check(config, options.user ?
					      options.user : config->user) != 0) {
		fprintf(stderr, "%s%s: data_file \"%s\": %s\n",
			log_stderr_prefix(LOG_ERR), options.config_file,
			config->data_file, store_open_error());
		config_free(config);
		exit(1);
	}
	if (options.test_only && config->metrics_listen.addr_len &&
	    !endpoint_is_loopback(&config->metrics_listen))
		fprintf(stderr, "%s%s: warning: metrics_listen %s is not a loopback "
			"address: every host that can reach it can read the "
			"metrics\n", log_stderr_prefix(LOG_WARNING),
			options.config_file, config->metrics_listen.text);
	if (options.test_only) {
		printf("ok\n");
		config_free(config);
		exit(0);
	}
	return config;
}

/* A reload after daemonizing (chdir /) must find the same file. */
static void
absolute_config_path(void)
{
	static char path[4096];

	if (options.config_file[0] == '/' || options.test_only)
		return;
	if (!realpath(options.config_file, path))
		return;	/* config_load reports the missing file */
	options.config_file = path;
}

static void
shut_down(void)
{
	metrics_stop();
	dns_server_stop(server);
	upstream_stop();
	store_close();		/* writes the last state */
	registry_free(registry);
	check_stop();
	remove_pid_file();
	config_free(running_config);
	notify_close();
	activation_close();
	log_info("stopped");
}

int
main(int argc, char **argv)
{
	ev_signal hup, term, interrupt, usr1;
	ev_timer watchdog;
	const char *user;

	parse_arguments(argc, argv);
	/* Until the daemon detaches, every message goes to the terminal. */
	log_init("hard", 1, options.debug);
	absolute_config_path();
	running_config = load_config_or_exit();
	/* After -t has exited: a check run by ExecReload= says nothing and
	 * takes no socket. */
	notify_open();
	activation_read();
	user = options.user ? options.user : running_config->user;
	if (options.pid_file)
		check_pid_file(options.pid_file);
	signal(SIGPIPE, SIG_IGN);
	loop = ev_default_loop(EVFLAG_AUTO);
	if (!loop)
		fail_start("cannot create the event loop");
	/* Before anything can be asked of us, so an early SIGTERM stops
	 * hard cleanly instead of killing it. */
	ev_signal_init(&hup, on_signal, SIGHUP);
	ev_signal_init(&term, on_signal, SIGTERM);
	ev_signal_init(&interrupt, on_signal, SIGINT);
	ev_signal_init(&usr1, on_signal, SIGUSR1);
	ev_signal_start(loop, &usr1);
	ev_signal_start(loop, &hup);
	ev_signal_start(loop, &term);
	ev_signal_start(loop, &interrupt);
	dns_server_hold();
	server = dns_server_start(loop, running_config, NULL);
	if (!server)
		fail_start("cannot listen on the configured addresses (see above)");
	activation_log_unused();
	store_on_problem_change(on_store_problem);
	if (store_open(loop, running_config, user) != 0)
		fail_start("cannot open data file %s: %s",
			   running_config->data_file, store_open_error());
	registry = registry_create(running_config);
	store_restore(registry);
	dns_server_set_registry(registry);
	metrics_set_registry(registry);
	if (upstream_start(loop, running_config) != 0)
		fail_start("cannot start the upstream resolver");
	if (check_start_all(loop, registry) != 0)
		fail_start("cannot start the health checks");
	/* Before privileges are dropped, as the DNS listeners; a failure
	 * is logged and retried, not fatal: DNS comes first. */
	metrics_start(loop, running_config);
	if (options.pid_file)
		make_pid_directory(options.pid_file, user);
	/* Everything that can fail has been tried: now detach, and write
	 * the pid file while still allowed to write where it goes. */
	if (!options.foreground)
		daemonize();
	log_init("hard", options.foreground, options.debug);
	if (options.pid_file)
		write_pid_file(options.pid_file);
	if (user) {
		drop_privileges(user);
		if (options.pid_file)
			warn_if_pid_file_stays(options.pid_file, user);
	}
	store_start();
	hold_for_first_round();
	if (notify_watchdog_interval() > 0) {
		ev_timer_init(&watchdog, on_watchdog, notify_watchdog_interval(),
			      notify_watchdog_interval());
		ev_timer_start(loop, &watchdog);
	}
	if (options.debug || running_config->log_queries)
		query_log_set(1, options.debug ? "-d" : "log_queries");
	ev_run(loop, 0);
	shut_down();
	return 0;
}
