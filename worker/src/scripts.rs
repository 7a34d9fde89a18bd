//! Script files, one per script body: written when a body is first run, used by every
//! run of it after, removed when evicted (the least recently used of those no run uses)
//! or when the worker stops. Writing and removing a file per run cost as much as a
//! quarter of the worker's own time on short scripts.
//!
//! A file is named by a hash of its body and written by this process before its first
//! use (to a temporary name, then renamed), never taken over from a directory listing.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Distinct script bodies kept on disk at most, beyond those in use.
pub const DEFAULT_KEPT: usize = 64;

/// The suffix of every script file; at start, files with it are the leftovers of an
/// earlier worker process and are removed.
const SUFFIX: &str = ".script";

/// The script files of one worker, shared by its runs.
#[derive(Debug, Clone)]
pub struct ScriptFiles {
    inner: Arc<Mutex<Files>>,
}

#[derive(Debug)]
struct Files {
    dir: PathBuf,
    kept: usize,
    by_hash: HashMap<String, Entry>,
    /// Increases with every use: the least recently used file has the lowest.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    users: usize,
    last_used: u64,
}

/// A script file a run is using; the file stays while this lives.
#[derive(Debug)]
pub struct ScriptFile {
    path: PathBuf,
    hash: String,
    files: Arc<Mutex<Files>>,
}

impl ScriptFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let mut files = lock(&self.files);
        if let Some(entry) = files.by_hash.get_mut(&self.hash) {
            entry.users = entry.users.saturating_sub(1);
        }
        files.evict();
    }
}

fn lock(files: &Mutex<Files>) -> MutexGuard<'_, Files> {
    // A panic while holding the lock leaves the map consistent (each step is one
    // insertion or removal), so a poisoned lock is still usable.
    files
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ScriptFiles {
    /// Script files in `dir`, keeping at most `kept` that no run uses. Removes the
    /// leftovers of an earlier process first.
    pub fn new(dir: &Path, kept: usize) -> io::Result<ScriptFiles> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(SUFFIX) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(ScriptFiles {
            inner: Arc::new(Mutex::new(Files {
                dir: dir.to_path_buf(),
                kept,
                by_hash: HashMap::new(),
                clock: 0,
            })),
        })
    }

    /// The file holding `body`, written now if this process has not written it yet.
    pub fn acquire(&self, body: &str) -> io::Result<ScriptFile> {
        let hash = hex(&Sha256::digest(body.as_bytes())[..16]);
        let mut files = lock(&self.inner);
        files.clock += 1;
        let now = files.clock;
        if let Some(entry) = files.by_hash.get_mut(&hash) {
            entry.users += 1;
            entry.last_used = now;
            return Ok(ScriptFile {
                path: entry.path.clone(),
                hash,
                files: self.inner.clone(),
            });
        }
        let path = files.dir.join(format!("{hash}{SUFFIX}"));
        let temporary = files
            .dir
            .join(format!(".{hash}.{}.partial", std::process::id()));
        write_new(&temporary, body.as_bytes())
            .and_then(|()| std::fs::rename(&temporary, &path))
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&temporary);
            })?;
        files.by_hash.insert(
            hash.clone(),
            Entry {
                path: path.clone(),
                users: 1,
                last_used: now,
            },
        );
        files.evict();
        Ok(ScriptFile {
            path,
            hash,
            files: self.inner.clone(),
        })
    }

    /// Removes every file no run uses (the worker is stopping).
    pub fn clear(&self) {
        let mut files = lock(&self.inner);
        files.by_hash.retain(|_, entry| {
            if entry.users > 0 {
                return true;
            }
            let _ = std::fs::remove_file(&entry.path);
            false
        });
    }

    /// The directory the files are in.
    pub fn dir(&self) -> PathBuf {
        lock(&self.inner).dir.clone()
    }

    /// How many files are on disk now.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.inner).by_hash.len()
    }
}

impl Files {
    /// Removes the least recently used files no run uses while more than `kept` are.
    fn evict(&mut self) {
        while self.by_hash.values().filter(|e| e.users == 0).count() > self.kept {
            let Some(oldest) = self
                .by_hash
                .iter()
                .filter(|(_, e)| e.users == 0)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(hash, _)| hash.clone())
            else {
                return;
            };
            if let Some(entry) = self.by_hash.remove(&oldest) {
                if let Err(e) = std::fs::remove_file(&entry.path) {
                    tracing::warn!(path = %entry.path.display(), error = %e, "cannot remove a script file");
                }
            }
        }
    }
}

/// Creates `path` (which must not exist) readable by the worker's user only.
fn write_new(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn one_file_per_body_written_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let files = ScriptFiles::new(dir.path(), 8).unwrap();
        let a = files.acquire("#!/bin/sh\necho a\n").unwrap();
        let written = std::fs::metadata(a.path()).unwrap();
        let again = files.acquire("#!/bin/sh\necho a\n").unwrap();
        let b = files.acquire("#!/bin/sh\necho b\n").unwrap();
        assert_eq!(a.path(), again.path());
        assert_ne!(a.path(), b.path());
        assert_eq!(
            std::fs::read_to_string(b.path()).unwrap(),
            "#!/bin/sh\necho b\n"
        );
        // Not written again: the same file (inode), and only the two scripts on disk.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(again.path()).unwrap().ino(),
            written.ino()
        );
        assert_eq!(written.mode() & 0o777, 0o600);
        assert_eq!(names(dir.path()).len(), 2);
    }

    #[test]
    fn unused_files_beyond_the_limit_go_oldest_first_and_used_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let files = ScriptFiles::new(dir.path(), 1).unwrap();
        let in_use = files.acquire("in use").unwrap();
        let first = files.acquire("first").unwrap().path().to_path_buf();
        let second = files.acquire("second").unwrap().path().to_path_buf();
        // "first" was the least recently used of the unused two, and one is kept.
        assert!(!first.exists());
        assert!(second.exists());
        assert!(in_use.path().exists());
        assert_eq!(files.len(), 2);
        drop(in_use);
        // Now two are unused: the older ("in use", used first) goes.
        assert_eq!(files.len(), 1);
        assert!(second.exists());
    }

    #[test]
    fn leftovers_are_removed_at_start_and_files_at_clear() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0123.script"), "old").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not ours").unwrap();
        let files = ScriptFiles::new(dir.path(), 8).unwrap();
        assert_eq!(names(dir.path()), ["notes.txt"]);
        let running = files.acquire("running").unwrap();
        drop(files.acquire("done").unwrap());
        files.clear();
        assert!(running.path().exists(), "a run still uses it");
        assert_eq!(files.len(), 1);
        drop(running);
        files.clear();
        assert_eq!(names(dir.path()), ["notes.txt"]);
    }
}
