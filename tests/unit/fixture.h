/*
 * fixture.h - a registry built from a configuration string, for the unit
 * tests of the modules that work on one (select.c, check.c).  Include it
 * after har.h and unit.h.
 */
#ifndef FIXTURE_H
#define FIXTURE_H

static void
report(const char *message)
{
	fprintf(stderr, "config: %s\n", message);
}

/* A registry over a config string; the config is freed with it. */
struct fixture {
	struct config *config;
	struct registry *registry;
};

static int
fixture_load(struct fixture *f, const char *text)
{
	f->config = config_load_string(text, "/dev/null", report);
	f->registry = f->config ? registry_create(f->config) : NULL;
	return f->registry != NULL;
}

static void
fixture_free(struct fixture *f)
{
	registry_free(f->registry);
	config_free(f->config);
	f->registry = NULL;
	f->config = NULL;
}

#endif
