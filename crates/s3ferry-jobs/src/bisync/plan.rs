//! Three-way planning for bisync: the local entry, the remote entry and the base record (both
//! sides' signatures as of the last round that synced the key) decide one action. Pure; the
//! executor settles `Check` by content and records the new base after each action.
//!
//! The rules (SEMANTICS: bisync):
//! - changed on one side only → copied to the other;
//! - deleted on one side, unchanged on the other → deleted there when deletes go that way
//!   (`--up-delete` / `--down-delete`), else left alone: never copied back (the base remembers);
//! - changed on one side, deleted on the other → the edit wins and is copied;
//! - changed on both, or new on both → same content is merely recorded, different content is a
//!   conflict;
//! - gone from both → the base record is forgotten.

use s3ferry_engine::plan::{signature, BaseRecord};
use s3ferry_engine::walk::{Entry, SideKind};

/// Which ways changes may flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directions {
    pub up: bool,
    pub down: bool,
    pub up_delete: bool,
    pub down_delete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiAction {
    /// Nothing changed since the base.
    Unchanged,
    /// Copy local → remote.
    Up(Why),
    /// Copy remote → local.
    Down(Why),
    /// The local file was deleted: delete the object.
    DeleteRemote,
    /// The object was deleted: delete the local file.
    DeleteLocal,
    /// Deleted on one side, deletes do not go that way: leave the other side alone (not copied
    /// back; the base keeps the key so later rounds agree).
    KeepDeleted,
    /// A change that may flow only the other way (`--only-up` / `--only-down`): left for now.
    Held,
    /// Gone from both sides: forget the base record.
    Forget,
    /// Both sides exist and changed (or are new) with the same size: compare content; same →
    /// record a new base, different → conflict.
    Check,
    /// Both sides changed differently.
    Conflict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    New,
    Changed,
    /// Changed on this side, deleted on the other.
    ChangedOverDelete,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::New => "new",
            Why::Changed => "changed",
            Why::ChangedOverDelete => "changed here, deleted there: the edit wins",
        }
    }
}

/// Has a side changed since its base signature? No base signature = yes.
fn changed(kind: SideKind, e: &Entry, base_sig: Option<&str>) -> bool {
    match (signature(kind, &e.meta), base_sig) {
        (Some(s), Some(b)) => s != b,
        _ => true,
    }
}

/// Decide one key.
pub fn plan3(
    local: Option<&Entry>,
    remote: Option<&Entry>,
    base: Option<&BaseRecord>,
    d: Directions,
) -> BiAction {
    let lb = base.map(|b| b.src_sig.as_str());
    let rb = base.map(|b| b.dst_sig.as_str());
    let up = |w| {
        if d.up {
            BiAction::Up(w)
        } else {
            BiAction::Held
        }
    };
    let down = |w| {
        if d.down {
            BiAction::Down(w)
        } else {
            BiAction::Held
        }
    };
    match (local, remote) {
        (None, None) => BiAction::Forget,
        (Some(_), None) if base.is_none() => up(Why::New),
        (None, Some(_)) if base.is_none() => down(Why::New),
        (Some(l), None) => {
            if changed(SideKind::Local, l, lb) {
                up(Why::ChangedOverDelete)
            } else if d.down && d.down_delete {
                BiAction::DeleteLocal
            } else {
                BiAction::KeepDeleted
            }
        }
        (None, Some(r)) => {
            if changed(SideKind::Remote, r, rb) {
                down(Why::ChangedOverDelete)
            } else if d.up && d.up_delete {
                BiAction::DeleteRemote
            } else {
                BiAction::KeepDeleted
            }
        }
        (Some(l), Some(r)) => {
            let (lc, rc) = (
                changed(SideKind::Local, l, lb),
                changed(SideKind::Remote, r, rb),
            );
            match (lc, rc) {
                (false, false) => BiAction::Unchanged,
                (true, false) => up(Why::Changed),
                (false, true) => down(Why::Changed),
                (true, true) if l.meta.size == r.meta.size => BiAction::Check,
                (true, true) => BiAction::Conflict,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use s3ferry_store::ObjectMeta;
    use std::time::{Duration, SystemTime};

    fn local(size: u64, mtime: u64) -> Entry {
        Entry {
            rel: "k".into(),
            meta: ObjectMeta {
                key: "k".into(),
                size,
                mtime: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime)),
                inode: Some(1),
                ..Default::default()
            },
        }
    }

    fn remote(size: u64, etag: &str) -> Entry {
        Entry {
            rel: "k".into(),
            meta: ObjectMeta {
                key: "k".into(),
                size,
                etag: Some(etag.into()),
                ..Default::default()
            },
        }
    }

    fn base(l: &Entry, r: &Entry) -> BaseRecord {
        BaseRecord {
            src_sig: signature(SideKind::Local, &l.meta).unwrap_or_default(),
            dst_sig: signature(SideKind::Remote, &r.meta).unwrap_or_default(),
        }
    }

    const ALL: Directions = Directions {
        up: true,
        down: true,
        up_delete: true,
        down_delete: true,
    };

    #[test]
    fn the_rules() {
        let (l, r) = (local(3, 10), remote(3, "e1"));
        let b = base(&l, &r);
        assert_eq!(
            plan3(Some(&l), Some(&r), Some(&b), ALL),
            BiAction::Unchanged
        );
        assert_eq!(
            plan3(Some(&local(3, 11)), Some(&r), Some(&b), ALL),
            BiAction::Up(Why::Changed),
            "same size, new mtime: changed"
        );
        assert_eq!(
            plan3(Some(&l), Some(&remote(3, "e2")), Some(&b), ALL),
            BiAction::Down(Why::Changed)
        );
        assert_eq!(
            plan3(Some(&local(3, 11)), Some(&remote(3, "e2")), Some(&b), ALL),
            BiAction::Check
        );
        assert_eq!(
            plan3(Some(&local(4, 11)), Some(&remote(3, "e2")), Some(&b), ALL),
            BiAction::Conflict
        );
        // Deleted remotely, unchanged here: deleted here, or kept (never copied back).
        assert_eq!(plan3(Some(&l), None, Some(&b), ALL), BiAction::DeleteLocal);
        let no_down_delete = Directions {
            down_delete: false,
            ..ALL
        };
        assert_eq!(
            plan3(Some(&l), None, Some(&b), no_down_delete),
            BiAction::KeepDeleted
        );
        // Edited here, deleted there: the edit wins.
        assert_eq!(
            plan3(Some(&local(3, 12)), None, Some(&b), ALL),
            BiAction::Up(Why::ChangedOverDelete)
        );
        assert_eq!(plan3(None, Some(&r), Some(&b), ALL), BiAction::DeleteRemote);
        assert_eq!(plan3(None, None, Some(&b), ALL), BiAction::Forget);
        assert_eq!(plan3(Some(&l), None, None, ALL), BiAction::Up(Why::New));
        assert_eq!(plan3(None, Some(&r), None, ALL), BiAction::Down(Why::New));
        assert_eq!(plan3(Some(&l), Some(&r), None, ALL), BiAction::Check);
        let only_up = Directions {
            up: true,
            up_delete: true,
            ..Default::default()
        };
        assert_eq!(plan3(None, Some(&r), None, only_up), BiAction::Held);
        assert_eq!(
            plan3(Some(&l), None, Some(&b), only_up),
            BiAction::KeepDeleted
        );
    }

    proptest! {
        /// Nothing deleted is ever copied back unless it changed; no copy from a missing side;
        /// deletes and copies only go the ways that are on.
        #[test]
        fn no_resurrection_and_directions_respected(
            has_l in any::<bool>(), has_r in any::<bool>(), has_b in any::<bool>(),
            l_changed in any::<bool>(), r_changed in any::<bool>(), same_size in any::<bool>(),
            up in any::<bool>(), down in any::<bool>(), up_delete in any::<bool>(), down_delete in any::<bool>(),
        ) {
            let (l0, r0) = (local(5, 100), remote(5, "base"));
            let b = base(&l0, &r0);
            let l = has_l.then(|| if l_changed { local(5, 101) } else { l0.clone() });
            let r = has_r.then(|| if r_changed { remote(if same_size { 5 } else { 6 }, "new") } else { r0.clone() });
            let d = Directions { up, down, up_delete, down_delete };
            let a = plan3(l.as_ref(), r.as_ref(), has_b.then_some(&b), d);
            if let BiAction::Up(_) = a { prop_assert!(has_l && up); }
            if let BiAction::Down(_) = a { prop_assert!(has_r && down); }
            if a == BiAction::DeleteRemote { prop_assert!(has_r && !has_l && up && up_delete && !r_changed && has_b); }
            if a == BiAction::DeleteLocal { prop_assert!(has_l && !has_r && down && down_delete && !l_changed && has_b); }
            // Deleted on one side, untouched on the other: never copied back.
            if has_b && has_l && !has_r && !l_changed { prop_assert!(!matches!(a, BiAction::Up(_))); }
            if has_b && has_r && !has_l && !r_changed { prop_assert!(!matches!(a, BiAction::Down(_))); }
            // Nothing changed anywhere: nothing happens.
            if has_b && has_l && has_r && !l_changed && !r_changed { prop_assert_eq!(a, BiAction::Unchanged); }
        }
    }
}
