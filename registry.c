/*
 * registry.c - the runtime picture of the configuration: names, their
 * candidates and each candidate's checked addresses, with a hash table
 * from a query's lower-case wire name to its configured name.
 *
 * Addresses are individually allocated so that a reload can hand the very
 * same objects, with their timers and in-flight checks, to the registry
 * built from the new configuration.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "har.h"

int
family_index(int family)
{
	return family == AF_INET6 ? 1 : 0;
}

static void *
registry_calloc(size_t count, size_t size)
{
	void *memory = calloc(count ? count : 1, size);

	if (!memory) {
		log_error("out of memory");
		abort();
	}
	return memory;
}

/* FNV-1a: short keys, no need for anything stronger on loopback input. */
static unsigned
wire_hash(const uint8_t *wire, int len)
{
	uint32_t hash = 2166136261u;

	for (int i = 0; i < len; i++) {
		hash ^= wire[i];
		hash *= 16777619u;
	}
	return hash;
}

struct name *
registry_lookup(const struct registry *registry, const uint8_t *lower_wire,
		int wire_len)
{
	unsigned slot = wire_hash(lower_wire, wire_len) & registry->table_mask;

	for (;;) {
		struct name *name = registry->table[slot];

		if (!name)
			return NULL;
		if (name->config->wire_len == wire_len &&
		    memcmp(name->config->wire, lower_wire, (size_t)wire_len) == 0)
			return name;
		slot = (slot + 1) & registry->table_mask;
	}
}

static unsigned
shape_bit(int wire_len, int labels)
{
	return ((unsigned)wire_len | (unsigned)labels << 8) %
	    REGISTRY_SHAPE_BITS;
}

int
registry_may_hold(const struct registry *registry, int wire_len, int labels)
{
	unsigned bit = shape_bit(wire_len, labels);

	return (int)(registry->shapes[bit / 64] >> (bit % 64) & 1);
}

static void
registry_add_shape(struct registry *registry, const uint8_t *wire)
{
	int at = 0, labels = 0;
	unsigned bit;

	while (wire[at]) {
		at += 1 + wire[at];
		labels++;
	}
	bit = shape_bit(at + 1, labels);
	registry->shapes[bit / 64] |= UINT64_C(1) << (bit % 64);
}

static void
registry_index(struct registry *registry)
{
	unsigned size = 16;

	while (size < (unsigned)registry->name_count * 2)
		size *= 2;
	registry->table = registry_calloc(size, sizeof(struct name *));
	registry->table_mask = size - 1;
	for (int i = 0; i < registry->name_count; i++) {
		const struct config_name *config = registry->names[i].config;
		unsigned slot = wire_hash(config->wire, config->wire_len) &
		    registry->table_mask;

		while (registry->table[slot])
			slot = (slot + 1) & registry->table_mask;
		registry->table[slot] = &registry->names[i];
		registry_add_shape(registry, config->wire);
	}
}

struct address *
address_create(struct candidate *candidate, const struct ip_address *ip)
{
	struct address *address = registry_calloc(1, sizeof(*address));

	address->candidate = candidate;
	address->ip = *ip;
	ip_address_format(ip, address->text, sizeof(address->text));
	address->health = HEALTH_UNKNOWN;
	address->srtt = NAN;
	address->last_rtt = NAN;
	address->connect_time = NAN;
	address->response_time = NAN;
	address->last_check_time = NAN;
	address->last_success_time = NAN;
	address->last_failure_time = NAN;
	ev_timer_init(&address->timer, NULL, 0, 0);
	address->timer.data = address;
	return address;
}

void
address_free(struct address *address)
{
	if (!address)
		return;
	check_cancel(address);
	free(address);
}

static int
ip_equal(const struct ip_address *a, const struct ip_address *b)
{
	return a->family == b->family &&
	    memcmp(a->bytes, b->bytes, a->family == AF_INET ? 4 : 16) == 0;
}

static struct address *
find_address(struct address **list, int count, const struct ip_address *ip)
{
	for (int i = 0; i < count; i++)
		if (list[i] && ip_equal(&list[i]->ip, ip))
			return list[i];
	return NULL;
}

/* Takes the address with ip out of list (NULLing its slot), or NULL. */
static struct address *
take_address(struct address **list, int count, const struct ip_address *ip)
{
	for (int i = 0; i < count; i++) {
		struct address *address = list[i];

		if (address && ip_equal(&address->ip, ip)) {
			list[i] = NULL;
			return address;
		}
	}
	return NULL;
}

void
candidate_set_addresses(struct candidate *candidate,
			const struct ip_address *ips, int count)
{
	struct address **old = candidate->addresses;
	int old_count = candidate->address_count;
	struct address **list = registry_calloc((size_t)count,
						sizeof(struct address *));
	int kept = 0;

	for (int i = 0; i < count; i++) {
		struct address *address;

		if (find_address(list, kept, &ips[i]))	/* listed twice */
			continue;
		address = take_address(old, old_count, &ips[i]);
		if (!address)
			address = address_create(candidate, &ips[i]);
		address->candidate = candidate;
		list[kept++] = address;
	}
	for (int i = 0; i < old_count; i++)
		address_free(old[i]);
	free(old);
	candidate->addresses = list;
	candidate->address_count = kept;
}

static void
candidate_init(struct candidate *candidate, struct name *name,
	       const struct config_candidate *config)
{
	candidate->name = name;
	candidate->config = config;
	ev_timer_init(&candidate->resolve_timer, NULL, 0, 0);
	candidate->resolve_timer.data = candidate;
	if (config->address_count == 0)
		return;
	candidate->known[0] = candidate->known[1] = 1;
	candidate_set_addresses(candidate, config->addresses,
				config->address_count);
}

struct registry *
registry_create(struct config *config)
{
	struct registry *registry = registry_calloc(1, sizeof(*registry));

	registry->config = config;
	registry->name_count = config->name_count;
	registry->names = registry_calloc((size_t)config->name_count,
					  sizeof(struct name));
	for (int i = 0; i < config->name_count; i++) {
		struct name *name = &registry->names[i];

		name->config = &config->names[i];
		name->last_query_time = NAN;
		name->quiet_since = NAN;
		name->candidate_count = name->config->candidate_count;
		name->candidates = registry_calloc((size_t)name->candidate_count,
						   sizeof(struct candidate));
		for (int j = 0; j < name->candidate_count; j++)
			candidate_init(&name->candidates[j], name,
				       &name->config->candidates[j]);
	}
	registry_index(registry);
	for (int i = 0; i < registry->name_count; i++)
		select_update_all(&registry->names[i]);
	return registry;
}

struct name *
registry_find_name(struct registry *registry, const char *title)
{
	for (int i = 0; i < registry->name_count; i++)
		if (strcmp(registry->names[i].config->title, title) == 0)
			return &registry->names[i];
	return NULL;
}

struct candidate *
name_find_candidate(struct name *name, const char *title)
{
	for (int i = 0; i < name->candidate_count; i++)
		if (strcmp(name->candidates[i].config->title, title) == 0)
			return &name->candidates[i];
	return NULL;
}

static int
same_text(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

static int
same_drain_status(const struct config_name *a, const struct config_name *b)
{
	if (a->drain_status_count != b->drain_status_count)
		return 0;
	for (int i = 0; i < a->drain_status_count; i++)
		if (!select_drain_status(b, a->drain_status[i]) ||
		    !select_drain_status(a, b->drain_status[i]))
			return 0;
	return 1;
}

/*
 * Whether a reload changed how the candidate's addresses are checked, so
 * that the health found by the old check says nothing of the new one.
 * The check address carries the scheme, host, port and URL.  admin_state
 * is not part of the check: changing it keeps health, RTT and schedule.
 */
static int
check_changed(const struct candidate *fresh, const struct candidate *old)
{
	const struct config_name *now = fresh->name->config;
	const struct config_name *before = old->name->config;

	return strcmp(fresh->config->check_address,
		      old->config->check_address) != 0 ||
	    now->check_method != before->check_method ||
	    now->check_timeout != before->check_timeout ||
	    !same_text(now->ca_file, before->ca_file) ||
	    !config_same_expect_status(now, before) ||
	    !config_same_http_request(now, before) ||
	    !same_drain_status(now, before);
}

/*
 * The address keeps its health (no gap in the answers) until the new
 * check's first result, which runs at once and decides by itself,
 * whatever rise and fall say; the RTT starts again from its sample.
 */
static void
recheck_addresses(struct candidate *candidate)
{
	if (candidate->address_count > 0)
		log_info("%s candidate %s: its check changed; checking again now",
			 candidate->name->config->title, candidate->config->title);
	for (int i = 0; i < candidate->address_count; i++) {
		struct address *address = candidate->addresses[i];

		address->check_changed = 1;
		address->successes_in_row = 0;
		address->failures_in_row = 0;
		check_restart(address);
	}
}

/*
 * Moves the old candidate's addresses into the new one where they still
 * apply: the same IP for fixed addresses, all of them (and what is known
 * of each family) for a candidate resolved from the same host (the next
 * resolution corrects the list).
 */
static void
move_addresses(struct candidate *fresh, struct candidate *old)
{
	int resolved = fresh->config->address_count == 0;

	if (resolved && old->config->address_count == 0 &&
	    strcmp(fresh->config->host, old->config->host) == 0) {
		fresh->addresses = old->addresses;
		fresh->address_count = old->address_count;
		fresh->known[0] = old->known[0];
		fresh->known[1] = old->known[1];
		old->addresses = NULL;
		old->address_count = 0;
		for (int i = 0; i < fresh->address_count; i++)
			fresh->addresses[i]->candidate = fresh;
		return;
	}
	for (int i = 0; i < fresh->address_count; i++) {
		struct address *kept = take_address(old->addresses,
						    old->address_count,
						    &fresh->addresses[i]->ip);

		if (!kept)
			continue;
		address_free(fresh->addresses[i]);
		kept->candidate = fresh;
		fresh->addresses[i] = kept;
	}
}

/*
 * A new admin_state takes effect with the answers chosen right after the
 * take-over; the addresses' rows are rewritten to show it.
 */
static void
note_admin_state(struct candidate *fresh, const struct candidate *old)
{
	enum admin_state now = fresh->config->admin_state;

	if (now == old->config->admin_state)
		return;
	log_info("%s candidate %s: admin_state %s -> %s",
		 fresh->name->config->title, fresh->config->title,
		 admin_state_names[old->config->admin_state],
		 admin_state_names[now]);
	for (int i = 0; i < fresh->address_count; i++)
		fresh->addresses[i]->store_dirty = 1;
}

static void
candidate_take_over(struct candidate *fresh, struct candidate *old)
{
	move_addresses(fresh, old);
	note_admin_state(fresh, old);
	if (check_changed(fresh, old))
		recheck_addresses(fresh);
}

void
registry_take_over(struct registry *fresh, struct registry *old)
{
	for (int i = 0; i < fresh->name_count; i++) {
		struct name *name = &fresh->names[i];
		struct name *previous = registry_lookup(old, name->config->wire,
							name->config->wire_len);

		if (!previous)
			continue;
		name->queries = previous->queries;
		name->counters = previous->counters;
		/* Before the addresses: a restarted check is scheduled
		 * at the pace of the name's idleness. */
		name->queried = previous->queried;
		name->last_query_time = previous->last_query_time;
		name->quiet_since = previous->quiet_since;
		name->idle = previous->idle;
		name->store_dirty = previous->store_dirty;
		for (int j = 0; j < name->candidate_count; j++) {
			struct candidate *candidate = &name->candidates[j];
			struct candidate *before =
			    name_find_candidate(previous, candidate->config->title);

			if (before)
				candidate_take_over(candidate, before);
		}
		for (int family = 0; family < 2; family++)
			name->answers[family].next = previous->answers[family].next;
		select_update_all(name);
	}
	registry_free(old);
}

void
registry_free(struct registry *registry)
{
	if (!registry)
		return;
	for (int i = 0; i < registry->name_count; i++) {
		struct name *name = &registry->names[i];

		for (int j = 0; j < name->candidate_count; j++) {
			struct candidate *candidate = &name->candidates[j];

			resolve_cancel(candidate);
			for (int k = 0; k < candidate->address_count; k++)
				address_free(candidate->addresses[k]);
			free(candidate->addresses);
		}
		free(name->candidates);
		select_free_answers(&name->answers[0]);
		select_free_answers(&name->answers[1]);
	}
	free(registry->names);
	free(registry->table);
	free(registry);
}
