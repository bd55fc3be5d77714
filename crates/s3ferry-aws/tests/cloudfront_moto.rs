//! CloudFront invalidations against the local AWS emulator (moto, started by scripts/test):
//! the paths planned by the engine are what the service records.

use aws_sdk_cloudfront::types::{
    DefaultCacheBehavior, DistributionConfig, Origin, Origins, S3OriginConfig, ViewerProtocolPolicy,
};
use s3ferry_aws::{CloudFrontConfig, CloudFrontInvalidator};
use s3ferry_engine::ports::{invalidation_paths, Invalidator};

#[tokio::test]
async fn invalidation_of_changed_paths_is_recorded() {
    let Some(ep) = s3ferry_testkit::aws_test_endpoint() else {
        return;
    };
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    // A distribution to invalidate.
    let setup = CloudFrontInvalidator::connect(CloudFrontConfig {
        distribution_id: "setup".into(),
        endpoint_url: Some(ep.clone()),
        ..Default::default()
    })
    .await
    .expect("connect");
    let origin = Origin::builder()
        .id("origin1")
        .domain_name("site.s3.amazonaws.com")
        .s3_origin_config(S3OriginConfig::builder().origin_access_identity("").build())
        .build()
        .expect("origin");
    let cfg = DistributionConfig::builder()
        .caller_reference(uuid_like())
        .comment("s3ferry test")
        .enabled(true)
        .origins(
            Origins::builder()
                .quantity(1)
                .items(origin)
                .build()
                .expect("origins"),
        )
        .default_cache_behavior(
            DefaultCacheBehavior::builder()
                .target_origin_id("origin1")
                .viewer_protocol_policy(ViewerProtocolPolicy::AllowAll)
                .build()
                .expect("behavior"),
        )
        .build()
        .expect("config");
    let dist = setup
        .client()
        .create_distribution()
        .distribution_config(cfg)
        .send()
        .await
        .expect("create distribution on moto");
    let id = dist
        .distribution()
        .map(|d| d.id().to_string())
        .expect("distribution id");

    let cf = CloudFrontInvalidator::connect(CloudFrontConfig {
        distribution_id: id,
        endpoint_url: Some(ep),
        ..Default::default()
    })
    .await
    .expect("connect");
    let changed: Vec<String> = ["site/index.html", "site/a b.css", "img/x.png"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let paths = invalidation_paths(&changed, 1000, 15);
    let inv = cf
        .invalidate(&paths, &uuid_like())
        .await
        .expect("invalidate");
    assert!(!inv.is_empty(), "an invalidation id");
    let mut recorded = cf.invalidation_paths(&inv).await.expect("get invalidation");
    recorded.sort();
    assert_eq!(
        recorded,
        vec!["/img/x.png", "/site/a%20b.css", "/site/index.html"]
    );
}

fn uuid_like() -> String {
    format!(
        "s3ferry-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}
