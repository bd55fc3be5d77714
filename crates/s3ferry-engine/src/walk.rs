//! Sync sides, their sorted listings (keys relative to the side's prefix) and the merge-join
//! of two listings. Memory stays flat: one entry per side is held at a time.

use futures::stream::{BoxStream, StreamExt};
use s3ferry_store::{DynStore, ErrorKind, ListOptions, ObjectMeta, Result, StoreError};

use crate::plan::BaseRecord;

use crate::filter::Filters;

/// What kind of store a side is; decides how content identity is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideKind {
    /// A local directory: exact mtimes, content hashing is local I/O.
    Local,
    /// S3 or an S3-like store (memory in tests): ETags, LastModified.
    Remote,
}

/// One side of a sync: a store and the key prefix under it (empty or ending with `/`).
#[derive(Clone, Debug)]
pub struct Side {
    pub store: DynStore,
    pub prefix: String,
    pub kind: SideKind,
}

impl Side {
    pub fn new(store: DynStore, prefix: impl Into<String>) -> Self {
        let kind = if store.capabilities().local {
            SideKind::Local
        } else {
            SideKind::Remote
        };
        Self {
            store,
            prefix: prefix.into(),
            kind,
        }
    }

    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// The side's identity in the state database (with the endpoint for S3).
    pub fn state_id(&self) -> String {
        format!(
            "{}/{}",
            self.store.state_id().trim_end_matches('/'),
            self.prefix
        )
    }

    pub fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.store.describe().trim_end_matches('/'),
            self.prefix
        )
    }

    /// The side's entries sorted by relative key, filtered by include/exclude.
    pub fn list(&self, filters: &Filters) -> BoxStream<'static, Result<Entry>> {
        self.list_reporting(filters, false)
    }

    /// [`Side::list`], and with `report_skipped` also the entries the store leaves out
    /// (symlinks, special files), each as a keyed `Unsupported` error from op `list` whose key
    /// is relative to the prefix (see [`is_skipped_entry`]); excluded ones are not reported.
    pub fn list_reporting(
        &self,
        filters: &Filters,
        report_skipped: bool,
    ) -> BoxStream<'static, Result<Entry>> {
        self.list_from(&self.prefix, filters, report_skipped)
    }

    /// [`Side::list_reporting`] of only the keys that start with `start`, a prefix at least as
    /// long as the side's (a wildcard's literal text); keys stay relative to the side's prefix.
    pub fn list_from(
        &self,
        start: &str,
        filters: &Filters,
        report_skipped: bool,
    ) -> BoxStream<'static, Result<Entry>> {
        let plen = self.prefix.len();
        let filters = filters.clone();
        self.store
            .list(ListOptions::prefix(start).report_skipped(report_skipped))
            .filter_map(move |r| {
                let out = match r {
                    Ok(meta) => {
                        let rel = meta.key.get(plen..).unwrap_or_default().to_string();
                        (!rel.is_empty() && filters.includes(&rel))
                            .then_some(Ok(Entry { rel, meta }))
                    }
                    Err(mut e) if is_skipped_entry(&e) => {
                        let rel = e
                            .key
                            .as_deref()
                            .and_then(|k| k.get(plen..))
                            .unwrap_or_default()
                            .to_string();
                        e.key = Some(rel.clone());
                        (!rel.is_empty() && filters.includes(&rel)).then_some(Err(e))
                    }
                    Err(e) => Some(Err(e)),
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

/// Is this listing error an entry the store skipped on purpose (a symlink or special file,
/// reported because the listing asked for it) rather than a failure?
pub fn is_skipped_entry(e: &StoreError) -> bool {
    e.kind == ErrorKind::Unsupported && e.op == "list" && e.key.is_some()
}

/// A listed object with its key relative to the side's prefix.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub rel: String,
    pub meta: ObjectMeta,
}

/// One item of a join input: a listed entry, or a base record from the state database.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Entry(Entry),
    Base(BaseRecord),
    /// A record of a job's own sorted state input (opaque to the engine; e.g. a line of an
    /// archive's state file).
    Record(String),
}

/// A sorted input of a [`Join`]: `(key, item)` in strictly increasing byte order of keys.
/// Errors carrying a key are about one entry (the input goes on); others end the join.
pub type JoinInput = BoxStream<'static, Result<(String, Item)>>;

/// A side's listing as a join input.
pub fn entries(list: BoxStream<'static, Result<Entry>>) -> JoinInput {
    list.map(|r| r.map(|e| (e.rel.clone(), Item::Entry(e))))
        .boxed()
}

/// A pair's base records as a join input.
pub fn bases(
    s: BoxStream<'static, std::result::Result<(String, BaseRecord), crate::journal::JournalError>>,
) -> JoinInput {
    s.map(|r| {
        r.map(|(k, b)| (k, Item::Base(b)))
            .map_err(|e| StoreError::new(ErrorKind::Other, "state", e.to_string()))
    })
    .boxed()
}

/// A job's own sorted `(key, record)` stream as a join input.
pub fn records(s: BoxStream<'static, Result<(String, String)>>) -> JoinInput {
    s.map(|r| r.map(|(k, v)| (k, Item::Record(v)))).boxed()
}

/// One step of a join: a key with what each input has for it, or a per-entry error of one
/// input.
#[derive(Debug)]
pub enum Joined {
    Row(Row),
    /// A per-entry listing error (the input goes on), with the index of its input.
    EntryError(usize, StoreError),
}

/// What the inputs of a join have for one key.
#[derive(Debug, Default)]
pub struct Row {
    pub key: String,
    pub items: Vec<Option<Item>>,
}

impl Row {
    /// Input `i`'s entry, if it is a listing that has the key.
    pub fn entry(&mut self, i: usize) -> Option<Entry> {
        match self.items.get_mut(i).and_then(Option::take) {
            Some(Item::Entry(e)) => Some(e),
            Some(other) => {
                self.items[i] = Some(other);
                None
            }
            None => None,
        }
    }

    /// Input `i`'s base record, if it is a state input that has the key.
    pub fn base(&mut self, i: usize) -> Option<BaseRecord> {
        match self.items.get_mut(i).and_then(Option::take) {
            Some(Item::Base(b)) => Some(b),
            Some(other) => {
                self.items[i] = Some(other);
                None
            }
            None => None,
        }
    }
}

impl Row {
    /// Input `i`'s record, if it is a record input that has the key.
    pub fn record(&mut self, i: usize) -> Option<String> {
        match self.items.get_mut(i).and_then(Option::take) {
            Some(Item::Record(r)) => Some(r),
            Some(other) => {
                self.items[i] = Some(other);
                None
            }
            None => None,
        }
    }
}

struct Lane {
    input: JoinInput,
    head: Option<(String, Item)>,
    done: bool,
    last: Option<String>,
}

/// Sorted merge-join of any number of inputs by key (byte order): one row per key present in
/// any input. Memory stays flat: one item per input is held at a time. Every input must be
/// strictly increasing, or the join fails (a misordered listing must never look like missing
/// keys, which would mean false deletes).
pub struct Join {
    lanes: Vec<Lane>,
}

impl Join {
    pub fn new(inputs: Vec<JoinInput>) -> Self {
        Self {
            lanes: inputs
                .into_iter()
                .map(|input| Lane {
                    input,
                    head: None,
                    done: false,
                    last: None,
                })
                .collect(),
        }
    }

    /// The next row (or per-entry error), or `None` when every input is exhausted.
    pub async fn next(&mut self) -> Result<Option<Joined>> {
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if lane.head.is_some() || lane.done {
                continue;
            }
            match lane.input.next().await {
                None => lane.done = true,
                Some(Ok((k, item))) => {
                    if lane
                        .last
                        .as_deref()
                        .is_some_and(|l| l.as_bytes() >= k.as_bytes())
                    {
                        return Err(StoreError::new(
                            ErrorKind::Other,
                            "list",
                            format!(
                                "input {i} is not sorted: {k:?} came after {:?}",
                                lane.last.as_deref().unwrap_or("")
                            ),
                        ));
                    }
                    lane.last = Some(k.clone());
                    lane.head = Some((k, item));
                }
                Some(Err(e)) if e.key.is_some() && !e.kind.fatal() => {
                    return Ok(Some(Joined::EntryError(i, e)))
                }
                Some(Err(e)) => return Err(e),
            }
        }
        let Some(min) = self
            .lanes
            .iter()
            .filter_map(|l| l.head.as_ref().map(|(k, _)| k.as_bytes()))
            .min()
            .map(<[u8]>::to_vec)
        else {
            return Ok(None);
        };
        let mut row = Row {
            key: String::new(),
            items: Vec::with_capacity(self.lanes.len()),
        };
        for lane in &mut self.lanes {
            let hit = lane
                .head
                .as_ref()
                .is_some_and(|(k, _)| k.as_bytes() == min.as_slice());
            match if hit { lane.head.take() } else { None } {
                Some((k, item)) => {
                    row.key = k;
                    row.items.push(Some(item));
                }
                None => row.items.push(None),
            }
        }
        Ok(Some(Joined::Row(row)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use s3ferry_store::memory::MemoryStore;
    use s3ferry_store::StoreExt;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[tokio::test]
    async fn joins_two_listings_and_a_base_stream_by_key() {
        let a = MemoryStore::new();
        let b = MemoryStore::new();
        for k in ["p/a", "p/b", "p/d"] {
            a.put_bytes(k, "x").await.unwrap();
        }
        for k in ["q/b", "q/c", "q/d", "q/e"] {
            b.put_bytes(k, "y").await.unwrap();
        }
        let sa = Side::new(Arc::new(a), "p/");
        let sb = Side::new(Arc::new(b), "q/");
        let f = Filters::default();
        let base = |k: &str| {
            Ok((
                k.to_string(),
                Item::Base(BaseRecord {
                    src_sig: k.into(),
                    dst_sig: String::new(),
                }),
            ))
        };
        // "z" is gone from both listings: only the base has it.
        let bs: JoinInput = futures::stream::iter(vec![base("a"), base("z")]).boxed();
        let mut j = Join::new(vec![entries(sa.list(&f)), entries(sb.list(&f)), bs]);
        let mut got = Vec::new();
        while let Some(Joined::Row(mut r)) = j.next().await.unwrap() {
            let (x, y, z) = (r.entry(0), r.entry(1), r.base(2));
            got.push((r.key, x.is_some(), y.is_some(), z.is_some()));
        }
        let k = |s: &str| s.to_string();
        assert_eq!(
            got,
            vec![
                (k("a"), true, false, true),
                (k("b"), true, true, false),
                (k("c"), false, true, false),
                (k("d"), true, true, false),
                (k("e"), false, true, false),
                (k("z"), false, false, true),
            ]
        );
    }

    #[tokio::test]
    async fn an_unsorted_input_fails_the_join() {
        let item = |k: &str| {
            Ok((
                k.to_string(),
                Item::Base(BaseRecord {
                    src_sig: String::new(),
                    dst_sig: String::new(),
                }),
            ))
        };
        let bad: JoinInput = futures::stream::iter(vec![item("b"), item("a")]).boxed();
        let mut j = Join::new(vec![bad]);
        assert!(j.next().await.is_ok());
        let e = j.next().await.unwrap_err();
        assert!(e.to_string().contains("not sorted"), "{e}");
    }

    #[tokio::test]
    async fn keyless_or_fatal_errors_end_the_join_keyed_ones_do_not() {
        let base = |k: &str| -> Result<(String, Item)> {
            Ok((
                k.to_string(),
                Item::Base(BaseRecord {
                    src_sig: k.into(),
                    dst_sig: String::new(),
                }),
            ))
        };
        let keyed = StoreError::new(ErrorKind::Transient, "list", "one entry").with_key("b");
        let input: JoinInput =
            futures::stream::iter(vec![base("a"), Err(keyed), base("c")]).boxed();
        let mut j = Join::new(vec![input]);
        let mut seen = Vec::new();
        while let Some(x) = j.next().await.unwrap() {
            seen.push(match x {
                Joined::Row(r) => r.key,
                Joined::EntryError(i, e) => format!("error {i} {}", e.key.unwrap_or_default()),
            });
        }
        assert_eq!(seen, ["a", "error 0 b", "c"]);
        for e in [
            StoreError::new(ErrorKind::Transient, "list", "reset"),
            StoreError::new(ErrorKind::PermissionDenied, "list", "no").with_key("b"),
        ] {
            let input: JoinInput = futures::stream::iter(vec![base("a"), Err(e)]).boxed();
            let mut j = Join::new(vec![input]);
            let mut rows = 0;
            let end = loop {
                match j.next().await {
                    Ok(Some(_)) => rows += 1,
                    other => break other,
                }
            };
            assert!(end.is_err(), "the join ends with the error");
            assert_eq!(rows, 1, "the row before the error, then the error");
        }
    }

    proptest! {
        /// Against a BTreeMap model, with per-entry errors sprinkled in: each row carries each
        /// input's own item for its key, and every error comes out once, tagged with its input,
        /// in that input's order.
        #[test]
        fn join_carries_items_and_tags_errors(inputs in proptest::collection::vec(
            proptest::collection::btree_map("[ab/.-]{0,3}", proptest::bool::weighted(0.2), 0..10), 1..4)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let n = inputs.len();
            let mut model: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
            let mut model_errors = vec![Vec::new(); n];
            let mut streams: Vec<JoinInput> = Vec::new();
            for (i, m) in inputs.iter().enumerate() {
                let mut items = Vec::new();
                for (k, &err) in m {
                    if err {
                        items.push(Err(StoreError::new(ErrorKind::Transient, "list", "x").with_key(k.clone())));
                        model_errors[i].push(k.clone());
                    } else {
                        let sig = format!("{i}:{k}");
                        items.push(Ok((k.clone(), Item::Base(BaseRecord { src_sig: sig.clone(), dst_sig: String::new() }))));
                        model.entry(k.clone()).or_insert_with(|| vec![None; n])[i] = Some(sig);
                    }
                }
                streams.push(futures::stream::iter(items).boxed());
            }
            let (rows, errors) = rt.block_on(async {
                let mut j = Join::new(streams);
                let (mut rows, mut errors) = (Vec::new(), vec![Vec::new(); n]);
                while let Some(x) = j.next().await.unwrap() {
                    match x {
                        Joined::Row(mut r) => {
                            let items: Vec<Option<String>> = (0..n).map(|i| r.base(i).map(|b| b.src_sig)).collect();
                            rows.push((r.key, items));
                        }
                        Joined::EntryError(i, e) => errors[i].push(e.key.unwrap_or_default()),
                    }
                }
                (rows, errors)
            });
            prop_assert_eq!(rows, model.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(errors, model_errors);
        }
    }

    proptest! {
        /// Against a model: every key of every input appears exactly once, in byte order,
        /// with exactly the inputs that have it.
        #[test]
        fn join_matches_a_model(sets in proptest::collection::vec(
            proptest::collection::btree_set("[a-c/.-]{0,3}", 0..8), 1..4)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut model: BTreeMap<Vec<u8>, Vec<bool>> = BTreeMap::new();
            for (i, s) in sets.iter().enumerate() {
                for k in s {
                    model.entry(k.as_bytes().to_vec()).or_insert_with(|| vec![false; sets.len()])[i] = true;
                }
            }
            let inputs: Vec<JoinInput> = sets
                .iter()
                .map(|s| {
                    let mut v: Vec<&String> = s.iter().collect();
                    v.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                    let items: Vec<Result<(String, Item)>> = v
                        .into_iter()
                        .map(|k| Ok((k.clone(), Item::Base(BaseRecord { src_sig: k.clone(), dst_sig: String::new() }))))
                        .collect();
                    futures::stream::iter(items).boxed()
                })
                .collect();
            let got = rt.block_on(async {
                let mut j = Join::new(inputs);
                let mut out = Vec::new();
                while let Some(Joined::Row(r)) = j.next().await.unwrap() {
                    out.push((r.key.as_bytes().to_vec(), r.items.iter().map(Option::is_some).collect::<Vec<_>>()));
                }
                out
            });
            let want: Vec<(Vec<u8>, Vec<bool>)> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }
}
