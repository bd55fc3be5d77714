//! CloudFront invalidations behind the engine's [`Invalidator`] port.

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};
use aws_sdk_cloudfront::Client;
use s3ferry_engine::ports::Invalidator;
use s3ferry_store::{ErrorKind, Result, StoreError};

use crate::error::{map_sdk_error, ErrCtx};

/// Where and as whom to talk to CloudFront.
#[derive(Clone, Debug, Default)]
pub struct CloudFrontConfig {
    pub distribution_id: String,
    /// `None` = AWS (or `AWS_ENDPOINT_URL_CLOUDFRONT` / the profile, which the SDK reads).
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub region: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CloudFrontInvalidator {
    client: Client,
    distribution_id: String,
    ctx: ErrCtx,
}

impl CloudFrontInvalidator {
    pub async fn connect(cfg: CloudFrontConfig) -> Result<Self> {
        if cfg.distribution_id.trim().is_empty() {
            return Err(StoreError::new(
                ErrorKind::InvalidInput,
                "cloudfront",
                "empty distribution id",
            ));
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(p) = &cfg.profile {
            loader = loader.profile_name(p);
        }
        // CloudFront is global; its API lives in us-east-1.
        loader = loader.region(Region::new(
            cfg.region.clone().unwrap_or_else(|| "us-east-1".into()),
        ));
        if let Some(u) = &cfg.endpoint_url {
            loader = loader.endpoint_url(u);
        }
        let loader = crate::settings::configure(loader, cfg.profile.as_deref()).await?;
        let sdk = loader.load().await;
        Ok(Self {
            client: Client::new(&sdk),
            ctx: ErrCtx {
                bucket: format!("cloudfront:{}", cfg.distribution_id),
                endpoint: cfg.endpoint_url.unwrap_or_else(|| "AWS CloudFront".into()),
                creds: None,
                sse_c: false,
            },
            distribution_id: cfg.distribution_id,
        })
    }

    /// The SDK client (tests create distributions with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Create a distribution with one S3 origin (for set-ups and tests; s3ferry itself only
    /// invalidates). Returns its id.
    pub async fn create_distribution(
        &self,
        origin_domain: &str,
        reference: &str,
    ) -> Result<String> {
        use aws_sdk_cloudfront::types::{
            DefaultCacheBehavior, DistributionConfig, Origin, Origins, S3OriginConfig,
            ViewerProtocolPolicy,
        };
        let build = |e: aws_sdk_cloudfront::error::BuildError| {
            StoreError::new(
                ErrorKind::InvalidInput,
                "create_distribution",
                e.to_string(),
            )
        };
        let origin = Origin::builder()
            .id("origin1")
            .domain_name(origin_domain)
            .s3_origin_config(S3OriginConfig::builder().origin_access_identity("").build())
            .build()
            .map_err(build)?;
        let cfg = DistributionConfig::builder()
            .caller_reference(reference)
            .comment("s3ferry")
            .enabled(true)
            .origins(
                Origins::builder()
                    .quantity(1)
                    .items(origin)
                    .build()
                    .map_err(build)?,
            )
            .default_cache_behavior(
                DefaultCacheBehavior::builder()
                    .target_origin_id("origin1")
                    .viewer_protocol_policy(ViewerProtocolPolicy::AllowAll)
                    .build()
                    .map_err(build)?,
            )
            .build()
            .map_err(build)?;
        let out = self
            .client
            .create_distribution()
            .distribution_config(cfg)
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "create_distribution", None, e))?;
        Ok(out
            .distribution()
            .map(|d| d.id().to_string())
            .unwrap_or_default())
    }

    /// The paths of an invalidation (for checks and tests).
    pub async fn invalidation_paths(&self, id: &str) -> Result<Vec<String>> {
        let out = self
            .client
            .get_invalidation()
            .distribution_id(&self.distribution_id)
            .id(id)
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "get_invalidation", None, e))?;
        Ok(out
            .invalidation()
            .and_then(|i| i.invalidation_batch())
            .and_then(|b| b.paths())
            .map(|p| p.items().to_vec())
            .unwrap_or_default())
    }
}

#[async_trait]
impl Invalidator for CloudFrontInvalidator {
    async fn invalidate(&self, paths: &[String], reference: &str) -> Result<String> {
        let build = |e: aws_sdk_cloudfront::error::BuildError| {
            StoreError::new(ErrorKind::InvalidInput, "invalidate", e.to_string())
        };
        let batch = InvalidationBatch::builder()
            .paths(
                Paths::builder()
                    .quantity(paths.len() as i32)
                    .set_items(Some(paths.to_vec()))
                    .build()
                    .map_err(build)?,
            )
            .caller_reference(reference)
            .build()
            .map_err(build)?;
        let out = self
            .client
            .create_invalidation()
            .distribution_id(&self.distribution_id)
            .invalidation_batch(batch)
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "invalidate", None, e))?;
        Ok(out
            .invalidation()
            .map(|i| i.id().to_string())
            .unwrap_or_default())
    }
}
