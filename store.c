/*
 * store.c - the data file: check state and history in sqlite3, written
 * behind the checks and read back at start (warm start).
 *
 * Nothing here runs on the query path.  A check result marks its address
 * dirty and queues a history row.  What the file is read for at once, a
 * change of health, is written on the next half-second tick; the rest
 * (check times, RTTs, counters, the history) every data_file_interval,
 * so that a steady hard costs the disk a few pages a minute instead of a
 * transaction twice a second, and nothing at all while nothing changes.
 * Each write is one transaction with prepared statements.  When the file
 * cannot be written (locked, full, gone, corrupt) the state stays in
 * memory, the trouble is logged once, and the next flush tries again.
 *
 * Each data file has a writer thread of its own.  A reload that names a
 * new file starts a new writer at once and leaves the old one to write
 * its last batch and end by itself, so the loop never waits for a file.
 *
 * This file is the loop side: the state taken into batches, the files and
 * their writers' lifetimes, the restore at start, open and close.
 * store_writer.c has the writer thread and the SQL it runs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "har.h"

#define PENDING_HISTORY_MAX 20000
/* A write of everything comes sooner when this much history waits: it
 * bounds the memory the rows take and what a stop has left to write. */
#define PENDING_HISTORY_FLUSH 5000
/* The disk budget defers a write by at most so many data_file_intervals. */
#define BUDGET_LONGEST_WAIT 10

struct ev_loop *store_loop;
static struct store_file *current;	/* NULL: data_file is empty */
static struct store_file *closing_files;	/* old ones ending by themselves */
ev_async file_closed;		/* a closing file's thread ended */
static int store_history;
static struct registry *store_registry;
static ev_timer flush_timer;
static struct history_row *pending;
static int pending_count;
static int pending_capacity;
static unsigned long pending_dropped;
static int addresses_changed;
static double write_interval = 60;	/* data_file_interval */
static int bytes_per_check = 150;	/* data_file_bytes_per_check */
static double everything_due;	/* monotonic: the next write of everything */
static double everything_latest;	/* and the latest the budget lets it be */
static long long budget_left;	/* bytes the checks earned, less the writes */
static long long interval_write_cost = -1;	/* bytes; -1: not measured yet */
static int cost_awaited;	/* 1: a batch to count; 2: the interval's */
static uid_t owner_uid = (uid_t)-1;
static gid_t owner_gid = (gid_t)-1;
static char owner_name[64];
static char open_failure[1024];	/* why the data file cannot be opened */
static void (*problem_changed)(void);
static int problem_shown;	/* the last cannot_open problem_changed saw */

static const char *const selection_names[] = { "best_rtt", "group_rtt_rr", "all" };
static const char *const rtt_mode_names[] = { "total", "connect" };
static const char *const failure_names[] = { "none", "all", "servfail" };

void
set_owner(const char *path)
{
	if (owner_uid != (uid_t)-1 && chown(path, owner_uid, owner_gid) != 0 &&
	    errno != ENOENT)
		log_warning("cannot give %s to the run-time user: %s", path,
			    strerror(errno));
}

static void
give_files_to_owner(const char *data_path)
{
	char path[4096];

	set_owner(data_path);
	snprintf(path, sizeof(path), "%s-wal", data_path);
	set_owner(path);
	snprintf(path, sizeof(path), "%s-shm", data_path);
	set_owner(path);
}

/*
 * Makes the missing directories above path and gives them to the run-time
 * user.  -1 with errno set and the directory that could not be made in
 * failed (of size bytes).
 */
int
make_directory(const char *path, char *failed, size_t size)
{
	char *copy = strdup(path);
	char *directory = copy ? dirname(copy) : NULL;
	int error = 0;

	if (!directory) {
		snprintf(failed, size, "%s", path);
		return -1;
	}
	if (access(directory, F_OK) == 0) {
		free(copy);
		return 0;
	}
	if (make_directory(directory, failed, size) != 0) {
		error = errno;
	} else if (mkdir(directory, 0755) == 0) {
		set_owner(directory);
	} else if (errno != EEXIST) {
		error = errno;
		snprintf(failed, size, "%s", directory);
	}
	free(copy);
	errno = error;
	return error ? -1 : 0;
}

/* ------------------------------------------------------------ batches */

void
batch_free(struct batch *batch)
{
	if (!batch)
		return;
	free(batch->candidates);
	free(batch->names);
	free(batch->history);
	free(batch->live);
	free(batch->counters);
	free(batch->name_counters);
	free(batch);
}

void
batches_free(struct batch *batch)
{
	while (batch) {
		struct batch *next = batch->next;

		batch_free(batch);
		batch = next;
	}
}

static void
key_of(struct row_key *key, const struct address *address)
{
	snprintf(key->name, sizeof(key->name), "%s",
		 address->candidate->name->config->title);
	snprintf(key->candidate, sizeof(key->candidate), "%s",
		 address->candidate->config->title);
	snprintf(key->ip, sizeof(key->ip), "%s", address->text);
}

static void
copy_address(struct candidate_row *row, const struct address *address)
{
	key_of(&row->key, address);
	row->family = address->ip.family == AF_INET ? 4 : 6;
	row->health = address->health;
	row->has_status = address->check_count > 0;
	row->status = address->last_status;
	row->last_check_time = address->last_check_time;
	row->last_success_time = address->last_success_time;
	row->last_failure_time = address->last_failure_time;
	row->connect_time = address->connect_time;
	row->response_time = address->response_time;
	row->rtt = address->srtt;
	row->last_rtt = address->last_rtt;
	row->successes = address->successes;
	row->timeouts = address->timeouts;
	row->connect_errors = address->connect_errors;
	row->response_errors = address->response_errors;
	row->other_errors = address->other_errors;
	row->checks = address->check_count;
	row->admin_state = admin_state_names[address->candidate->config->admin_state];
	row->draining = address->draining;
	row->latency_group = address->latency_group;
	row->share = address->share;
}

static void
copy_name(struct name_row *row, const struct name *name)
{
	const struct config_name *config = name->config;

	snprintf(row->name, sizeof(row->name), "%s", config->title);
	row->queries = name->queries;
	row->last_query_time = name->last_query_time;
	row->idle = name->idle;
	row->selection_method = selection_names[config->selection_method];
	row->rtt_mode = rtt_mode_names[config->rtt_mode];
	row->failure_mode = failure_names[config->failure_mode];
	row->max_rtt = config->max_rtt;
	row->group_rtt_threshold = config->group_rtt_threshold;
	row->overprovisioning = config->overprovisioning;
	row->ttl = config->ttl;
}

static void *
batch_array(size_t count, size_t size)
{
	void *array = calloc(count ? count : 1, size);

	if (!array) {
		log_error("out of memory writing the data file");
		abort();
	}
	return array;
}

/* -------------------------------------- counters for monitoring, taking */

/*
 * The counters hard keeps for monitoring (struct totals, each name's
 * struct name_counters, each nameserver's struct upstream_counters) are
 * copied into a batch when they moved since the last batch, like the
 * rest of the state: the answer path only increments them in memory.
 */

static struct counters_snapshot counters_written;	/* as last handed over */
static int counters_handed;	/* 0: the next batch writes them whatever */
static double started_at;
static double config_loaded_at;
static double reload_tried_at;
static int reload_ok;
static char config_file[4096];

/* The configuration (re)loaded: the file and the time, for the daemon table. */
static void
counters_note_config(const struct config *config)
{
	if (started_at == 0)
		started_at = wall_now();
	config_loaded_at = wall_now();
	reload_tried_at = config_loaded_at;
	reload_ok = 1;
	snprintf(config_file, sizeof(config_file), "%s",
		 config->file ? config->file : "");
	counters_handed = 0;
}

void
store_note_reload_failed(void)
{
	reload_tried_at = wall_now();
	reload_ok = 0;
	counters_handed = 0;
}

/* A copy of the process-wide counters; NULL if the last batch had these. */
static struct counters_snapshot *
counters_take(void)
{
	struct counters_snapshot now, *copy;

	memset(&now, 0, sizeof(now));
	snprintf(now.version, sizeof(now.version), "%s", HAR_VERSION);
	now.pid = (long)getpid();
	now.start_time = started_at;
	now.config_load_time = config_loaded_at;
	now.reload_time = reload_tried_at;
	now.reload_ok = reload_ok;
	memcpy(now.config_file, config_file, sizeof(now.config_file));
	now.totals = totals;
	now.nameserver_count = upstream_get_counters(now.nameservers,
						     COUNTERS_MAX_NAMESERVERS);
	/* None at all: upstream has stopped (a stop), and the last state of
	 * the nameservers is the one to keep. */
	if (now.nameserver_count == 0) {
		memcpy(now.nameservers, counters_written.nameservers,
		       sizeof(now.nameservers));
		now.nameserver_count = counters_written.nameserver_count;
	}
	if (counters_handed && memcmp(&now, &counters_written, sizeof(now)) == 0)
		return NULL;
	/* memcpy, not assignment: the padding compared above is copied too. */
	copy = batch_array(1, sizeof(*copy));
	memcpy(copy, &now, sizeof(now));
	memcpy(&counters_written, &now, sizeof(now));
	counters_handed = 1;
	return copy;
}

static int
name_counters_moved(const struct name *name)
{
	return addresses_changed || memcmp(&name->counters, &name->stored_counters,
					   sizeof(name->counters)) != 0;
}

static int
name_counters_count_moved(void)
{
	int moved = 0;

	for (int i = 0; i < store_registry->name_count; i++)
		moved += name_counters_moved(&store_registry->names[i]);
	return moved;
}

/* Every name's counters after a reload or at start, else those that moved. */
static void
name_counters_take(struct batch *batch, int moved)
{
	batch->name_counters = batch_array((size_t)moved,
					   sizeof(struct name_counters_row));
	for (int i = 0; i < store_registry->name_count; i++) {
		struct name *name = &store_registry->names[i];
		struct name_counters_row *row;

		if (!name_counters_moved(name))
			continue;
		row = &batch->name_counters[batch->name_counters_count++];
		snprintf(row->name, sizeof(row->name), "%s", name->config->title);
		row->counters = name->counters;
		name->stored_counters = name->counters;
	}
}

static int
name_dirty(const struct name *name)
{
	return name->queries != name->stored_queries || name->store_dirty ||
	    addresses_changed;
}

/* Whether a write of only the urgent rows takes this address. */
static int
address_taken(const struct address *address, int everything)
{
	return address->store_dirty &&
	    (everything || address->candidate->name->store_urgent);
}

/*
 * Takes what is due out of the live state; NULL if nothing is.  With
 * everything, all that is dirty; else only the addresses of the names
 * whose health changed (all of a name's moved rows, since one address
 * going down moves the others' shares).
 */
static struct batch *
batch_take(int everything)
{
	struct batch *batch;
	struct counters_snapshot *counters = NULL;
	int addresses = 0, dirty = 0, names = 0, counted = 0;

	for (int i = 0; i < store_registry->name_count; i++) {
		const struct name *name = &store_registry->names[i];

		names += everything && name_dirty(name);
		for (int j = 0; j < name->candidate_count; j++)
			for (int k = 0; k < name->candidates[j].address_count; k++) {
				addresses++;
				dirty += address_taken(name->candidates[j].addresses[k],
						       everything);
			}
	}
	if (everything) {
		counted = name_counters_count_moved();
		counters = counters_take();
	}
	if (!dirty && !names && !counted && !counters &&
	    (!everything || (pending_count == 0 && !addresses_changed))) {
		for (int i = 0; i < store_registry->name_count; i++)
			store_registry->names[i].store_urgent = 0;
		return NULL;
	}
	batch = batch_array(1, sizeof(*batch));
	batch->counters = counters;
	if (everything)
		name_counters_take(batch, counted);
	batch->candidates = batch_array((size_t)dirty, sizeof(struct candidate_row));
	batch->names = batch_array((size_t)names, sizeof(struct name_row));
	if (everything && addresses_changed)
		batch->live = batch_array((size_t)addresses, sizeof(struct row_key));
	batch->history_slots = store_history;
	for (int i = 0; i < store_registry->name_count; i++) {
		struct name *name = &store_registry->names[i];

		if (everything) {
			if (name_dirty(name))
				copy_name(&batch->names[batch->name_count++], name);
			name->stored_queries = name->queries;
			name->store_dirty = 0;
		}
		for (int j = 0; j < name->candidate_count; j++)
			for (int k = 0; k < name->candidates[j].address_count; k++) {
				struct address *address = name->candidates[j].addresses[k];

				if (batch->live)
					key_of(&batch->live[batch->live_count++], address);
				if (!address_taken(address, everything))
					continue;
				copy_address(&batch->candidates[batch->candidate_count++],
					     address);
				address->store_dirty = 0;
			}
		name->store_urgent = 0;
	}
	if (!everything)
		return batch;
	batch->history = pending;
	batch->history_count = pending_count;
	pending = NULL;
	pending_count = pending_capacity = 0;
	addresses_changed = 0;
	return batch;
}

/* ------------------------------------------------------- files, loop side */

static struct store_file *
file_create(const char *path)
{
	struct store_file *file = calloc(1, sizeof(*file));
	pthread_condattr_t attributes;

	if (!file)
		return NULL;
	file->last_write_time = NAN;
	file->last_batch_bytes = -1;
	file->path = strdup(path);
	if (!file->path) {
		free(file);
		return NULL;
	}
	file->lock_fd = -1;
	pthread_mutex_init(&file->lock, NULL);
	pthread_condattr_init(&attributes);
	pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC);
	pthread_cond_init(&file->wake, &attributes);
	pthread_condattr_destroy(&attributes);
	return file;
}

static void
file_free(struct store_file *file)
{
	close_database(file);
	lock_release(file);
	batches_free(file->queue);
	pthread_cond_destroy(&file->wake);
	pthread_mutex_destroy(&file->lock);
	free(file->path);
	free(file);
}

static void
file_start(struct store_file *file)
{
	int error = pthread_create(&file->thread, NULL, writer_main, file);

	if (error != 0) {
		log_error("cannot start the writer of data file %s: %s; its state "
			  "is kept in memory only", file->path, strerror(error));
		return;
	}
	file->thread_running = 1;
}

static int
file_busy(struct store_file *file)
{
	int busy;

	pthread_mutex_lock(&file->lock);
	busy = file->queue != NULL;
	pthread_mutex_unlock(&file->lock);
	return busy;
}

static void
file_hand(struct store_file *file, struct batch *batch)
{
	struct batch **tail;

	pthread_mutex_lock(&file->lock);
	for (tail = &file->queue; *tail; tail = &(*tail)->next)
		;
	*tail = batch;
	pthread_cond_signal(&file->wake);
	pthread_mutex_unlock(&file->lock);
}

/*
 * The file gets the last batch and is told to close; its thread ends by
 * itself (within CLOSE_PATIENCE) and the loop joins it when it says so.
 */
static void
file_close(struct store_file *file)
{
	struct batch *last = store_registry ? batch_take(1) : NULL;

	if (!file->thread_running) {
		batch_free(last);
		file_free(file);
		return;
	}
	if (last)
		file_hand(file, last);
	pthread_mutex_lock(&file->lock);
	file->closing = 1;
	file->give_up_at = monotonic_now() + CLOSE_PATIENCE;
	pthread_cond_signal(&file->wake);
	pthread_mutex_unlock(&file->lock);
	file->next = closing_files;
	closing_files = file;
}

/* Joins the closing files whose thread has ended, or all of them. */
static void
join_closed_files(int all)
{
	struct store_file **link = &closing_files;

	while (*link) {
		struct store_file *file = *link;
		int finished;

		pthread_mutex_lock(&file->lock);
		finished = file->finished;
		pthread_mutex_unlock(&file->lock);
		if (!finished && !all) {
			link = &file->next;
			continue;
		}
		pthread_join(file->thread, NULL);
		*link = file->next;
		file_free(file);
	}
}

/* Whether an old writer of path is still closing it. */
static int
still_closing(const char *path)
{
	for (struct store_file *file = closing_files; file; file = file->next)
		if (strcmp(file->path, path) == 0)
			return 1;
	return 0;
}

/*
 * A reload back to a file whose old writer is still closing it (A, B, A
 * within CLOSE_PATIENCE) starts the new writer only once the old one has
 * ended, so the old writer's last batch cannot land after the new one's
 * newer state.  Batches wait in the new file's queue meanwhile.
 */
static void
start_current_when_free(void)
{
	if (current && !current->thread_running && !still_closing(current->path))
		file_start(current);
}

static void
on_file_closed(struct ev_loop *loop, ev_async *watcher, int revents)
{
	(void)loop;
	(void)watcher;
	(void)revents;
	join_closed_files(0);
	start_current_when_free();
}

/* A new file gets the whole current state, not only what changed. */
static void
mark_everything_dirty(void)
{
	for (int i = 0; store_registry && i < store_registry->name_count; i++) {
		struct name *name = &store_registry->names[i];

		for (int j = 0; j < name->candidate_count; j++)
			for (int k = 0; k < name->candidates[j].address_count; k++)
				name->candidates[j].addresses[k]->store_dirty = 1;
	}
	addresses_changed = 1;
	counters_handed = 0;
}

/* --------------------------------------------------------- the loop side */

/*
 * The disk budget (data_file_bytes_per_check): a write of everything
 * dirties some pages whatever it carries (the WAL's and its index's, 16
 * to 28 KB for four addresses), which at four checks every 10 seconds is
 * over 1,000 bytes a check if written every minute.  So every check puts
 * bytes_per_check into budget_left and every write, as the writer
 * measured it, takes its cost out; a write the interval alone calls for
 * waits until what is left covers what such a write costs, and at most
 * BUDGET_LONGEST_WAIT intervals.  A balance rather than a count since the
 * last write: a write dearer than the one before is paid for by the next
 * wait, and the writes of health, the start and reloads count too.  The
 * balance keeps between minus one write and one write, so that neither a
 * spell of few checks nor one of many decides the writes long after it.
 * Unmeasured (the first write, no /proc) or turned off: the interval alone.
 */
static int
budget_allows(double now)
{
	if (bytes_per_check == 0 || interval_write_cost < 0 ||
	    now >= everything_latest)
		return 1;
	return budget_left >= interval_write_cost;
}

static void
budget_earn(void)
{
	budget_left += bytes_per_check;
	if (interval_write_cost >= 0 && budget_left > interval_write_cost)
		budget_left = interval_write_cost;
}

/*
 * What the last batch cost, once the writer has it in the file; for the
 * interval's batch, the estimate of the next one's.  The same write costs
 * 16 to 28 KB as its frames fall on the pages of the WAL and its index,
 * so the estimate is the dearest of late: a dearer write is taken at
 * once, a cheaper one lowers it by an eighth of the difference.
 */
static void
collect_write_cost(void)
{
	long long cost;

	if (!cost_awaited || file_busy(current))
		return;
	pthread_mutex_lock(&current->lock);
	cost = current->last_batch_bytes;
	pthread_mutex_unlock(&current->lock);
	if (cost_awaited == 2) {
		if (cost < 0 || interval_write_cost < 0 || cost >= interval_write_cost)
			interval_write_cost = cost;
		else
			interval_write_cost -= (interval_write_cost - cost) / 8;
	}
	cost_awaited = 0;
	if (cost < 0)
		return;
	budget_left -= cost;
	if (interval_write_cost >= 0 && budget_left < -interval_write_cost)
		budget_left = -interval_write_cost;
}

/*
 * Everything is due after a reload, a new resolution or a new file (the
 * file must describe what hard checks now), every data_file_interval as
 * the disk budget allows, and when the history waiting grows long.  The
 * interval counts from the last write of everything, so the first change
 * after a quiet spell is written at once and the next ones wait.  Returns
 * 2 when the interval is the only reason: that write's cost is measured.
 */
static int
everything_is_due(void)
{
	double now = monotonic_now();

	if (addresses_changed || !counters_handed ||
	    pending_count >= PENDING_HISTORY_FLUSH)
		return 1;
	return now >= everything_due && budget_allows(now) ? 2 : 0;
}

static void
store_flush(void)
{
	struct batch *batch;
	int everything;

	if (!current || !store_registry || !current->thread_running ||
	    file_busy(current))
		return;
	collect_write_cost();
	everything = everything_is_due();
	batch = batch_take(everything);
	if (!batch)
		return;
	if (everything) {
		everything_due = monotonic_now() + write_interval;
		everything_latest = monotonic_now() +
		    BUDGET_LONGEST_WAIT * write_interval;
	}
	cost_awaited = everything == 2 ? 2 : 1;
	if (pending_dropped) {
		log_warning("%lu check history rows were dropped while the data "
			    "file could not be written", pending_dropped);
		pending_dropped = 0;
	}
	file_hand(current, batch);
}

static void problem_follow(void);

static void
flush_tick(struct ev_loop *loop, ev_timer *timer, int revents)
{
	(void)loop;
	(void)timer;
	(void)revents;
	store_flush();
	problem_follow();
}

void
store_record_check(const struct address *address, int success,
		   int health_changed)
{
	struct history_row *row;

	totals.checks++;
	totals.checks_failed += !success;
	if (!current)
		return;
	budget_earn();
	((struct address *)address)->store_dirty = 1;
	if (health_changed)
		address->candidate->name->store_urgent = 1;
	if (pending_count == PENDING_HISTORY_MAX) {
		/* Unwritable for long: drop the older half, keep the newest. */
		int dropped = pending_count / 2;

		memmove(pending, pending + dropped,
			sizeof(*pending) * (size_t)(pending_count - dropped));
		pending_count -= dropped;
		pending_dropped += (unsigned long)dropped;
	}
	if (pending_count == pending_capacity) {
		int capacity = pending_capacity ? pending_capacity * 2 : 256;
		struct history_row *grown = realloc(pending, sizeof(*pending) *
						    (size_t)capacity);

		if (!grown) {
			pending_dropped++;
			return;
		}
		pending = grown;
		pending_capacity = capacity;
	}
	row = &pending[pending_count++];
	key_of(&row->key, address);
	row->slot = (long long)((address->check_count - 1) % (uint64_t)store_history);
	row->time = address->last_check_time;
	row->status = address->last_status;
	row->success = success;
	row->connect_time = success ? address->connect_time : NAN;
	row->response_time = success ? address->response_time : NAN;
}

void
store_note_addresses_changed(void)
{
	addresses_changed = 1;
}

/* ------------------------------------------------------------ restore */

/*
 * The data file is input like any other: the older schemas hard upgrades
 * allow NULL keys, and a file written by hand or by another program may
 * hold any type and any value in any column.  A row without its whole key
 * is skipped (they are counted for one log line, and the writer's next
 * pruning removes them); every value is checked before it is taken, and
 * one that cannot be is left unknown, as if never recorded.
 */

/* The longest a check can take (check_timeout's bound): a longer RTT is noise. */
#define RESTORE_MAX_SECONDS 86400.0

/* A key column's text; NULL when the column is NULL. */
static const char *
column_key(sqlite3_stmt *row, int column)
{
	return (const char *)sqlite3_column_text(row, column);
}

static int
column_is_number(sqlite3_stmt *row, int column)
{
	int type = sqlite3_column_type(row, column);

	return type == SQLITE_INTEGER || type == SQLITE_FLOAT;
}

/* A time: NAN unless a finite number. */
static double
column_real(sqlite3_stmt *row, int column)
{
	double value;

	if (!column_is_number(row, column))
		return NAN;
	value = sqlite3_column_double(row, column);
	return isfinite(value) ? value : NAN;
}

/*
 * A duration a check measured: NAN unless within what a check can take.
 * A smoothed RTT restored as infinite or huge would stay so for good (each
 * sample only moves it by a third) and keep the address over max_rtt.
 */
static double
column_seconds(sqlite3_stmt *row, int column)
{
	double value = column_real(row, column);

	return value >= 0 && value <= RESTORE_MAX_SECONDS ? value : NAN;
}

/* A counter: 0 unless a number above 0. */
static uint64_t
column_count(sqlite3_stmt *row, int column)
{
	sqlite3_int64 value;

	if (!column_is_number(row, column))
		return 0;
	value = sqlite3_column_int64(row, column);
	return value > 0 ? (uint64_t)value : 0;
}

/*
 * The candidate's address with the IP of ip_text (in whatever form
 * inet_pton reads); a resolved candidate starts with the addresses it
 * last had, up to as many as a resolution gives.
 */
static struct address *
restore_find_address(struct candidate *candidate, const char *ip_text)
{
	char canonical[INET6_ADDRSTRLEN];
	struct ip_address ip, *ips;

	if (ip_address_parse(ip_text, &ip) != 0)
		return NULL;
	ip_address_format(&ip, canonical, sizeof(canonical));
	for (int i = 0; i < candidate->address_count; i++)
		if (strcmp(candidate->addresses[i]->text, canonical) == 0)
			return candidate->addresses[i];
	if (candidate->config->address_count > 0 ||
	    candidate->address_count >= CANDIDATE_RESOLVED_MAX)
		return NULL;
	ips = calloc((size_t)candidate->address_count + 1, sizeof(*ips));
	if (!ips)
		return NULL;
	for (int i = 0; i < candidate->address_count; i++)
		ips[i] = candidate->addresses[i]->ip;
	ips[candidate->address_count] = ip;
	candidate_set_addresses(candidate, ips, candidate->address_count + 1);
	free(ips);
	return candidate->addresses[candidate->address_count - 1];
}

/* healthy: NULL (or not a number) unknown, 0 down, anything else up. */
static int
column_health(sqlite3_stmt *row, int column)
{
	if (!column_is_number(row, column))
		return HEALTH_UNKNOWN;
	return sqlite3_column_double(row, column) != 0 ? HEALTH_UP : HEALTH_DOWN;
}

static void
restore_address(struct address *address, sqlite3_stmt *row)
{
	address->health = column_health(row, 3);
	address->last_check_time = column_real(row, 4);
	address->last_success_time = column_real(row, 5);
	address->last_failure_time = column_real(row, 6);
	address->last_status = sqlite3_column_int(row, 7);
	address->connect_time = column_seconds(row, 8);
	address->response_time = column_seconds(row, 9);
	address->srtt = column_seconds(row, 10);
	address->last_rtt = column_seconds(row, 11);
	address->successes = column_count(row, 12);
	address->timeouts = column_count(row, 13);
	address->connect_errors = column_count(row, 14);
	address->response_errors = column_count(row, 15);
	address->other_errors = column_count(row, 16);
	address->check_count = column_count(row, 17);
	address->draining = column_count(row, 18) != 0;
	/* The row shows the admin_state of the file's last writer. */
	address->store_dirty = 1;
}

/* Returns how many rows were skipped for a NULL name. */
static int
restore_queries(struct registry *registry)
{
	sqlite3_stmt *statement;
	double now = wall_now();
	int skipped = 0;

	if (sqlite3_prepare_v2(current->db, "SELECT name, queries,"
			       " last_query_time FROM names", -1,
			       &statement, NULL) != SQLITE_OK)
		return 0;
	while (sqlite3_step(statement) == SQLITE_ROW) {
		const char *title = column_key(statement, 0);
		struct name *name = title ? registry_find_name(registry, title) :
		    NULL;
		double last_query_time;

		skipped += !title;
		if (!name)
			continue;
		name->queries = column_count(statement, 1);
		/* A name idle when hard stopped is idle again at once; a
		 * query time to come is no query time. */
		last_query_time = column_real(statement, 2);
		name->last_query_time = last_query_time <= now ?
		    last_query_time : NAN;
	}
	sqlite3_finalize(statement);
	return skipped;
}

/* The address a candidates row is about; NULL if none (or no whole key). */
static struct address *
row_address(struct registry *registry, sqlite3_stmt *row, int *skipped)
{
	const char *keys[3];
	struct name *name;
	struct candidate *candidate;

	for (int i = 0; i < 3; i++) {
		keys[i] = column_key(row, i);
		if (!keys[i]) {
			(*skipped)++;
			return NULL;
		}
	}
	name = registry_find_name(registry, keys[0]);
	candidate = name ? name_find_candidate(name, keys[1]) : NULL;
	return candidate ? restore_find_address(candidate, keys[2]) : NULL;
}

void
store_restore(struct registry *registry)
{
	sqlite3_stmt *row;
	int restored = 0, skipped_names, skipped = 0;

	store_registry = registry;
	addresses_changed = 1;
	if (!current || !current->db)
		return;
	skipped_names = restore_queries(registry);
	if (sqlite3_prepare_v2(current->db,
	    "SELECT name, candidate_name, ip_address, healthy, last_check_time,"
	    " last_success_time, last_failure_time, last_check_status,"
	    " connect_time, response_time, rtt, last_rtt, successes, timeouts,"
	    " connect_errors, response_errors, other_errors, checks, draining"
	    " FROM candidates", -1, &row, NULL) != SQLITE_OK) {
		log_warning("cannot read the previous state from %s: %s",
			    current->path, sqlite3_errmsg(current->db));
		return;
	}
	while (sqlite3_step(row) == SQLITE_ROW) {
		struct address *address = row_address(registry, row, &skipped);

		if (!address)
			continue;
		restore_address(address, row);
		restored++;
	}
	sqlite3_finalize(row);
	for (int i = 0; i < registry->name_count; i++)
		select_update_all(&registry->names[i]);
	if (skipped_names + skipped)
		log_warning("data file %s: skipped %d names rows and %d candidates "
			    "rows without a name, candidate or address (NULL); "
			    "they are removed", current->path, skipped_names,
			    skipped);
	if (restored)
		log_info("restored the state of %d addresses from %s", restored,
			 current->path);
}

/* -------------------------------------------------------- open, close */

static void
set_owner_from_user(const char *user)
{
	struct passwd *account;

	if (!user)
		return;
	account = getpwnam(user);
	if (!account)
		return;	/* har.c says so when it drops privileges */
	owner_uid = account->pw_uid;
	owner_gid = account->pw_gid;
	snprintf(owner_name, sizeof(owner_name), "%s", user);
}

static int __attribute__((format(printf, 1, 2)))
open_failed(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(open_failure, sizeof(open_failure), fmt, ap);
	va_end(ap);
	return -1;
}

/*
 * The run-time user must be able to open the file too: after the drop
 * hard opens it again as that user (after an I/O error, or to recreate
 * its -wal file), and a file only root can reach would stop being
 * written for good.  A child process becomes the user and tries to open
 * path, or with only_reach, to search the directory path.
 */
static int
check_as_owner(const char *path, int only_reach)
{
	pid_t child;
	int status;

	/* Not root: hard cannot become the user, and says so when it tries. */
	if (owner_uid == (uid_t)-1 || owner_uid == geteuid() || geteuid() != 0)
		return 0;
	child = fork();
	if (child < 0)
		return open_failed("cannot check it as user %s: %s", owner_name,
				   strerror(errno));
	if (child == 0) {
		int fd;

		if (setgroups(1, &owner_gid) != 0 || setgid(owner_gid) != 0 ||
		    setuid(owner_uid) != 0)
			_exit(255);
		if (only_reach)
			_exit(access(path, X_OK) == 0 ? 0 :
			      errno > 0 && errno < 254 ? errno : 254);
		fd = open(path, O_RDWR | O_CLOEXEC);
		_exit(fd >= 0 ? 0 : errno > 0 && errno < 254 ? errno : 254);
	}
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR)
			return open_failed("cannot check it as user %s: %s",
					   owner_name, strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) >= 254)
		return open_failed("cannot check it as user %s", owner_name);
	if (WEXITSTATUS(status) != 0)
		return open_failed("user %s cannot %s: %s", owner_name,
				   only_reach ? "reach it" : "open it",
				   strerror(WEXITSTATUS(status)));
	return 0;
}

/*
 * What a start cannot go without: a regular file that hard can open for
 * reading and writing, now and as the user it is about to become, made
 * with its directories when missing.  What may pass by itself (a full
 * file system) is left to the writer, which logs and retries.
 */
static int
check_data_file(const char *path)
{
	char failed[4096];
	struct stat status;
	int created = 1;
	int fd;

	if (make_directory(path, failed, sizeof(failed)) != 0)
		return open_failed("cannot create directory %s: %s", failed,
				   strerror(errno));
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0 && errno == EEXIST) {
		created = 0;
		fd = open(path, O_RDWR | O_CLOEXEC);
	}
	if (fd < 0 && (errno == ENOSPC || errno == EDQUOT))
		return 0;
	if (fd < 0)
		return open_failed("%s", strerror(errno));
	if (fstat(fd, &status) != 0 || !S_ISREG(status.st_mode)) {
		close(fd);
		return open_failed("not a regular file");
	}
	close(fd);
	give_files_to_owner(path);
	if (check_as_owner(path, 0) != 0) {
		if (created)
			unlink(path);
		return -1;
	}
	return 0;
}

/*
 * The deepest directory of path's that exists (path itself excluded),
 * into out; -1 when even the root is missing, which cannot be.
 */
static int
existing_parent(const char *path, char *out, size_t size)
{
	char *copy = strdup(path);
	char *directory = copy;

	for (;;) {
		directory = directory ? dirname(directory) : NULL;
		if (!directory)
			break;
		if (access(directory, F_OK) == 0) {
			snprintf(out, size, "%s", directory);
			free(copy);
			return 0;
		}
		if (strcmp(directory, "/") == 0 || strcmp(directory, ".") == 0)
			break;
	}
	free(copy);
	return -1;
}

/*
 * For -t: what the start's check_data_file would find, made or changed
 * nothing.  An existing file must be a regular file that hard, and the
 * run-time user, can read and write; a missing one (and its missing
 * directories) needs a writable directory where the first would go, one
 * the run-time user can reach.
 */
int
store_check(const struct config *config, const char *user)
{
	const char *path = config->data_file;
	char parent[4096];
	struct stat status;
	int fd;

	if (path[0] == '\0')
		return 0;
	set_owner_from_user(user);
	fd = open(path, O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0) {
		int regular = fstat(fd, &status) == 0 && S_ISREG(status.st_mode);

		close(fd);
		if (!regular)
			return open_failed("not a regular file");
		return check_as_owner(path, 0);
	}
	if (errno != ENOENT && errno != ENOTDIR)
		return open_failed("%s", strerror(errno));
	if (existing_parent(path, parent, sizeof(parent)) != 0)
		return open_failed("no directory above it exists");
	if (stat(parent, &status) != 0 || !S_ISDIR(status.st_mode))
		return open_failed("cannot create it: %s is not a directory",
				   parent);
	if (access(parent, W_OK | X_OK) != 0)
		return open_failed("cannot create it in %s: %s", parent,
				   strerror(errno));
	return check_as_owner(parent, 1);
}

/*
 * A start goes on whatever the data file does, since a host whose
 * resolver will not start has no DNS: a file that cannot be opened or
 * made is logged here, once, with the reason the checks found, and the
 * writer retries it every REOPEN_INTERVAL as it does for a file that
 * fails later.
 */
static void
start_without_file(struct store_file *file)
{
	log_error("cannot open data file %s: %s; answering with the state in "
		  "memory and retrying every %.0f s", file->path, open_failure,
		  REOPEN_INTERVAL);
	log_streak_fail(&file->open_streak);
	pthread_mutex_lock(&file->lock);
	file->cannot_open = 1;
	pthread_mutex_unlock(&file->lock);
	problem_shown = 1;	/* the start's own STATUS= says it */
}

static int
file_cannot_open(struct store_file *file)
{
	int cannot;

	if (!file)
		return 0;
	pthread_mutex_lock(&file->lock);
	cannot = file->cannot_open;
	pthread_mutex_unlock(&file->lock);
	return cannot;
}

const char *
store_problem(void)
{
	if (!file_cannot_open(current))
		return "";
	return open_failure[0] ? open_failure : "cannot be opened (see the log)";
}

void
store_daemon_status(struct daemon_status *out)
{
	out->config_file = config_file;
	out->start_time = started_at;
	out->config_load_time = config_loaded_at;
	out->reload_time = reload_tried_at;
	out->reload_ok = reload_ok;
	out->has_data_file = current != NULL;
	out->data_file_writable = 0;
	out->data_file_write_time = NAN;
	if (!current)
		return;
	pthread_mutex_lock(&current->lock);
	out->data_file_writable = !current->cannot_open && !current->write_failed;
	out->data_file_write_time = current->last_write_time;
	pthread_mutex_unlock(&current->lock);
}

void
store_on_problem_change(void (*changed)(void))
{
	problem_changed = changed;
}

/* On the loop's flush tick: the writer thread cannot call the loop. */
static void
problem_follow(void)
{
	int cannot = file_cannot_open(current);

	if (cannot == problem_shown)
		return;
	problem_shown = cannot;
	if (!cannot)
		open_failure[0] = '\0';
	if (problem_changed)
		problem_changed();
}

/*
 * Another hard's data file is not shared (store_lock.c): a start waits up
 * to LOCK_PATIENCE for its lock, which a hard that is stopping (a restart
 * whose new hard starts before the old one has ended) lets go of within
 * CLOSE_PATIENCE, and fails if it is still held then.  -1 (open_failure
 * says why) only then; a lock file that cannot be made is the writer's to
 * retry, with the data file.
 */
static int
wait_for_lock(struct store_file *file)
{
	double give_up_at = monotonic_now() + LOCK_PATIENCE;
	char holder_text[64];
	long holder;
	int said = 0;

	while (lock_take(file, &holder) == 1) {
		lock_holder_text(holder, holder_text, sizeof(holder_text));
		if (monotonic_now() >= give_up_at)
			return open_failed("in use by %s, which holds %s.lock; "
					   "refusing to start a second hard on it",
					   holder_text, file->path);
		if (!said)
			log_info("data file %s is in use by %s; waiting up to "
				 "%.0f s for it", file->path, holder_text,
				 LOCK_PATIENCE);
		said = 1;
		usleep(50000);
	}
	if (said && file->lock_fd >= 0)
		log_info("data file %s is free: going on", file->path);
	return 0;
}

/*
 * Fails when memory runs out, or when another hard keeps the data file
 * (wait_for_lock): a data file that cannot be opened or made is logged
 * and retried while hard answers (start_without_file), as is one that
 * opens but cannot be written yet (locked, full, corrupt).
 */
int
store_open(struct ev_loop *loop, const struct config *config, const char *user)
{
	store_loop = loop;
	store_history = config->check_history;
	write_interval = config->data_file_interval;
	bytes_per_check = config->data_file_bytes_per_check;
	counters_note_config(config);
	ev_async_init(&file_closed, on_file_closed);
	ev_async_start(loop, &file_closed);
	ev_timer_init(&flush_timer, flush_tick, FLUSH_INTERVAL, FLUSH_INTERVAL);
	ev_timer_start(loop, &flush_timer);
	if (config->data_file[0] == '\0') {
		log_info("data_file is empty: check state is kept in memory only");
		return 0;
	}
	set_owner_from_user(user);
	current = file_create(config->data_file);
	if (!current)
		return open_failed("out of memory");
	if (check_data_file(config->data_file) != 0) {
		start_without_file(current);
		return 0;
	}
	if (wait_for_lock(current) != 0)
		return -1;
	open_database(current);
	give_files_to_owner(current->path);
	return 0;
}

const char *
store_open_error(void)
{
	return open_failure;
}

/* A reload's new file, locked already (file_held_by_another). */
static struct store_file *taken;

/*
 * A reload to a file that another hard writes is refused, and the old
 * file kept: the next reload tries again.  The new file's lock is taken
 * here, at once, unless this hard's own old writer of it is still closing
 * it (its new writer takes the lock when it starts, after the old one) or
 * the lock file cannot be made yet (the writer makes the directories).
 */
static int
file_held_by_another(const char *path)
{
	char holder_text[64];
	long holder;

	if (path[0] == '\0' || still_closing(path))
		return 0;
	taken = file_create(path);
	if (!taken || lock_take(taken, &holder) != 1)
		return 0;
	log_error("reload: data file %s is in use by %s, which holds %s.lock; "
		  "keeping %s%s", path, lock_holder_text(holder, holder_text,
							  sizeof(holder_text)),
		  path, current ? "data file " : "the state in memory only",
		  current ? current->path : "");
	file_free(taken);
	taken = NULL;
	return 1;
}

/*
 * An SQLite connection must not cross fork(): its POSIX locks stay with
 * the process that took them.  A daemon that kept the connection its
 * parent opened held no lock once the parent exited, so the first reader
 * (sqlite3, har-status) took the file for unused, and on closing could
 * copy and remove the WAL the daemon went on writing to: the daemon's
 * rows then never reached any reader.  The file is closed before the
 * fork; the writer opens it again for its first batch.
 */
void
store_before_fork(void)
{
	if (current && current->db)
		close_database(current);
}

/*
 * A new data_file: the old file gets its last batch and closes by itself
 * (nothing here waits for it), and the new one, opened by its own writer,
 * gets the whole current state.
 */
void
store_reconfigure(const struct config *config, struct registry *registry)
{
	store_registry = registry;
	addresses_changed = 1;
	store_history = config->check_history;
	write_interval = config->data_file_interval;
	bytes_per_check = config->data_file_bytes_per_check;
	counters_note_config(config);
	if (strcmp(current ? current->path : "", config->data_file) == 0)
		return;
	if (file_held_by_another(config->data_file))
		return;
	log_info("data file changes to \"%s\"", config->data_file);
	if (current)
		file_close(current);
	current = NULL;
	free(pending);
	pending = NULL;
	pending_count = pending_capacity = 0;
	if (config->data_file[0] == '\0')
		return;
	current = taken ? taken : file_create(config->data_file);
	taken = NULL;
	if (!current) {
		log_error("out of memory opening data file %s", config->data_file);
		return;
	}
	mark_everything_dirty();
	start_current_when_free();
}

/*
 * From here on the file is the writer thread's.  Called once the daemon
 * has detached: a thread does not survive fork().
 */
void
store_start(void)
{
	if (current)
		lock_note_pid(current);	/* the daemon's, after the fork */
	if (current && !current->thread_running)
		file_start(current);
}

/*
 * Writes the last state and closes the file (SIGTERM).  A file that stays
 * locked or unwritable holds the stop up for CLOSE_PATIENCE at most.
 */
void
store_close(void)
{
	if (store_loop) {
		ev_timer_stop(store_loop, &flush_timer);
		ev_async_stop(store_loop, &file_closed);
	}
	if (current && !current->thread_running && store_registry) {
		join_closed_files(1);	/* the old writer of the same file */
		start_current_when_free();
	}
	if (current)
		file_close(current);
	current = NULL;
	join_closed_files(1);
	free(pending);
	pending = NULL;
	pending_count = pending_capacity = 0;
}
