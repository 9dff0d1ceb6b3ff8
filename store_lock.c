/*
 * store_lock.c - one hard per data file.
 *
 * Two hards writing one file would each overwrite the other's rows
 * (health, counters, history) with their own, and a reader could not tell
 * whose it is reading.  A hard holds an flock(2) on DATA_FILE.lock, a file
 * of its own beside the data file, for as long as it writes the file;
 * another one finds it taken and says by whom.  Not on the data file
 * itself: SQLite keeps POSIX (fcntl) locks on that one, and closing any
 * other descriptor hard had on it would drop them.  An flock goes with its
 * last descriptor, so a hard that dies, however, lets go at once, and the
 * daemon keeps the lock its parent took before detaching (the descriptor
 * is shared across fork).  The lock file holds the pid of the hard that
 * has it, for the line that refuses the other one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "har.h"

static void
lock_path(const struct store_file *file, char *out, size_t size)
{
	snprintf(out, size, "%s.lock", file->path);
}

/* The pid written in the lock file; 0 when there is none to read. */
static long
read_holder(int fd)
{
	char text[32];
	ssize_t got = pread(fd, text, sizeof(text) - 1, 0);

	if (got <= 0)
		return 0;
	text[got] = '\0';
	return strtol(text, NULL, 10);
}

void
lock_note_pid(struct store_file *file)
{
	char text[32];
	int length;

	if (file->lock_fd < 0)
		return;
	length = snprintf(text, sizeof(text), "%ld\n", (long)getpid());
	if (ftruncate(file->lock_fd, 0) != 0 ||
	    pwrite(file->lock_fd, text, (size_t)length, 0) != length)
		log_debug("cannot write the pid into %s.lock: %s", file->path,
			  strerror(errno));
}

int
lock_take(struct store_file *file, long *holder)
{
	char path[4096];
	int fd;

	*holder = 0;
	if (file->lock_fd >= 0)
		return 0;
	lock_path(file, path, sizeof(path));
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		int error = errno;

		if (error == EWOULDBLOCK)
			*holder = read_holder(fd);
		close(fd);
		errno = error;
		return error == EWOULDBLOCK ? 1 : -1;
	}
	file->lock_fd = fd;
	set_owner(path);
	lock_note_pid(file);
	return 0;
}

void
lock_release(struct store_file *file)
{
	if (file->lock_fd < 0)
		return;
	close(file->lock_fd);
	file->lock_fd = -1;
}

/* "another hard (pid 123)", or without the pid when the file has none. */
const char *
lock_holder_text(long holder, char *out, size_t size)
{
	if (holder > 0)
		snprintf(out, size, "another hard (pid %ld)", holder);
	else
		snprintf(out, size, "another process");
	return out;
}
