//! Sync sides, their sorted listings (keys relative to the side's prefix) and the merge-join
//! of two listings. Memory stays flat: one entry per side is held at a time.

use std::cmp::Ordering;

use futures::stream::{BoxStream, StreamExt};
use s3ferry_store::{DynStore, ErrorKind, ListOptions, ObjectMeta, Result, StoreError};

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

    pub fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.store.describe().trim_end_matches('/'),
            self.prefix
        )
    }

    /// The side's entries sorted by relative key, filtered by include/exclude.
    pub fn list(&self, filters: &Filters) -> BoxStream<'static, Result<Entry>> {
        let plen = self.prefix.len();
        let filters = filters.clone();
        self.store
            .list(ListOptions::prefix(self.prefix.clone()))
            .filter_map(move |r| {
                let out = match r {
                    Ok(meta) => {
                        let rel = meta.key.get(plen..).unwrap_or_default().to_string();
                        (!rel.is_empty() && filters.includes(&rel))
                            .then_some(Ok(Entry { rel, meta }))
                    }
                    Err(e) => Some(Err(e)),
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

/// A listed object with its key relative to the side's prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub rel: String,
    pub meta: ObjectMeta,
}

/// One step of a merge-join.
#[derive(Debug)]
pub enum Joined {
    Pair(Option<Entry>, Option<Entry>),
    /// A per-entry listing error (the listing goes on); `true` if it came from the source side.
    EntryError(bool, StoreError),
}

/// Merge-join of two sorted listings by relative key.
pub struct MergeJoin {
    a: BoxStream<'static, Result<Entry>>,
    b: BoxStream<'static, Result<Entry>>,
    pa: Option<Entry>,
    pb: Option<Entry>,
    a_done: bool,
    b_done: bool,
    last_a: Option<String>,
    last_b: Option<String>,
}

impl MergeJoin {
    pub fn new(a: BoxStream<'static, Result<Entry>>, b: BoxStream<'static, Result<Entry>>) -> Self {
        Self {
            a,
            b,
            pa: None,
            pb: None,
            a_done: false,
            b_done: false,
            last_a: None,
            last_b: None,
        }
    }

    /// Pull the next entry of one side into its slot. Errors without a key are fatal.
    async fn fill(
        s: &mut BoxStream<'static, Result<Entry>>,
        slot: &mut Option<Entry>,
        done: &mut bool,
        last: &mut Option<String>,
    ) -> Result<Option<StoreError>> {
        if slot.is_some() || *done {
            return Ok(None);
        }
        match s.next().await {
            None => *done = true,
            Some(Ok(e)) => {
                if last.as_deref().is_some_and(|l| l >= e.rel.as_str()) {
                    return Err(StoreError::new(
                        ErrorKind::Other,
                        "list",
                        format!(
                            "listing is not sorted: {:?} came after {:?}",
                            e.rel,
                            last.as_deref().unwrap_or("")
                        ),
                    ));
                }
                *last = Some(e.rel.clone());
                *slot = Some(e);
            }
            Some(Err(e)) if e.key.is_some() && !e.kind.fatal() => return Ok(Some(e)),
            Some(Err(e)) => return Err(e),
        }
        Ok(None)
    }

    /// The next pair, or `None` when both listings are exhausted.
    pub async fn next(&mut self) -> Result<Option<Joined>> {
        if let Some(e) = Self::fill(
            &mut self.a,
            &mut self.pa,
            &mut self.a_done,
            &mut self.last_a,
        )
        .await?
        {
            return Ok(Some(Joined::EntryError(true, e)));
        }
        if let Some(e) = Self::fill(
            &mut self.b,
            &mut self.pb,
            &mut self.b_done,
            &mut self.last_b,
        )
        .await?
        {
            return Ok(Some(Joined::EntryError(false, e)));
        }
        let ord = match (&self.pa, &self.pb) {
            (None, None) => return Ok(None),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.rel.as_bytes().cmp(b.rel.as_bytes()),
        };
        Ok(Some(match ord {
            Ordering::Less => Joined::Pair(self.pa.take(), None),
            Ordering::Greater => Joined::Pair(None, self.pb.take()),
            Ordering::Equal => Joined::Pair(self.pa.take(), self.pb.take()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3ferry_store::memory::MemoryStore;
    use s3ferry_store::StoreExt;
    use std::sync::Arc;

    #[tokio::test]
    async fn merge_join_pairs_by_key() {
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
        let mut j = MergeJoin::new(sa.list(&f), sb.list(&f));
        let mut got = Vec::new();
        while let Some(Joined::Pair(x, y)) = j.next().await.unwrap() {
            got.push((x.map(|e| e.rel), y.map(|e| e.rel)));
        }
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            got,
            vec![
                (s("a"), None),
                (s("b"), s("b")),
                (None, s("c")),
                (s("d"), s("d")),
                (None, s("e"))
            ]
        );
    }
}
