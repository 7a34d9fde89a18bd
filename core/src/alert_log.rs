//! The history of alerts: each standing alert recorded when it is raised, and again
//! when it is acknowledged and when its condition ends; the newest [`MAX_KEPT`] kept in a
//! ring of settings (`ring.rs`). An alert still open across a broker restart keeps its
//! record (and its acknowledgement), and is not notified again.

use crate::ring::{Numbered, Ring};
use crate::store::{Store, StoreResult};
use jobcast_protocol::{Acknowledged, Alert, AlertRecord};
use std::collections::HashMap;

pub const MAX_KEPT: u64 = 1_000;
/// Most records one `Alerts` answers with.
pub const MAX_PAGE: u32 = 1_000;
const PREFIX: &str = "alert_log/";

impl Numbered for AlertRecord {
    fn seq(&self) -> u64 {
        self.seq
    }
}

#[derive(Debug)]
pub(crate) struct AlertLog {
    records: Ring<AlertRecord>,
    /// The record of each alert that has not cleared, by alert id.
    open: HashMap<String, u64>,
}

impl AlertLog {
    pub fn load(settings: &[(String, Vec<u8>)]) -> StoreResult<AlertLog> {
        let records: Ring<AlertRecord> = Ring::load(settings, PREFIX, "alert record", MAX_KEPT)?;
        let mut open = HashMap::new();
        // Oldest to newest: the newest open record of an id wins.
        let mut all: Vec<&AlertRecord> = records.newest_first().collect();
        all.reverse();
        for record in all {
            if record.cleared_ms.is_none() {
                open.insert(record.id.clone(), record.seq);
            }
        }
        Ok(AlertLog { records, open })
    }

    /// Whether the alert `id` was raised and has not cleared (before a restart, say).
    pub fn is_open(&self, id: &str) -> bool {
        self.open.contains_key(id)
    }

    /// `alert` stands: recorded unless its record is open already. Returns the
    /// acknowledgement an open record holds.
    pub fn raised(
        &mut self,
        store: &mut impl Store,
        alert: &Alert,
        now_ms: u64,
    ) -> StoreResult<Option<Acknowledged>> {
        if let Some(seq) = self.open.get(&alert.id) {
            let kept = self.records.newest_first().find(|r| r.seq == *seq);
            return Ok(kept.and_then(|r| r.acknowledged.clone()));
        }
        let record = AlertRecord {
            seq: self.records.next_seq(),
            id: alert.id.clone(),
            kind: alert.kind,
            job: alert.job.clone(),
            pool: alert.pool.clone(),
            message: alert.message.clone(),
            raised_ms: now_ms,
            cleared_ms: None,
            acknowledged: None,
        };
        self.open.insert(record.id.clone(), record.seq);
        self.records.push(store, record)?;
        Ok(None)
    }

    /// The alerts that were open and no longer stand have cleared.
    pub fn clear_all_but(
        &mut self,
        store: &mut impl Store,
        standing: impl Fn(&str) -> bool,
        now_ms: u64,
    ) -> StoreResult<()> {
        let cleared: Vec<(String, u64)> = self
            .open
            .iter()
            .filter(|(id, _)| !standing(id))
            .map(|(id, seq)| (id.clone(), *seq))
            .collect();
        for (id, seq) in cleared {
            self.open.remove(&id);
            self.records
                .update(store, seq, |r| r.cleared_ms = Some(now_ms))?;
        }
        Ok(())
    }

    pub fn acknowledged(
        &mut self,
        store: &mut impl Store,
        id: &str,
        ack: &Acknowledged,
    ) -> StoreResult<()> {
        match self.open.get(id) {
            Some(seq) => self
                .records
                .update(store, *seq, |r| r.acknowledged = Some(ack.clone())),
            None => Ok(()),
        }
    }

    /// Newest first: records `visible`, below `before`, at most `limit`.
    pub fn page(
        &self,
        visible: impl Fn(&AlertRecord) -> bool,
        before: Option<u64>,
        limit: u32,
    ) -> Vec<AlertRecord> {
        self.records
            .newest_first()
            .filter(|r| before.is_none_or(|before| r.seq < before))
            .filter(|r| visible(r))
            .take(limit.min(MAX_PAGE) as usize)
            .cloned()
            .collect()
    }
}

/// An alert's id from its key in the alert table: its kind, and the job or pool it is
/// about (none for the broker's own, such as `disk_low`).
pub(crate) fn alert_id(kind: jobcast_protocol::AlertKind, subject: &str) -> String {
    match subject {
        "" => kind.as_str().to_string(),
        subject => format!("{}:{subject}", kind.as_str()),
    }
}
