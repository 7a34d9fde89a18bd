//! What the broker tells a service manager (systemd's `Type=notify`, through
//! `$NOTIFY_SOCKET`): ready once it listens, alive while the loop turns (the watchdog, when
//! `WatchdogSec=` asks for it), and stopping. Without `$NOTIFY_SOCKET` this does nothing.

use super::Bound;
use sd_notify::NotifyState;
use std::time::{Duration, Instant};

pub(super) struct ServiceManager {
    /// How often to tell the watchdog the loop is alive, and when next.
    watchdog: Option<(Duration, Instant)>,
}

impl ServiceManager {
    pub(super) fn new() -> ServiceManager {
        let watchdog = watchdog_period().map(|period| {
            // Twice per period, as systemd advises; the loop turns at least once a second.
            (period / 2, Instant::now())
        });
        ServiceManager { watchdog }
    }

    /// Listening: the service is up.
    pub(super) fn ready(&self, bound: &Bound) {
        let status = format!(
            "listening: requests on {}, events on {}",
            bound.router, bound.publish
        );
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// The longest the loop may sleep: `longest`, or less to feed the watchdog in time.
    pub(super) fn longest_sleep(&self, longest: Duration) -> Duration {
        match self.watchdog {
            Some((every, _)) => longest.min(every),
            None => longest,
        }
    }

    /// The loop turned: the watchdog hears it when due.
    pub(super) fn alive(&mut self) {
        if let Some((every, next)) = &mut self.watchdog {
            let now = Instant::now();
            if now >= *next {
                notify(&[NotifyState::Watchdog]);
                *next = now + *every;
            }
        }
    }

    /// Stopping: flushing the store, then exiting.
    pub(super) fn stopping(&self) {
        notify(&[NotifyState::Stopping]);
    }
}

/// The watchdog period systemd asks for (`WatchdogSec=`, passed as `$WATCHDOG_USEC`), as
/// sd_watchdog_enabled(3) reads it: for this process unless `$WATCHDOG_PID` names another.
/// (The `sd-notify` crate insists on `$WATCHDOG_PID`, which systemd sets but other
/// managers may not.)
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
