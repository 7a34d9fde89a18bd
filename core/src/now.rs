//! The core's one clock: the time of the request or tick being handled, passed in with
//! each call by the server (which reads the wall clock). The core keeps no clock of its
//! own and reads none: what happens in one call happens at one instant.

/// An instant, in microseconds since the Unix epoch (the precision run latencies are
/// measured in); most rules work in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    us: u64,
}

impl Now {
    pub fn from_us(us: u64) -> Now {
        Now { us }
    }

    pub fn us(self) -> u64 {
        self.us
    }

    pub fn ms(self) -> u64 {
        self.us / 1_000
    }
}
