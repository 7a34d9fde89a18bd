//! Waking the server loop at a wall-clock time, to the microsecond. tokio's timers round
//! a deadline up to the next whole millisecond and then some (measured: a lone job's
//! ticks fired 2.2 ms late at the median, nearly all of it the timer), so the loop waits
//! on a Linux timerfd armed at an absolute `CLOCK_REALTIME` time instead, through the
//! same reactor as its sockets. The core's deadlines are wall-clock times already; a
//! step of the clock ends the wait early (`TFD_TIMER_CANCEL_ON_SET`), and the loop
//! simply looks again.

use rustix::io::Errno;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use std::io;
use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub struct Deadline {
    timer: AsyncFd<OwnedFd>,
}

impl Deadline {
    /// Inside a tokio runtime.
    pub fn new() -> io::Result<Deadline> {
        let fd = timerfd_create(
            TimerfdClockId::Realtime,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // SAFETY: the descriptor is owned by the `AsyncFd` it is registered with, so it
        // stays open, and the same, for as long as the registration.
        let timer = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Deadline { timer })
    }

    /// Returns once the wall clock has reached `at_us` (µs since the epoch) or was set
    /// meanwhile; at once for a time already past. Arming replaces any earlier wait, so an
    /// abandoned wait (the loop woke for a request first) costs nothing.
    pub async fn until(&self, at_us: u64) -> io::Result<()> {
        // 0 would disarm the timer: the earliest time there is stands for "now".
        let at_us = at_us.max(1);
        let at = Timespec {
            tv_sec: (at_us / 1_000_000) as _,
            tv_nsec: ((at_us % 1_000_000) * 1_000) as _,
        };
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        timerfd_settime(
            self.timer.get_ref(),
            TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET,
            &Itimerspec {
                it_interval: zero,
                it_value: at,
            },
        )?;
        loop {
            let mut ready = self.timer.readable().await?;
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                Ok(Ok(_)) => return Ok(()),
                // The clock was set: the caller looks at the time again.
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::CANCELED.raw_os_error()) => {
                    return Ok(())
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(Err(e)) => return Err(e),
                // Readiness was stale (an expiry of an earlier arming, already read).
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_us() -> u64 {
        crate::server::now_us()
    }

    // How late it wakes is a benchmark's business (`jobcast-bench firetime`); here only
    // that it wakes, never early, and at once for a past time.
    #[tokio::test]
    async fn it_wakes_at_the_time_asked_never_before() {
        let deadline = Deadline::new().unwrap();
        let bounded = |wait| tokio::time::timeout(std::time::Duration::from_secs(10), wait);
        bounded(deadline.until(0)).await.unwrap().unwrap();
        bounded(deadline.until(now_us() - 1_000_000))
            .await
            .unwrap()
            .unwrap();
        for _ in 0..20 {
            let at = now_us() + 3_000;
            bounded(deadline.until(at)).await.unwrap().unwrap();
            let woke = now_us();
            assert!(woke >= at, "woke {} µs early", at - woke);
        }
    }

    #[tokio::test]
    async fn a_new_arming_replaces_an_abandoned_one() {
        let deadline = Deadline::new().unwrap();
        // Abandoned: a far wait dropped before it ends.
        let far = now_us() + 60_000_000;
        let abandoned =
            tokio::time::timeout(std::time::Duration::from_millis(5), deadline.until(far)).await;
        assert!(abandoned.is_err());
        let at = now_us() + 2_000;
        tokio::time::timeout(std::time::Duration::from_secs(5), deadline.until(at))
            .await
            .expect("the new arming fires")
            .unwrap();
        assert!(now_us() >= at);
    }
}
