//! Where a hub's etcd cluster is and how to reach it (TLS included).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, ConnectOptions};
use zeroize::Zeroizing;

/// How long one etcd call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a hub's etcd cluster is and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// Client URLs of the etcd members (`http://10.0.0.1:2379`, or
    /// `https://…` with the TLS settings below).
    pub etcd_endpoints: Vec<String>,
    /// The key prefix of this hub cluster's records (several clusters can
    /// share one etcd).
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    /// PEM file of the CA that signed the etcd servers' certificates.
    #[serde(default)]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate presented to etcd.
    #[serde(default)]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub etcd_key: Option<PathBuf>,
}

fn default_prefix() -> String {
    "/tasuki/".into()
}

impl EtcdSettings {
    /// Settings for `endpoints` with the default prefix and no TLS.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            etcd_endpoints: endpoints,
            etcd_prefix: default_prefix(),
            ..Self::default()
        }
    }

    /// Checks what can be checked without connecting.
    pub fn check(&self) -> Result<()> {
        if self.etcd_endpoints.is_empty() {
            bail!("no etcd endpoints given (--etcd-endpoints http://HOST:2379,...)");
        }
        for e in &self.etcd_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("etcd endpoint {e:?} must start with http:// or https://");
            }
        }
        if !self.etcd_prefix.starts_with('/') || !self.etcd_prefix.ends_with('/') {
            bail!(
                "etcd prefix {:?} must start and end with '/'",
                self.etcd_prefix
            );
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            bail!("a client certificate needs both etcd_cert and etcd_key");
        }
        Ok(())
    }

    /// The endpoints, for messages.
    pub fn describe(&self) -> String {
        format!(
            "etcd {} (prefix {})",
            self.etcd_endpoints.join(","),
            self.etcd_prefix
        )
    }

    /// Connects (from async code: the hub's election uses its own client).
    pub async fn connect(&self) -> Result<Client> {
        self.check()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // A member cut off from its raft leader refuses at once (the
            // request goes to another member) instead of waiting.
            .with_require_leader(true);
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.etcd_ca {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read the etcd CA {}", ca.display()))?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                let cert_pem = std::fs::read(cert).with_context(|| {
                    format!("cannot read the etcd client certificate {}", cert.display())
                })?;
                let key_pem = Zeroizing::new(std::fs::read(key).with_context(|| {
                    format!("cannot read the etcd client key {}", key.display())
                })?);
                tls = tls.identity(etcd_client::Identity::from_pem(cert_pem, &*key_pem));
            }
            options = options.with_tls(tls);
        }
        Client::connect(&self.etcd_endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect to {}", self.describe()))
    }
}
