/*
 * fuzz_config.c - libFuzzer harness for the configuration parser: every
 * input is a har.conf text.  A config that loads is also turned into a
 * registry (addresses, answer sets) and run through the forwarding-loop
 * guard, all in memory; nothing is written anywhere.
 */
#include <stdlib.h>
#include <string.h>

#include "har.h"

static void
discard(const char *message)
{
	(void)message;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	struct config *config;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	/* /dev/null: no nameservers from a resolv.conf, and nothing read. */
	config = config_load_string(text, "/dev/null", discard);
	if (config) {
		struct registry *registry = registry_create(config);

		registry_free(registry);
		config_drop_own_listeners(config, discard);
		config_free(config);
	}
	free(text);
	return 0;
}
