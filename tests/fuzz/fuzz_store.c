/*
 * fuzz_store.c - libFuzzer harness for the data file read at start: every
 * input becomes a data file, which hard's own start and stop then go
 * through: store_open (the schema upgrade), store_restore into a fresh
 * registry, and store_close, whose writer writes the state back (pruning
 * what it does not know).  Whatever the file holds, nothing may crash,
 * leak, or trip a sanitizer.
 *
 * The first byte says how the rest becomes the file:
 *   even  the rest is the file's bytes (the seeds are real data files, so
 *         that mutations reach sqlite's pages and hard's reading of them);
 *   odd   a schema, chosen by the next byte (today's, made by hard itself;
 *         schema 1; the original har's, without a version), gets rows built
 *         from the rest: for each row a table, then one value per column,
 *         each a NULL, an integer, a real (infinities and extremes too), a
 *         text or a blob, bound as parameters.
 * No SQL text from the input is run: ATTACH or VACUUM INTO would let it
 * write files anywhere.
 */
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>
#include <sqlite3.h>

#include "har.h"

static char directory[64];
static char path[64];
static struct config *config;
static struct ev_loop *loop;
static uint8_t *template_file;	/* today's schema, as hard writes it */
static size_t template_size;

/* The names and addresses the configuration has, for values to hit. */
static const char *const known_text[] = {
	"www.example.com", "res.example.com", "a", "b", "192.0.2.1",
	"2001:db8::1", "2001:db8:0::1", "192.0.2.2", "::ffff:192.0.2.1", "",
	"up", "down", "drain", "auto", "all", "servfail", "best_rtt",
};

static const double special_reals[] = {
	INFINITY, -INFINITY, 0.0, -0.0, DBL_MAX, -DBL_MAX, DBL_MIN, 1e-300,
	0.004, 86400.0, 86400.5, -1.0, 1e18, 9.3e18, -9.3e18, 0.5,
};

struct schema {
	const char *create;
	const char *names;	/* the columns rows are given, in order */
	const char *candidates;
};

static const struct schema schemas[] = {
	{ NULL,	/* today's: the template */
	  "name, queries, last_query_time, idle, selection_method, max_rtt",
	  "name, candidate_name, ip_address, family, healthy, last_check_time,"
	  " last_success_time, last_failure_time, last_check_status,"
	  " connect_time, response_time, rtt, last_rtt, successes, timeouts,"
	  " connect_errors, response_errors, other_errors, checks, admin_state,"
	  " draining, latency_group, share" },
	{ "CREATE TABLE names(name TEXT PRIMARY KEY, queries INTEGER);"
	  "CREATE TABLE candidates(name TEXT, candidate_name TEXT,"
	  " ip_address TEXT, family INTEGER, healthy INTEGER, rtt REAL,"
	  " checks INTEGER, PRIMARY KEY(name, candidate_name, ip_address));"
	  "PRAGMA user_version = 1;",
	  "name, queries",
	  "name, candidate_name, ip_address, family, healthy, rtt, checks" },
	{ "CREATE TABLE names(name TEXT PRIMARY KEY, queries INTEGER);"
	  "CREATE TABLE candidates(name TEXT, candidate_name TEXT,"
	  " ip_address TEXT, PRIMARY KEY(name, candidate_name, ip_address));",
	  "name, queries",
	  "name, candidate_name, ip_address" },
};

struct reader {
	const uint8_t *at, *end;
};

static unsigned
take(struct reader *r)
{
	return r->at < r->end ? *r->at++ : 0;
}

static uint64_t
take64(struct reader *r)
{
	uint64_t value = 0;

	for (int i = 0; i < 8; i++)
		value = value << 8 | take(r);
	return value;
}

static void
bind_value(sqlite3_stmt *statement, int index, struct reader *r)
{
	unsigned kind = take(r) % 8, len;
	uint64_t bits;
	double real;

	switch (kind) {
	case 0:
		sqlite3_bind_null(statement, index);
		return;
	case 1:
		sqlite3_bind_int64(statement, index, (int8_t)take(r));
		return;
	case 2:
		sqlite3_bind_int64(statement, index, (sqlite3_int64)take64(r));
		return;
	case 3:
		bits = take64(r);
		memcpy(&real, &bits, sizeof(real));
		sqlite3_bind_double(statement, index, real);
		return;
	case 4:
		sqlite3_bind_double(statement, index, special_reals[take(r) % 16]);
		return;
	case 5:
	case 7:
		len = take(r);
		if (len > (size_t)(r->end - r->at))
			len = (unsigned)(r->end - r->at);
		if (kind == 5)
			sqlite3_bind_text(statement, index, (const char *)r->at,
					  (int)len, SQLITE_TRANSIENT);
		else
			sqlite3_bind_blob(statement, index, r->at, (int)len,
					  SQLITE_TRANSIENT);
		r->at += len;
		return;
	default:
		sqlite3_bind_text(statement, index, known_text[take(r) %
		    (sizeof(known_text) / sizeof(known_text[0]))], -1,
		    SQLITE_STATIC);
		return;
	}
}

static int
column_count(const char *columns)
{
	int count = 1;

	for (; *columns; columns++)
		count += *columns == ',';
	return count;
}

static sqlite3_stmt *
prepare_insert(sqlite3 *db, const char *table, const char *columns)
{
	char sql[1024] = "";
	size_t at = (size_t)snprintf(sql, sizeof(sql),
				     "INSERT OR REPLACE INTO %s(%s) VALUES(?",
				     table, columns);
	sqlite3_stmt *statement = NULL;

	for (int i = 1; i < column_count(columns); i++)
		at += (size_t)snprintf(sql + at, sizeof(sql) - at, ", ?");
	snprintf(sql + at, sizeof(sql) - at, ")");
	if (sqlite3_prepare_v2(db, sql, -1, &statement, NULL) != SQLITE_OK)
		abort();	/* the harness's own SQL */
	return statement;
}

static int
write_bytes(const uint8_t *data, size_t size)
{
	FILE *file = fopen(path, "wb");

	if (!file)
		return -1;
	if (size && fwrite(data, 1, size, file) != size) {
		fclose(file);
		return -1;
	}
	return fclose(file);
}

/* A data file of the chosen schema with the rows the input describes. */
static void
write_rows(struct reader *r)
{
	const struct schema *schema = &schemas[take(r) % 3];
	sqlite3 *db = NULL;
	sqlite3_stmt *names, *candidates;

	if (!schema->create && write_bytes(template_file, template_size) != 0)
		abort();
	if (sqlite3_open(path, &db) != SQLITE_OK)
		abort();
	if (schema->create &&
	    sqlite3_exec(db, schema->create, NULL, NULL, NULL) != SQLITE_OK)
		abort();
	names = prepare_insert(db, "names", schema->names);
	candidates = prepare_insert(db, "candidates", schema->candidates);
	sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
	for (int rows = 0; r->at < r->end && rows < 64; rows++) {
		int to_names = take(r) & 1;
		sqlite3_stmt *statement = to_names ? names : candidates;
		int columns = sqlite3_bind_parameter_count(statement);

		for (int i = 1; i <= columns; i++)
			bind_value(statement, i, r);
		sqlite3_step(statement);	/* a constraint may refuse it */
		sqlite3_reset(statement);
		sqlite3_clear_bindings(statement);
	}
	sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
	sqlite3_finalize(names);
	sqlite3_finalize(candidates);
	sqlite3_close(db);
}

/* The directory emptied: the file, its -wal and -shm, any set aside. */
static void
clean_directory(void)
{
	DIR *dir = opendir(directory);
	struct dirent *entry;
	char file[512];

	if (!dir)
		abort();
	while ((entry = readdir(dir)) != NULL) {
		if (entry->d_name[0] == '.')
			continue;
		snprintf(file, sizeof(file), "%s/%s", directory, entry->d_name);
		unlink(file);
	}
	closedir(dir);
}

/* Hard's start and stop over the file at path. */
static void
start_and_stop(void)
{
	struct registry *registry = registry_create(config);

	if (store_open(loop, config, NULL) == 0)
		store_restore(registry);
	store_close();
	registry_free(registry);
}

static void
remove_directory(void)
{
	clean_directory();
	rmdir(directory);
}

static void
discard(const char *message)
{
	(void)message;
}

static uint8_t *
read_whole(const char *file, size_t *size)
{
	FILE *stream = fopen(file, "rb");
	uint8_t *bytes = malloc(1 << 20);

	if (!stream || !bytes)
		abort();
	*size = fread(bytes, 1, 1 << 20, stream);
	fclose(stream);
	return bytes;
}

/*
 * hard's close copies nothing from the WAL (the last batches, the schema
 * of a new file too, stay there, committed): the template is the main
 * file alone, so what the WAL holds is copied into it first.
 */
static void
fold_wal(void)
{
	sqlite3 *db = NULL;

	if (sqlite3_open(path, &db) != SQLITE_OK ||
	    sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL,
			 NULL) != SQLITE_OK)
		abort();
	sqlite3_close(db);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char text[1024];

	(void)argc;
	(void)argv;
	/* In memory where there is /dev/shm: every input's writer syncs. */
	snprintf(directory, sizeof(directory), "/dev/shm/fuzz_store.XXXXXX");
	if (!mkdtemp(directory)) {
		snprintf(directory, sizeof(directory), "/tmp/fuzz_store.XXXXXX");
		if (!mkdtemp(directory))
			abort();
	}
	atexit(remove_directory);
	snprintf(path, sizeof(path), "%s/har.db", directory);
	snprintf(text, sizeof(text),
	    "nameservers = { 192.0.2.53 }\n"
	    "data_file = \"%s\"\n"
	    "check_history = 3\n"
	    "name www.example.com {\n"
	    "    max_rtt = 0.5\n"
	    "    selection_method = group_rtt_rr\n"
	    "    overprovisioning = 1.5\n"
	    "    candidate a { address = { 192.0.2.1, 2001:db8::1 } }\n"
	    "    candidate b { address = { 192.0.2.1, 192.0.2.2 } }\n"
	    "}\n"
	    "name res.example.com {\n"
	    "    candidate a { check_address = \"http://a.example.net/\" }\n"
	    "}\n", path);
	config = config_load_string(text, "/dev/null", discard);
	loop = ev_loop_new(EVFLAG_AUTO);
	if (!config || !loop)
		abort();
	start_and_stop();	/* today's schema, by hard */
	fold_wal();
	template_file = read_whole(path, &template_size);
	clean_directory();
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct reader r = { data, data + size };

	if (take(&r) & 1)
		write_rows(&r);
	else if (write_bytes(r.at, (size_t)(r.end - r.at)) != 0)
		abort();
	start_and_stop();
	clean_directory();
	return 0;
}
