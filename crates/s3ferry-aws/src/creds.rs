//! Credentials that can be refreshed before their time is up.
//!
//! The SDK's identity cache keeps credentials until their stated expiry. Temporary credentials
//! (STS, a container or instance role, SSO) can stop working before that: the session was
//! revoked, the clocks disagree, the role's session ended early. S3 then answers `ExpiredToken`
//! and, left alone, every later request of a long job would fail the same way. This cache
//! does what the SDK's does (one fetch at a time, refreshed a minute before the expiry) and can
//! also be told that its credentials were refused, so that the retry of that request is signed
//! with fresh ones: a multipart upload goes on with its next part, the finished parts stay.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;

/// Credentials this close to their expiry are fetched again.
const REFRESH_BEFORE: Duration = Duration::from_secs(60);
/// Refusals of requests signed before a fetch this recent do not throw it away again (many
/// parts in flight fail together with the same old credentials).
const REFUSALS_IGNORED_AFTER_FETCH: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Cached {
    creds: Credentials,
    fetched: Instant,
}

/// A caching credentials provider over the SDK's chain; clones share one cache.
#[derive(Clone, Debug)]
pub(crate) struct RefreshingCredentials {
    inner: SharedCredentialsProvider,
    cached: Arc<Mutex<Option<Cached>>>,
    /// One fetch at a time.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl RefreshingCredentials {
    pub(crate) fn new(inner: SharedCredentialsProvider) -> Self {
        Self {
            inner,
            cached: Arc::new(Mutex::new(None)),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn fresh(&self) -> Option<Credentials> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let c = cached.as_ref()?;
        match c.creds.expiry() {
            Some(at) if at <= SystemTime::now() + REFRESH_BEFORE => None,
            _ => Some(c.creds.clone()),
        }
    }

    /// The server refused the credentials as expired. Returns whether they can be renewed
    /// (they are temporary: they came with an expiry), in which case the next request fetches
    /// new ones; long-term keys cannot be, and the refusal stands.
    pub(crate) fn refused_as_expired(&self) -> bool {
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match cached.as_ref() {
            Some(c) if c.creds.expiry().is_none() => false,
            Some(c) if c.fetched.elapsed() < REFUSALS_IGNORED_AFTER_FETCH => true,
            Some(_) => {
                tracing::info!(
                    "the server says the session credentials expired; fetching new ones"
                );
                *cached = None;
                true
            }
            None => true,
        }
    }

    async fn load(&self) -> aws_credential_types::provider::Result {
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let _one = self.fetching.lock().await;
        if let Some(c) = self.fresh() {
            return Ok(c);
        }
        let creds = self.inner.provide_credentials().await?;
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(Cached {
            creds: creds.clone(),
            fetched: Instant::now(),
        });
        Ok(creds)
    }
}

impl ProvideCredentials for RefreshingCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Hands out credentials with a new token on every fetch.
    #[derive(Debug, Default)]
    struct Counting {
        fetches: Arc<AtomicU32>,
        temporary: bool,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            let expiry = self
                .temporary
                .then(|| SystemTime::now() + Duration::from_secs(3600));
            future::ProvideCredentials::ready(Ok(Credentials::new(
                "AK",
                "SK",
                Some(format!("token-{n}")),
                expiry,
                "counting",
            )))
        }
    }

    fn token(c: &Credentials) -> String {
        c.session_token().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn cached_until_refused_then_fetched_again() {
        let fetches = Arc::new(AtomicU32::new(0));
        let p = RefreshingCredentials::new(SharedCredentialsProvider::new(Counting {
            fetches: fetches.clone(),
            temporary: true,
        }));
        let first = p.provide_credentials().await.unwrap();
        assert_eq!(token(&first), "token-1");
        assert_eq!(token(&p.provide_credentials().await.unwrap()), "token-1");
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "cached");

        // A refusal right after the fetch is one of the in-flight requests of that fetch's
        // predecessor: the fresh credentials are kept.
        assert!(p.refused_as_expired());
        assert_eq!(token(&p.provide_credentials().await.unwrap()), "token-1");

        // Pretend the fetch is older.
        p.cached.lock().unwrap().as_mut().unwrap().fetched -= Duration::from_secs(10);
        assert!(p.refused_as_expired());
        assert_eq!(token(&p.provide_credentials().await.unwrap()), "token-2");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn long_term_keys_are_not_renewable() {
        let p = RefreshingCredentials::new(SharedCredentialsProvider::new(Counting::default()));
        p.provide_credentials().await.unwrap();
        p.cached.lock().unwrap().as_mut().unwrap().fetched -= Duration::from_secs(10);
        assert!(!p.refused_as_expired());
        assert_eq!(token(&p.provide_credentials().await.unwrap()), "token-1");
    }

    #[tokio::test]
    async fn credentials_near_their_expiry_are_fetched_again() {
        #[derive(Debug)]
        struct Expiring(Arc<AtomicU32>);
        impl ProvideCredentials for Expiring {
            fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                self.0.fetch_add(1, Ordering::SeqCst);
                future::ProvideCredentials::ready(Ok(Credentials::new(
                    "AK",
                    "SK",
                    None,
                    Some(SystemTime::now() + Duration::from_secs(30)),
                    "expiring",
                )))
            }
        }
        let n = Arc::new(AtomicU32::new(0));
        let p = RefreshingCredentials::new(SharedCredentialsProvider::new(Expiring(n.clone())));
        p.provide_credentials().await.unwrap();
        p.provide_credentials().await.unwrap();
        assert_eq!(
            n.load(Ordering::SeqCst),
            2,
            "30 s left is inside the refresh window"
        );
    }
}
