//! The simulated fleet's rules, one run at a time.

use super::*;
use crate::scenario::all;

#[test]
fn a_fixed_fleet_finishes_the_work_exactly_once() {
    let mut s = all().remove(4); // g4dn, 1 M items
    s.bursts_per_hour = 0.0;
    s.droughts_per_hour = 0.0;
    s.rate_factor = 0.0;
    let mut w = World::new(&s, 1, 1e6, false);
    while !w.finished() && w.t < 1e5 {
        w.reconcile(0, 4);
        w.advance();
    }
    let o = w.outcome();
    let t = o.finished.expect("finished");
    // 1 M items at ~60/s × 4 workers ≈ 4170 s plus arrival and boot.
    assert!((4_000.0..5_500.0).contains(&t), "{t}");
    assert_eq!(w.items_left(), 0.0);
    assert_eq!(o.redone, 0.0);
    assert_eq!(o.cost.0, 0.0);
    assert!((o.cost.1 - o.hours.1 * 0.526).abs() < 1e-9);
}

#[test]
fn hard_kills_redo_work_and_notices_do_not() {
    for (notice_share, redone) in [(1.0, false), (0.0, true)] {
        let mut s = all().remove(4);
        s.bursts_per_hour = 0.0;
        s.droughts_per_hour = 0.0;
        s.rate_factor = 300.0; // about one per instance-hour
        s.notice_share = notice_share;
        let mut w = World::new(&s, 3, 1e6, false);
        while !w.finished() && w.t < 1e5 {
            w.reconcile(4, 0);
            w.advance();
        }
        let o = w.outcome();
        assert!(o.finished.is_some());
        let (notices, kills) = o.interruptions;
        assert!(notices + kills > 3, "{:?}", o.interruptions);
        assert_eq!(o.redone > 0.0, redone, "{o:?}");
        assert_eq!(w.items_left(), 0.0);
    }
}

#[test]
fn no_spot_arrives_in_a_drought() {
    let mut s = all().remove(4);
    s.bursts_per_hour = 0.0;
    s.droughts_per_hour = 0.0;
    let mut w = World::new(&s, 1, 1e6, false);
    w.market.droughts = vec![(0.0, 3_600.0)];
    while w.t < 3_500.0 {
        w.reconcile(4, 0);
        w.advance();
    }
    assert_eq!(w.running(Capacity::Spot), 0);
    while w.t < 4_200.0 {
        w.reconcile(4, 0);
        w.advance();
    }
    assert_eq!(w.running(Capacity::Spot), 4);
}

/// A quiet market with one-second steps, 2000 items in shards of 100 that take 10 s, and
/// workers that arrive at once.
fn seconds() -> Scenario {
    let mut s = all().remove(4);
    s.bursts_per_hour = 0.0;
    s.droughts_per_hour = 0.0;
    s.rate_factor = 0.0;
    s.items_per_second = 10.0;
    s.speed_spread = 0.0;
    s.shard_overhead_s = 0.0;
    s.items = 2_000;
    s.fixed_shards = Some((100, 30.0));
    s.step_s = 1.0;
    s.timing = crate::scenario::Timing {
        spot_arrival: (0.0, 0.0),
        on_demand_arrival: (0.0, 0.0),
        boot: (0.0, 0.0),
        notice_s: 10.0,
    };
    s
}

#[test]
fn heartbeat_rates_count_only_finished_shards() {
    let mut s = seconds();
    s.reported_rate_window_s = Some(2.0);
    let mut w = World::new(&s, 1, 1e5, false);
    let mut rates = Vec::new();
    while w.t < 60.0 {
        w.reconcile(0, 1);
        rates.extend(w.observe(None).workers.iter().map(|r| r.items_per_second));
        w.advance();
    }
    // A heartbeat after a shard's end reports its 100 items over 2 s; the others nothing.
    let zero = rates.iter().filter(|r| **r == 0.0).count();
    let spikes = rates.iter().filter(|r| (**r - 50.0).abs() < 1e-9).count();
    assert_eq!(zero + spikes, rates.len(), "{rates:?}");
    assert!(zero > 3 * spikes && spikes >= 4, "{rates:?}");
    // Without the window: the worker's speed, within the noise.
    s.reported_rate_window_s = None;
    let mut w = World::new(&s, 1, 1e5, false);
    while w.running(Capacity::OnDemand) == 0 {
        w.reconcile(0, 1);
        w.advance();
    }
    let r = w.observe(None).workers[0].items_per_second;
    assert!((r - 10.0).abs() < 3.0, "{r}");
}

#[test]
fn a_hard_kill_leaves_the_shards_it_held_to_expire() {
    let mut s = seconds();
    s.held_unstarted = 2;
    s.notice_share = 0.0;
    let mut w = World::new(&s, 1, 1e5, false);
    while w.instances.first().is_none_or(|i| i.lease.is_none()) {
        w.reconcile(1, 0);
        w.advance();
    }
    let visible = w.visible.len();
    w.interrupt(0);
    // The shard in work and the two held wait out their lease; the rest stay visible.
    assert_eq!(w.expiring.len(), 3);
    assert_eq!(w.visible.len(), visible - 2);
    assert!(w.expiring.iter().all(|e| (e.0 - w.t - 30.0).abs() < 1e-9));
}

#[test]
fn shards_whose_leases_expire_max_attempts_times_are_dead_lettered() {
    let mut s = seconds();
    s.notice_share = 0.0;
    s.held_unstarted = 1;
    s.max_attempts = 1;
    let mut w = World::new(&s, 1, 1e5, false);
    while w.instances.first().is_none_or(|i| i.lease.is_none()) {
        w.reconcile(1, 0);
        w.advance();
    }
    w.interrupt(0);
    while !w.finished() && w.t < 1e4 {
        w.reconcile(0, 1);
        w.advance();
    }
    // The shard in work and the one held: one failed attempt each, dead at once; the job failed.
    let o = w.outcome();
    assert_eq!(o.dead_lettered, 2);
    assert_eq!(o.finished, None);
    assert!(w.finished(), "every other shard is done");
}
