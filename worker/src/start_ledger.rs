//! The runs this worker's processes started, on this host's disk: before a run's process
//! is spawned its id is appended to `<script_temp_path>/started-runs`. A worker process
//! that starts after another of the same id and directory was killed reads what its
//! predecessor started, and tells the broker at registration: a run granted to the
//! predecessor that is not in the ledger provably never started, and is queued again
//! instead of recorded lost.
//!
//! No fsync: a killed process loses nothing it wrote, only the host going down does; so
//! the ledger counts only when it was written since this host's boot (its first line holds
//! the kernel's boot id).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const FILE: &str = "started-runs";
/// Ids kept when the file is rewritten; a grant older than this many starts has long had
/// its start reported.
const KEPT: usize = 4_096;
/// The file is rewritten (to the last [`KEPT`] ids) past this size.
const MAX_BYTES: u64 = 1 << 20;

pub struct StartLedger {
    path: PathBuf,
    boot_id: String,
    file: File,
    bytes: u64,
}

/// This host's boot id (changes at every boot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The run ids a ledger text lists, if it was written since boot `boot_id`.
pub fn read_ledger(text: &str, boot_id: &str) -> Option<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.next()?.strip_prefix("boot ")?;
    if boot_id.is_empty() || header != boot_id {
        return None;
    }
    Some(
        lines
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

impl StartLedger {
    /// Opens the ledger in `dir`; also returns what earlier processes of this worker
    /// started since this host booted (`None`: nothing can be proven: another boot, or
    /// no ledger).
    pub fn open(dir: &Path) -> io::Result<(StartLedger, Option<Vec<String>>)> {
        let path = dir.join(FILE);
        let boot_id = boot_id();
        let earlier = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| read_ledger(&text, &boot_id));
        // Kept across this process's start (it may be killed before it registers, and its
        // successor needs the same proof), trimmed to the last KEPT.
        let kept: Vec<String> = earlier
            .as_deref()
            .map(|ids| ids[ids.len().saturating_sub(KEPT)..].to_vec())
            .unwrap_or_default();
        let ledger = StartLedger::rewrite(path, boot_id, &kept)?;
        Ok((ledger, earlier))
    }

    fn rewrite(path: PathBuf, boot_id: String, ids: &[String]) -> io::Result<StartLedger> {
        let tmp = path.with_extension("tmp");
        let mut text = format!("boot {boot_id}\n");
        for id in ids {
            text.push_str(id);
            text.push('\n');
        }
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(StartLedger {
            path,
            boot_id,
            file,
            bytes: text.len() as u64,
        })
    }

    /// Records that run `run_id` is about to be started (before its process exists).
    pub fn starting(&mut self, run_id: &str) -> io::Result<()> {
        if self.bytes > MAX_BYTES {
            let text = std::fs::read_to_string(&self.path)?;
            let ids: VecDeque<String> =
                read_ledger(&text, &self.boot_id).unwrap_or_default().into();
            let kept: Vec<String> = ids
                .into_iter()
                .rev()
                .take(KEPT)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            *self = StartLedger::rewrite(self.path.clone(), self.boot_id.clone(), &kept)?;
        }
        let line = format!("{run_id}\n");
        self.file.write_all(line.as_bytes())?;
        self.bytes += line.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_proves_only_what_was_written_since_this_boot() {
        assert_eq!(
            read_ledger("boot abc\nr1\nr2\n", "abc"),
            Some(vec!["r1".to_string(), "r2".to_string()])
        );
        assert_eq!(read_ledger("boot abc\nr1\n", "other-boot"), None);
        assert_eq!(read_ledger("r1\n", "abc"), None);
        assert_eq!(read_ledger("", "abc"), None);
    }

    #[test]
    fn what_one_process_started_the_next_reads_and_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, earlier) = StartLedger::open(dir.path()).unwrap();
        assert_eq!(earlier, None, "no ledger yet: nothing can be proven");
        first.starting("r1").unwrap();
        first.starting("r2").unwrap();
        drop(first);
        let (mut second, earlier) = StartLedger::open(dir.path()).unwrap();
        assert_eq!(earlier, Some(vec!["r1".to_string(), "r2".to_string()]));
        second.starting("r3").unwrap();
        drop(second);
        let (_, earlier) = StartLedger::open(dir.path()).unwrap();
        assert_eq!(earlier.unwrap(), ["r1", "r2", "r3"]);
    }
}
