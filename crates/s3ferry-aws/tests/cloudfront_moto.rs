//! CloudFront invalidations against the local AWS emulator (moto, started by scripts/test):
//! the paths planned by the engine are what the service records.

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
    let id = setup
        .create_distribution("site.s3.amazonaws.com", &uuid_like())
        .await
        .expect("create distribution on moto");

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
