//! The spoke's local control socket: status, and users' requests relayed to
//! the hub over the control channel.

use std::time::Duration;

use tasuki_core::admin_api::{Reply, SpokeRequest, SpokeStatus};
use tasuki_core::api_error::{ApiError, ErrorCode};
use tasuki_core::control::{SpokeConfig, UserRequest};
use tokio::sync::{mpsc, oneshot, watch};

use crate::control::{ControlState, SessionInfo, UserCall};
use crate::dataplane::DpCommand;
use crate::state::Enrolment;

/// Everything the socket handlers read.
#[derive(Clone)]
pub(crate) struct LocalApi {
    pub(crate) interface: String,
    pub(crate) enrolment: Enrolment,
    pub(crate) dataplane: mpsc::Sender<DpCommand>,
    pub(crate) config: watch::Receiver<Option<SpokeConfig>>,
    pub(crate) control: watch::Receiver<ControlState>,
    pub(crate) session: watch::Receiver<SessionInfo>,
    pub(crate) calls: mpsc::Sender<UserCall>,
}

impl LocalApi {
    /// Handles one request.
    pub(crate) async fn handle(self, req: SpokeRequest) -> Reply<serde_json::Value> {
        let value = match req {
            SpokeRequest::Status => serde_json::to_value(self.status().await),
            SpokeRequest::User { request } => match self.user(request).await {
                Ok(v) => serde_json::to_value(v),
                Err(e) => return Reply::Error(e),
            },
        };
        match value {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(ApiError::new(ErrorCode::Internal, e.to_string())),
        }
    }

    async fn user(
        &self,
        request: UserRequest,
    ) -> Result<tasuki_core::control::UserReply, ApiError> {
        let unavailable = |message: &str| ApiError::new(ErrorCode::Unavailable, message);
        if !self.control.borrow().connected {
            return Err(unavailable("not connected to the hub; try again when `tasuki-spoke status` says the control channel is connected"));
        }
        let (tx, rx) = oneshot::channel();
        self.calls
            .send((request, tx))
            .await
            .map_err(|_| unavailable("the control loop stopped"))?;
        match tokio::time::timeout(Duration::from_secs(20), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable(
                "the control channel dropped before the hub answered; try again",
            )),
            Err(_) => Err(unavailable("the hub did not answer in 20 s")),
        }
    }

    /// What `tasuki-spoke status` answers.
    pub(crate) async fn status(&self) -> SpokeStatus {
        let (tx, rx) = oneshot::channel();
        let dp = if self.dataplane.send(DpCommand::Status(tx)).await.is_ok() {
            tokio::time::timeout(Duration::from_secs(2), rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let config = self.config.borrow().clone();
        let control = self.control.borrow().clone();
        let session = self.session.borrow().clone();
        let running = dp.as_ref().is_some_and(|d| d.last_handshake_secs.is_some());
        let blocked = dp.as_ref().is_some_and(|d| d.blocked);
        let state = if config.is_none() {
            "waiting-for-hub"
        } else if blocked {
            "blocked-key-expired"
        } else if !session.carrying && control.connected {
            "needs-login"
        } else if running {
            "running"
        } else {
            "connecting"
        };
        let d = dp.unwrap_or_default();
        SpokeStatus {
            state: state.into(),
            name: self.enrolment.name.clone(),
            tunnel_addr: config
                .as_ref()
                .map(|c| c.tunnel_addr.to_string())
                .unwrap_or_default(),
            // The address the data plane carries (a configuration that
            // brought one lately is applied at the next start).
            tunnel_addr6: config
                .as_ref()
                .and_then(|c| c.ipv6.as_ref())
                .filter(|v6| d.own6 == Some(v6.tunnel_addr.addr()))
                .map(|v6| v6.tunnel_addr.to_string()),
            hub_endpoint: self.enrolment.hub_endpoint.clone(),
            hub_fingerprint: self.enrolment.hub_key.fingerprint(),
            interface: self.interface.clone(),
            control_connected: control.connected,
            epoch: d.epoch,
            held_epochs: d.held,
            blocked,
            users: session.users,
            carrying: session.carrying,
            devices_waiting: session.devices_waiting,
            approvals_waiting: session
                .approvals_waiting
                .into_iter()
                .flat_map(|(approver, requests)| {
                    requests
                        .into_iter()
                        .map(move |request| tasuki_core::admin_api::ApprovalView {
                            approver: approver.clone(),
                            request,
                        })
                })
                .collect(),
            last_handshake_secs: d.last_handshake_secs,
            last_error: control.last_error,
            counters: d.counters,
            peers: d.peers,
            groups: session
                .groups
                .into_iter()
                .map(|g| tasuki_core::admin_api::GroupHeldView {
                    group: g.group,
                    epoch: g.current,
                    held: g.held,
                    multicast: g.multicast,
                    members_online: g.members_online,
                })
                .collect(),
        }
    }
}
