/*
 * select.c - health bookkeeping and the choice of addresses to answer
 * with.  Everything here is a pure function of the in-memory state: a
 * check result goes in, and each name's answer sets come out, computed
 * once so that queries only copy them.
 */
#include <stdlib.h>
#include <string.h>

#include "har.h"

/*
 * Weight of a new RTT sample in the smoothed RTT.  0.3 follows a change
 * of path within a few checks while one slow response moves the mean by
 * less than a third of its excess.
 */
const double select_rtt_weight = 0.3;

int
address_available(const struct address *address)
{
	const struct config_name *config = address->candidate->name->config;

	if (address->health != HEALTH_UP)
		return 0;
	if (isnan(address->srtt))
		return isinf(config->max_rtt);
	return address->srtt <= config->max_rtt;
}

/*
 * The operator's admin_state comes first: down is never answered, up is
 * answered as healthy whatever the checks and max_rtt say (the operator
 * has overruled them).  Otherwise the checks decide, and an address that
 * is up but drained (by the operator or by its server) comes after every
 * healthy one.  The state is the IP's in the name (settle_admin_states),
 * not only its own candidate's.
 */
enum address_tier
address_tier(const struct address *address)
{
	enum admin_state admin = address->admin;

	if (admin == ADMIN_DOWN)
		return TIER_ADMIN_DOWN;
	if (admin == ADMIN_UP)
		return TIER_HEALTHY;
	if (!address_available(address))
		return TIER_UNAVAILABLE;
	if (admin == ADMIN_DRAIN || address->draining)
		return TIER_DRAINING;
	return TIER_HEALTHY;
}

int
select_drain_status(const struct config_name *config, int status)
{
	for (int i = 0; i < config->drain_status_count; i++)
		if (config->drain_status[i] == status)
			return 1;
	return 0;
}

static void
count_failure(struct address *address, int status)
{
	if (status == STATUS_TIMEOUT)
		address->timeouts++;
	else if (status == STATUS_CONNECT_ERROR)
		address->connect_errors++;
	else if (status == STATUS_RESPONSE_ERROR ||
		 status == STATUS_BODY_MISMATCH || status > 0)
		address->response_errors++;
	else
		address->other_errors++;
}

/*
 * The first completed check decides an unknown address at once, so a
 * fresh start answers after one round of checks, and so does the first
 * check after a reload changed how the address is checked; after that,
 * rise successes or fall failures in a row are needed to change it.
 *
 * A drain status comes as a success (check_done says so): the server
 * works and its RTT is measured, it only asks for no new clients.  It
 * drains the address at once, and only a success without a drain status
 * ends that: a draining server that then fails stays drained, so it does
 * not come back into the answers while its failures count up to fall.
 */
int
select_record_result(struct address *address, int status, int success,
		     double connect_time, double total_time, double now)
{
	const struct config_name *config = address->candidate->name->config;
	int before = address->health;
	int decides = before == HEALTH_UNKNOWN || address->check_changed;

	address->check_count++;
	address->last_check_time = now;
	address->last_status = status;
	if (success) {
		double sample = config->rtt_mode == RTT_CONNECT ?
		    connect_time : total_time;

		address->successes++;
		address->last_success_time = now;
		address->connect_time = connect_time;
		address->response_time = total_time;
		address->last_rtt = sample;
		address->srtt = isnan(address->srtt) || address->check_changed ? sample :
		    (1 - select_rtt_weight) * address->srtt +
		    select_rtt_weight * sample;
		address->successes_in_row++;
		address->failures_in_row = 0;
		address->draining = select_drain_status(config, status);
		if (decides || (before == HEALTH_DOWN &&
		     address->successes_in_row >= config->rise))
			address->health = HEALTH_UP;
	} else {
		count_failure(address, status);
		address->last_failure_time = now;
		address->failures_in_row++;
		address->successes_in_row = 0;
		if (decides || (before == HEALTH_UP &&
		     address->failures_in_row >= config->fall))
			address->health = HEALTH_DOWN;
	}
	address->check_changed = 0;
	return address->health != before;
}

/* Lowest smoothed RTT first; no RTT last; ties by address text. */
static int
compare_rtt(const void *left, const void *right)
{
	const struct address *a = *(struct address *const *)left;
	const struct address *b = *(struct address *const *)right;

	if (isnan(a->srtt) != isnan(b->srtt))
		return isnan(a->srtt) ? 1 : -1;
	if (!isnan(a->srtt) && a->srtt != b->srtt)
		return a->srtt < b->srtt ? -1 : 1;
	return strcmp(a->text, b->text);
}

static void *
reallocate(void *memory, int count, size_t size)
{
	void *grown = realloc(memory, size * (size_t)count);

	if (!grown) {
		log_error("out of memory");
		abort();
	}
	return grown;
}

/* Room for count addresses, and as many groups (one address each at most). */
static void
answer_reserve(struct answer_set *set, int count)
{
	if (count < 1)
		count = 1;
	if (count <= set->capacity)
		return;
	set->ips = reallocate(set->ips, count, sizeof(struct ip_address));
	set->groups = reallocate(set->groups, count, sizeof(struct answer_group));
	set->capacity = count;
}

void
select_free_answers(struct answer_set *set)
{
	free(set->ips);
	free(set->groups);
	set->ips = NULL;
	set->groups = NULL;
	set->capacity = 0;
}

/* Collects the name's addresses of one family; returns how many. */
static int
gather(const struct name *name, int family, struct address **out, int size)
{
	int count = 0;

	for (int i = 0; i < name->candidate_count; i++) {
		const struct candidate *candidate = &name->candidates[i];

		for (int j = 0; j < candidate->address_count; j++) {
			struct address *address = candidate->addresses[j];

			if (address->ip.family == family && count < size)
				out[count++] = address;
		}
	}
	return count;
}

static int
total_addresses(const struct name *name)
{
	int total = 0;

	for (int i = 0; i < name->candidate_count; i++)
		total += name->candidates[i].address_count;
	return total;
}

/*
 * How many of the ranked available addresses are answered: one for
 * best_rtt, all for `all`, and for group_rtt_rr those within the
 * threshold of the best (the query then rotates through them).
 */
static int
answered_count(const struct config_name *config, struct address **ranked,
	       int available)
{
	int count = 0;

	if (available == 0)
		return 0;
	switch (config->selection_method) {
	case SELECT_BEST_RTT:
		return 1;
	case SELECT_ALL:
		return available;
	case SELECT_GROUP_RTT_RR:
		while (count < available &&
		       (count == 0 || isnan(ranked[0]->srtt) ||
			ranked[count]->srtt - ranked[0]->srtt <=
			config->group_rtt_threshold))
			count++;
		return count;
	}
	return 1;
}

static int
same_ip(const struct ip_address *a, const struct ip_address *b)
{
	return a->family == b->family &&
	    memcmp(a->bytes, b->bytes, a->family == AF_INET ? 4 : 16) == 0;
}

struct ranked_ip {
	const struct ip_address *ip;
	int rank;
};

/* By IP, and among equal IPs by rank, so the best entry comes first. */
static int
compare_ranked_ip(const void *a, const void *b)
{
	const struct ranked_ip *x = a, *y = b;
	int order;

	if (x->ip->family != y->ip->family)
		return x->ip->family < y->ip->family ? -1 : 1;
	order = memcmp(x->ip->bytes, y->ip->bytes,
		       x->ip->family == AF_INET ? 4 : 16);
	if (order != 0)
		return order;
	return (x->rank > y->rank) - (x->rank < y->rank);
}

/*
 * Two candidates may share an address (two check URLs on one server).
 * It is answered once (RFC 2181 section 5: no duplicate records in an
 * RRset), at the rank of its best entry, and weighs once in the
 * round-robin.  Keeps the first of each IP; returns how many remain.
 * Sorting finds the duplicates, so a name of thousands of addresses
 * costs n log n per update, not n squared.
 */
static int
drop_duplicates(struct address **ranked, int count)
{
	struct ranked_ip *sorted;
	char *duplicate;
	int kept = 0;

	if (count < 2)
		return count;
	sorted = malloc(sizeof(*sorted) * (size_t)count);
	duplicate = calloc((size_t)count, 1);
	if (!sorted || !duplicate) {
		log_error("out of memory");
		abort();
	}
	for (int i = 0; i < count; i++) {
		sorted[i].ip = &ranked[i]->ip;
		sorted[i].rank = i;
	}
	qsort(sorted, (size_t)count, sizeof(*sorted), compare_ranked_ip);
	for (int i = 1; i < count; i++)
		if (same_ip(sorted[i].ip, sorted[i - 1].ip))
			duplicate[sorted[i].rank] = 1;
	for (int i = 0; i < count; i++)
		if (!duplicate[i])
			ranked[kept++] = ranked[i];
	free(duplicate);
	free(sorted);
	return kept;
}

/*
 * Whether every candidate's addresses of family are known: fixed in the
 * configuration, or a lookup of that family has succeeded.  A host not
 * yet resolved, or that never resolved (NXDOMAIN, REFUSED, no answer),
 * may have addresses nobody has checked: that is not "no address".
 */
static int
family_known(const struct name *name, int family)
{
	for (int i = 0; i < name->candidate_count; i++)
		if (!name->candidates[i].known[family_index(family)])
			return 0;
	return 1;
}

/* The best tier any of the addresses is in. */
static enum address_tier
best_tier(struct address **all, int count)
{
	enum address_tier best = TIER_ADMIN_DOWN;

	for (int i = 0; i < count; i++) {
		enum address_tier tier = address_tier(all[i]);

		if (tier < best)
			best = tier;
	}
	return best;
}

/* Leaves out the addresses the operator has set down; returns how many remain. */
static int
drop_admin_down(struct address **all, int count)
{
	int kept = 0;

	for (int i = 0; i < count; i++)
		if (address_tier(all[i]) != TIER_ADMIN_DOWN)
			all[kept++] = all[i];
	return kept;
}

/* The whole of the answers, as a group bound. */
#define ANSWERS_WHOLE (UINT64_C(1) << 32)

/* The set answers from its first count ips, as one group. */
static void
one_group(struct answer_set *set)
{
	set->groups[0] = (struct answer_group){ 0, set->count, ANSWERS_WHOLE };
	set->group_count = 1;
}

/* No address available: the name's failure_mode decides. */
static void
apply_failure_mode(struct name *name, struct answer_set *set,
		   struct address **all, int count)
{
	int known;

	set->failure_mode = 1;
	switch (name->config->failure_mode) {
	case FAILURE_NONE:
		set->kind = ANSWER_FORWARD;
		return;
	case FAILURE_SERVFAIL:
		set->kind = ANSWER_SERVFAIL;
		return;
	case FAILURE_ALL:
		/*
		 * fail open: every known address but those set down (the
		 * operator's word outranks the fail-open), or the upstream's
		 * if none
		 */
		known = count;
		count = drop_duplicates(all, drop_admin_down(all, count));
		/* Every known address set down: SERVFAIL, as forwarding
		 * would bring back the upstream's records of them. */
		set->kind = count > 0 ? ANSWER_ADDRESSES :
		    known > 0 ? ANSWER_SERVFAIL : ANSWER_FORWARD;
		for (int i = 0; i < count; i++) {
			set->ips[i] = all[i]->ip;
			all[i]->share = 1;
		}
		set->count = count;
		one_group(set);
		return;
	}
}

/*
 * Without spill: the best-ranked addresses of the answering tier, as
 * one group.  group_rtt_rr gives each answer one of them in turn; best_rtt
 * and all give every answer all of them.
 */
static void
answer_ranked(const struct config_name *config, struct answer_set *set,
	      struct address **ranked, int available)
{
	int answered = answered_count(config, ranked, available);

	set->rotate = config->selection_method == SELECT_GROUP_RTT_RR;
	for (int i = 0; i < answered; i++) {
		set->ips[i] = ranked[i]->ip;
		ranked[i]->share = set->rotate ? 1.0 / answered : 1;
	}
	set->count = answered;
	set->kind = ANSWER_ADDRESSES;
	one_group(set);
}

/* ------------------------------------------------------------ spill */

/* One latency group while its share is worked out. */
struct spill_group {
	int start, end;		/* in the RTT-ordered addresses */
	int available;		/* of them, in the answering tier */
	double share;		/* of the family's answers */
};

/* By tier, then as compare_rtt: the best entry of a shared IP first. */
static int
compare_tier_rtt(const void *left, const void *right)
{
	enum address_tier a = address_tier(*(struct address *const *)left);
	enum address_tier b = address_tier(*(struct address *const *)right);

	if (a != b)
		return a < b ? -1 : 1;
	return compare_rtt(left, right);
}

/*
 * Walking the addresses by smoothed RTT, each latency group is the first
 * address not yet grouped and those within group_rtt_threshold of it.
 * The RTT of a down address is its last known one (failures leave it
 * alone), so a group keeps its members while they are down.  Addresses
 * never measured, whose latency nobody knows, form the last group.
 * Returns how many groups.
 */
static int
form_groups(struct address **ranked, int count, double threshold,
	    struct spill_group *groups)
{
	int group_count = 0;

	for (int start = 0; start < count;) {
		int end = start + 1;

		if (isnan(ranked[start]->srtt))
			end = count;
		while (end < count && !isnan(ranked[end]->srtt) &&
		       ranked[end]->srtt - ranked[start]->srtt <= threshold)
			end++;
		groups[group_count++] = (struct spill_group){ start, end, 0, 0 };
		start = end;
	}
	return group_count;
}

/*
 * The spill rule.  A group of which a fraction h is available keeps
 * min(1, h * overprovisioning) of the answers that reach it and passes
 * the rest to the next group.  The last group with an available address
 * keeps all that reaches it, so the answers always add up to the whole.
 */
static void
spill_shares(struct spill_group *groups, int group_count,
	     double overprovisioning)
{
	double remaining = 1;
	int last = -1;

	for (int g = 0; g < group_count; g++)
		if (groups[g].available > 0)
			last = g;
	for (int g = 0; g < group_count; g++) {
		double size = groups[g].end - groups[g].start;
		double keep = fmin(1, groups[g].available / size *
				   overprovisioning);

		if (groups[g].available == 0)
			keep = 0;
		else if (g == last)
			keep = 1;
		groups[g].share = remaining * keep;
		remaining -= groups[g].share;
	}
}

/* A cumulative share as a group bound, out of 2^32. */
static uint64_t
share_bound(double cumulative)
{
	double bound = nearbyint(cumulative * (double)ANSWERS_WHOLE);

	return bound >= (double)ANSWERS_WHOLE ? ANSWERS_WHOLE : (uint64_t)bound;
}

/*
 * Fills the set with the available addresses of each group that takes
 * answers, nearest group first, and each group's bound; notes every
 * address's group and share.
 */
static void
answer_groups(struct answer_set *set, struct address **ranked,
	      const struct spill_group *groups, int group_count,
	      enum address_tier tier)
{
	double cumulative = 0;

	set->count = 0;
	set->group_count = 0;
	for (int g = 0; g < group_count; g++) {
		int first = set->count, taken;

		for (int i = groups[g].start; i < groups[g].end; i++) {
			ranked[i]->latency_group = g + 1;
			ranked[i]->share = 0;
		}
		if (groups[g].share <= 0)
			continue;
		for (int i = groups[g].start; i < groups[g].end; i++)
			if (address_tier(ranked[i]) == tier)
				set->ips[set->count++] = ranked[i]->ip;
		taken = set->count - first;
		for (int i = groups[g].start; i < groups[g].end; i++)
			if (address_tier(ranked[i]) == tier)
				ranked[i]->share = set->rotate ?
				    groups[g].share / taken : groups[g].share;
		cumulative += groups[g].share;
		set->groups[set->group_count++] = (struct answer_group){
			first, taken, share_bound(cumulative) };
	}
	set->groups[set->group_count - 1].below = ANSWERS_WHOLE;
}

/*
 * With spill: latency groups over every address of the family, down and
 * set down included (a group that lost servers, whatever the reason, has
 * lost capacity), each IP once at its best tier.  The addresses of the
 * answering tier are the available ones: with healthy addresses about,
 * a draining one counts as missing from its group.
 */
static void
answer_spill(const struct config_name *config, struct answer_set *set,
	     struct address **ranked, int count, enum address_tier tier)
{
	struct spill_group *groups;
	int group_count;

	qsort(ranked, (size_t)count, sizeof(ranked[0]), compare_tier_rtt);
	count = drop_duplicates(ranked, count);
	qsort(ranked, (size_t)count, sizeof(ranked[0]), compare_rtt);
	groups = reallocate(NULL, count, sizeof(*groups));
	group_count = form_groups(ranked, count, config->group_rtt_threshold,
				  groups);
	for (int g = 0; g < group_count; g++)
		for (int i = groups[g].start; i < groups[g].end; i++)
			groups[g].available += address_tier(ranked[i]) == tier;
	spill_shares(groups, group_count, config->overprovisioning);
	set->rotate = config->selection_method == SELECT_GROUP_RTT_RR;
	set->kind = ANSWER_ADDRESSES;
	answer_groups(set, ranked, groups, group_count, tier);
	free(groups);
}

static int
spills(const struct config_name *config)
{
	return config->overprovisioning > 0 &&
	    config->selection_method != SELECT_BEST_RTT;
}

/* ------------------------------------------------------- placement */

static void
copy_addresses(struct address **to, struct address **from, int count)
{
	for (int i = 0; i < count; i++)
		to[i] = from[i];
}

/* By IP: the entries of a shared address side by side. */
static int
compare_ip(const void *left, const void *right)
{
	const struct address *a = *(struct address *const *)left;
	const struct address *b = *(struct address *const *)right;
	struct ranked_ip x = { &a->ip, 0 }, y = { &b->ip, 0 };

	return compare_ranked_ip(&x, &y);
}

/*
 * Each entry of a shared IP shows what that IP was given: the placed
 * entry's group and share (the others were dropped as duplicates).
 * Entries never placed get share 0.
 */
static void
place_duplicates(struct address **all, int count, struct address **scratch)
{
	copy_addresses(scratch, all, count);
	qsort(scratch, (size_t)count, sizeof(scratch[0]), compare_ip);
	for (int start = 0, end; start < count; start = end) {
		struct address *placed = scratch[start];

		for (end = start + 1; end < count &&
		     same_ip(&scratch[end]->ip, &scratch[start]->ip); end++)
			if (scratch[end]->latency_group > placed->latency_group ||
			    scratch[end]->share > placed->share)
				placed = scratch[end];
		for (int i = start; i < end; i++) {
			scratch[i]->latency_group = placed->latency_group;
			scratch[i]->share = fmax(placed->share, 0);
		}
	}
}

/* How strongly each admin_state speaks: down, then drain, then up. */
static int
admin_weight(enum admin_state state)
{
	switch (state) {
	case ADMIN_DOWN: return 3;
	case ADMIN_DRAIN: return 2;
	case ADMIN_UP: return 1;
	case ADMIN_AUTO: break;
	}
	return 0;
}

/*
 * Whether the name's candidates say different things: only then can a
 * shared IP be given two words.
 */
static int
admin_states_differ(const struct name *name)
{
	for (int i = 1; i < name->candidate_count; i++)
		if (name->candidates[i].config->admin_state !=
		    name->candidates[0].config->admin_state)
			return 1;
	return 0;
}

/*
 * Two candidates may list one IP (two check URLs on one server); the
 * operator's word on it holds wherever it appears: down anywhere is down,
 * drain anywhere is drain unless another says down, then up.  Each entry
 * gets the strongest word of its IP's entries, sorted side by side in
 * scratch; the checks stay each entry's own.
 */
static void
settle_admin_states(const struct name *name, struct address **all, int count,
		    struct address **scratch)
{
	for (int i = 0; i < count; i++)
		all[i]->admin = all[i]->candidate->config->admin_state;
	if (!admin_states_differ(name))
		return;
	copy_addresses(scratch, all, count);
	qsort(scratch, (size_t)count, sizeof(scratch[0]), compare_ip);
	for (int start = 0, end; start < count; start = end) {
		enum admin_state word = scratch[start]->admin;

		for (end = start + 1; end < count &&
		     same_ip(&scratch[end]->ip, &scratch[start]->ip); end++)
			if (admin_weight(scratch[end]->admin) > admin_weight(word))
				word = scratch[end]->admin;
		for (int i = start; i < end; i++)
			scratch[i]->admin = word;
	}
}

/* What the last selection gave an address, to see whether it moved. */
struct placement {
	int latency_group;
	double share;
};

static void
unplace(struct address **all, int count, struct placement *before)
{
	for (int i = 0; i < count; i++) {
		before[i] = (struct placement){ all[i]->latency_group,
						all[i]->share };
		all[i]->latency_group = 0;
		all[i]->share = -1;	/* not placed yet */
	}
}

/* A moved placement is written to the data file, like a check result. */
static void
note_moved(struct address **all, int count, const struct placement *before)
{
	for (int i = 0; i < count; i++)
		if (all[i]->latency_group != before[i].latency_group ||
		    all[i]->share != before[i].share)
			all[i]->store_dirty = 1;
}

void
select_update(struct name *name, int family)
{
	const struct config_name *config = name->config;
	struct answer_set *set = &name->answers[family_index(family)];
	int total = total_addresses(name);
	struct address **all = reallocate(NULL, total ? total : 1,
					  sizeof(struct address *));
	struct address **ranked = reallocate(NULL, total ? total : 1,
					     sizeof(struct address *));
	struct placement *before = reallocate(NULL, total ? total : 1,
					      sizeof(struct placement));
	int count, available = 0;
	enum address_tier tier;

	count = gather(name, family, all, total);
	settle_admin_states(name, all, count, ranked);
	unplace(all, count, before);
	set->rotate = 0;
	set->count = 0;
	set->group_count = 0;
	set->failure_mode = 0;
	answer_reserve(set, count);
	tier = best_tier(all, count);
	if (tier < TIER_UNAVAILABLE && spills(config)) {
		copy_addresses(ranked, all, count);
		answer_spill(config, set, ranked, count, tier);
	} else if (tier < TIER_UNAVAILABLE) {
		for (int i = 0; i < count; i++)
			if (address_tier(all[i]) == tier)
				ranked[available++] = all[i];
		qsort(ranked, (size_t)available, sizeof(ranked[0]), compare_rtt);
		available = drop_duplicates(ranked, available);
		answer_ranked(config, set, ranked, available);
	} else if (count == 0 && family_known(name, family)) {
		set->kind = ANSWER_NODATA;
	} else {
		copy_addresses(ranked, all, count);
		apply_failure_mode(name, set, ranked, count);
	}
	place_duplicates(all, count, ranked);
	note_moved(all, count, before);
	free(before);
	free(ranked);
	free(all);
}

/*
 * A Weyl sequence: query n's point is n times 2^32 divided by the golden
 * ratio, modulo 2^32.  Any run of queries spreads its points evenly over
 * [0, 2^32), so each group gets its share within a few answers of any
 * count of queries, with no state but the set's query counter.
 */
static const uint32_t golden_step = UINT32_C(2654435769);

int
select_answer(struct answer_set *set, int *first)
{
	const struct answer_group *group = set->groups;
	unsigned turn = set->next;

	*first = 0;
	if (set->kind != ANSWER_ADDRESSES || set->group_count == 0)
		return 0;
	if (set->group_count > 1) {
		uint32_t point = (uint32_t)turn * golden_step;

		while (point >= group->below)
			group++;
	}
	if (set->rotate || set->group_count > 1)
		set->next++;
	*first = group->first;
	if (!set->rotate)
		return group->count;
	*first += (int)(turn % (unsigned)group->count);
	return 1;
}

/*
 * A name with no address to give in either family fails as a whole: when
 * one family's failure_mode answer is SERVFAIL and the other family has
 * no address at all (NODATA), the other is SERVFAIL too.  A stub resolver
 * asks A and AAAA together, and glibc's getaddrinfo makes NODATA beside
 * SERVFAIL into "no address" (EAI_NODATA), which programs take as final;
 * SERVFAIL for both is EAI_AGAIN, try again.
 */
static void
fail_whole_name(struct name *name)
{
	for (int i = 0; i < 2; i++) {
		struct answer_set *set = &name->answers[i];
		const struct answer_set *other = &name->answers[1 - i];

		if (set->kind == ANSWER_NODATA &&
		    other->kind == ANSWER_SERVFAIL && other->failure_mode) {
			set->kind = ANSWER_SERVFAIL;
			set->failure_mode = 1;
		}
	}
}

void
select_update_all(struct name *name)
{
	select_update(name, AF_INET);
	select_update(name, AF_INET6);
	fail_whole_name(name);
	name->stale = 0;
}
