//! Where the S3 and SQS clients get their credentials: the keys in the
//! settings (`credentials = "keys"`, the default), or AWS's own chain
//! (`credentials = "aws"`): `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//! `AWS_SESSION_TOKEN`, the profile files, a web identity token
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`: an EKS service account's
//! IAM role, IRSA), the ECS and EKS Pod Identity container endpoint, then
//! the EC2 instance role. Temporary credentials are refreshed before they
//! expire.
//!
//! The chain is built on first use (building it is async; the clients are
//! made in sync code), once per client.

use crate::settings::{CredentialSource, Secret};
use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::config::{Credentials, Region};

/// The provider for `source`: the given keys, or AWS's default chain in `region`.
pub fn provider(
    source: CredentialSource,
    access_key: &Secret,
    secret_key: &Secret,
    region: &str,
) -> SharedCredentialsProvider {
    match source {
        CredentialSource::Keys => SharedCredentialsProvider::new(Credentials::new(
            access_key.expose(),
            secret_key.expose(),
            None,
            None,
            "reelfleet-settings",
        )),
        CredentialSource::Aws => SharedCredentialsProvider::new(LazyChain {
            region: Region::new(region.to_string()),
            chain: tokio::sync::OnceCell::new(),
        }),
    }
}

/// AWS's default chain, built when first asked.
#[derive(Debug)]
struct LazyChain {
    region: Region,
    chain: tokio::sync::OnceCell<DefaultCredentialsChain>,
}

impl ProvideCredentials for LazyChain {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let chain =
                self.chain.get_or_init(|| DefaultCredentialsChain::builder().region(self.region.clone()).build()).await;
            chain.provide_credentials().await
        })
    }
}
