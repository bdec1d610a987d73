//! The local admin/control socket: a Unix socket that speaks one JSON line
//! each way per connection. Only root or the daemon's own user may use it;
//! the check uses the peer's credentials (SO_PEERCRED), not file modes alone.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use tasuki_core::admin_api::{Envelope, Reply};
use tasuki_core::api_error::{ApiError, ErrorCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Largest request line accepted.
const MAX_LINE: u64 = 64 * 1024;

/// Who may use a local socket besides root and the daemon's own user.
#[derive(Clone, Copy, Debug, Default)]
pub struct Access {
    /// Members of this group (primary or supplementary) may use it too.
    pub group: Option<u32>,
}

impl Access {
    /// Resolves a group name (or number) for `--admin-group`.
    pub fn group(name: &str) -> Result<Self> {
        let gid = match name.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(name)
                .with_context(|| format!("cannot look up group {name:?}"))?
                .with_context(|| format!("no group named {name:?}"))?
                .gid
                .as_raw(),
        };
        Ok(Self { group: Some(gid) })
    }
}

/// Binds the socket at `path` (replacing a stale one) with mode 0660, owned
/// by the access group when there is one.
pub fn bind(path: &Path, access: Access) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another daemon is already listening on {}; stop it or pick another socket path",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set mode of {}", path.display()))?;
    if let Some(gid) = access.group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    Ok(listener)
}

/// The supplementary groups of a process, from /proc.
fn groups_of(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Whether the connecting process may use the socket: root, or the daemon's own user.
fn peer_allowed(stream: &UnixStream, access: Access) -> Result<u32> {
    let cred = stream.peer_cred().context("cannot read peer credentials")?;
    let me = nix::unistd::geteuid().as_raw();
    let in_group = access.group.is_some_and(|g| {
        cred.gid() == g || cred.pid().is_some_and(|pid| groups_of(pid).contains(&g))
    });
    if cred.uid() == 0 || cred.uid() == me || in_group {
        Ok(cred.uid())
    } else {
        bail!("uid {} is not allowed on this socket", cred.uid())
    }
}

/// Serves requests until the listener fails; each connection in its own task.
pub async fn serve<Req, Resp, F, Fut>(listener: UnixListener, access: Access, handler: F)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply<Resp>> + Send,
{
    let handler = Arc::new(handler);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "local socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = one(stream, access, &*handler).await {
                tracing::debug!(error = %format!("{e:#}"), "local request failed");
            }
        });
    }
}

async fn one<Req, Resp, F, Fut>(mut stream: UnixStream, access: Access, handler: &F) -> Result<()>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Reply<Resp>>,
{
    // Read the request first, so a refused client still gets the answer
    // rather than a broken pipe.
    let mut line = String::new();
    {
        let (r, _) = stream.split();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(r.take(MAX_LINE)).read_line(&mut line),
        )
        .await
        .context("request timed out")??;
    }
    let reply: Reply<Resp> = match peer_allowed(&stream, access) {
        Err(e) => {
            tracing::warn!(error = %e, "refused a local client");
            Reply::Error(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("permission denied: {e}; run as root"),
            ))
        }
        Ok(_) => match serde_json::from_str::<Envelope<Req>>(&line) {
            Ok(env) if env.version != tasuki_core::PROTOCOL_VERSION => Reply::Error(ApiError::new(
                ErrorCode::VersionMismatch,
                format!(
                    "version mismatch: the CLI speaks {}, the daemon {}; use matching binaries",
                    env.version,
                    tasuki_core::PROTOCOL_VERSION
                ),
            )),
            Ok(env) => handler(env.request).await,
            Err(e) => Reply::Error(ApiError::new(
                ErrorCode::BadRequest,
                format!("bad request: {e}"),
            )),
        },
    };
    let mut out = serde_json::to_string(&reply)?;
    out.push('\n');
    stream.write_all(out.as_bytes()).await?;
    Ok(())
}

/// Sends one request to the daemon at `path` and returns its answer.
pub async fn request<Req: tasuki_core::admin_api::LocalRequest, Resp: DeserializeOwned>(
    path: &Path,
    req: Req,
) -> Result<Resp> {
    let mut stream = UnixStream::connect(path).await.map_err(|e| {
        anyhow!(
            "cannot reach the daemon at {}: {e}; is it running (and are you root)?",
            path.display()
        )
    })?;
    let mut line = serde_json::to_string(&Envelope {
        version: tasuki_core::PROTOCOL_VERSION,
        request: req,
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stream).read_line(&mut answer),
    )
    .await
    .context("the daemon did not answer in 30 s")??;
    match serde_json::from_str::<Reply<Resp>>(&answer)
        .with_context(|| format!("unreadable answer from {}", path.display()))?
    {
        Reply::Ok(v) => Ok(v),
        // Kept whole, so a caller can look at its code.
        Reply::Error(e) => Err(e.into()),
    }
}

/// Sends one admin request to the hub daemon at `path`; the answer has the
/// request's reply type.
pub async fn call<C: tasuki_core::admin_calls::AdminCall>(path: &Path, req: C) -> Result<C::Reply> {
    let req: tasuki_core::admin_calls::HubRequest = req.into();
    request(path, req).await
}

/// A socket path that removes its file when dropped.
pub struct SocketGuard(pub PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
