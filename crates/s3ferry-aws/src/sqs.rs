//! SQS behind the engine's [`Queue`] port: how bundle workers on many machines share shards.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use s3ferry_engine::ports::{Queue, QueueMessage};
use s3ferry_store::{ErrorKind, Result, StoreError};

use crate::error::{map_sdk_error, ErrCtx};

/// Where and as whom to talk to SQS.
#[derive(Clone, Debug, Default)]
pub struct SqsConfig {
    /// The queue URL (`https://sqs.<region>.amazonaws.com/<account>/<name>`).
    pub queue_url: String,
    /// `None` = AWS (or `AWS_ENDPOINT_URL_SQS` / the profile, which the SDK reads).
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub region: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    url: String,
    ctx: ErrCtx,
}

/// The region a queue URL names (`https://sqs.eu-west-1.amazonaws.com/...`), if any.
fn region_of(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let mut parts = host.split('.');
    match (parts.next(), parts.next()) {
        (Some("sqs"), Some(r)) if r.contains('-') => Some(r.to_string()),
        _ => None,
    }
}

fn secs(d: Duration) -> i32 {
    d.as_secs().min(43_200) as i32
}

impl SqsQueue {
    pub async fn connect(cfg: SqsConfig) -> Result<Self> {
        if !cfg.queue_url.starts_with("http://") && !cfg.queue_url.starts_with("https://") {
            return Err(StoreError::new(
                ErrorKind::InvalidInput,
                "sqs",
                format!(
                    "{:?} is not a queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)",
                    cfg.queue_url
                ),
            ));
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(p) = &cfg.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = cfg.region.clone().or_else(|| region_of(&cfg.queue_url)) {
            loader = loader.region(Region::new(r));
        }
        if let Some(u) = &cfg.endpoint_url {
            loader = loader.endpoint_url(u);
        }
        let loader = crate::settings::configure(loader, cfg.profile.as_deref()).await?;
        let sdk = loader.load().await;
        let sdk = if sdk.region().is_none() {
            sdk.into_builder().region(Region::new("us-east-1")).build()
        } else {
            sdk
        };
        Ok(Self {
            client: Client::new(&sdk),
            ctx: ErrCtx {
                bucket: format!("sqs:{}", cfg.queue_url),
                endpoint: cfg.endpoint_url.unwrap_or_else(|| "AWS SQS".into()),
                creds: None,
                sse_c: false,
            },
            url: cfg.queue_url,
        })
    }

    /// Create a queue (set-ups and tests), with a redrive policy to `dead_letter_arn` after
    /// `max_receives` deliveries if given. Returns its URL.
    pub async fn create_queue(
        &self,
        name: &str,
        visibility: Duration,
        redrive: Option<(&str, u32)>,
    ) -> Result<String> {
        let mut req = self.client.create_queue().queue_name(name).attributes(
            QueueAttributeName::VisibilityTimeout,
            secs(visibility).to_string(),
        );
        if let Some((arn, n)) = redrive {
            req = req.attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": n.to_string()})
                    .to_string(),
            );
        }
        let out = req
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "create_queue", None, e))?;
        Ok(out.queue_url().unwrap_or_default().to_string())
    }

    /// A queue's ARN (for redrive policies).
    pub async fn arn(&self) -> Result<String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "get_queue_attributes", None, e))?;
        Ok(out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .unwrap_or_default())
    }

    /// Approximate visible and in-flight message counts.
    pub async fn counts(&self) -> Result<(u64, u64)> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "get_queue_attributes", None, e))?;
        let get = |k: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }

    /// The same account and endpoint, another queue.
    pub fn with_url(&self, url: &str) -> Self {
        Self {
            client: self.client.clone(),
            url: url.to_string(),
            ctx: ErrCtx {
                bucket: format!("sqs:{url}"),
                endpoint: self.ctx.endpoint.clone(),
                creds: None,
                sse_c: false,
            },
        }
    }
}

#[async_trait]
impl Queue for SqsQueue {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn send(&self, body: &str) -> Result<String> {
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "send_message", None, e))?;
        Ok(out.message_id().unwrap_or_default().to_string())
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<QueueMessage>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(secs(wait).min(20))
            .visibility_timeout(secs(visibility))
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "receive_message", None, e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| QueueMessage {
                id: m.message_id().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                receive_count: m
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
            })
            .collect())
    }

    async fn set_visibility(&self, receipt: &str, visibility: Duration) -> Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(secs(visibility))
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "change_message_visibility", None, e))?;
        Ok(())
    }

    async fn delete(&self, receipt: &str) -> Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.ctx, "delete_message", None, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_queue_url() {
        assert_eq!(
            region_of("https://sqs.eu-west-1.amazonaws.com/123456789012/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(region_of("http://127.0.0.1:5000/123456789012/q"), None);
    }
}
