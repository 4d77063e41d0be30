//! State in RocksDB: one database per replica under `stateDir`, one column family per store, keys
//! prefixed by the input partition. Writes wait in an overlay that reads see, and reach RocksDB
//! only after the Kafka transaction holding their changelog records commits; a crash loses the
//! overlay, and the state is rebuilt from the changelog.
//!
//! The changelog is one compacted topic per application, `<applicationId>-changelog`, keyed by
//! `store name, 0x00, key` and partitioned like the input, so a replica restores exactly the
//! partitions it owns.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow};
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};
use sluice_engine::store::StateStore;

/// A state change to write to the changelog: input partition, changelog key, value (`None`: a
/// delete).
pub type Change = (i32, Vec<u8>, Option<Vec<u8>>);

const CHECKPOINT: &str = "checkpoint";

/// RocksDB behind the engine's [`StateStore`].
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    /// Writes not yet committed, by (store, partition-prefixed key).
    pending: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
    /// Changes to produce to the changelog with the current transaction.
    changes: Vec<Change>,
    partition: Option<i32>,
    /// Changelog records being restored, written in batches.
    restoring: WriteBatch,
}

/// Writes skip RocksDB's write-ahead log, as Kafka Streams' do: the changelog is the durable
/// copy. A clean stop flushes every store before writing the checkpoint; after a crash the
/// state is rebuilt from the changelog anyway.
fn no_wal() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.disable_wal(true);
    w
}

/// Changelog records per restore write.
const RESTORE_BATCH: usize = 10_000;

fn prefixed(partition: i32, key: &[u8]) -> Vec<u8> {
    let mut k = partition.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// The changelog key of a store's key.
pub fn changelog_key(store: &str, key: &[u8]) -> Vec<u8> {
    let mut k = store.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key);
    k
}

impl RocksStore {
    /// Open (or create) the database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<RocksStore> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = DB::list_cf(&opts, path).unwrap_or_else(|_| vec!["default".to_owned()]);
        let db = DB::open_cf(&opts, path, &cfs).with_context(|| format!("opening RocksDB at {}", path.display()))?;
        Ok(RocksStore {
            db,
            path: path.to_owned(),
            pending: BTreeMap::new(),
            changes: Vec::new(),
            partition: None,
            restoring: WriteBatch::default(),
        })
    }

    fn cf_or_create(&mut self, store: &str) -> anyhow::Result<()> {
        if self.db.cf_handle(store).is_none() {
            self.db.create_cf(store, &Options::default()).map_err(|e| anyhow!("creating store {store}: {e}"))?;
        }
        Ok(())
    }

    /// Each store's size in bytes: its SST files plus its memtables (RocksDB's own figures);
    /// the internal checkpoint store is left out.
    pub fn sizes(&self) -> Vec<(String, i64)> {
        let names = DB::list_cf(&Options::default(), &self.path).unwrap_or_default();
        names
            .into_iter()
            .filter(|n| n != "default" && n != CHECKPOINT)
            .filter_map(|n| {
                let cf = self.db.cf_handle(&n)?;
                let prop = |p: &str| self.db.property_int_value_cf(cf, p).ok().flatten().unwrap_or(0);
                let bytes = prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables");
                Some((n, i64::try_from(bytes).unwrap_or(i64::MAX)))
            })
            .collect()
    }

    /// The changes made since the last call (to produce to the changelog).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Apply the pending writes (after their transaction committed).
    pub fn commit(&mut self) -> anyhow::Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let stores: Vec<String> = pending.keys().map(|(s, _)| s.clone()).collect();
        for s in &stores {
            self.cf_or_create(s)?;
        }
        let mut batch = WriteBatch::default();
        for ((store, key), value) in &pending {
            let cf = self.db.cf_handle(store).ok_or_else(|| anyhow!("store {store} vanished"))?;
            match value {
                Some(v) => batch.put_cf(cf, key, v),
                None => batch.delete_cf(cf, key),
            }
        }
        self.db.write_opt(batch, &no_wal()).context("writing state to RocksDB")?;
        Ok(())
    }

    /// Drop the pending writes (their transaction aborted).
    pub fn rollback(&mut self) {
        self.pending.clear();
        self.changes.clear();
    }

    /// Apply one changelog record while restoring.
    pub fn restore(&mut self, partition: i32, changelog_key: &[u8], value: Option<&[u8]>) -> anyhow::Result<()> {
        let Some(split) = changelog_key.iter().position(|b| *b == 0) else {
            return Err(anyhow!("malformed changelog key"));
        };
        let store = std::str::from_utf8(&changelog_key[..split]).context("changelog store name")?.to_owned();
        let key = prefixed(partition, &changelog_key[split + 1..]);
        self.cf_or_create(&store)?;
        let cf = self.db.cf_handle(&store).ok_or_else(|| anyhow!("store {store} vanished"))?;
        match value {
            Some(v) => self.restoring.put_cf(cf, key, v),
            None => self.restoring.delete_cf(cf, key),
        }
        if self.restoring.len() >= RESTORE_BATCH {
            self.finish_restore()?;
        }
        Ok(())
    }

    /// Write the restored records still batched.
    pub fn finish_restore(&mut self) -> anyhow::Result<()> {
        let batch = std::mem::take(&mut self.restoring);
        if !batch.is_empty() {
            self.db.write_opt(batch, &no_wal()).context("writing restored state to RocksDB")?;
        }
        Ok(())
    }

    /// The changelog offsets the state reflects, written at a clean stop; removed while running
    /// so that a crash forces a full restore (as Kafka Streams does under exactly-once).
    pub fn take_checkpoint(&mut self) -> anyhow::Result<Option<BTreeMap<i32, i64>>> {
        let Some(cf) = self.db.cf_handle(CHECKPOINT) else { return Ok(None) };
        let mut out = BTreeMap::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            let (Ok(k), Ok(v)) = (<[u8; 4]>::try_from(&*k), <[u8; 8]>::try_from(&*v)) else { continue };
            out.insert(i32::from_be_bytes(k), i64::from_be_bytes(v));
        }
        self.db.drop_cf(CHECKPOINT)?;
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    /// Write the checkpoint (changelog partition → next offset).
    pub fn write_checkpoint(&mut self, offsets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        // Without a write-ahead log, the state is durable once every store's memtable is flushed.
        let names: Vec<String> = DB::list_cf(&Options::default(), &self.path).unwrap_or_default();
        for n in &names {
            if let Some(cf) = self.db.cf_handle(n) {
                self.db.flush_cf(cf).with_context(|| format!("flushing store {n}"))?;
            }
        }
        self.cf_or_create(CHECKPOINT)?;
        let cf = self.db.cf_handle(CHECKPOINT).ok_or_else(|| anyhow!("checkpoint store vanished"))?;
        for (p, o) in offsets {
            self.db.put_cf(cf, p.to_be_bytes(), o.to_be_bytes())?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Remove every store (before a full restore).
    pub fn wipe(&mut self) -> anyhow::Result<()> {
        let names: Vec<String> = DB::list_cf(&Options::default(), &self.path).unwrap_or_default();
        for n in names.iter().filter(|n| *n != "default") {
            self.db.drop_cf(n)?;
        }
        Ok(())
    }

    fn scan(
        &self,
        store: &str,
        from: &[u8],
        keep: impl Fn(&[u8]) -> bool,
        stop: impl Fn(&[u8]) -> bool,
    ) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = BTreeMap::new();
        if let Some(cf) = self.db.cf_handle(store) {
            for item in self.db.iterator_cf(cf, IteratorMode::From(from, Direction::Forward)) {
                let Ok((k, v)) = item else { break };
                if stop(&k) {
                    break;
                }
                if keep(&k) {
                    out.insert(k.to_vec(), v.to_vec());
                }
            }
        }
        for ((s, k), v) in self.pending.range((store.to_owned(), from.to_vec())..) {
            if s != store || stop(k) {
                break;
            }
            if keep(k) {
                match v {
                    Some(v) => out.insert(k.clone(), v.clone()),
                    None => out.remove(k),
                };
            }
        }
        out
    }
}

impl StateStore for RocksStore {
    fn get(&self, store: &str, key: &[u8]) -> Option<Vec<u8>> {
        let k = prefixed(self.partition.unwrap_or(0), key);
        if let Some(v) = self.pending.get(&(store.to_owned(), k.clone())) {
            return v.clone();
        }
        let cf = self.db.cf_handle(store)?;
        self.db.get_cf(cf, k).ok().flatten()
    }

    fn put(&mut self, store: &str, key: Vec<u8>, value: Vec<u8>) {
        let p = self.partition.unwrap_or(0);
        self.changes.push((p, changelog_key(store, &key), Some(value.clone())));
        self.pending.insert((store.to_owned(), prefixed(p, &key)), Some(value));
    }

    fn delete(&mut self, store: &str, key: &[u8]) {
        let p = self.partition.unwrap_or(0);
        self.changes.push((p, changelog_key(store, key), None));
        self.pending.insert((store.to_owned(), prefixed(p, key)), None);
    }

    fn range(&self, store: &str, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let rows = match self.partition {
            Some(p) => {
                let start = prefixed(p, prefix);
                self.scan(store, &start, |_| true, |k| !k.starts_with(&start))
            }
            None => self.scan(store, &[], |k| k.len() >= 4 && k[4..].starts_with(prefix), |_| false),
        };
        rows.into_iter().map(|(k, v)| (k[4..].to_vec(), v)).collect()
    }

    fn range_to(&self, store: &str, end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let p = self.partition.unwrap_or(0);
        let (start, end) = (prefixed(p, &[]), prefixed(p, end));
        let rows = self.scan(store, &start, |_| true, |k| k >= end.as_slice());
        rows.into_iter().map(|(k, v)| (k[4..].to_vec(), v)).collect()
    }

    fn set_partition(&mut self, partition: Option<i32>) {
        self.partition = partition;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_writes_are_read_back_then_committed_or_rolled_back() {
        let dir = std::env::temp_dir().join(format!("sluice-rocks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = RocksStore::open(&dir).unwrap();
        s.set_partition(Some(1));
        s.put("agg", b"k1".to_vec(), b"v1".to_vec());
        s.put("agg", b"k2".to_vec(), b"v2".to_vec());
        assert_eq!(s.get("agg", b"k1"), Some(b"v1".to_vec()));
        s.commit().unwrap();
        s.delete("agg", b"k1");
        assert_eq!(s.get("agg", b"k1"), None);
        assert_eq!(s.range("agg", b"k").len(), 1);
        s.rollback();
        assert_eq!(s.get("agg", b"k1"), Some(b"v1".to_vec()));
        // Partitions are kept apart; a partition-less range sees them all.
        s.set_partition(Some(2));
        assert_eq!(s.get("agg", b"k1"), None);
        s.put("agg", b"k3".to_vec(), b"v3".to_vec());
        s.set_partition(None);
        assert_eq!(s.range("agg", b"k").len(), 3);
        let changes = s.take_changes();
        assert_eq!(changes.last().unwrap(), &(2, changelog_key("agg", b"k3"), Some(b"v3".to_vec())));
        // Restore from changelog records, and checkpoints.
        s.restore(5, &changelog_key("view-T", b"x"), Some(b"1")).unwrap();
        s.finish_restore().unwrap();
        s.set_partition(Some(5));
        assert_eq!(s.get("view-T", b"x"), Some(b"1".to_vec()));
        // Without a write-ahead log, the checkpoint flushes the stores: all survives a reopen.
        s.write_checkpoint(&BTreeMap::from([(5, 42)])).unwrap();
        drop(s);
        let mut s = RocksStore::open(&dir).unwrap();
        s.set_partition(Some(5));
        assert_eq!(s.get("view-T", b"x"), Some(b"1".to_vec()));
        s.set_partition(Some(1));
        assert_eq!(s.get("agg", b"k1"), Some(b"v1".to_vec()));
        assert_eq!(s.take_checkpoint().unwrap(), Some(BTreeMap::from([(5, 42)])));
        assert_eq!(s.take_checkpoint().unwrap(), None);
        drop(s);
        std::fs::remove_dir_all(&dir).ok();
    }
}
