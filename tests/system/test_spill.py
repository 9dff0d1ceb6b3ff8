"""Gradual spill to the next latency group (issue 11 item 4, har.conf.5
SELECTION METHODS): real hard, real HTTP servers on 127.0.0.x, dnspython.

Four "near" servers answer at once and four "far" ones after a delay; a
group_rtt_threshold between the two makes them two latency groups.  With 3
of the 4 near servers dead, overprovisioning 1.4 keeps min(1, 1/4 x 1.4) =
35% of the answers on the near survivor and sends 65% to the far group;
overprovisioning 0 keeps them all on the survivor.

The far delay (200 ms) and threshold (100 ms) are much wider than the
issue's 20-30 ms so that a near server's smoothed RTT on a loaded 2-core
machine (a few ms, at worst tens) never leaves the near group, nor reaches
the far one: the rule does not depend on the width.  Shares are counted over QUERIES queries; hard picks the group by a
deterministic sequence, so the count is off by a few queries at most, and
the tolerance (TOLERANCE, in points of percentage) leaves room only for a
check result that moves the shares while the queries run."""

import collections

import pytest

import harness
from harness import addresses
from statehelpers import name_block, sql, wait_log, wait_sql
from test_reload import reload

NEAR = ["127.0.0.%d" % i for i in range(11, 15)]
FAR = ["127.0.0.%d" % i for i in range(21, 25)]
FAR_DELAY = 0.2
THRESHOLD = 0.1
QUERIES = 2000
TOLERANCE = 5


@pytest.fixture
def up(start_upstream):
    return start_upstream("--host-record=other.test,192.0.2.1")


def start_servers(start_http):
    near = [start_http(a) for a in NEAR]
    far = [start_http(a, delay=FAR_DELAY) for a in FAR]
    return near, far


def spill_config(near, far, overprovisioning):
    cands = [("n%d" % i, s.url()) for i, s in enumerate(near, 1)]
    cands += [("f%d" % i, s.url()) for i, s in enumerate(far, 1)]
    # fall = 3: a check that a loaded machine slows past its timeout (the
    # servers are Python processes, the far ones already 200 ms late) must
    # not move the shares while the queries are counted.
    return name_block("spill.test", cands, check_frequency=0.3,
                      check_timeout=1, fall=3, selection_method="group_rtt_rr",
                      group_rtt_threshold=THRESHOLD,
                      overprovisioning=overprovisioning,
                      failure_mode="servfail")


def answer_counts(h, count=QUERIES):
    """How many of count A queries were answered with each address."""
    seen = collections.Counter()
    for _ in range(count):
        got = addresses(h.query("spill.test"))
        assert len(got) == 1, "group_rtt_rr answers one address: %s" % got
        seen[got[0]] += 1
    return seen


def percent(seen, ips):
    return 100.0 * sum(seen[a] for a in ips) / sum(seen.values())


def ranking(db):
    return {r["ip_address"]: r for r in
            sql(db, "SELECT * FROM ranking WHERE name = 'spill.test'")}


def wait_every_address_checked(db):
    wait_sql(db, "SELECT count(*) AS n FROM candidates"
             " WHERE name = 'spill.test' AND healthy = 1",
             lambda r: r[0]["n"] == 8, what="all 8 addresses up")


def kill_near(near, db):
    for s in near[1:]:
        s.stop()
    wait_sql(db, "SELECT count(*) AS n FROM candidates"
             " WHERE name = 'spill.test' AND healthy = 0",
             lambda r: r[0]["n"] == 3, what="3 near addresses down")


def test_spill_shares_and_ranking(workdir, start_hard, start_http, up):
    """overprovisioning 1.4: all near up, every answer is near; 3 of 4 near
    dead, the survivor gets 35% and the far group 65% (each far server
    about 16%), and the ranking view shows each address's group and
    share.  The near servers back: every answer near again."""
    near, far = start_servers(start_http)
    db = workdir + "/har.db"
    h = start_hard(spill_config(near, far, 1.4), upstream=up, data_file=db)
    wait_every_address_checked(db)
    seen = answer_counts(h, QUERIES // 2)
    assert percent(seen, NEAR) == 100, seen
    assert all(seen[a] > 0 for a in NEAR), "near group not rotated: %s" % seen

    kill_near(near, db)
    rows = wait_sql(db, "SELECT ip_address, share FROM ranking"
                    " WHERE name = 'spill.test' AND answered",
                    lambda r: len(r) == 5,
                    what="the survivor and the far group answered")
    seen = answer_counts(h)
    near_share, far_share = percent(seen, NEAR[:1]), percent(seen, FAR)
    print("spill 1.4, %d queries: near survivor %.1f%%, far %.1f%% %s" % (
        QUERIES, near_share, far_share, dict(seen)))
    assert abs(near_share - 35) <= TOLERANCE, seen
    assert abs(far_share - 65) <= TOLERANCE, seen
    for a in FAR:
        assert abs(percent(seen, [a]) - 65 / 4) <= TOLERANCE, seen

    view = ranking(db)
    assert view[NEAR[0]]["latency_group"] == 1, view[NEAR[0]]
    assert view[NEAR[0]]["share"] == pytest.approx(0.35), view[NEAR[0]]
    for a in NEAR[1:]:
        assert (view[a]["latency_group"], view[a]["share"], view[a]["answered"],
                view[a]["reason"]) == (1, 0, 0, "down"), view[a]
    for a in FAR:
        assert view[a]["latency_group"] == 2, view[a]
        assert view[a]["share"] == pytest.approx(0.65 / 4), view[a]
        assert view[a]["answered"] == 1, view[a]
    assert sql(db, "SELECT overprovisioning FROM names") == [
        {"overprovisioning": 1.4}]
    assert {r["ip_address"] for r in rows} == {NEAR[0], *FAR}

    for s in near[1:]:
        s.start()
    wait_every_address_checked(db)
    wait_sql(db, "SELECT count(*) AS n FROM ranking WHERE name = 'spill.test'"
             " AND answered", lambda r: r[0]["n"] == 4)
    seen = answer_counts(h, 200)
    assert percent(seen, NEAR) == 100, seen
    h.assert_alive()


def test_spill_off_keeps_every_answer_near(workdir, start_hard, start_http, up):
    """overprovisioning 0 (the default, and the original rule): with 3 of 4
    near dead the survivor gets every answer; the ranking shows no group
    and a share of 1 for it.  A reload that turns spill on moves 65% of the
    answers to the far group at once, without a check."""
    near, far = start_servers(start_http)
    db = workdir + "/har.db"
    h = start_hard(spill_config(near, far, 0), upstream=up, data_file=db)
    wait_every_address_checked(db)
    kill_near(near, db)
    seen = answer_counts(h, QUERIES // 2)
    assert seen == {NEAR[0]: QUERIES // 2}, seen
    view = wait_sql(db, "SELECT * FROM ranking WHERE name = 'spill.test'"
                    " AND share > 0", lambda r: len(r) == 1)
    assert (view[0]["ip_address"], view[0]["share"], view[0]["latency_group"],
            view[0]["answered"]) == (NEAR[0], 1, None, 1), view

    reload(h, spill_config(near, far, 1.4), up, data_file=db)
    wait_log(h, r"reloaded .*: 1 names \(0 added, 0 removed, 1 changed\)")
    seen = answer_counts(h, QUERIES // 2)
    assert abs(percent(seen, NEAR[:1]) - 35) <= TOLERANCE, seen
    h.assert_alive()


def test_spill_check_rejects_best_rtt(workdir):
    """hard -t names the line of an overprovisioning that best_rtt cannot
    use, and one between 0 and 1."""
    for option, reason in [
            ("overprovisioning = 1.4",
             "overprovisioning needs selection_method group_rtt_rr or all"),
            ("selection_method = all\n    overprovisioning = 0.5",
             "overprovisioning must be 0 (off) or between 1 and 100")]:
        conf = workdir + "/bad.conf"
        with open(conf, "w") as f:
            f.write("nameservers = { 127.0.0.1 }\n"
                    "name www.test {\n"
                    "    %s\n"
                    "    candidate a { address = { 192.0.2.1 } }\n"
                    "}\n" % option)
        r = harness.run_hard("-t", "-c", conf)
        assert r.returncode != 0, r
        assert reason in r.stderr, r.stderr
