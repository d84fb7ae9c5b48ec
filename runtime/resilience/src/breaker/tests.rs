use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn counts(requests: u64, tf: u64, cf: u64) -> Counts {
    Counts {
        requests,
        total_failures: tf,
        consecutive_failures: cf,
        total_successes: requests - tf,
        consecutive_successes: 0,
    }
}

fn parse_err(src: &str) -> (String, usize) {
    match TripExpr::parse(src).unwrap_err() {
        ConfigError::TripExpr {
            problem, position, ..
        } => (problem, position),
        other => panic!("{other:?}"),
    }
}

fn dapr(expr: &str, half_open_max: u32) -> Arc<CircuitBreaker> {
    Arc::new(
        CircuitBreaker::new(BreakerConfig {
            trip: Trip::Expr(TripExpr::parse(expr).unwrap()),
            open_for: Duration::from_secs(5),
            half_open_max,
            ..BreakerConfig::default()
        })
        .unwrap(),
    )
}

fn sentinel(trip: Trip) -> Arc<CircuitBreaker> {
    Arc::new(
        CircuitBreaker::new(BreakerConfig {
            trip,
            open_for: Duration::from_secs(2),
            half_open_max: 1,
            interval: None,
            stat_window: Duration::from_secs(1),
        })
        .unwrap(),
    )
}

/// Passes one call at `now` and records its outcome.
fn call(b: &Arc<CircuitBreaker>, now: Instant, ok: bool) -> BreakerState {
    b.try_pass(now).expect("let through").record(now, ok, ms(1))
}

fn call_rt(b: &Arc<CircuitBreaker>, now: Instant, rt: Duration) -> BreakerState {
    b.try_pass(now).expect("let through").record(now, true, rt)
}

// === Trip expressions ===

#[test]
fn expressions_evaluate_with_cel_precedence() {
    let e = TripExpr::parse("consecutiveFailures > 5").unwrap();
    assert!(!e.eval(&counts(10, 5, 5)));
    assert!(e.eval(&counts(10, 6, 6)));
    assert_eq!(e.to_string(), "consecutiveFailures > 5");

    let e = TripExpr::parse("totalFailures >= 3 && requests > 10").unwrap();
    assert!(!e.eval(&counts(10, 3, 0)));
    assert!(!e.eval(&counts(11, 2, 0)));
    assert!(e.eval(&counts(11, 3, 0)));

    // `&&` binds tighter than `||`.
    let e = TripExpr::parse("requests == 1 || requests > 5 && totalFailures > 0").unwrap();
    assert!(e.eval(&counts(1, 0, 0)));
    assert!(!e.eval(&counts(6, 0, 0)));
    assert!(e.eval(&counts(6, 1, 0)));
    let e = TripExpr::parse("(requests == 1 || requests > 5) && totalFailures > 0").unwrap();
    assert!(!e.eval(&counts(1, 0, 0)));

    let e = TripExpr::parse("!(consecutiveFailures < 3) && totalSuccesses != 0").unwrap();
    assert!(!e.eval(&counts(3, 3, 3)));
    assert!(!e.eval(&counts(6, 2, 2)));
    assert!(e.eval(&counts(6, 3, 3)));
    let e = TripExpr::parse("consecutiveSuccesses <= 0 && (totalFailures > 2) == true || false")
        .unwrap();
    assert!(e.eval(&counts(3, 3, 3)));
    assert!(TripExpr::parse("  5 < consecutiveFailures\t").is_ok());
}

#[test]
fn parse_errors_name_the_token_and_its_position() {
    let (p, at) = parse_err("failures > 5");
    assert!(p.starts_with("unknown identifier `failures`"), "{p}");
    assert!(p.contains("consecutiveFailures"), "{p}");
    assert_eq!(at, 0);

    let (p, at) = parse_err("requests + 1 > 5");
    assert_eq!((p.as_str(), at), ("unsupported token `+`", 9));

    let (p, at) = parse_err("requests > 5 & totalFailures > 1");
    assert_eq!((p.as_str(), at), ("unsupported token `&`", 13));

    let (p, at) = parse_err("consecutiveFailures >");
    assert_eq!(
        (p.as_str(), at),
        (
            "expected a number, a counter or `(`, found end of expression",
            21
        )
    );

    let (p, at) = parse_err("(requests > 5");
    assert_eq!(at, 13);
    assert!(
        p.starts_with("expected `)` to close the `(` at position 0"),
        "{p}"
    );

    let (p, at) = parse_err("requests > 5)");
    assert_eq!((p.as_str(), at), ("unexpected `)`", 12));

    let (p, at) = parse_err("requests");
    assert!(p.starts_with("the expression must be a condition"), "{p}");
    assert_eq!(at, 0);

    let (p, at) = parse_err("requests > 5 && totalFailures");
    assert_eq!(
        (p.as_str(), at),
        (
            "`&&` needs a condition, found the number `totalFailures`",
            16
        )
    );

    let (p, at) = parse_err("1 < requests < 3");
    assert!(p.starts_with("`<` compares two numbers"), "{p}");
    assert_eq!(at, 13);

    let (p, at) = parse_err("!requests");
    assert_eq!(
        (p.as_str(), at),
        ("`!` needs a condition, found the number `requests`", 1)
    );

    let (p, at) = parse_err("requests > 99999999999999999999");
    assert_eq!(
        (p.as_str(), at),
        ("integer `99999999999999999999` is too large", 11)
    );

    let (p, at) = parse_err("requests > 5u");
    assert_eq!((p.as_str(), at), ("invalid integer `5u`", 11));

    let (p, at) = parse_err("");
    assert_eq!(at, 0);
    assert!(p.contains("end of expression"), "{p}");

    let (_, at) = parse_err("requests > 5 && counts.failures > 1");
    assert_eq!(at, 22);

    let e = TripExpr::parse("requests >> 5").unwrap_err();
    assert_eq!(
        e.to_string(),
        "trip expression `requests >> 5`: expected a number, a counter or `(`, found `>` \
         at position 10"
    );
}

#[test]
fn bad_sentinel_configs_name_the_field() {
    let bad = |trip| {
        CircuitBreaker::new(BreakerConfig {
            trip,
            ..BreakerConfig::default()
        })
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        bad(Trip::ErrorCount { count: 0 }),
        "count must be >= 1 (got 0)"
    );
    assert_eq!(
        bad(Trip::ErrorRatio {
            ratio: 1.5,
            min_requests: 5
        }),
        "ratio must be between 0 and 1 (got 1.5)"
    );
    let e = CircuitBreaker::new(BreakerConfig {
        trip: Trip::ErrorCount { count: 1 },
        stat_window: Duration::ZERO,
        ..BreakerConfig::default()
    })
    .unwrap_err();
    assert_eq!(e.to_string(), "stat_window must be > 0");
}

// === Dapr breakers ===

#[test]
fn dapr_consecutive_failures_open_probe_and_close() {
    let t0 = Instant::now();
    let b = dapr("consecutiveFailures > 5", 1);
    for i in 0..5 {
        assert_eq!(call(&b, t0 + ms(i), false), BreakerState::Closed);
    }
    // A success resets the consecutive count.
    assert_eq!(call(&b, t0 + ms(5), true), BreakerState::Closed);
    for i in 0..5 {
        assert_eq!(call(&b, t0 + ms(10 + i), false), BreakerState::Closed);
    }
    assert_eq!(call(&b, t0 + ms(20), false), BreakerState::Open);
    assert_eq!(b.state(t0 + ms(20)), BreakerState::Open);

    // Open: refused with the time left.
    let err = b.try_pass(t0 + ms(1020)).unwrap_err();
    assert_eq!(err.retry_in, Duration::from_secs(4));
    // After `open_for`: half-open, one probe.
    let t1 = t0 + ms(5020);
    assert_eq!(b.state(t1), BreakerState::HalfOpen);
    let probe = b.try_pass(t1).unwrap();
    assert!(probe.is_probe());
    assert_eq!(b.try_pass(t1).unwrap_err().retry_in, Duration::ZERO);
    assert_eq!(probe.record(t1 + ms(3), true, ms(3)), BreakerState::Closed);
    let s = b.stats(t1 + ms(3));
    assert_eq!(s.counts, Counts::default());
    assert_eq!((s.opened_total, s.rejected_total), (1, 2));

    // Closed again with fresh counts: it takes six more failures.
    for i in 0..5 {
        assert_eq!(call(&b, t1 + ms(10 + i), false), BreakerState::Closed);
    }
    assert_eq!(call(&b, t1 + ms(20), false), BreakerState::Open);

    // A failed probe opens it again for another `open_for`.
    let t2 = t1 + ms(5020);
    assert_eq!(call(&b, t2, false), BreakerState::Open);
    assert_eq!(
        b.try_pass(t2 + ms(1000)).unwrap_err().retry_in,
        Duration::from_secs(4)
    );
    assert_eq!(b.stats(t2).opened_total, 3);
    assert_eq!(b.state(t2 + Duration::from_secs(5)), BreakerState::HalfOpen);
}

#[test]
fn dapr_expression_is_evaluated_after_failures() {
    let t0 = Instant::now();
    let b = dapr("totalFailures >= 3 && requests > 10", 1);
    for i in 0..3 {
        assert_eq!(call(&b, t0 + ms(i), false), BreakerState::Closed);
    }
    // Eight successes make requests 11; as in Dapr, a success never trips.
    for i in 0..8 {
        assert_eq!(call(&b, t0 + ms(10 + i), true), BreakerState::Closed);
    }
    assert_eq!(b.stats(t0).counts.requests, 11);
    assert_eq!(call(&b, t0 + ms(30), false), BreakerState::Open);
}

#[test]
fn dapr_interval_clears_counts_while_closed() {
    let t0 = Instant::now();
    let b = Arc::new(
        CircuitBreaker::new(BreakerConfig {
            trip: Trip::Expr(TripExpr::parse("totalFailures > 2").unwrap()),
            interval: Some(Duration::from_secs(10)),
            ..BreakerConfig::default()
        })
        .unwrap(),
    );
    call(&b, t0, false);
    call(&b, t0 + Duration::from_secs(5), false);
    // A call let through before the clear reports after it: ignored.
    let late = b.try_pass(t0 + Duration::from_secs(9)).unwrap();
    // Counts cleared at t0 + 10 s.
    assert_eq!(
        call(&b, t0 + Duration::from_secs(11), false),
        BreakerState::Closed
    );
    assert_eq!(
        late.record(t0 + Duration::from_secs(11), false, ms(1)),
        BreakerState::Closed
    );
    assert_eq!(
        b.stats(t0 + Duration::from_secs(11)).counts.total_failures,
        1
    );
    call(&b, t0 + Duration::from_secs(12), false);
    assert_eq!(
        call(&b, t0 + Duration::from_secs(13), false),
        BreakerState::Open
    );
}

#[test]
fn half_open_admits_max_probes_and_closes_when_all_succeed() {
    let t0 = Instant::now();
    let b = dapr("consecutiveFailures >= 1", 3);
    assert_eq!(call(&b, t0, false), BreakerState::Open);
    let t1 = t0 + Duration::from_secs(5);
    let p1 = b.try_pass(t1).unwrap();
    let p2 = b.try_pass(t1).unwrap();
    let p3 = b.try_pass(t1).unwrap();
    assert!(b.try_pass(t1).is_err());
    // A probe dropped without an outcome frees its place.
    drop(p3);
    let p3 = b.try_pass(t1).unwrap();
    assert_eq!(p1.record(t1, true, ms(1)), BreakerState::HalfOpen);
    assert_eq!(p2.record(t1, true, ms(1)), BreakerState::HalfOpen);
    // Two succeeded and one is out: no room for a fourth.
    assert!(b.try_pass(t1).is_err());
    assert_eq!(p3.record(t1, true, ms(1)), BreakerState::Closed);
    assert!(b.try_pass(t1).is_ok());
}

#[test]
fn one_failed_probe_reopens_and_other_probes_are_ignored() {
    let t0 = Instant::now();
    let b = dapr("consecutiveFailures >= 1", 2);
    call(&b, t0, false);
    let t1 = t0 + Duration::from_secs(5);
    let p1 = b.try_pass(t1).unwrap();
    let p2 = b.try_pass(t1).unwrap();
    assert_eq!(p1.record(t1, false, ms(1)), BreakerState::Open);
    // p2 belongs to the previous half-open period.
    assert_eq!(p2.record(t1, true, ms(1)), BreakerState::Open);
    assert_eq!(b.state(t1 + ms(4999)), BreakerState::Open);
    assert_eq!(b.state(t1 + Duration::from_secs(5)), BreakerState::HalfOpen);
}

#[test]
fn outcomes_from_before_opening_are_ignored() {
    let t0 = Instant::now();
    let b = dapr("consecutiveFailures >= 2", 1);
    let slow = b.try_pass(t0).unwrap();
    call(&b, t0, false);
    assert_eq!(call(&b, t0, false), BreakerState::Open);
    let t1 = t0 + Duration::from_secs(5);
    assert_eq!(b.state(t1), BreakerState::HalfOpen);
    // The old call's success must not count as the probe.
    assert_eq!(slow.record(t1, true, ms(5000)), BreakerState::HalfOpen);
    assert_eq!(call(&b, t1, true), BreakerState::Closed);
}

// === Sentinel breakers ===

#[test]
fn sentinel_error_count_over_the_window() {
    let t0 = Instant::now();
    let b = sentinel(Trip::ErrorCount { count: 3 });
    call(&b, t0, false);
    call(&b, t0 + ms(100), false);
    // The first two errors leave the 1 s window.
    assert_eq!(call(&b, t0 + ms(1150), false), BreakerState::Closed);
    assert_eq!(call(&b, t0 + ms(1200), true), BreakerState::Closed);
    assert_eq!(call(&b, t0 + ms(1300), false), BreakerState::Closed);
    assert_eq!(b.stats(t0 + ms(1300)).window_errors, 2);
    assert_eq!(call(&b, t0 + ms(1400), false), BreakerState::Open);
    assert!(b.try_pass(t0 + ms(3399)).is_err());
    // Probe succeeds: closed with an empty window.
    assert_eq!(call(&b, t0 + ms(3400), true), BreakerState::Closed);
    let s = b.stats(t0 + ms(3400));
    assert_eq!((s.window_total, s.window_errors), (0, 0));
    assert_eq!(call(&b, t0 + ms(3500), false), BreakerState::Closed);
}

#[test]
fn sentinel_error_ratio_waits_for_min_requests() {
    let t0 = Instant::now();
    let b = sentinel(Trip::ErrorRatio {
        ratio: 0.5,
        min_requests: 10,
    });
    // Nine failures: 100 % errors but fewer than ten calls.
    for i in 0..9 {
        assert_eq!(call(&b, t0 + ms(i * 10), false), BreakerState::Closed);
    }
    // Window rolls past them; 10 calls at 40 % errors stay closed.
    let t1 = t0 + Duration::from_secs(2);
    for i in 0..10 {
        assert_eq!(call(&b, t1 + ms(i * 10), i >= 4), BreakerState::Closed);
    }
    // One more error: 5 of 11 (45 %); another: 6 of 12 (50 %) opens.
    assert_eq!(call(&b, t1 + ms(200), false), BreakerState::Closed);
    assert_eq!(call(&b, t1 + ms(210), false), BreakerState::Open);
    // A failed probe opens it again.
    let t2 = t1 + ms(2210);
    assert_eq!(call(&b, t2, false), BreakerState::Open);
    assert_eq!(b.stats(t2).opened_total, 2);
}

#[test]
fn sentinel_slow_ratio_counts_round_trips_only() {
    let t0 = Instant::now();
    let b = sentinel(Trip::SlowRatio {
        max_rt: ms(100),
        ratio: 0.5,
        min_requests: 4,
    });
    // Errors do not matter to this kind.
    for i in 0..4 {
        let p = b.try_pass(t0 + ms(i)).unwrap();
        assert_eq!(p.record(t0 + ms(i), false, ms(10)), BreakerState::Closed);
    }
    // Exactly 100 ms is not slow.
    assert_eq!(call_rt(&b, t0 + ms(10), ms(100)), BreakerState::Closed);
    assert_eq!(call_rt(&b, t0 + ms(20), ms(101)), BreakerState::Closed);
    for i in 0..3 {
        assert_eq!(call_rt(&b, t0 + ms(30 + i), ms(500)), BreakerState::Closed);
    }
    let s = b.stats(t0 + ms(40));
    assert_eq!((s.window_total, s.window_slow, s.window_errors), (9, 4, 4));
    // 5 slow of 10 reaches the ratio.
    assert_eq!(call_rt(&b, t0 + ms(50), ms(500)), BreakerState::Open);
    // A slow probe reopens; a fast one (even failing) closes.
    let t1 = t0 + ms(2050);
    assert_eq!(call_rt(&b, t1, ms(300)), BreakerState::Open);
    let t2 = t1 + Duration::from_secs(2);
    let p = b.try_pass(t2).unwrap();
    assert_eq!(p.record(t2, false, ms(20)), BreakerState::Closed);
}

#[test]
fn passes_and_rejections_are_counted_across_threads() {
    let t0 = Instant::now();
    let b = dapr("consecutiveFailures > 1000000", 1);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    call(&b, t0 + ms(i), i % 2 == 0);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = b.stats(t0);
    assert_eq!(s.passed_total, 2000);
    assert_eq!(s.counts.requests, 2000);
    assert_eq!(s.counts.total_failures, 1000);
    assert_eq!(s.state, BreakerState::Closed);
}

#[test]
fn a_permit_dropped_without_an_outcome_is_ignored() {
    let t0 = Instant::now();
    let b = dapr("consecutiveFailures >= 1", 1);
    for _ in 0..10 {
        drop(b.try_pass(t0).unwrap());
    }
    let s = b.stats(t0);
    assert_eq!(s.state, BreakerState::Closed);
    assert_eq!(s.counts.requests, 10);
    assert_eq!(s.counts.total_failures + s.counts.total_successes, 0);
}
