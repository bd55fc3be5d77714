//! Listing in S3 byte order, also on servers that do not list in byte order.
//!
//! S3 lists keys in UTF-8 byte order, so `a-b` < `a.txt` < `a/x`. File-system backed servers
//! (SeaweedFS 4.x among them) walk their directory tree instead and list `a/x` before `a-b`
//! (a directory sorts by its bare name), and their `start-after` follows that tree order too.
//! The engine merge-joins sorted listings, so a wrong order would look like missing objects.
//!
//! Two strategies:
//! - **flat**: ListObjectsV2 without delimiter, pages in the server's order (AWS, MinIO, ...);
//! - **walk**: one delimiter (`/`) listing per directory; each level's files are emitted in
//!   order, and a sub-directory `d/` is descended into exactly when the next file of the level
//!   sorts after `d/` (or the level ends). Memory: one page per open level plus the few held
//!   sub-directories. `start_after` is applied by us (whole sub-trees before it are skipped).
//!
//! SeaweedFS also keeps implicit directories after their last object is deleted and lists them
//! (in delimiter listings only) as `dir/` with an empty ETag; the walk drops those.
//!
//! Both check that keys come out strictly increasing and end the listing with an error
//! otherwise, so a server with yet another order can never silently mislead a merge-join.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, OnceLock};

use aws_sdk_s3::types::EncodingType;
use aws_sdk_s3::Client;
use futures::stream::{self, BoxStream, StreamExt};
use s3ferry_store::checksum::clean_etag;
use s3ferry_store::{ErrorKind, ListOptions, ObjectMeta, Result, StoreError};

use crate::error::{map_sdk_error, ErrCtx};

/// How [`crate::S3Store`] lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListMode {
    /// Flat, unless the server is known to list in tree order (SeaweedFS): then walk.
    #[default]
    Auto,
    /// One flat ListObjectsV2 pagination (S3, MinIO).
    Flat,
    /// One delimiter listing per directory, merged into byte order by us.
    Walk,
}

/// Servers known to list in directory-tree order rather than byte order (by `Server` header).
pub(crate) fn server_lists_in_tree_order(server: &str) -> bool {
    server.to_ascii_lowercase().contains("seaweedfs")
}

/// Records the `Server` header of the first response this client gets.
#[derive(Debug, Default)]
pub(crate) struct ServerHeader(pub Arc<OnceLock<String>>);

impl aws_sdk_s3::config::Intercept for ServerHeader {
    fn name(&self) -> &'static str {
        "s3ferry::ServerHeader"
    }

    fn read_after_transmit(
        &self,
        context: &aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if self.0.get().is_none() {
            let server = context
                .response()
                .headers()
                .get("server")
                .unwrap_or_default()
                .to_string();
            let _ = self.0.set(server);
        }
        Ok(())
    }
}

/// ListObjectsV2 with `encoding-type=url` encodes like form data (`+` is a space), as botocore
/// decodes it; SeaweedFS and S3 agree.
pub(crate) fn decode_listed(s: &str, urlenc: bool) -> String {
    if !urlenc {
        return s.to_string();
    }
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

fn to_meta(o: &aws_sdk_s3::types::Object, urlenc: bool) -> ObjectMeta {
    ObjectMeta {
        key: decode_listed(o.key().unwrap_or_default(), urlenc),
        size: o.size().unwrap_or(0).max(0) as u64,
        last_modified: o
            .last_modified()
            .and_then(|d| std::time::SystemTime::try_from(*d).ok()),
        etag: o.e_tag().map(clean_etag),
        storage_class: o.storage_class().map(|s| s.as_str().to_string()),
        ..Default::default()
    }
}

pub(crate) struct Lister {
    pub client: Client,
    pub ctx: ErrCtx,
    pub mode: ListMode,
    pub server: Arc<OnceLock<String>>,
    /// Keys per listing request (aws-cli's `--page-size`); `None` = the server's (1,000).
    pub page_size: Option<i32>,
}

/// Whole sub-tree `dir` (ending in `/`) sorts at or before `start_after`.
fn subtree_before(dir: &str, start_after: Option<&str>) -> bool {
    match start_after {
        Some(sa) => sa > dir && !sa.starts_with(dir),
        None => false,
    }
}

struct Level {
    prefix: String,
    token: Option<String>,
    done: bool,
    files: VecDeque<ObjectMeta>,
    held: BTreeSet<String>,
}

impl Level {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            token: None,
            done: false,
            files: VecDeque::new(),
            held: BTreeSet::new(),
        }
    }
}

enum Strategy {
    Undecided,
    Flat {
        token: Option<String>,
        page: VecDeque<ObjectMeta>,
        done: bool,
    },
    Walk {
        stack: Vec<Level>,
    },
    Finished,
}

struct State {
    lister: Arc<Lister>,
    opts: ListOptions,
    strategy: Strategy,
    last: Option<String>,
}

impl Lister {
    pub fn list(self: Arc<Self>, opts: ListOptions) -> BoxStream<'static, Result<ObjectMeta>> {
        let strategy = match self.mode {
            ListMode::Flat => Strategy::Flat {
                token: None,
                page: VecDeque::new(),
                done: false,
            },
            ListMode::Walk => Strategy::Walk {
                stack: vec![Level::new(opts.prefix.clone())],
            },
            ListMode::Auto => Strategy::Undecided,
        };
        let st = State {
            lister: self,
            opts,
            strategy,
            last: None,
        };
        stream::unfold(st, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
        .boxed()
    }

    fn walk_needed(&self) -> Option<bool> {
        self.server.get().map(|s| server_lists_in_tree_order(s))
    }
}

impl State {
    fn fail(&mut self, e: StoreError) -> Option<Result<ObjectMeta>> {
        self.strategy = Strategy::Finished;
        Some(Err(e))
    }

    /// Check strict byte order, then hand the entry out.
    fn emit(&mut self, m: ObjectMeta) -> Option<Result<ObjectMeta>> {
        if let Some(prev) = &self.last {
            if m.key.as_str() <= prev.as_str() {
                let msg = format!(
                    "the server listed {:?} after {:?}, not in S3 byte order; listing stopped (try list mode 'walk')",
                    m.key, prev
                );
                return self.fail(StoreError::new(ErrorKind::Other, "list", msg));
            }
        }
        self.last = Some(m.key.clone());
        Some(Ok(m))
    }

    async fn next(&mut self) -> Option<Result<ObjectMeta>> {
        loop {
            match &mut self.strategy {
                Strategy::Finished => return None,
                Strategy::Undecided => {
                    let walk = match self.lister.walk_needed() {
                        Some(w) => w,
                        None => {
                            // Any answer tells us the server; errors surface in the listing itself.
                            let _ = self
                                .lister
                                .client
                                .head_bucket()
                                .bucket(&self.lister.ctx.bucket)
                                .send()
                                .await;
                            self.lister.walk_needed().unwrap_or(false)
                        }
                    };
                    self.strategy = if walk {
                        tracing::debug!(bucket = %self.lister.ctx.bucket, "server lists in tree order; walking directories");
                        Strategy::Walk {
                            stack: vec![Level::new(self.opts.prefix.clone())],
                        }
                    } else {
                        Strategy::Flat {
                            token: None,
                            page: VecDeque::new(),
                            done: false,
                        }
                    };
                }
                Strategy::Flat { token, page, done } => {
                    if let Some(m) = page.pop_front() {
                        return self.emit(m);
                    }
                    if *done {
                        self.strategy = Strategy::Finished;
                        return None;
                    }
                    let l = &self.lister;
                    let mut req = l
                        .client
                        .list_objects_v2()
                        .bucket(&l.ctx.bucket)
                        .encoding_type(EncodingType::Url)
                        .set_max_keys(l.page_size)
                        .set_continuation_token(token.clone());
                    if !self.opts.prefix.is_empty() {
                        req = req.prefix(&self.opts.prefix);
                    }
                    if token.is_none() {
                        req = req.set_start_after(self.opts.start_after.clone());
                    }
                    let out = match req.send().await {
                        Ok(o) => o,
                        Err(e) => {
                            let e = map_sdk_error(&l.ctx, "list", None, e);
                            return self.fail(e);
                        }
                    };
                    let urlenc = out.encoding_type() == Some(&EncodingType::Url);
                    page.extend(out.contents().iter().map(|o| to_meta(o, urlenc)));
                    match (out.is_truncated(), out.next_continuation_token()) {
                        (Some(true), Some(t)) if !t.is_empty() => *token = Some(t.to_string()),
                        _ => *done = true,
                    }
                }
                Strategy::Walk { stack } => {
                    let Some(top) = stack.last_mut() else {
                        self.strategy = Strategy::Finished;
                        return None;
                    };
                    if let Some(f) = top.files.front() {
                        // A held directory whose keys sort before this file goes first.
                        let first_dir = top
                            .held
                            .first()
                            .filter(|d| d.as_str() < f.key.as_str())
                            .cloned();
                        if let Some(d) = first_dir {
                            top.held.remove(&d);
                            stack.push(Level::new(d));
                            continue;
                        }
                        let Some(f) = top.files.pop_front() else {
                            continue;
                        };
                        if self
                            .opts
                            .start_after
                            .as_deref()
                            .is_some_and(|sa| f.key.as_str() <= sa)
                        {
                            continue;
                        }
                        return self.emit(f);
                    }
                    if !top.done {
                        let l = &self.lister;
                        let req = l
                            .client
                            .list_objects_v2()
                            .bucket(&l.ctx.bucket)
                            .encoding_type(EncodingType::Url)
                            .set_max_keys(l.page_size)
                            .delimiter("/")
                            .set_prefix((!top.prefix.is_empty()).then(|| top.prefix.clone()))
                            .set_continuation_token(top.token.clone());
                        let out = match req.send().await {
                            Ok(o) => o,
                            Err(e) => {
                                let e = map_sdk_error(&l.ctx, "list", None, e);
                                return self.fail(e);
                            }
                        };
                        let urlenc = out.encoding_type() == Some(&EncodingType::Url);
                        let sa = self.opts.start_after.as_deref();
                        for o in out.contents() {
                            let m = to_meta(o, urlenc);
                            // SeaweedFS keeps a directory after its last file is deleted and lists
                            // it inside itself as `dir/` with an empty ETag; it is no object (a
                            // real `dir/` marker object has an MD5 ETag and shows in flat lists).
                            if m.key.ends_with('/')
                                && m.etag.as_deref().unwrap_or_default().is_empty()
                            {
                                continue;
                            }
                            top.files.push_back(m);
                        }
                        for cp in out.common_prefixes() {
                            let d = decode_listed(cp.prefix().unwrap_or_default(), urlenc);
                            // A server echoing the level itself as a prefix would loop forever.
                            if d.len() > top.prefix.len()
                                && d.starts_with(&top.prefix)
                                && !subtree_before(&d, sa)
                            {
                                top.held.insert(d);
                            }
                        }
                        match (out.is_truncated(), out.next_continuation_token()) {
                            (Some(true), Some(t))
                                if !t.is_empty() && top.token.as_deref() != Some(t) =>
                            {
                                top.token = Some(t.to_string())
                            }
                            _ => top.done = true,
                        }
                        continue;
                    }
                    if let Some(d) = top.held.pop_first() {
                        stack.push(Level::new(d));
                        continue;
                    }
                    stack.pop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_botocore() {
        assert_eq!(decode_listed("a+b%2Bc%25%C3%BC", true), "a b+c%ü");
        assert_eq!(decode_listed("a+b", false), "a+b");
    }

    #[test]
    fn subtree_pruning() {
        assert!(subtree_before("p/a/", Some("p/a0")));
        assert!(!subtree_before("p/a/", Some("p/a/x")));
        assert!(!subtree_before("p/a/", Some("p/a.txt")));
        assert!(!subtree_before("p/a/", None));
        assert!(server_lists_in_tree_order("SeaweedFS 8000GB 4.48"));
        assert!(!server_lists_in_tree_order("AmazonS3"));
    }
}
