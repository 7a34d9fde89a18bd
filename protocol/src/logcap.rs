//! Capping a run's output: keep the first 20 % and the last 80 % of a cap.
//!
//! The output of a run is one byte stream (stdout and stderr merged). Both ends use the
//! same arithmetic: the worker's [`LogSpool`] decides what is worth sending, and the
//! broker's [`LogCap`] decides what to keep. Chunks carry their offset in the stream, so
//! bytes the worker skipped show up as a gap and are counted as cut.

use std::collections::VecDeque;

/// The smallest cap that leaves room for a useful head, tail and marker.
pub const MIN_CAP: usize = 1024;

/// Bytes of the cap kept from the start of the stream.
pub fn head_cap(cap: usize) -> usize {
    cap / 5
}

/// Bytes of the cap kept from the end of the stream.
pub fn tail_cap(cap: usize) -> usize {
    cap - head_cap(cap)
}

fn marker(cut: u64) -> Vec<u8> {
    format!("\n[jobcast: {cut} bytes cut]\n").into_bytes()
}

/// The kept part of a stream: a head that is never evicted and a tail ring.
#[derive(Debug, Clone)]
pub struct LogCap {
    cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Stream bytes accounted for so far (kept, cut, or skipped by the sender).
    total: u64,
}

impl LogCap {
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(MIN_CAP);
        LogCap {
            cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Adds `data` found at `offset` in the stream. Bytes already seen are ignored (a
    /// retransmission); a jump forward counts the skipped bytes as cut.
    pub fn push(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if end <= self.total {
            return;
        }
        let data = if offset < self.total {
            &data[(self.total - offset) as usize..]
        } else {
            if offset > self.total {
                // The sender skipped bytes: whatever the tail held is no longer adjacent
                // to what follows, but it is still the newest kept before the gap.
                self.total = offset;
            }
            data
        };
        let head_room = head_cap(self.cap).saturating_sub(self.head.len());
        // Only bytes at the very start of the stream may go to the head.
        let to_head = if self.total == self.head.len() as u64 {
            head_room.min(data.len())
        } else {
            0
        };
        self.head.extend_from_slice(&data[..to_head]);
        let rest = &data[to_head..];
        let tail_cap = tail_cap(self.cap);
        let rest = &rest[rest.len().saturating_sub(tail_cap)..];
        let overflow = (self.tail.len() + rest.len()).saturating_sub(tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(rest);
        self.total = end;
    }

    /// Bytes of the stream that are not kept.
    pub fn cut(&self) -> u64 {
        self.total - self.head.len() as u64 - self.tail.len() as u64
    }

    /// The capped log: head, a marker saying how much was cut, tail. Never longer than
    /// the cap.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.tail.len() + 64);
        out.extend_from_slice(&self.head);
        if self.cut() == 0 {
            out.extend(self.tail.iter());
            return out;
        }
        // The marker takes room from the oldest tail bytes; its own length depends on
        // the number it prints, so settle it in two passes.
        let mut dropped = 0usize;
        let mut text = marker(self.cut());
        for _ in 0..3 {
            dropped = (self.head.len() + text.len() + self.tail.len()).saturating_sub(self.cap);
            let next = marker(self.cut() + dropped as u64);
            if next.len() == text.len() {
                text = next;
                break;
            }
            text = next;
        }
        out.extend_from_slice(&text);
        out.extend(self.tail.iter().skip(dropped));
        out.truncate(self.cap);
        out
    }
}

/// The worker's side: output waiting to be sent, trimmed to what the broker would keep.
#[derive(Debug, Clone)]
pub struct LogSpool {
    cap: usize,
    /// Unsent segments, in stream order: (offset, bytes).
    pending: VecDeque<(u64, Vec<u8>)>,
    total: u64,
}

impl LogSpool {
    pub fn new(cap: usize) -> Self {
        LogSpool {
            cap: cap.max(MIN_CAP),
            pending: VecDeque::new(),
            total: 0,
        }
    }

    /// Bytes the run has written so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending.iter().map(|(_, b)| b.len()).sum()
    }

    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.pending.back_mut() {
            Some((offset, bytes)) if *offset + bytes.len() as u64 == self.total => {
                bytes.extend_from_slice(data)
            }
            _ => self.pending.push_back((self.total, data.to_vec())),
        }
        self.total += data.len() as u64;
        self.trim();
    }

    /// Drops unsent bytes that the broker would cut anyway: those past the head and
    /// older than the last tail's worth.
    fn trim(&mut self) {
        let head_end = head_cap(self.cap) as u64;
        let tail_start = self.total.saturating_sub(tail_cap(self.cap) as u64);
        if tail_start <= head_end {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for (offset, bytes) in self.pending.drain(..) {
            let end = offset + bytes.len() as u64;
            if offset < head_end {
                let upto = (end.min(head_end) - offset) as usize;
                kept.push_back((offset, bytes[..upto].to_vec()));
            }
            if end > tail_start {
                let from = offset.max(tail_start);
                kept.push_back((from, bytes[(from - offset) as usize..].to_vec()));
            }
        }
        self.pending = kept;
    }

    /// The next chunk to send, at most `max` bytes, with its stream offset.
    pub fn take_chunk(&mut self, max: usize) -> Option<(u64, Vec<u8>)> {
        let (offset, mut bytes) = self.pending.pop_front()?;
        if bytes.len() > max {
            let rest = bytes.split_off(max);
            self.pending.push_front((offset + max as u64, rest));
        }
        Some((offset, bytes))
    }

    /// Puts a chunk back at the front after a failed send.
    pub fn unsend(&mut self, offset: u64, bytes: Vec<u8>) {
        self.pending.push_front((offset, bytes));
        self.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream(len: usize) -> Vec<u8> {
        (0..len).map(|i| b'a' + (i % 26) as u8).collect()
    }

    #[test]
    fn a_short_log_is_kept_whole() {
        let mut cap = LogCap::new(2048);
        let data = stream(2000);
        cap.push(0, &data);
        assert_eq!(cap.render(), data);
        assert_eq!(cap.cut(), 0);
    }

    #[test]
    fn a_long_log_keeps_head_and_tail_with_a_marker() {
        let cap_bytes = 10_000;
        let mut cap = LogCap::new(cap_bytes);
        let data = stream(1_000_000);
        for (i, chunk) in data.chunks(4096).enumerate() {
            cap.push((i * 4096) as u64, chunk);
        }
        let out = cap.render();
        assert!(out.len() <= cap_bytes, "{}", out.len());
        assert!(out.starts_with(&data[..head_cap(cap_bytes)]));
        let text = String::from_utf8_lossy(&out);
        let kept_tail = out.len()
            - head_cap(cap_bytes)
            - text[head_cap(cap_bytes)..].find("cut]\n").unwrap()
            - 5;
        assert!(out.ends_with(&data[data.len() - kept_tail..]));
        let cut: u64 = (data.len() - head_cap(cap_bytes) - kept_tail) as u64;
        assert!(
            text.contains(&format!("[jobcast: {cut} bytes cut]")),
            "{text}"
        );
    }

    #[test]
    fn retransmitted_chunks_are_ignored() {
        let mut cap = LogCap::new(4096);
        cap.push(0, b"hello ");
        cap.push(0, b"hello ");
        cap.push(3, b"lo world");
        assert_eq!(cap.render(), b"hello world");
    }

    #[test]
    fn spooled_output_renders_the_same_as_the_whole_stream() {
        let cap_bytes = 4096;
        let data = stream(50_000);
        let mut spool = LogSpool::new(cap_bytes);
        for chunk in data.chunks(100) {
            spool.push(chunk);
        }
        // The spool never holds much more than the cap.
        assert!(
            spool.pending_bytes() <= cap_bytes,
            "{}",
            spool.pending_bytes()
        );
        let mut sent = LogCap::new(cap_bytes);
        while let Some((offset, chunk)) = spool.take_chunk(700) {
            sent.push(offset, &chunk);
        }
        let mut whole = LogCap::new(cap_bytes);
        whole.push(0, &data);
        assert_eq!(sent.render(), whole.render());
    }

    proptest! {
        #[test]
        fn render_never_exceeds_the_cap(
            cap_bytes in MIN_CAP..5000usize,
            sizes in proptest::collection::vec(0..3000usize, 0..40),
            take in 1..2000usize,
        ) {
            let mut spool = LogSpool::new(cap_bytes);
            let mut whole = LogCap::new(cap_bytes);
            let mut sent = LogCap::new(cap_bytes);
            let mut offset = 0u64;
            for size in sizes {
                let data = stream(size);
                whole.push(offset, &data);
                offset += size as u64;
                spool.push(&data);
                if let Some((o, chunk)) = spool.take_chunk(take) {
                    sent.push(o, &chunk);
                }
            }
            while let Some((o, chunk)) = spool.take_chunk(take) {
                sent.push(o, &chunk);
            }
            let rendered = whole.render();
            prop_assert!(rendered.len() <= cap_bytes);
            prop_assert_eq!(whole.total(), offset);
            if offset as usize <= cap_bytes {
                prop_assert_eq!(rendered.len() as u64, offset);
            }
            prop_assert!(sent.render().len() <= cap_bytes);
        }
    }
}
