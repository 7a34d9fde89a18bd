//! The goals the issues set (issue 10 for the embedded store, 25 for PostgreSQL), each with
//! the figure a part of the bench measured: `all` prints them together at the end, so one
//! run shows how far each is.

use std::sync::Mutex;

struct Goal {
    goal: String,
    measured: String,
    /// How the measurement stands to the goal: 1.0 or more means met.
    ratio: f64,
}

static GOALS: Mutex<Vec<Goal>> = Mutex::new(Vec::new());

fn record(goal: String, measured: String, ratio: f64) {
    if let Ok(mut goals) = GOALS.lock() {
        goals.push(Goal {
            goal,
            measured,
            ratio,
        });
    }
}

/// A figure that should be at least `goal`.
pub fn at_least(what: &str, goal: f64, measured: f64, unit: &str) {
    record(
        format!("{what} ≥ {goal} {unit}"),
        format!("{measured:.2} {unit}"),
        measured / goal,
    );
}

/// A figure that should be at most `goal`.
pub fn at_most(what: &str, goal: f64, measured: f64, unit: &str) {
    record(
        format!("{what} ≤ {goal} {unit}"),
        format!("{measured:.2} {unit}"),
        if measured > 0.0 {
            goal / measured
        } else {
            f64::INFINITY
        },
    );
}

/// Prints every goal recorded so far, next to its measurement.
pub fn print() {
    let Ok(goals) = GOALS.lock() else {
        return;
    };
    if goals.is_empty() {
        return;
    }
    println!("goals: each next to what this run measured; a ratio of 1.00 or more meets it");
    println!();
    println!("| goal | measured | ratio | met |");
    println!("|---|---|---|---|");
    for g in goals.iter() {
        let met = if g.ratio >= 1.0 { "yes" } else { "no" };
        println!("| {} | {} | {:.2} | {met} |", g.goal, g.measured, g.ratio);
    }
}
