/*
 * store_writer.c - the data file's writer thread and the SQL it runs: the
 * schema and its upgrades, opening the database, writing a batch's rows
 * and counters in one transaction, and the thread that retries until
 * they are in.  The loop side (store.c) hands it batches.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "har.h"

/* 1: names, candidates, checks, ranking; 2: admin_state; 3: the
 * monitoring counters (daemon, totals, nameservers, nameserver_replies,
 * name_counters); 4: overprovisioning, each address's latency group and
 * share, names' last_query_time and idle; 5: the daemon's last reload
 * and whether it succeeded, and the history in the compact check_history,
 * read through the view checks.  Each step but 5 only adds; 5 drops the
 * older history (history_upgrade), so any older file
 * upgrades. */
#define STORE_SCHEMA_VERSION 5
#define BUSY_TIMEOUT_MS 20
/*
 * The page size of a new file (and of an older one upgraded to version
 * 5).  A write costs whole pages, in the WAL and again when they are
 * copied into the file, and one write of a few addresses changes a few
 * hundred bytes in each of several tables: 1 KB pages write about two
 * thirds of the bytes 4 KB ones do, and fewer than 512-byte ones, whose
 * many more frames touch more of the WAL index (measured for four
 * addresses checked every second); the history of a thousand addresses
 * still fits in a tree of four levels.
 */
#define STORE_PAGE_SIZE 1024
/* The WAL file is cut back to this after a checkpoint empties it, so one
 * large batch (the whole state, written to a new file) does not leave a
 * large file behind: about what the default autocheckpoint let it grow to. */
#define WAL_SIZE_LIMIT (4 * 1024 * 1024)
/*
 * The WAL is copied into the file once it holds this many frames (see
 * checkpoint).  The WAL index (-shm) keeps the page numbers of its first
 * 990 frames in the same 4 KB as its header, which every commit writes:
 * past them, each commit dirties one more of its pages.
 */
#define WAL_CHECKPOINT_FRAMES 900
/* check_history's key: the slot times this, plus the candidates rowid. */
#define HISTORY_SLOT_STRIDE "4294967296"

static const char *const statement_sql[STATEMENT_COUNT] = {
	[UPSERT_NAME] =
	    "INSERT INTO names(name, queries, selection_method, rtt_mode,"
	    " max_rtt, group_rtt_threshold, failure_mode, ttl, overprovisioning,"
	    " last_query_time, idle)"
	    " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
	    " ON CONFLICT(name) DO UPDATE SET queries = ?2,"
	    " selection_method = ?3, rtt_mode = ?4, max_rtt = ?5,"
	    " group_rtt_threshold = ?6, failure_mode = ?7, ttl = ?8,"
	    " overprovisioning = ?9, last_query_time = ?10, idle = ?11",
	/* Upserts update rows in place: cheaper than REPLACE's delete and
	 * insert, which would rewrite the index entries every time. */
	[UPSERT_CANDIDATE] =
	    "INSERT INTO candidates(name, candidate_name, ip_address,"
	    " family, healthy, last_check_time, last_success_time,"
	    " last_failure_time, last_check_status, connect_time, response_time,"
	    " rtt, last_rtt, successes, timeouts, connect_errors,"
	    " response_errors, other_errors, checks, admin_state, draining,"
	    " latency_group, share)"
	    " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13,"
	    " ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
	    " ON CONFLICT(name, candidate_name, ip_address) DO UPDATE SET"
	    " family = ?4, healthy = ?5, last_check_time = ?6,"
	    " last_success_time = ?7, last_failure_time = ?8,"
	    " last_check_status = ?9, connect_time = ?10, response_time = ?11,"
	    " rtt = ?12, last_rtt = ?13, successes = ?14, timeouts = ?15,"
	    " connect_errors = ?16, response_errors = ?17, other_errors = ?18,"
	    " checks = ?19, admin_state = ?20, draining = ?21,"
	    " latency_group = ?22, share = ?23",
	/* The address's candidates row gives its number in the key; an
	 * address without one (gone since) keeps no history. */
	[INSERT_CHECK] =
	    "INSERT INTO check_history(id, time, status, success,"
	    " connect_time, response_time)"
	    " SELECT ?4 * " HISTORY_SLOT_STRIDE " + rowid, ?5, ?6, ?7, ?8, ?9"
	    " FROM candidates WHERE name = ?1 AND candidate_name = ?2"
	    " AND ip_address = ?3 AND rowid < " HISTORY_SLOT_STRIDE
	    " ON CONFLICT(id) DO UPDATE SET time = ?5, status = ?6,"
	    " success = ?7, connect_time = ?8, response_time = ?9",
};

/*
 * The history is a ring of check_history slots per address, in
 * check_history: one row per check, keyed by slot * 2^32 + the rowid of
 * the address's candidates row, the time in milliseconds and the
 * durations in microseconds, as integers: about 30 bytes a row, where
 * the names and REALs of version 4's checks took 75, since a check's row
 * is most of what a steady hard writes.  Keyed slot first: addresses
 * checked at the same pace are at about the same slot, so one write's
 * rows land on neighbouring pages, appended at the end of the tree until
 * the ring wraps.  The view checks reads it as before (slot, time in
 * seconds, the address by name).
 */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS names("
    " name TEXT PRIMARY KEY, queries INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS candidates("
    " name TEXT NOT NULL, candidate_name TEXT NOT NULL,"
    " ip_address TEXT NOT NULL,"
    " PRIMARY KEY(name, candidate_name, ip_address));"
    "CREATE TABLE IF NOT EXISTS check_history("
    " id INTEGER PRIMARY KEY, time INTEGER, status INTEGER,"
    " success INTEGER, connect_time INTEGER, response_time INTEGER);";

/* CROSS JOIN: the history drives, each row finding its address by rowid. */
static const char checks_view_sql[] =
    "DROP VIEW IF EXISTS checks;"
    "CREATE VIEW checks AS"
    " SELECT c.name, c.candidate_name, c.ip_address,"
    "  h.id / " HISTORY_SLOT_STRIDE " AS slot, h.time / 1000.0 AS time,"
    "  h.status, h.success, h.connect_time / 1e6 AS connect_time,"
    "  h.response_time / 1e6 AS response_time"
    " FROM check_history h CROSS JOIN candidates c"
    " ON c.rowid = h.id % " HISTORY_SLOT_STRIDE ";";

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
	/* version 4 */
	{ "names", "overprovisioning", "REAL NOT NULL DEFAULT 0" },
	{ "candidates", "latency_group", "INTEGER" },
	{ "candidates", "share", "REAL" },
	{ "names", "last_query_time", "REAL" },
	{ "names", "idle", "INTEGER NOT NULL DEFAULT 0" },
	/* version 5 */
	{ "daemon", "reload_time", "REAL" },
	{ "daemon", "reload_ok", "INTEGER" },
};

/*
 * The order hard answers in, from the same recorded values, with why
 * each address is or is not answered.  Tiers as in select.c: 1 healthy
 * (or admin up), 2 draining, 3 unavailable, 4 admin down, the admin
 * state being the strongest any candidate of the name gives the IP (down,
 * drain, up), as in select.c's settle_admin_states; the best tier
 * present is answered per selection_method, and with none of 1 or 2
 * failure_mode = all answers tier 3.  rank orders every address of a
 * name and family by tier, then smoothed RTT, then address text.  A name
 * that spills (its addresses have a latency_group) is answered as select.c
 * recorded it: every address with a share.
 */
static const char ranking_sql[] =
    "DROP VIEW IF EXISTS ranking;"
    "CREATE VIEW ranking AS"
    " WITH state AS ("
    "  SELECT c.name, c.family, c.ip_address, c.candidate_name,"
    "   c.admin_state, c.rtt, n.selection_method, n.group_rtt_threshold,"
    "   n.failure_mode, c.latency_group, c.share,"
    "   c.healthy IS NOT 1 OR (n.max_rtt IS NOT NULL"
    "    AND (c.rtt IS NULL OR c.rtt > n.max_rtt)) AS unavailable,"
    "   CASE WHEN c.word IN ('down', 'up') THEN 'admin ' || c.word"
    "    WHEN c.healthy IS NULL THEN 'unknown'"
    "    WHEN c.healthy = 0 THEN 'down'"
    "    WHEN n.max_rtt IS NOT NULL AND (c.rtt IS NULL OR c.rtt > n.max_rtt)"
    "     THEN 'over max_rtt'"
    "    WHEN c.word = 'drain' THEN 'admin drain'"
    "    WHEN c.draining THEN 'draining'"
    "    ELSE 'healthy' END AS state"
    "  FROM (SELECT *, CASE MAX(CASE admin_state WHEN 'down' THEN 3"
    "     WHEN 'drain' THEN 2 WHEN 'up' THEN 1 ELSE 0 END)"
    "     OVER (PARTITION BY name, ip_address)"
    "    WHEN 3 THEN 'down' WHEN 2 THEN 'drain' WHEN 1 THEN 'up'"
    "    ELSE 'auto' END AS word FROM candidates) c"
    "  JOIN names n ON n.name = c.name),"
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
    "  SELECT *, CASE WHEN best_tier <= 2 AND latency_group IS NOT NULL"
    "    THEN share > 0"
    "   WHEN best_tier <= 2 THEN tier = best_tier AND"
    "    CASE selection_method WHEN 'best_rtt' THEN tier_rank = 1"
    "     WHEN 'all' THEN 1"
    "     ELSE tier_rank = 1 OR tier_best_rtt IS NULL OR (rtt IS NOT NULL"
    "      AND (group_rtt_threshold IS NULL"
    "       OR rtt - tier_best_rtt <= group_rtt_threshold)) END"
    "   ELSE failure_mode = 'all' AND tier = 3 END AS answered"
    "  FROM ranked)"
    " SELECT name, family, ip_address, candidate_name, admin_state, rank,"
    "  rtt, answered, latency_group, share,"
    "  CASE WHEN best_tier > 2 AND answered THEN 'failure_mode all'"
    "   ELSE state END AS reason"
    " FROM decided;";

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

/* The first column of the statement's first row as text, into out. */
static void
query_text(struct store_file *file, const char *sql, char *out, size_t size)
{
	sqlite3_stmt *statement;

	out[0] = '\0';
	if (sqlite3_prepare_v2(file->db, sql, -1, &statement, NULL) != SQLITE_OK)
		return;
	if (sqlite3_step(statement) == SQLITE_ROW &&
	    sqlite3_column_text(statement, 0))
		snprintf(out, size, "%s", sqlite3_column_text(statement, 0));
	sqlite3_finalize(statement);
}

static int
query_int(struct store_file *file, const char *sql)
{
	char text[32];

	query_text(file, sql, text, sizeof(text));
	return atoi(text);
}

/*
 * Version 5: an older file's checks table (the wide rows of version 4)
 * is dropped, its history not carried over (a ring of recent checks,
 * rebuilt as hard checks), and the file rebuilt with STORE_PAGE_SIZE
 * pages.  The rebuild (VACUUM) needs the file to itself, out of WAL
 * mode: while a reader has it open the pages stay as they are, and the
 * file works as well, at a greater cost per write.
 */
static int
history_upgrade(struct store_file *file)
{
	char sql[64], mode[16];
	int result, secure;

	if (query_int(file, "SELECT count(*) FROM sqlite_master"
		      " WHERE type = 'table' AND name = 'checks'") == 0)
		return SQLITE_OK;
	/* The pages go to the free list; zeroing them first would write
	 * the whole table once more, for VACUUM to drop them anyway. */
	secure = query_int(file, "PRAGMA secure_delete");
	exec_sql(file, "PRAGMA secure_delete = OFF");
	result = exec_sql(file, "DROP TABLE checks");
	snprintf(sql, sizeof(sql), "PRAGMA secure_delete = %d", secure);
	exec_sql(file, sql);
	if (result != SQLITE_OK ||
	    query_int(file, "PRAGMA page_size") == STORE_PAGE_SIZE)
		return result;
	query_text(file, "PRAGMA journal_mode = DELETE", mode, sizeof(mode));
	if (strcmp(mode, "delete") != 0) {
		log_info("data file %s: its pages stay %d bytes (another process "
			 "has it open)", file->path,
			 query_int(file, "PRAGMA page_size"));
		return SQLITE_OK;
	}
	snprintf(sql, sizeof(sql), "PRAGMA page_size = %d; VACUUM",
		 STORE_PAGE_SIZE);
	if (exec_sql(file, sql) == SQLITE_OK)
		log_info("data file %s: rebuilt with %d-byte pages", file->path,
			 STORE_PAGE_SIZE);
	/* WAL again, whether the rebuild worked or not. */
	return exec_sql(file, "PRAGMA journal_mode = WAL");
}

static int
schema_upgrade(struct store_file *file)
{
	char sql[256];
	int result = history_upgrade(file);

	if (result == SQLITE_OK)
		result = exec_sql(file, schema_sql);

	/* First: the daemon table takes columns of its own below. */
	if (result == SQLITE_OK)
		result = counters_schema_upgrade(file);
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
		result = exec_sql(file, checks_view_sql);
	if (result == SQLITE_OK) {
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d",
			 STORE_SCHEMA_VERSION);
		result = exec_sql(file, sql);
	}
	return result;
}

void
close_database(struct store_file *file)
{
	/* A file opened again gets every counter row afresh. */
	free(file->counters_written);
	file->counters_written = NULL;
	file->wal_frames = 0;
	for (int i = 0; i < STATEMENT_COUNT; i++) {
		sqlite3_finalize(file->statements[i]);
		file->statements[i] = NULL;
	}
	if (file->db)
		sqlite3_close(file->db);
	file->db = NULL;
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

/* After each commit: how many frames the WAL holds (see checkpoint). */
static int
count_wal_frames(void *argument, sqlite3 *db, const char *name, int frames)
{
	struct store_file *file = argument;

	(void)db;
	(void)name;
	file->wal_frames = frames;
	return SQLITE_OK;
}

static int
open_database_once(struct store_file *file)
{
	int result;

	file->lock_error = 0;
	file->system_error = open_system_error(file->path);
	if (file->system_error)
		return SQLITE_CANTOPEN;
	/* Not a file another hard writes (store_lock.c). */
	switch (lock_take(file, &file->lock_holder)) {
	case 1:
		return SQLITE_BUSY;
	case -1:
		file->lock_error = errno;
		return SQLITE_CANTOPEN;
	}
	result = sqlite3_open_v2(file->path, &file->db, SQLITE_OPEN_READWRITE |
				 SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (result == SQLITE_OK) {
		char sql[64];

		sqlite3_busy_timeout(file->db, BUSY_TIMEOUT_MS);
		/* The writer checkpoints as it goes (checkpoint below):
		 * a stop waits for no copy and no sync of its own. */
		sqlite3_db_config(file->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
				  1, NULL);
		/* Instead of SQLite's checkpoint after 1,000 pages. */
		sqlite3_wal_hook(file->db, count_wal_frames, file);
		/* Before anything is written: a new file's page size. */
		snprintf(sql, sizeof(sql), "PRAGMA page_size = %d",
			 STORE_PAGE_SIZE);
		result = exec_sql(file, sql);
	}
	if (result == SQLITE_OK)
		result = exec_sql(file, "PRAGMA journal_mode = WAL");
	/* The pruning's tables of live keys: never worth a file. */
	if (result == SQLITE_OK)
		result = exec_sql(file, "PRAGMA temp_store = MEMORY");
	if (result == SQLITE_OK)
		result = exec_sql(file, "PRAGMA synchronous = NORMAL");
	if (result == SQLITE_OK) {
		char sql[64];

		snprintf(sql, sizeof(sql), "PRAGMA journal_size_limit = %d",
			 WAL_SIZE_LIMIT);
		result = exec_sql(file, sql);
	}
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

int
open_database(struct store_file *file)
{
	int result = open_database_once(file);

	if (is_corruption(result)) {
		set_aside_corrupt(file);
		result = open_database_once(file);
	}
	pthread_mutex_lock(&file->lock);
	file->cannot_open = result != SQLITE_OK;
	pthread_mutex_unlock(&file->lock);
	if (result != SQLITE_OK) {
		char why[4200], holder[64];

		if (file->lock_error)
			snprintf(why, sizeof(why), "cannot make its lock %s.lock: %s",
				 file->path, strerror(file->lock_error));
		else if (file->lock_fd < 0 && !file->system_error)
			snprintf(why, sizeof(why), "in use by %s",
				 lock_holder_text(file->lock_holder, holder,
						  sizeof(holder)));
		else
			snprintf(why, sizeof(why), "%s", file->system_error ?
				 strerror(file->system_error) :
				 sqlite3_errstr(result));
		if (log_streak_fail(&file->open_streak))
			log_error("cannot open data file %s: %s; keeping state in "
				  "memory and retrying every %.0f s", file->path,
				  why, REOPEN_INTERVAL);
		return -1;
	}
	if (log_streak_ok(&file->open_streak))
		log_info("data file %s is open again", file->path);
	set_owner(file->path);
	return 0;
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
	sqlite3_bind_double(statement, 9, row->overprovisioning);
	bind_real(statement, 10, row->last_query_time);
	sqlite3_bind_int(statement, 11, row->idle);
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
	if (row->latency_group > 0)
		sqlite3_bind_int(statement, 22, row->latency_group);
	else
		sqlite3_bind_null(statement, 22);
	sqlite3_bind_double(statement, 23, row->share);
	return step(statement);
}

/* seconds * scale as an integer; NULL when not a number or too large. */
static void
bind_scaled(sqlite3_stmt *statement, int index, double seconds, double scale)
{
	double value = seconds * scale;

	if (isfinite(value) && fabs(value) < 9e15)
		sqlite3_bind_int64(statement, index, (sqlite3_int64)llround(value));
	else
		sqlite3_bind_null(statement, index);
}

/* The time in milliseconds and the durations in microseconds. */
static int
write_history(struct store_file *file, const struct history_row *row)
{
	sqlite3_stmt *statement = file->statements[INSERT_CHECK];

	bind_key(statement, &row->key);
	sqlite3_bind_int64(statement, 4, row->slot);
	bind_scaled(statement, 5, row->time, 1e3);
	sqlite3_bind_int(statement, 6, row->status);
	sqlite3_bind_int(statement, 7, row->success);
	bind_scaled(statement, 8, row->connect_time, 1e6);
	bind_scaled(statement, 9, row->response_time, 1e6);
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
 * check_history lowered by a reload go too (a range of the key).  So do
 * rows with a NULL in their key, which an older schema let in (and NOT IN
 * would keep: NULL NOT IN ... is not true).
 */
static int
delete_removed(struct store_file *file, const struct batch *batch)
{
	int result = fill_live_tables(file, batch);

	if (result == SQLITE_OK)
		result = exec_sql(file,
		    "DELETE FROM candidates WHERE (name, candidate_name, ip_address)"
		    " NOT IN (SELECT name, candidate_name, ip_address FROM live)"
		    " OR name IS NULL OR candidate_name IS NULL OR ip_address IS NULL;"
		    "DELETE FROM check_history WHERE id % " HISTORY_SLOT_STRIDE
		    " NOT IN (SELECT rowid FROM candidates);"
		    "DELETE FROM names WHERE name NOT IN (SELECT name FROM live_names)"
		    " OR name IS NULL;");
	if (result == SQLITE_OK) {
		char sql[96];

		snprintf(sql, sizeof(sql), "DELETE FROM check_history WHERE id >= %d"
			 " * " HISTORY_SLOT_STRIDE, batch->history_slots);
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

/*
 * The counters are written as they move, against what this connection
 * last committed (file->counters_written; NULL after an open, when every
 * row is written): a row that did not change is not touched, and the
 * daemon row only changes at a start or a reload.
 */
static int
daemon_moved(const struct counters_snapshot *now,
	     const struct counters_snapshot *before)
{
	return !before || now->pid != before->pid ||
	    strcmp(now->version, before->version) != 0 ||
	    strcmp(now->config_file, before->config_file) != 0 ||
	    memcmp(&now->start_time, &before->start_time, sizeof(double)) != 0 ||
	    memcmp(&now->config_load_time, &before->config_load_time,
		   sizeof(double)) != 0 ||
	    memcmp(&now->reload_time, &before->reload_time,
		   sizeof(double)) != 0 ||
	    now->reload_ok != before->reload_ok;
}

static int
write_daemon(struct store_file *file, const struct counters_snapshot *c)
{
	sqlite3_stmt *insert;
	int result = exec_sql(file, "DELETE FROM daemon");

	if (result == SQLITE_OK)
		result = prepare(file, "INSERT INTO daemon(version, pid, start_time,"
				 " config_file, config_load_time, reload_time,"
				 " reload_ok) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
				 &insert);
	if (result != SQLITE_OK)
		return result;
	sqlite3_bind_text(insert, 1, c->version, -1, SQLITE_STATIC);
	sqlite3_bind_int64(insert, 2, c->pid);
	bind_real(insert, 3, c->start_time);
	sqlite3_bind_text(insert, 4, c->config_file, -1, SQLITE_STATIC);
	bind_real(insert, 5, c->config_load_time);
	bind_real(insert, 6, c->reload_time);
	sqlite3_bind_int(insert, 7, c->reload_ok);
	result = step(insert);
	sqlite3_finalize(insert);
	return result;
}

/* The rows of now whose value is not before's (every row without before). */
static int
write_totals(struct store_file *file, const struct totals *now,
	     const struct totals *before)
{
	struct total_row rows[TOTAL_ROWS_MAX], old[TOTAL_ROWS_MAX];
	int count = total_rows(now, rows);
	sqlite3_stmt *upsert = NULL;
	int result = SQLITE_OK;

	if (before)
		total_rows(before, old);
	for (int i = 0; result == SQLITE_OK && i < count; i++) {
		if (before && rows[i].value == old[i].value)
			continue;
		if (!upsert)
			result = prepare(file, "INSERT INTO totals(counter, kind,"
					 " value) VALUES(?1, ?2, ?3)"
					 " ON CONFLICT(counter, kind)"
					 " DO UPDATE SET value = ?3", &upsert);
		if (result != SQLITE_OK)
			break;
		sqlite3_bind_text(upsert, 1, rows[i].counter, -1, SQLITE_STATIC);
		sqlite3_bind_text(upsert, 2, rows[i].kind, -1, SQLITE_STATIC);
		sqlite3_bind_int64(upsert, 3, rows[i].value);
		result = step(upsert);
	}
	sqlite3_finalize(upsert);
	return result;
}

/* One nameserver's reply counts by rcode: the moved ones (all without before). */
static int
write_nameserver_replies(struct store_file *file, const struct upstream_counters *ns,
			 const struct upstream_counters *before)
{
	sqlite3_stmt *upsert = NULL, *remove = NULL;
	int result = SQLITE_OK;

	for (int rcode = 0; result == SQLITE_OK && rcode < DNS_RCODE_BUCKETS;
	     rcode++) {
		const char *name = dns_rcode_name(rcode);
		uint64_t was = before ? before->replies[rcode] : 0;
		sqlite3_stmt **statement = ns->replies[rcode] ? &upsert : &remove;

		if (ns->replies[rcode] == was)
			continue;
		if (!*statement)
			result = prepare(file, ns->replies[rcode] ?
			    "INSERT INTO nameserver_replies(nameserver, rcode,"
			    " replies) VALUES(?1, ?2, ?3) ON CONFLICT(nameserver,"
			    " rcode) DO UPDATE SET replies = ?3" :
			    "DELETE FROM nameserver_replies WHERE nameserver = ?1"
			    " AND rcode = ?2", statement);
		if (result != SQLITE_OK)
			break;
		sqlite3_bind_text(*statement, 1, ns->nameserver, -1, SQLITE_STATIC);
		/* The last bucket holds every rcode above the assigned ones. */
		sqlite3_bind_text(*statement, 2, name ? name : "OTHER", -1,
				  SQLITE_STATIC);
		if (ns->replies[rcode])
			sqlite3_bind_int64(*statement, 3,
					   (sqlite3_int64)ns->replies[rcode]);
		result = step(*statement);
	}
	sqlite3_finalize(upsert);
	sqlite3_finalize(remove);
	return result;
}

/* Whether before lists the same nameservers as now, in the same order. */
static int
same_nameservers(const struct counters_snapshot *now,
		 const struct counters_snapshot *before)
{
	if (!before || now->nameserver_count != before->nameserver_count)
		return 0;
	for (int i = 0; i < now->nameserver_count; i++)
		if (strcmp(now->nameservers[i].nameserver,
			   before->nameservers[i].nameserver) != 0)
			return 0;
	return 1;
}

/*
 * The nameservers configured now, and only those: all of them afresh
 * when the list changed, else the rows of those whose counters moved.
 */
static int
write_nameservers(struct store_file *file, const struct counters_snapshot *c,
		  const struct counters_snapshot *before)
{
	sqlite3_stmt *server = NULL;
	int result = SQLITE_OK;

	if (!same_nameservers(c, before)) {
		before = NULL;
		result = exec_sql(file, "DELETE FROM nameservers;"
				  "DELETE FROM nameserver_replies;");
	}
	for (int i = 0; result == SQLITE_OK && i < c->nameserver_count; i++) {
		const struct upstream_counters *ns = &c->nameservers[i];
		const struct upstream_counters *was = before ?
		    &before->nameservers[i] : NULL;

		if (was && memcmp(ns, was, sizeof(*ns)) == 0)
			continue;
		if (!server)
			result = prepare(file, "INSERT INTO nameservers(nameserver,"
					 " position, up, queries, timeouts, errors,"
					 " rtt) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"
					 " ON CONFLICT(nameserver) DO UPDATE SET"
					 " position = ?2, up = ?3, queries = ?4,"
					 " timeouts = ?5, errors = ?6, rtt = ?7",
					 &server);
		if (result != SQLITE_OK)
			break;
		sqlite3_bind_text(server, 1, ns->nameserver, -1, SQLITE_STATIC);
		sqlite3_bind_int(server, 2, i + 1);
		sqlite3_bind_int(server, 3, ns->up);
		sqlite3_bind_int64(server, 4, (sqlite3_int64)ns->queries);
		sqlite3_bind_int64(server, 5, (sqlite3_int64)ns->timeouts);
		sqlite3_bind_int64(server, 6, (sqlite3_int64)ns->errors);
		bind_real(server, 7, ns->srtt);
		result = step(server);
		if (result == SQLITE_OK)
			result = write_nameserver_replies(file, ns, was);
	}
	sqlite3_finalize(server);
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
	const struct counters_snapshot *before;
	int result = write_name_counters(file, batch);

	if (result == SQLITE_OK && batch->live)
		result = exec_sql(file, "DELETE FROM name_counters"
				  " WHERE name NOT IN (SELECT name FROM names)");
	if (result != SQLITE_OK || !batch->counters)
		return result;
	before = file->counters_written;
	if (daemon_moved(batch->counters, before))
		result = write_daemon(file, batch->counters);
	if (result == SQLITE_OK)
		result = write_totals(file, &batch->counters->totals,
				      before ? &before->totals : NULL);
	if (result == SQLITE_OK)
		result = write_nameservers(file, batch->counters, before);
	return result;
}

/* After a commit: what the next batch's counters are compared with. */
static void
counters_committed(struct store_file *file, const struct batch *batch)
{
	if (!batch->counters)
		return;
	if (!file->counters_written)
		file->counters_written = malloc(sizeof(*file->counters_written));
	if (file->counters_written)
		memcpy(file->counters_written, batch->counters,
		       sizeof(*file->counters_written));
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
		counters_committed(file, batch);
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
 * What this thread has written so far, as the kernel counts it for the
 * data file's disk budget (store.c, everything_is_due): every page of the
 * page cache it dirtied, in the file, its WAL and the WAL's index, which
 * is more than the bytes SQLite hands to write() (a commit of three 1 KB
 * pages dirtied seven 4 KB ones).  -1 where /proc does not say.
 */
static long long
thread_write_bytes(void)
{
	char line[128];
	long long bytes = -1;
	FILE *io = fopen("/proc/thread-self/io", "r");

	if (!io)
		return -1;
	while (fgets(line, sizeof(line), io))
		if (sscanf(line, "write_bytes: %lld", &bytes) == 1)
			break;
	fclose(io);
	return bytes;
}

/* For monitoring (store_daemon_status): whether the last write went in;
 * for the disk budget, what it cost (-1: unknown). */
static void
note_write_result(struct store_file *file, int written, long long bytes)
{
	pthread_mutex_lock(&file->lock);
	file->write_failed = !written;
	if (written) {
		file->last_write_time = wall_now();
		file->last_batch_bytes = bytes;
	}
	pthread_mutex_unlock(&file->lock);
}

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

static int
writer_closing(struct store_file *file)
{
	int closing;

	pthread_mutex_lock(&file->lock);
	closing = file->closing;
	pthread_mutex_unlock(&file->lock);
	return closing;
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

/*
 * Copies what the batches wrote from the WAL into the database, in the
 * writer while hard runs, once the WAL holds WAL_CHECKPOINT_FRAMES: a
 * checkpoint writes every page it copies once more (and syncs the WAL and
 * the file), so copying after every commit doubled what a write cost,
 * while copying seldom writes a page changed by many commits (the rows of
 * the addresses, the counters) once.  A stop copies nothing
 * (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE): the last batches stay in the WAL,
 * committed, where the next open (or a reader) finds them.  (Left to
 * SQLite, sqlite3_close at SIGTERM copied up to 1,000 pages and synced
 * the file, for seconds on a slow disk during which a restart had nothing
 * answering.)  The next start reads the WAL through once, a few
 * milliseconds for its megabyte.  PASSIVE never waits: a reader (har-status)
 * may keep some pages in the WAL until the next checkpoint.
 */
static void
checkpoint(struct store_file *file)
{
	int result;

	if (!file->db || file->wal_frames < WAL_CHECKPOINT_FRAMES)
		return;
	result = sqlite3_wal_checkpoint_v2(file->db, NULL,
					   SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
	if (result != SQLITE_OK && (result & 0xff) != SQLITE_BUSY)
		log_debug("data file %s: checkpoint: %s", file->path,
			  sqlite3_errstr(result));
}

void *
writer_main(void *argument)
{
	struct store_file *file = argument;
	struct batch *batch;
	int out_of_time, error;

	/*
	 * SCHED_BATCH: a writer that wakes up with a batch does not preempt
	 * the loop for a whole commit; it takes its turn.  Not nice 19: on a
	 * host kept busy by other programs (or by a restarting fleet's other
	 * hards) a thread that low is barely scheduled, and a stop waits for
	 * it, to write the last batch and then merely to end (with four busy
	 * loops on its core, SIGTERM to exit took 0.12-0.53 s, against
	 * 0.01-0.03 s now), with nothing answering meanwhile.
	 */
	error = pthread_setschedparam(pthread_self(), SCHED_BATCH,
				      &(struct sched_param){ .sched_priority = 0 });
	if (error != 0)
		log_debug("cannot make the data file writer a batch thread: %s",
			  strerror(error));
	while ((batch = writer_next(file, &out_of_time)) != NULL) {
		long long before = thread_write_bytes();
		int result = write_batch(file, batch);

		if (result == SQLITE_OK) {
			long long after;

			/* A closing file's last batches are not copied: the
			 * stop would wait for the copy and its sync. */
			if (!writer_closing(file))
				checkpoint(file);
			after = thread_write_bytes();
			note_write_result(file, 1, before < 0 || after < 0 ? -1 :
					  after - before);
			writer_done_with_head(file);
			continue;
		}
		note_write_result(file, 0, -1);
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
