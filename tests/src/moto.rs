//! moto's server (PyPI `moto[server]`: S3, SQS, SNS) on a free port, for the
//! SQS bridge's tests and benchmark. `scripts/test` and `scripts/bench`
//! install it and name it in `MOTO_SERVER`.

use anyhow::{bail, Context};
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A running moto server, killed when dropped.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// Its endpoint, `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `$MOTO_SERVER` (else `moto_server` on the PATH) and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = crate::fleet::free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("moto's server ({bin}) does not start; run scripts/test, or set MOTO_SERVER"))?;
        let moto = Moto { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{}/moto-api/", moto.url)).await.is_err() {
            if Instant::now() > deadline {
                bail!("moto's server did not answer on {}", moto.url);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(moto)
    }

    /// An SQS client of this server.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "test"))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }
}

/// Messages in an SQS queue, visible or in flight (SQS's approximate counts).
pub async fn messages_left(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> anyhow::Result<u64> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await?;
    Ok(attrs.attributes().map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0))
}
