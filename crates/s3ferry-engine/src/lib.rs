//! The s3ferry engine: sorted listing streams and their merge-join ([`walk`]), the pure
//! planner ([`plan`]), transfers with end-to-end verification ([`transfer`]), content identity
//! with a hash cache ([`identity`]), the SQLite state and journal ([`journal`]), progress
//! events ([`events`]), and the one run loop every job hands its planned items to ([`exec`]:
//! concurrency, cancellation, the fatal latch, recording, the retry pass, the summary). Jobs
//! compose these; they never talk to a backend directly.

pub mod events;
pub mod exec;
pub mod filter;
pub mod formats;
pub mod identity;
pub mod journal;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod ports;
pub mod spill;
pub mod transfer;
pub mod walk;
pub mod wildcard;

pub use events::{NullReporter, Outcome, Record, Reporter, Summary};
pub use filter::Filters;
pub use journal::Journal;
pub use walk::{Entry, Side, SideKind};
