/*
 * store.c - the data file: check state and history in sqlite3, written
 * behind the checks and read back at start (warm start).
 *
 * Nothing here runs on the query path.  A check result marks its address
 * dirty and queues a history row; every half second the dirty state is
 * written in one transaction with prepared statements.  When the file
 * cannot be written (locked, full, gone, corrupt) the state stays in
 * memory, the trouble is logged once, and the next flush tries again.
 *
 * Each data file has a writer thread of its own.  A reload that names a
 * new file starts a new writer at once and leaves the old one to write
 * its last batch and end by itself, so the loop never waits for a file.
 */
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
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "har.h"

/* 1: names, candidates, checks, ranking; 2: admin_state; 3: the
 * monitoring counters (daemon, totals, nameservers, nameserver_replies,
 * name_counters).  Each step only adds, so any older file upgrades. */
#define STORE_SCHEMA_VERSION 3
#define FLUSH_INTERVAL 0.5
#define REOPEN_INTERVAL 5.0
#define BUSY_TIMEOUT_MS 20
#define PENDING_HISTORY_MAX 20000
/* How long a file being closed (SIGTERM, a new data_file) may stay
 * unwritable before what it was still to write is given up. */
#define CLOSE_PATIENCE 2.0

enum statement {
	UPSERT_NAME,
	UPSERT_CANDIDATE,
	INSERT_CHECK,
	STATEMENT_COUNT
};

static const char *const statement_sql[STATEMENT_COUNT] = {
	[UPSERT_NAME] =
	    "INSERT INTO names(name, queries, selection_method, rtt_mode,"
	    " max_rtt, group_rtt_threshold, failure_mode, ttl)"
	    " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
	    " ON CONFLICT(name) DO UPDATE SET queries = ?2,"
	    " selection_method = ?3, rtt_mode = ?4, max_rtt = ?5,"
	    " group_rtt_threshold = ?6, failure_mode = ?7, ttl = ?8",
	/* Upserts update rows in place: cheaper than REPLACE's delete and
	 * insert, which would rewrite the index entries every time. */
	[UPSERT_CANDIDATE] =
	    "INSERT INTO candidates(name, candidate_name, ip_address,"
	    " family, healthy, last_check_time, last_success_time,"
	    " last_failure_time, last_check_status, connect_time, response_time,"
	    " rtt, last_rtt, successes, timeouts, connect_errors,"
	    " response_errors, other_errors, checks, admin_state, draining)"
	    " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,"
	    " ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
	    " ON CONFLICT(name, candidate_name, ip_address) DO UPDATE SET"
	    " family = ?4, healthy = ?5, last_check_time = ?6,"
	    " last_success_time = ?7, last_failure_time = ?8,"
	    " last_check_status = ?9, connect_time = ?10, response_time = ?11,"
	    " rtt = ?12, last_rtt = ?13, successes = ?14, timeouts = ?15,"
	    " connect_errors = ?16, response_errors = ?17, other_errors = ?18,"
	    " checks = ?19, admin_state = ?20, draining = ?21",
	[INSERT_CHECK] =
	    "INSERT INTO checks(name, candidate_name, ip_address, slot,"
	    " time, status, success, connect_time, response_time)"
	    " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
	    " ON CONFLICT(slot, name, candidate_name, ip_address) DO UPDATE SET"
	    " time = ?5, status = ?6, success = ?7, connect_time = ?8,"
	    " response_time = ?9",
};

/*
 * checks is a ring of check_history slots per address, keyed slot first:
 * addresses checked at the same pace are at about the same slot, so one
 * batch's rows land on a few neighbouring pages instead of one page per
 * address.  That keeps the write per check to a fraction of a page at
 * thousands of checks a second (the rows are found by time, not key).
 */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS names("
    " name TEXT PRIMARY KEY, queries INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS candidates("
    " name TEXT NOT NULL, candidate_name TEXT NOT NULL,"
    " ip_address TEXT NOT NULL,"
    " PRIMARY KEY(name, candidate_name, ip_address));"
    "CREATE TABLE IF NOT EXISTS checks("
    " name TEXT NOT NULL, candidate_name TEXT NOT NULL,"
    " ip_address TEXT NOT NULL, slot INTEGER NOT NULL,"
    " time REAL, status INTEGER, success INTEGER,"
    " connect_time REAL, response_time REAL,"
    " PRIMARY KEY(slot, name, candidate_name, ip_address)) WITHOUT ROWID;";

/*
 * Columns added to a table that lacks them: this is the upgrade path from
 * an older file (the original har's, or version 0 of this schema).
 */
static const struct {
	const char *table;
	const char *column;
	const char *type;
} schema_columns[] = {
	{ "names", "selection_method", "TEXT" },
	{ "names", "rtt_mode", "TEXT" },
	{ "names", "max_rtt", "REAL" },
	{ "names", "group_rtt_threshold", "REAL" },
	{ "names", "failure_mode", "TEXT" },
	{ "names", "ttl", "INTEGER" },
	{ "candidates", "family", "INTEGER" },
	{ "candidates", "healthy", "INTEGER" },
	{ "candidates", "last_check_time", "REAL" },
	{ "candidates", "last_success_time", "REAL" },
	{ "candidates", "last_failure_time", "REAL" },
	{ "candidates", "last_check_status", "INTEGER" },
	{ "candidates", "connect_time", "REAL" },
	{ "candidates", "response_time", "REAL" },
	{ "candidates", "rtt", "REAL" },
	{ "candidates", "last_rtt", "REAL" },
	{ "candidates", "successes", "INTEGER DEFAULT 0" },
	{ "candidates", "timeouts", "INTEGER DEFAULT 0" },
	{ "candidates", "connect_errors", "INTEGER DEFAULT 0" },
	{ "candidates", "response_errors", "INTEGER DEFAULT 0" },
	{ "candidates", "other_errors", "INTEGER DEFAULT 0" },
	{ "candidates", "checks", "INTEGER DEFAULT 0" },
	/* version 2 */
	{ "candidates", "admin_state", "TEXT NOT NULL DEFAULT 'auto'" },
	{ "candidates", "draining", "INTEGER NOT NULL DEFAULT 0" },
};

/*
 * The order hard answers in, from the same recorded values, with why
 * each address is or is not answered.  Tiers as in select.c: 1 healthy
 * (or admin up), 2 draining, 3 unavailable, 4 admin down; the best tier
 * present is answered per selection_method, and with none of 1 or 2
 * failure_mode = all answers tier 3.  rank orders every address of a
 * name and family by tier, then smoothed RTT, then address text.
 */
static const char ranking_sql[] =
    "DROP VIEW IF EXISTS ranking;"
    "CREATE VIEW ranking AS"
    " WITH state AS ("
    "  SELECT c.name, c.family, c.ip_address, c.candidate_name,"
    "   c.admin_state, c.rtt, n.selection_method, n.group_rtt_threshold,"
    "   n.failure_mode,"
    "   c.healthy IS NOT 1 OR (n.max_rtt IS NOT NULL"
    "    AND (c.rtt IS NULL OR c.rtt > n.max_rtt)) AS unavailable,"
    "   CASE WHEN c.admin_state IN ('down', 'up') THEN 'admin ' || c.admin_state"
    "    WHEN c.healthy IS NULL THEN 'unknown'"
    "    WHEN c.healthy = 0 THEN 'down'"
    "    WHEN n.max_rtt IS NOT NULL AND (c.rtt IS NULL OR c.rtt > n.max_rtt)"
    "     THEN 'over max_rtt'"
    "    WHEN c.admin_state = 'drain' THEN 'admin drain'"
    "    WHEN c.draining THEN 'draining'"
    "    ELSE 'healthy' END AS state"
    "  FROM candidates c JOIN names n ON n.name = c.name),"
    " tiered AS ("
    "  SELECT *, CASE WHEN state = 'admin down' THEN 4"
    "    WHEN state = 'admin up' THEN 1"
    "    WHEN unavailable THEN 3"
    "    WHEN state IN ('admin drain', 'draining') THEN 2"
    "    ELSE 1 END AS tier"
    "  FROM state),"
    " ranked AS ("
    "  SELECT *, ROW_NUMBER() OVER (PARTITION BY name, family"
    "    ORDER BY tier, rtt IS NULL, rtt, ip_address) AS rank,"
    "   ROW_NUMBER() OVER (PARTITION BY name, family, tier"
    "    ORDER BY rtt IS NULL, rtt, ip_address) AS tier_rank,"
    "   MIN(rtt) OVER (PARTITION BY name, family, tier) AS tier_best_rtt,"
    "   MIN(tier) OVER (PARTITION BY name, family) AS best_tier"
    "  FROM tiered),"
    " decided AS ("
    "  SELECT *, CASE WHEN best_tier <= 2 THEN tier = best_tier AND"
    "    CASE selection_method WHEN 'best_rtt' THEN tier_rank = 1"
    "     WHEN 'all' THEN 1"
    "     ELSE tier_rank = 1 OR tier_best_rtt IS NULL OR (rtt IS NOT NULL"
    "      AND (group_rtt_threshold IS NULL"
    "       OR rtt - tier_best_rtt <= group_rtt_threshold)) END"
    "   ELSE failure_mode = 'all' AND tier = 3 END AS answered"
    "  FROM ranked)"
    " SELECT name, family, ip_address, candidate_name, admin_state, rank,"
    "  rtt, answered,"
    "  CASE WHEN best_tier > 2 AND answered THEN 'failure_mode all'"
    "   ELSE state END AS reason"
    " FROM decided;";

/*
 * One data file and the thread that writes it.  The loop hands it batches
 * through the queue; everything else in it is the writer thread's once
 * that thread runs (before, at start, the loop opens the file and reads
 * the previous state from it).
 */
struct store_file {
	char *path;
	sqlite3 *db;
	sqlite3_stmt *statements[STATEMENT_COUNT];
	int system_error;	/* errno of the last failed open, or 0 */
	struct log_streak write_streak;
	struct log_streak open_streak;
	pthread_t thread;
	int thread_running;	/* the loop's own flag */
	pthread_mutex_t lock;	/* guards the four fields below */
	pthread_cond_t wake;
	struct batch *queue;	/* handed over, not yet written, oldest first */
	int closing;		/* write what is queued, then end */
	double give_up_at;	/* monotonic time, once closing */
	int finished;		/* the thread has ended and may be joined */
	struct store_file *next;	/* in closing_files */
};

static struct ev_loop *store_loop;
static struct store_file *current;	/* NULL: data_file is empty */
static struct store_file *closing_files;	/* old ones ending by themselves */
static ev_async file_closed;		/* a closing file's thread ended */
static int store_history;
static struct registry *store_registry;
static ev_timer flush_timer;
static struct history_row *pending;
static int pending_count;
static int pending_capacity;
static unsigned long pending_dropped;
static int addresses_changed;
static uid_t owner_uid = (uid_t)-1;
static gid_t owner_gid = (gid_t)-1;
static char owner_name[64];
static char open_failure[1024];	/* why store_open failed */

static const char *const selection_names[] = { "best_rtt", "group_rtt_rr", "all" };
static const char *const rtt_mode_names[] = { "total", "connect" };
static const char *const failure_names[] = { "none", "all", "servfail" };

static int
exec_sql(struct store_file *file, const char *sql)
{
	char *error = NULL;
	int result = sqlite3_exec(file->db, sql, NULL, NULL, &error);

	if (result != SQLITE_OK) {
		log_debug("sqlite: %s", error ? error : sqlite3_errstr(result));
		sqlite3_free(error);
	}
	return result;
}

static int
column_exists(struct store_file *file, const char *table, const char *column)
{
	sqlite3_stmt *statement;
	char sql[128];
	int found = 0;

	snprintf(sql, sizeof(sql), "PRAGMA table_info(%s)", table);
	if (sqlite3_prepare_v2(file->db, sql, -1, &statement, NULL) != SQLITE_OK)
		return 0;
	while (sqlite3_step(statement) == SQLITE_ROW)
		if (strcmp((const char *)sqlite3_column_text(statement, 1), column) == 0)
			found = 1;
	sqlite3_finalize(statement);
	return found;
}

static int counters_schema_upgrade(struct store_file *file);

static int
schema_upgrade(struct store_file *file)
{
	char sql[256];
	int result = exec_sql(file, schema_sql);

	for (size_t i = 0; result == SQLITE_OK &&
	     i < sizeof(schema_columns) / sizeof(schema_columns[0]); i++) {
		if (column_exists(file, schema_columns[i].table,
				  schema_columns[i].column))
			continue;
		snprintf(sql, sizeof(sql), "ALTER TABLE %s ADD COLUMN %s %s",
			 schema_columns[i].table, schema_columns[i].column,
			 schema_columns[i].type);
		result = exec_sql(file, sql);
	}
	if (result == SQLITE_OK)
		result = exec_sql(file, ranking_sql);
	if (result == SQLITE_OK)
		result = counters_schema_upgrade(file);
	if (result == SQLITE_OK) {
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d",
			 STORE_SCHEMA_VERSION);
		result = exec_sql(file, sql);
	}
	return result;
}

static void
close_database(struct store_file *file)
{
	for (int i = 0; i < STATEMENT_COUNT; i++) {
		sqlite3_finalize(file->statements[i]);
		file->statements[i] = NULL;
	}
	if (file->db)
		sqlite3_close(file->db);
	file->db = NULL;
}

static void
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
static int
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

/* A file that is not a database is moved aside, and a fresh one made. */
static void
set_aside_corrupt(struct store_file *file)
{
	char aside[4096];
	const char *suffixes[] = { "-wal", "-shm" };

	snprintf(aside, sizeof(aside), "%s.corrupt-%ld", file->path,
		 (long)wall_now());
	if (rename(file->path, aside) == 0)
		log_error("data file %s is corrupt; moved it to %s and started "
			  "a new one", file->path, aside);
	else
		log_error("data file %s is corrupt and cannot be moved aside: %s",
			  file->path, strerror(errno));
	for (int i = 0; i < 2; i++) {
		char path[4096];

		snprintf(path, sizeof(path), "%s%s", file->path, suffixes[i]);
		unlink(path);
	}
}

static int
is_corruption(int result)
{
	result &= 0xff;
	return result == SQLITE_CORRUPT || result == SQLITE_NOTADB;
}

/* The reason sqlite would give only as "unable to open database file". */
static int
open_system_error(const char *path)
{
	char failed[4096];
	int fd;

	if (make_directory(path, failed, sizeof(failed)) != 0)
		return errno;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

static int
open_database_once(struct store_file *file)
{
	int result;

	file->system_error = open_system_error(file->path);
	if (file->system_error)
		return SQLITE_CANTOPEN;
	result = sqlite3_open_v2(file->path, &file->db, SQLITE_OPEN_READWRITE |
				 SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (result == SQLITE_OK) {
		sqlite3_busy_timeout(file->db, BUSY_TIMEOUT_MS);
		result = exec_sql(file, "PRAGMA journal_mode = WAL");
	}
	if (result == SQLITE_OK)
		result = exec_sql(file, "PRAGMA synchronous = NORMAL");
	if (result == SQLITE_OK)
		result = schema_upgrade(file);
	for (int i = 0; result == SQLITE_OK && i < STATEMENT_COUNT; i++)
		result = sqlite3_prepare_v3(file->db, statement_sql[i], -1,
					    SQLITE_PREPARE_PERSISTENT,
					    &file->statements[i], NULL);
	if (result != SQLITE_OK) {
		if (file->db && !is_corruption(result))
			result = sqlite3_extended_errcode(file->db);
		close_database(file);
	}
	return result;
}

static int
open_database(struct store_file *file)
{
	int result = open_database_once(file);

	if (is_corruption(result)) {
		set_aside_corrupt(file);
		result = open_database_once(file);
	}
	if (result != SQLITE_OK) {
		if (log_streak_fail(&file->open_streak))
			log_error("cannot open data file %s: %s; keeping state in "
				  "memory and retrying every %.0f s", file->path,
				  file->system_error ? strerror(file->system_error) :
				  sqlite3_errstr(result), REOPEN_INTERVAL);
		return -1;
	}
	if (log_streak_ok(&file->open_streak))
		log_info("data file %s is open again", file->path);
	set_owner(file->path);
	return 0;
}

/* ------------------------------------------------------------ batches */

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
};

struct name_row {
	char name[DNS_MAX_NAME + 1];
	uint64_t queries;
	const char *selection_method, *rtt_mode, *failure_mode;
	double max_rtt, group_rtt_threshold;
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

static void
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
}

static void
copy_name(struct name_row *row, const struct name *name)
{
	const struct config_name *config = name->config;

	snprintf(row->name, sizeof(row->name), "%s", config->title);
	row->queries = name->queries;
	row->selection_method = selection_names[config->selection_method];
	row->rtt_mode = rtt_mode_names[config->rtt_mode];
	row->failure_mode = failure_names[config->failure_mode];
	row->max_rtt = config->max_rtt;
	row->group_rtt_threshold = config->group_rtt_threshold;
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
#define COUNTERS_MAX_NAMESERVERS 32

struct counters_snapshot {
	char version[16];
	long pid;
	double start_time;
	double config_load_time;
	char config_file[4096];
	struct totals totals;
	struct upstream_counters nameservers[COUNTERS_MAX_NAMESERVERS];
	int nameserver_count;
};

struct name_counters_row {
	char name[DNS_MAX_NAME + 1];
	struct name_counters counters;
};

static struct counters_snapshot counters_written;	/* as last handed over */
static int counters_handed;	/* 0: the next batch writes them whatever */
static double started_at;
static double config_loaded_at;
static char config_file[4096];

/* The configuration (re)loaded: the file and the time, for the daemon table. */
static void
counters_note_config(const struct config *config)
{
	if (started_at == 0)
		started_at = wall_now();
	config_loaded_at = wall_now();
	snprintf(config_file, sizeof(config_file), "%s",
		 config->file ? config->file : "");
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

/* Takes everything dirty out of the live state; NULL if nothing is. */
static struct batch *
batch_take(void)
{
	struct batch *batch;
	struct counters_snapshot *counters;
	int addresses = 0, dirty = 0, names = 0, counted;

	for (int i = 0; i < store_registry->name_count; i++) {
		const struct name *name = &store_registry->names[i];

		names += name->queries != name->stored_queries || addresses_changed;
		for (int j = 0; j < name->candidate_count; j++)
			for (int k = 0; k < name->candidates[j].address_count; k++) {
				addresses++;
				dirty += name->candidates[j].addresses[k]->store_dirty;
			}
	}
	counted = name_counters_count_moved();
	counters = counters_take();
	if (!dirty && !names && pending_count == 0 && !addresses_changed &&
	    !counted && !counters)
		return NULL;
	batch = batch_array(1, sizeof(*batch));
	batch->counters = counters;
	name_counters_take(batch, counted);
	batch->candidates = batch_array((size_t)dirty, sizeof(struct candidate_row));
	batch->names = batch_array((size_t)names, sizeof(struct name_row));
	if (addresses_changed)
		batch->live = batch_array((size_t)addresses, sizeof(struct row_key));
	batch->history_slots = store_history;
	for (int i = 0; i < store_registry->name_count; i++) {
		struct name *name = &store_registry->names[i];

		if (name->queries != name->stored_queries || addresses_changed)
			copy_name(&batch->names[batch->name_count++], name);
		name->stored_queries = name->queries;
		for (int j = 0; j < name->candidate_count; j++)
			for (int k = 0; k < name->candidates[j].address_count; k++) {
				struct address *address = name->candidates[j].addresses[k];

				if (batch->live)
					key_of(&batch->live[batch->live_count++], address);
				if (!address->store_dirty)
					continue;
				copy_address(&batch->candidates[batch->candidate_count++],
					     address);
				address->store_dirty = 0;
			}
	}
	batch->history = pending;
	batch->history_count = pending_count;
	pending = NULL;
	pending_count = pending_capacity = 0;
	addresses_changed = 0;
	return batch;
}

/* ------------------------------------------------------------ writing */

static void
bind_real(sqlite3_stmt *statement, int index, double value)
{
	if (isnan(value) || isinf(value))
		sqlite3_bind_null(statement, index);
	else
		sqlite3_bind_double(statement, index, value);
}

static int
step(sqlite3_stmt *statement)
{
	int result = sqlite3_step(statement);

	sqlite3_reset(statement);
	return result == SQLITE_DONE ? SQLITE_OK : result;
}

static void
bind_key(sqlite3_stmt *statement, const struct row_key *key)
{
	sqlite3_bind_text(statement, 1, key->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(statement, 2, key->candidate, -1, SQLITE_STATIC);
	sqlite3_bind_text(statement, 3, key->ip, -1, SQLITE_STATIC);
}
static int
write_name(struct store_file *file, const struct name_row *row)
{
	sqlite3_stmt *statement = file->statements[UPSERT_NAME];

	sqlite3_bind_text(statement, 1, row->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(statement, 2, (sqlite3_int64)row->queries);
	sqlite3_bind_text(statement, 3, row->selection_method, -1, SQLITE_STATIC);
	sqlite3_bind_text(statement, 4, row->rtt_mode, -1, SQLITE_STATIC);
	bind_real(statement, 5, row->max_rtt);
	bind_real(statement, 6, row->group_rtt_threshold);
	sqlite3_bind_text(statement, 7, row->failure_mode, -1, SQLITE_STATIC);
	sqlite3_bind_int64(statement, 8, row->ttl);
	return step(statement);
}

static int
write_address(struct store_file *file, const struct candidate_row *row)
{
	sqlite3_stmt *statement = file->statements[UPSERT_CANDIDATE];

	bind_key(statement, &row->key);
	sqlite3_bind_int(statement, 4, row->family);
	if (row->health == HEALTH_UNKNOWN)
		sqlite3_bind_null(statement, 5);
	else
		sqlite3_bind_int(statement, 5, row->health);
	bind_real(statement, 6, row->last_check_time);
	bind_real(statement, 7, row->last_success_time);
	bind_real(statement, 8, row->last_failure_time);
	if (row->has_status)
		sqlite3_bind_int(statement, 9, row->status);
	else
		sqlite3_bind_null(statement, 9);
	bind_real(statement, 10, row->connect_time);
	bind_real(statement, 11, row->response_time);
	bind_real(statement, 12, row->rtt);
	bind_real(statement, 13, row->last_rtt);
	sqlite3_bind_int64(statement, 14, (sqlite3_int64)row->successes);
	sqlite3_bind_int64(statement, 15, (sqlite3_int64)row->timeouts);
	sqlite3_bind_int64(statement, 16, (sqlite3_int64)row->connect_errors);
	sqlite3_bind_int64(statement, 17, (sqlite3_int64)row->response_errors);
	sqlite3_bind_int64(statement, 18, (sqlite3_int64)row->other_errors);
	sqlite3_bind_int64(statement, 19, (sqlite3_int64)row->checks);
	sqlite3_bind_text(statement, 20, row->admin_state, -1, SQLITE_STATIC);
	sqlite3_bind_int(statement, 21, row->draining);
	return step(statement);
}

static int
write_history(struct store_file *file, const struct history_row *row)
{
	sqlite3_stmt *statement = file->statements[INSERT_CHECK];

	bind_key(statement, &row->key);
	sqlite3_bind_int64(statement, 4, row->slot);
	sqlite3_bind_double(statement, 5, row->time);
	sqlite3_bind_int(statement, 6, row->status);
	sqlite3_bind_int(statement, 7, row->success);
	bind_real(statement, 8, row->connect_time);
	bind_real(statement, 9, row->response_time);
	return step(statement);
}

/* The live keys go into temporary tables, for one DELETE per table. */
static int
fill_live_tables(struct store_file *file, const struct batch *batch)
{
	sqlite3_stmt *insert = NULL;
	int result = exec_sql(file,
	    "CREATE TEMP TABLE IF NOT EXISTS live("
	    "name TEXT, candidate_name TEXT, ip_address TEXT);"
	    "CREATE TEMP TABLE IF NOT EXISTS live_names(name TEXT);"
	    "DELETE FROM live; DELETE FROM live_names;");

	if (result == SQLITE_OK)
		result = sqlite3_prepare_v2(file->db, "INSERT INTO live VALUES(?1, ?2, ?3)",
					    -1, &insert, NULL);
	for (int i = 0; result == SQLITE_OK && i < batch->live_count; i++) {
		bind_key(insert, &batch->live[i]);
		result = step(insert);
	}
	sqlite3_finalize(insert);
	insert = NULL;
	if (result == SQLITE_OK)
		result = sqlite3_prepare_v2(file->db, "INSERT INTO live_names VALUES(?1)",
					    -1, &insert, NULL);
	for (int i = 0; result == SQLITE_OK && i < batch->name_count; i++) {
		sqlite3_bind_text(insert, 1, batch->names[i].name, -1, SQLITE_STATIC);
		result = step(insert);
	}
	sqlite3_finalize(insert);
	return result;
}

/*
 * Rows of addresses no longer configured (or no longer resolved) go: the
 * data file describes what hard checks now.  A name stays as long as it
 * is configured, with or without addresses (its query counter is kept);
 * a batch that prunes carries every configured name.  Slots beyond a
 * check_history lowered by a reload go too (a range of the key).
 */
static int
delete_removed(struct store_file *file, const struct batch *batch)
{
	int result = fill_live_tables(file, batch);

	if (result == SQLITE_OK)
		result = exec_sql(file,
		    "DELETE FROM candidates WHERE (name, candidate_name, ip_address)"
		    " NOT IN (SELECT name, candidate_name, ip_address FROM live);"
		    "DELETE FROM checks WHERE (name, candidate_name, ip_address)"
		    " NOT IN (SELECT name, candidate_name, ip_address FROM live);"
		    "DELETE FROM names WHERE name NOT IN (SELECT name FROM live_names);");
	if (result == SQLITE_OK) {
		char sql[64];

		snprintf(sql, sizeof(sql), "DELETE FROM checks WHERE slot >= %d",
			 batch->history_slots);
		result = exec_sql(file, sql);
	}
	return result;
}

static int write_counters(struct store_file *file, const struct batch *batch);

static int
write_rows(struct store_file *file, const struct batch *batch)
{
	int result = SQLITE_OK;

	for (int i = 0; result == SQLITE_OK && i < batch->name_count; i++)
		result = write_name(file, &batch->names[i]);
	for (int i = 0; result == SQLITE_OK && i < batch->candidate_count; i++)
		result = write_address(file, &batch->candidates[i]);
	for (int i = 0; result == SQLITE_OK && i < batch->history_count; i++)
		result = write_history(file, &batch->history[i]);
	if (result == SQLITE_OK && batch->live)
		result = delete_removed(file, batch);
	if (result == SQLITE_OK)
		result = write_counters(file, batch);
	return result;
}

/* ------------------------------------- counters for monitoring, writing */

static const char counters_schema_sql[] =
    "CREATE TABLE IF NOT EXISTS daemon("
    " version TEXT, pid INTEGER, start_time REAL, config_file TEXT,"
    " config_load_time REAL);"
    "CREATE TABLE IF NOT EXISTS totals("
    " counter TEXT NOT NULL, kind TEXT NOT NULL DEFAULT '',"
    " value INTEGER NOT NULL, PRIMARY KEY(counter, kind));"
    "CREATE TABLE IF NOT EXISTS nameservers("
    " nameserver TEXT PRIMARY KEY, position INTEGER, up INTEGER,"
    " queries INTEGER, timeouts INTEGER, errors INTEGER, rtt REAL);"
    "CREATE TABLE IF NOT EXISTS nameserver_replies("
    " nameserver TEXT NOT NULL, rcode TEXT NOT NULL,"
    " replies INTEGER NOT NULL, PRIMARY KEY(nameserver, rcode));"
    "CREATE TABLE IF NOT EXISTS name_counters("
    " name TEXT PRIMARY KEY, answered INTEGER, nodata INTEGER,"
    " servfail INTEGER, failure_all INTEGER, failure_servfail INTEGER,"
    " failure_none INTEGER);";

/* The upgrade step of schema version 3: new tables only. */
static int
counters_schema_upgrade(struct store_file *file)
{
	return exec_sql(file, counters_schema_sql);
}

static const char *const rcode_names[16] = {
	"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
	"YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "RCODE11",
	"RCODE12", "RCODE13", "RCODE14", "RCODE15",
};

struct total_row {
	const char *counter;
	const char *kind;
	int64_t value;
};

#define TOTAL_ROWS_MAX 32

static int
total_rows(const struct totals *t, struct total_row *rows)
{
	static const char *const drops[DROP_REASON_COUNT] = {
		"short", "response", "oversize", "tcp_length" };
	static const char *const malformed[MALFORMED_REASON_COUNT] = {
		"formerr", "notimp", "badvers" };
	static const char *const closes[TCP_CLOSED_REASON_COUNT] = {
		"limit", "idle", "shed" };
	int n = 0;

	rows[n++] = (struct total_row){ "queries", "udp", (int64_t)t->queries[0] };
	rows[n++] = (struct total_row){ "queries", "tcp", (int64_t)t->queries[1] };
	rows[n++] = (struct total_row){ "forwarded", "", (int64_t)t->forwarded };
	rows[n++] = (struct total_row){ "forward_failures", "",
					(int64_t)t->forward_failures };
	for (int i = 0; i < DROP_REASON_COUNT; i++)
		rows[n++] = (struct total_row){ "dropped", drops[i],
						(int64_t)t->dropped[i] };
	for (int i = 0; i < MALFORMED_REASON_COUNT; i++)
		rows[n++] = (struct total_row){ "malformed", malformed[i],
						(int64_t)t->malformed[i] };
	rows[n++] = (struct total_row){ "tcp_connections_open", "", t->tcp_open };
	rows[n++] = (struct total_row){ "tcp_connections_accepted", "",
					(int64_t)t->tcp_accepted };
	rows[n++] = (struct total_row){ "tcp_connections_refused", "",
					(int64_t)t->tcp_refused };
	for (int i = 0; i < TCP_CLOSED_REASON_COUNT; i++)
		rows[n++] = (struct total_row){ "tcp_connections_closed", closes[i],
						(int64_t)t->tcp_closed[i] };
	rows[n++] = (struct total_row){ "checks", "", (int64_t)t->checks };
	rows[n++] = (struct total_row){ "checks_failed", "",
					(int64_t)t->checks_failed };
	return n;
}

/* Prepares sql, for a statement used within one batch. */
static int
prepare(struct store_file *file, const char *sql, sqlite3_stmt **statement)
{
	*statement = NULL;
	return sqlite3_prepare_v2(file->db, sql, -1, statement, NULL);
}

static int
write_daemon(struct store_file *file, const struct counters_snapshot *c)
{
	sqlite3_stmt *insert;
	int result = exec_sql(file, "DELETE FROM daemon");

	if (result == SQLITE_OK)
		result = prepare(file, "INSERT INTO daemon(version, pid, start_time,"
				 " config_file, config_load_time)"
				 " VALUES(?1, ?2, ?3, ?4, ?5)", &insert);
	if (result != SQLITE_OK)
		return result;
	sqlite3_bind_text(insert, 1, c->version, -1, SQLITE_STATIC);
	sqlite3_bind_int64(insert, 2, c->pid);
	bind_real(insert, 3, c->start_time);
	sqlite3_bind_text(insert, 4, c->config_file, -1, SQLITE_STATIC);
	bind_real(insert, 5, c->config_load_time);
	result = step(insert);
	sqlite3_finalize(insert);
	return result;
}

static int
write_totals(struct store_file *file, const struct totals *t)
{
	struct total_row rows[TOTAL_ROWS_MAX];
	int count = total_rows(t, rows);
	sqlite3_stmt *upsert;
	int result = prepare(file, "INSERT INTO totals(counter, kind, value)"
			     " VALUES(?1, ?2, ?3) ON CONFLICT(counter, kind)"
			     " DO UPDATE SET value = ?3", &upsert);

	for (int i = 0; result == SQLITE_OK && i < count; i++) {
		sqlite3_bind_text(upsert, 1, rows[i].counter, -1, SQLITE_STATIC);
		sqlite3_bind_text(upsert, 2, rows[i].kind, -1, SQLITE_STATIC);
		sqlite3_bind_int64(upsert, 3, rows[i].value);
		result = step(upsert);
	}
	sqlite3_finalize(upsert);
	return result;
}

static int
write_nameserver_replies(sqlite3_stmt *insert, const struct upstream_counters *ns)
{
	int result = SQLITE_OK;

	for (int rcode = 0; result == SQLITE_OK && rcode < 16; rcode++) {
		if (ns->replies[rcode] == 0)
			continue;
		sqlite3_bind_text(insert, 1, ns->nameserver, -1, SQLITE_STATIC);
		sqlite3_bind_text(insert, 2, rcode_names[rcode], -1, SQLITE_STATIC);
		sqlite3_bind_int64(insert, 3, (sqlite3_int64)ns->replies[rcode]);
		result = step(insert);
	}
	return result;
}

/* The nameservers configured now, and only those. */
static int
write_nameservers(struct store_file *file, const struct counters_snapshot *c)
{
	sqlite3_stmt *server = NULL, *replies = NULL;
	int result = exec_sql(file, "DELETE FROM nameservers;"
			      "DELETE FROM nameserver_replies;");

	if (result == SQLITE_OK)
		result = prepare(file, "INSERT INTO nameservers(nameserver, position,"
				 " up, queries, timeouts, errors, rtt)"
				 " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)", &server);
	if (result == SQLITE_OK)
		result = prepare(file, "INSERT INTO nameserver_replies(nameserver,"
				 " rcode, replies) VALUES(?1, ?2, ?3)", &replies);
	for (int i = 0; result == SQLITE_OK && i < c->nameserver_count; i++) {
		const struct upstream_counters *ns = &c->nameservers[i];

		sqlite3_bind_text(server, 1, ns->nameserver, -1, SQLITE_STATIC);
		sqlite3_bind_int(server, 2, i + 1);
		sqlite3_bind_int(server, 3, ns->up);
		sqlite3_bind_int64(server, 4, (sqlite3_int64)ns->queries);
		sqlite3_bind_int64(server, 5, (sqlite3_int64)ns->timeouts);
		sqlite3_bind_int64(server, 6, (sqlite3_int64)ns->errors);
		bind_real(server, 7, ns->srtt);
		result = step(server);
		if (result == SQLITE_OK)
			result = write_nameserver_replies(replies, ns);
	}
	sqlite3_finalize(server);
	sqlite3_finalize(replies);
	return result;
}

static int
write_name_counters(struct store_file *file, const struct batch *batch)
{
	sqlite3_stmt *upsert;
	int result;

	if (batch->name_counters_count == 0)
		return SQLITE_OK;
	result = prepare(file, "INSERT INTO name_counters(name, answered, nodata,"
			 " servfail, failure_all, failure_servfail, failure_none)"
			 " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(name)"
			 " DO UPDATE SET answered = ?2, nodata = ?3, servfail = ?4,"
			 " failure_all = ?5, failure_servfail = ?6,"
			 " failure_none = ?7", &upsert);
	for (int i = 0; result == SQLITE_OK && i < batch->name_counters_count; i++) {
		const struct name_counters_row *row = &batch->name_counters[i];
		const struct name_counters *c = &row->counters;

		sqlite3_bind_text(upsert, 1, row->name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(upsert, 2, (sqlite3_int64)c->answered);
		sqlite3_bind_int64(upsert, 3, (sqlite3_int64)c->nodata);
		sqlite3_bind_int64(upsert, 4, (sqlite3_int64)c->servfail);
		sqlite3_bind_int64(upsert, 5, (sqlite3_int64)c->failure_all);
		sqlite3_bind_int64(upsert, 6, (sqlite3_int64)c->failure_servfail);
		sqlite3_bind_int64(upsert, 7, (sqlite3_int64)c->failure_none);
		result = step(upsert);
	}
	sqlite3_finalize(upsert);
	return result;
}

/* After the other rows, so that a pruning batch has pruned names first. */
static int
write_counters(struct store_file *file, const struct batch *batch)
{
	int result = write_name_counters(file, batch);

	if (result == SQLITE_OK && batch->live)
		result = exec_sql(file, "DELETE FROM name_counters"
				  " WHERE name NOT IN (SELECT name FROM names)");
	if (result != SQLITE_OK || !batch->counters)
		return result;
	result = write_daemon(file, batch->counters);
	if (result == SQLITE_OK)
		result = write_totals(file, &batch->counters->totals);
	if (result == SQLITE_OK)
		result = write_nameservers(file, batch->counters);
	return result;
}

static void
note_write_failure(struct store_file *file, int result)
{
	if (log_streak_fail(&file->write_streak))
		log_error("cannot write data file %s: %s; keeping state in memory "
			  "and retrying", file->path, sqlite3_errstr(result));
	if (is_corruption(result)) {
		close_database(file);
		set_aside_corrupt(file);
	} else if ((result & 0xff) == SQLITE_IOERR ||
		   (result & 0xff) == SQLITE_READONLY ||
		   (result & 0xff) == SQLITE_CANTOPEN) {
		/* The file may have been replaced or its directory made
		 * read-only: start again from the path. */
		close_database(file);
	}
}

/* One transaction for the whole batch; SQLITE_OK when it is in the file. */
static int
write_batch(struct store_file *file, const struct batch *batch)
{
	int result;

	if (!file->db && open_database(file) != 0)
		return SQLITE_CANTOPEN;
	result = exec_sql(file, "BEGIN IMMEDIATE");
	if (result == SQLITE_OK)
		result = write_rows(file, batch);
	if (result == SQLITE_OK)
		result = exec_sql(file, "COMMIT");
	if (result == SQLITE_OK) {
		if (log_streak_ok(&file->write_streak))
			log_info("data file %s written again", file->path);
		return SQLITE_OK;
	}
	result = sqlite3_extended_errcode(file->db);
	if (!sqlite3_get_autocommit(file->db))	/* a transaction is open */
		exec_sql(file, "ROLLBACK");
	note_write_failure(file, result);
	return result;
}

/* -------------------------------------------------------- writer thread */

/*
 * A writer thread owns its file's sqlite connection while hard runs, so
 * that a commit's fsync, a locked file or a slow disk never holds up the
 * loop.  The loop hands it one batch at a time; a batch that cannot be
 * written stays with the writer, which tries it again until it can, while
 * the loop keeps collecting the next one.  A closing file (SIGTERM, a new
 * data_file) writes what it was handed and ends; if it cannot within
 * CLOSE_PATIENCE seconds, it gives that up and ends all the same.
 */
static double
time_left(struct store_file *file, double seconds)
{
	double now = monotonic_now();

	if (file->closing && file->give_up_at - now < seconds)
		seconds = file->give_up_at - now;
	return seconds > 0 ? seconds : 0;
}

/* Sleeps before the next try; a file told to close wakes at once. */
static void
writer_wait(struct store_file *file, double seconds)
{
	struct timespec until;

	pthread_mutex_lock(&file->lock);
	seconds = time_left(file, seconds);
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += (time_t)seconds;
	until.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	if (seconds > 0)
		pthread_cond_timedwait(&file->wake, &file->lock, &until);
	pthread_mutex_unlock(&file->lock);
}

static void
batches_free(struct batch *batch)
{
	while (batch) {
		struct batch *next = batch->next;

		batch_free(batch);
		batch = next;
	}
}

/*
 * The head of the queue when there is one; NULL when it is time to end.
 * out_of_time: a closing file whose patience is spent gets this last try.
 */
static struct batch *
writer_next(struct store_file *file, int *out_of_time)
{
	struct batch *batch;

	pthread_mutex_lock(&file->lock);
	while (!file->queue && !file->closing)
		pthread_cond_wait(&file->wake, &file->lock);
	batch = file->queue;
	*out_of_time = file->closing && time_left(file, 1) == 0;
	pthread_mutex_unlock(&file->lock);
	return batch;
}

static void
writer_done_with_head(struct store_file *file)
{
	struct batch *batch;

	pthread_mutex_lock(&file->lock);
	batch = file->queue;
	file->queue = batch->next;
	pthread_mutex_unlock(&file->lock);
	batch->next = NULL;
	batch_free(batch);
}

static void
writer_give_up(struct store_file *file)
{
	struct batch *left;

	pthread_mutex_lock(&file->lock);
	left = file->queue;
	file->queue = NULL;
	pthread_mutex_unlock(&file->lock);
	batches_free(left);
	log_error("closing data file %s: still not writable after %.0f s; its "
		  "last state is not in it", file->path, CLOSE_PATIENCE);
}

static void *
writer_main(void *argument)
{
	struct store_file *file = argument;
	struct batch *batch;
	int out_of_time;

	/*
	 * Lowest priority: on a busy core the writer takes the time answering
	 * leaves over instead of preempting the loop for a whole commit.  A
	 * late batch only grows; nothing is lost.
	 */
	if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19) != 0)
		log_debug("cannot lower the data file writer's priority: %s",
			  strerror(errno));
	while ((batch = writer_next(file, &out_of_time)) != NULL) {
		if (write_batch(file, batch) == SQLITE_OK) {
			writer_done_with_head(file);
			continue;
		}
		if (out_of_time) {
			writer_give_up(file);
			break;
		}
		writer_wait(file, file->db ? FLUSH_INTERVAL : REOPEN_INTERVAL);
	}
	close_database(file);
	pthread_mutex_lock(&file->lock);
	file->finished = 1;
	pthread_mutex_unlock(&file->lock);
	ev_async_send(store_loop, &file_closed);
	return NULL;
}

/* ------------------------------------------------------- files, loop side */

static struct store_file *
file_create(const char *path)
{
	struct store_file *file = calloc(1, sizeof(*file));
	pthread_condattr_t attributes;

	if (!file)
		return NULL;
	file->path = strdup(path);
	if (!file->path) {
		free(file);
		return NULL;
	}
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
	struct batch *last = store_registry ? batch_take() : NULL;

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

void
store_flush(void)
{
	struct batch *batch;

	if (!current || !store_registry || !current->thread_running ||
	    file_busy(current))
		return;
	batch = batch_take();
	if (!batch)
		return;
	if (pending_dropped) {
		log_warning("%lu check history rows were dropped while the data "
			    "file could not be written", pending_dropped);
		pending_dropped = 0;
	}
	file_hand(current, batch);
}

static void
flush_tick(struct ev_loop *loop, ev_timer *timer, int revents)
{
	(void)loop;
	(void)timer;
	(void)revents;
	store_flush();
}

void
store_record_check(const struct address *address, int success)
{
	struct history_row *row;

	totals.checks++;
	totals.checks_failed += !success;
	if (!current)
		return;
	((struct address *)address)->store_dirty = 1;
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

static struct address *
restore_find_address(struct candidate *candidate, const char *ip_text)
{
	struct ip_address ip;

	for (int i = 0; i < candidate->address_count; i++)
		if (strcmp(candidate->addresses[i]->text, ip_text) == 0)
			return candidate->addresses[i];
	/* A resolved candidate starts with the addresses it last had. */
	if (candidate->config->address_count > 0 ||
	    ip_address_parse(ip_text, &ip) != 0)
		return NULL;
	{
		struct ip_address *ips = calloc((size_t)candidate->address_count + 1,
						sizeof(*ips));
		if (!ips)
			return NULL;
		for (int i = 0; i < candidate->address_count; i++)
			ips[i] = candidate->addresses[i]->ip;
		ips[candidate->address_count] = ip;
		candidate_set_addresses(candidate, ips, candidate->address_count + 1);
		free(ips);
	}
	return candidate->addresses[candidate->address_count - 1];
}

static double
column_real(sqlite3_stmt *statement, int column)
{
	if (sqlite3_column_type(statement, column) == SQLITE_NULL)
		return NAN;
	return sqlite3_column_double(statement, column);
}

static void
restore_address(struct address *address, sqlite3_stmt *row)
{
	address->health = sqlite3_column_type(row, 3) == SQLITE_NULL ?
	    HEALTH_UNKNOWN : sqlite3_column_int(row, 3);
	address->last_check_time = column_real(row, 4);
	address->last_success_time = column_real(row, 5);
	address->last_failure_time = column_real(row, 6);
	address->last_status = sqlite3_column_int(row, 7);
	address->connect_time = column_real(row, 8);
	address->response_time = column_real(row, 9);
	address->srtt = column_real(row, 10);
	address->last_rtt = column_real(row, 11);
	address->successes = (uint64_t)sqlite3_column_int64(row, 12);
	address->timeouts = (uint64_t)sqlite3_column_int64(row, 13);
	address->connect_errors = (uint64_t)sqlite3_column_int64(row, 14);
	address->response_errors = (uint64_t)sqlite3_column_int64(row, 15);
	address->other_errors = (uint64_t)sqlite3_column_int64(row, 16);
	address->check_count = (uint64_t)sqlite3_column_int64(row, 17);
	address->draining = sqlite3_column_int(row, 18) != 0;
	/* The row shows the admin_state of the file's last writer. */
	address->store_dirty = 1;
	if (address->health != HEALTH_UNKNOWN)
		address->health = address->health ? HEALTH_UP : HEALTH_DOWN;
}

static void
restore_queries(struct registry *registry)
{
	sqlite3_stmt *statement;

	if (sqlite3_prepare_v2(current->db, "SELECT name, queries FROM names", -1,
			       &statement, NULL) != SQLITE_OK)
		return;
	while (sqlite3_step(statement) == SQLITE_ROW) {
		struct name *name = registry_find_name(registry,
		    (const char *)sqlite3_column_text(statement, 0));

		if (name)
			name->queries = (uint64_t)sqlite3_column_int64(statement, 1);
	}
	sqlite3_finalize(statement);
}

void
store_restore(struct registry *registry)
{
	sqlite3_stmt *row;
	int restored = 0;

	store_registry = registry;
	addresses_changed = 1;
	if (!current || !current->db)
		return;
	restore_queries(registry);
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
		struct name *name = registry_find_name(registry,
		    (const char *)sqlite3_column_text(row, 0));
		struct candidate *candidate = name ? name_find_candidate(name,
		    (const char *)sqlite3_column_text(row, 1)) : NULL;
		struct address *address = candidate ? restore_find_address(candidate,
		    (const char *)sqlite3_column_text(row, 2)) : NULL;

		if (!address)
			continue;
		restore_address(address, row);
		restored++;
	}
	sqlite3_finalize(row);
	for (int i = 0; i < registry->name_count; i++)
		select_update_all(&registry->names[i]);
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
 * written for good.  A child process becomes the user and tries.
 */
static int
check_as_owner(const char *path)
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
		fd = open(path, O_RDWR | O_CLOEXEC);
		_exit(fd >= 0 ? 0 : errno > 0 && errno < 255 ? errno : 254);
	}
	while (waitpid(child, &status, 0) < 0)
		if (errno != EINTR)
			return open_failed("cannot check it as user %s: %s",
					   owner_name, strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) >= 254)
		return open_failed("cannot check it as user %s", owner_name);
	if (WEXITSTATUS(status) != 0)
		return open_failed("user %s cannot open it: %s", owner_name,
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
	if (check_as_owner(path) != 0) {
		if (created)
			unlink(path);
		return -1;
	}
	return 0;
}

/*
 * Fails (so hard exits) only for a data file that cannot be opened or
 * made at all; a file that opens but cannot be written yet (locked, full,
 * corrupt) is logged and retried while hard runs.
 */
int
store_open(struct ev_loop *loop, const struct config *config, const char *user)
{
	store_loop = loop;
	store_history = config->check_history;
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
	if (check_data_file(config->data_file) != 0)
		return -1;
	current = file_create(config->data_file);
	if (!current)
		return open_failed("out of memory");
	open_database(current);
	give_files_to_owner(current->path);
	return 0;
}

const char *
store_open_error(void)
{
	return open_failure;
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
	counters_note_config(config);
	if (strcmp(current ? current->path : "", config->data_file) == 0)
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
	current = file_create(config->data_file);
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
