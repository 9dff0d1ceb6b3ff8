/*
 * unit.h - a tiny unit test framework for hard's C modules.
 *
 * CHECK(cond) counts a pass or prints the failure with file:line and
 * goes on; the CHECK_* variants also print both values.  RUN(test) runs
 * one test function and names it in failure messages.  UNIT_SUMMARY()
 * prints "test_x: N passed, M failed" and returns the exit status (1 on
 * any failure), so a test program ends with `return UNIT_SUMMARY();`.
 */
#ifndef UNIT_H
#define UNIT_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int unit_passed;
static int unit_failed;
static const char *unit_test = "";

static inline int
unit_result(int ok, const char *file, int line, const char *what)
{
	if (ok) {
		unit_passed++;
		return 1;
	}
	unit_failed++;
	fprintf(stderr, "%s:%d: %s: FAILED: %s\n", file, line, unit_test, what);
	return 0;
}

#define CHECK(cond) unit_result(!!(cond), __FILE__, __LINE__, #cond)

#define CHECK_INT(actual, expected) do {				\
	long long unit_a = (long long)(actual);				\
	long long unit_e = (long long)(expected);			\
	if (!unit_result(unit_a == unit_e, __FILE__, __LINE__,		\
			 #actual " == " #expected))			\
		fprintf(stderr, "    got %lld, expected %lld\n",	\
			unit_a, unit_e);				\
} while (0)

/* Equal within 1e-9, or both infinite of the same sign, or both NaN. */
#define CHECK_DOUBLE(actual, expected) do {				\
	double unit_a = (double)(actual);				\
	double unit_e = (double)(expected);				\
	int unit_ok = (isnan(unit_a) && isnan(unit_e)) ||		\
	    (isinf(unit_e) ? unit_a == unit_e :				\
	     fabs(unit_a - unit_e) <= 1e-9 * (1 + fabs(unit_e)));	\
	if (!unit_result(unit_ok, __FILE__, __LINE__,			\
			 #actual " == " #expected))			\
		fprintf(stderr, "    got %.12g, expected %.12g\n",	\
			unit_a, unit_e);				\
} while (0)

#define CHECK_STR(actual, expected) do {				\
	const char *unit_a = (actual);					\
	const char *unit_e = (expected);				\
	int unit_ok = unit_a && unit_e ? strcmp(unit_a, unit_e) == 0 :	\
	    unit_a == unit_e;						\
	if (!unit_result(unit_ok, __FILE__, __LINE__,			\
			 #actual " == " #expected))			\
		fprintf(stderr, "    got \"%s\", expected \"%s\"\n",	\
			unit_a ? unit_a : "(null)",			\
			unit_e ? unit_e : "(null)");			\
} while (0)

#define CHECK_CONTAINS(haystack, needle) do {				\
	const char *unit_h = (haystack);				\
	const char *unit_n = (needle);					\
	if (!unit_result(unit_h && strstr(unit_h, unit_n) != NULL,	\
			 __FILE__, __LINE__,				\
			 #haystack " contains " #needle))		\
		fprintf(stderr, "    \"%s\" does not contain \"%s\"\n",	\
			unit_h ? unit_h : "(null)", unit_n);		\
} while (0)

#define RUN(test) do {							\
	unit_test = #test;						\
	test();								\
	unit_test = "";							\
} while (0)

/*
 * Runs fn in a child process: 1 when it returned non-zero and the child
 * exited cleanly, 0 when it returned 0, crashed or was killed (reported).
 * For code that may crash, so one bug does not hide every later check.
 */
static inline int
run_in_child(int (*fn)(void))
{
	pid_t pid;
	int status;

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		perror("fork");
		return 0;
	}
	if (pid == 0)
		exit(fn() ? 0 : 1);
	if (waitpid(pid, &status, 0) != pid) {
		perror("waitpid");
		return 0;
	}
	if (WIFSIGNALED(status)) {
		fprintf(stderr, "    child killed by signal %d\n",
			WTERMSIG(status));
		return 0;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) > 1)
		fprintf(stderr, "    child exited with status %d\n",
			WEXITSTATUS(status));
	return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* "tests/unit/test_dns.c" -> "test_dns" */
static inline int
unit_summary(const char *file)
{
	const char *base = strrchr(file, '/');
	size_t length;

	base = base ? base + 1 : file;
	length = strlen(base);
	if (length > 2 && strcmp(base + length - 2, ".c") == 0)
		length -= 2;
	printf("%.*s: %d passed, %d failed\n", (int)length, base, unit_passed,
	       unit_failed);
	fflush(stdout);
	return unit_failed ? 1 : 0;
}

#define UNIT_SUMMARY() unit_summary(__FILE__)

#endif
