//! The sweep's pure rules: validation, the trials a seed gives, and the pruners.

use quickcheck::{quickcheck, TestResult};
use serde_json::json;

use super::*;

fn request(space: Value, extra: Value) -> SweepRequest {
    let mut req = SweepRequest {
        name: Some("s".into()),
        base: TrainingRequest { model_architecture: Some("mlp".into()), dataset_name: Some("iris".into()), ..Default::default() },
        space: space.as_object().cloned(),
        trials: Some(8),
        ..Default::default()
    };
    if let Some(o) = extra.as_object() {
        req.search = o.get("search").and_then(Value::as_str).map(str::to_owned);
        req.pruner = o.get("pruner").and_then(Value::as_str).map(str::to_owned);
        req.trials = o.get("trials").and_then(Value::as_i64).or(req.trials);
        req.seed = o.get("seed").and_then(Value::as_u64);
    }
    req
}

fn fields(errors: &ConfigErrors) -> Vec<&str> {
    errors.0.iter().map(|e| e.field.as_str()).collect()
}

#[test]
fn every_failing_field_is_named_and_trials_are_checked_as_starts() {
    let space = json!({"nope": {"choice": [1]}, "dropout": {"uniform": [0.5, 0.1]}, "learning_rate": {"log_uniform": [0, 1]}});
    let e =
        SweepSpec::plan(&SweepRequest { name: Some("../x".into()), ..request(space, json!({"trials": 0, "pruner": "hb"})) }).unwrap_err();
    assert_eq!(fields(&e), ["name", "space.dropout", "space.learning_rate", "space.nope", "pruner", "trials"]);

    let e = SweepSpec::plan(&request(json!({"dropout": {"uniform": [0.0, 0.5]}}), json!({"search": "grid"}))).unwrap_err();
    assert_eq!(fields(&e), ["search"]);
    let e = SweepSpec::plan(&request(json!({"dropout": {"choice": [0.2, 0.95]}}), json!({"search": "grid"}))).unwrap_err();
    assert_eq!(fields(&e), ["trial 2: dropout"]);
    let e = SweepSpec::plan(&request(json!({"optimizer": {"choice": ["adam", 3]}}), json!({"search": "grid"}))).unwrap_err();
    assert_eq!(fields(&e), ["space.optimizer"]);
}

#[test]
fn a_grid_runs_every_combination_in_order() {
    let space = json!({"batch_size": {"choice": [8, 16]}, "optimizer": {"choice": ["adam", "sgd", "rmsprop"]}});
    let plan = SweepSpec::plan(&SweepRequest { trials: None, ..request(space, json!({"search": "grid"})) }).unwrap();
    assert_eq!(plan.spec.trials, 6);
    let points: Vec<(i64, String)> = plan.trials.iter().map(|(_, c)| (i64::from(c.batch_size), c.optimizer.to_string())).collect();
    assert_eq!(points[0], (8, "adam".to_owned()));
    assert_eq!(points.len(), 6);
    let unique: std::collections::HashSet<_> = points.iter().collect();
    assert_eq!(unique.len(), 6);
}

#[test]
fn a_huge_grid_costs_only_its_trials() {
    let hundred: Vec<Value> = (0..100).map(Value::from).collect();
    // 15 dimensions of 100 values: 10^30 points.
    let space: Map<String, Value> = SWEEPABLE.iter().map(|f| ((*f).to_owned(), json!({"choice": hundred.clone()}))).collect();
    let s = SweepSpec {
        space: space.iter().map(|(f, d)| Dimension { field: f.clone(), dist: Dist::parse(d).unwrap() }).collect(),
        search: Search::Grid,
        trials: 5,
        ..spec(Pruner::None, Mode::Max)
    };
    let points = s.points();
    assert_eq!(points.len(), 5);
    // The last dimension varies fastest.
    let fields: Vec<&String> = space.keys().collect();
    assert_eq!(points[4][fields[14].as_str()], 4);
    assert_eq!(points[4][fields[0].as_str()], 0);
}

#[test]
fn asha_rungs_divide_by_three() {
    assert_eq!(asha_rungs(27), [1, 3, 9]);
    assert_eq!(asha_rungs(20), [2, 6]);
    assert_eq!(asha_rungs(2), Vec::<u32>::new());
}

fn spec(pruner: Pruner, mode: Mode) -> SweepSpec {
    SweepSpec {
        name: ModelName::new("s").unwrap(),
        space: Vec::new(),
        search: Search::Random,
        trials: 8,
        metric: if mode == Mode::Max { Metric::ValAccuracy } else { Metric::ValLoss },
        mode,
        pruner,
        seed: 1,
    }
}

fn ids(n: usize) -> Vec<SessionId> {
    (0..n).map(|_| SessionId::generate()).collect()
}

#[test]
fn asha_keeps_the_best_third_at_a_rung_and_says_why_it_stops_the_rest() {
    let s = spec(Pruner::Asha, Mode::Max);
    let t = ids(4);
    let mut seen = Observations::default();
    for (id, v) in t.iter().zip([0.9, 0.5, 0.95, 0.6]) {
        seen.0.entry(id.clone()).or_default().insert(3, v);
    }
    // 4 at the rung: the best one goes on.
    assert_eq!(s.prune(&seen, &t[2], 3, 27), None);
    assert_eq!(
        s.prune(&seen, &t[0], 3, 27).as_deref(),
        Some("pruned at epoch 3: val_accuracy 0.9000 below 0.9500, the best 1 of 4 trials at this rung (asha)")
    );
    assert_eq!(pruned_at(&s.prune(&seen, &t[1], 3, 27).unwrap()), Some(3));
    // Not a rung, or the last epoch: nobody is judged.
    assert_eq!(s.prune(&seen, &t[1], 4, 27), None);
}

#[test]
fn the_median_pruner_waits_for_two_others_and_compares_the_best_so_far() {
    let s = spec(Pruner::Median, Mode::Min);
    let t = ids(4);
    let mut seen = Observations::default();
    let put = |seen: &mut Observations, i: usize, e: u32, v: f64| {
        seen.0.entry(t[i].clone()).or_default().insert(e, v);
    };
    put(&mut seen, 0, 2, 1.0);
    put(&mut seen, 3, 1, 0.1);
    put(&mut seen, 3, 2, 5.0);
    assert_eq!(s.prune(&seen, &t[3], 2, 10), None, "one other trial only");
    put(&mut seen, 1, 2, 2.0);
    put(&mut seen, 2, 2, 3.0);
    // Its best so far (0.1 at epoch 1) beats the others' median at epoch 2 (2.0).
    assert_eq!(s.prune(&seen, &t[3], 2, 10), None);
    put(&mut seen, 0, 3, 1.0);
    put(&mut seen, 1, 3, 1.0);
    put(&mut seen, 2, 3, 1.5);
    assert_eq!(
        s.prune(&seen, &t[2], 3, 10).as_deref(),
        Some("pruned at epoch 3: val_loss 1.5000 above the median 1.0000 of 2 other trials at this epoch (median)")
    );
    // Never at the first or the last epoch.
    assert_eq!(s.prune(&seen, &t[2], 10, 10), None);
}

quickcheck! {
    // Property 75: a sweep's trials depend only on its spec: the same seed gives the same
    // points, every drawn value lies within its distribution (whole for int_uniform, one of
    // the values for choice), and a grid holds each combination of its choices once.
    fn prop75_the_same_seed_gives_the_same_trials_within_their_bounds(seed: u64, lo: u16, span: u16, n: u8) -> TestResult {
        let trials = 1 + u32::from(n % 20);
        let (a, b) = (f64::from(lo) / 100.0, f64::from(lo) / 100.0 + f64::from(span) / 10.0);
        let space = vec![
            Dimension { field: "dropout".into(), dist: Dist::Uniform(a, b) },
            Dimension { field: "learning_rate".into(), dist: Dist::LogUniform(a + 0.001, b + 0.001) },
            Dimension { field: "batch_size".into(), dist: Dist::IntUniform(i64::from(lo), i64::from(lo) + i64::from(span)) },
            Dimension { field: "optimizer".into(), dist: Dist::Choice(vec![json!("adam"), json!("sgd")]) },
        ];
        let s = SweepSpec { space, trials, seed, ..spec(Pruner::Asha, Mode::Max) };
        let points = s.points();
        if points != s.points() || points.len() != trials as usize {
            return TestResult::failed();
        }
        let inside = points.iter().all(|p| {
            let f = |k: &str| p[k].as_f64().unwrap_or(f64::NAN);
            (a..=b).contains(&f("dropout"))
                && (a + 0.001 - 1e-12..=b + 0.001 + 1e-12).contains(&f("learning_rate"))
                && p["batch_size"].as_i64().is_some_and(|v| (i64::from(lo)..=i64::from(lo) + i64::from(span)).contains(&v))
                && (p["optimizer"] == "adam" || p["optimizer"] == "sgd")
        });
        let grid = SweepSpec {
            space: vec![
                Dimension { field: "batch_size".into(), dist: Dist::Choice((0..u64::from(n % 5) + 1).map(Value::from).collect()) },
                Dimension { field: "seed".into(), dist: Dist::Choice(vec![json!(1), json!(2)]) },
            ],
            search: Search::Grid,
            trials: 100,
            ..s.clone()
        };
        let cells = grid.points();
        let unique: std::collections::HashSet<String> = cells.iter().map(|p| Value::Object(p.clone()).to_string()).collect();
        TestResult::from_bool(inside && cells.len() == 2 * (usize::from(n % 5) + 1) && unique.len() == cells.len())
    }

    // Property 76: whatever the trials' values at a rung, ASHA lets on the best
    // max(1, n / 3) of the n trials there (ties with the last of them included) and prunes
    // the others, saying so; the median pruner never prunes a trial whose best so far is at
    // least as good as the others' median, nor judges with fewer than two others.
    fn prop76_pruners_keep_the_best_and_stop_only_the_worse(values: Vec<u8>, mine: u8) -> TestResult {
        if values.is_empty() || values.len() > 30 {
            return TestResult::discard();
        }
        let s = spec(Pruner::Asha, Mode::Max);
        let t = ids(values.len());
        let mut seen = Observations::default();
        for (id, v) in t.iter().zip(&values) {
            seen.0.entry(id.clone()).or_default().insert(9, f64::from(*v));
        }
        let mut sorted: Vec<u8> = values.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let keep = (values.len() / 3).max(1);
        let threshold = sorted[keep - 1];
        for (id, v) in t.iter().zip(&values) {
            let verdict = s.prune(&seen, id, 9, 27);
            if verdict.is_some() != (*v < threshold) || verdict.is_some_and(|m| pruned_at(&m) != Some(9)) {
                return TestResult::failed();
            }
        }
        let m = spec(Pruner::Median, Mode::Max);
        let me = SessionId::generate();
        seen.0.entry(me.clone()).or_default().insert(9, f64::from(mine));
        let mut others: Vec<f64> = values.iter().map(|v| f64::from(*v)).collect();
        others.sort_by(f64::total_cmp);
        let mid = others.len() / 2;
        let median = if others.len().is_multiple_of(2) { (others[mid - 1] + others[mid]) / 2.0 } else { others[mid] };
        let verdict = m.prune(&seen, &me, 9, 27);
        let expected = values.len() >= MEDIAN_STARTUP_TRIALS && f64::from(mine) < median;
        TestResult::from_bool(verdict.is_some() == expected)
    }
}
