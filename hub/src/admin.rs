//! The hub's admin socket: one handler per request, each a thin call into
//! [`HubState`]. Replies are the structs `--json` prints.

use crate::state::SharedState;
use anyhow::Result;
use tasuki_core::admin_api::{HubRequest, Reply};
use tasuki_shell::unix_now;

/// One edit of the access policy, answered with the policy after it.
/// `edit` returns the words for the audit log.
async fn access_edit(
    state: &SharedState,
    edit: impl FnOnce(
        &mut tasuki_core::access::AccessPolicy,
    ) -> Result<String, tasuki_core::access::AccessError>,
) -> Result<serde_json::Value> {
    let view = state.with(|st| st.edit_access(unix_now(), edit))?;
    Ok(serde_json::to_value(view)?)
}

/// Handles one admin request.
pub(crate) async fn handle(state: &SharedState, req: HubRequest) -> Reply<serde_json::Value> {
    let result: Result<serde_json::Value> = async {
        match req {
            HubRequest::Invite { .. }
            | HubRequest::WireGuardAdd { .. }
            | HubRequest::WireGuardConfig { .. }
            | HubRequest::Approve { .. }
            | HubRequest::Deny { .. }
            | HubRequest::Revoke { .. }
            | HubRequest::ListSpokes => spoke_request(state, req).await,
            HubRequest::UserAdd { .. }
            | HubRequest::UserList
            | HubRequest::UserRemove { .. }
            | HubRequest::UserResetPassword { .. }
            | HubRequest::UserApprove { .. }
            | HubRequest::UserDeny { .. }
            | HubRequest::UserAllow { .. } => user_request(state, req).await,
            HubRequest::KeyRotate { .. }
            | HubRequest::KeyPolicyShow { .. }
            | HubRequest::KeyPolicySet { .. }
            | HubRequest::KeyStatus => key_request(state, req).await,
            HubRequest::AccessShow
            | HubRequest::AccessMode { .. }
            | HubRequest::AccessAllow { .. }
            | HubRequest::AccessRemove { .. }
            | HubRequest::AccessCheck { .. }
            | HubRequest::GroupAdd { .. }
            | HubRequest::GroupRemove { .. }
            | HubRequest::GroupMembers { .. } => access_request(state, req).await,
            HubRequest::Audit { .. } | HubRequest::Status => hub_request(state, req).await,
        }
    }
    .await;
    match result {
        Ok(v) => Reply::Ok(v),
        Err(e) => {
            let e = format!("{e:#}");
            tracing::warn!(error = %e, "admin request failed");
            Reply::Error(e)
        }
    }
}

/// Invitations, WireGuard peers, approval, revocation, the spoke list.
async fn spoke_request(state: &SharedState, req: HubRequest) -> Result<serde_json::Value> {
    match req {
        HubRequest::Invite {
            name,
            pre_approved,
            service,
            valid_secs,
        } => {
            let view = state
                .with(|st| st.invite(&name, pre_approved, service, None, valid_secs, unix_now()))?;
            Ok(serde_json::to_value(view)?)
        }
        HubRequest::WireGuardAdd {
            name,
            public_key,
            user,
        } => Ok(serde_json::to_value(state.with(|st| {
            st.add_wireguard(&name, public_key.as_deref(), user.as_deref(), unix_now())
        })?)?),
        HubRequest::WireGuardConfig { name } => Ok(serde_json::to_value(
            state.with(|st| st.wireguard_config(&name, unix_now()))?,
        )?),
        HubRequest::Approve { name } => {
            let s = state.with(|st| st.approve(&name, "admin", unix_now()))?;
            Ok(serde_json::json!({ "spoke": s.name, "state": s.state.name() }))
        }
        HubRequest::Deny { name } => {
            let s = state.with(|st| st.deny(&name, unix_now()))?;
            Ok(serde_json::json!({ "spoke": s.name, "state": s.state.name() }))
        }
        HubRequest::Revoke { name } => {
            let s = state.with(|st| st.revoke(&name, unix_now()))?;
            Ok(serde_json::json!({ "spoke": s.name, "state": s.state.name() }))
        }
        HubRequest::ListSpokes => {
            let dp = state.with(|st| st.dataplane()).status().await;
            Ok(serde_json::to_value(
                state.with(|st| st.spoke_views(dp.as_ref())),
            )?)
        }
        other => anyhow::bail!("spoke request cannot answer {other:?}"),
    }
}

/// Users: accounts, passwords, registrations, permissions.
async fn user_request(state: &SharedState, req: HubRequest) -> Result<serde_json::Value> {
    match req {
        HubRequest::UserAdd { id, name, email } => Ok(serde_json::to_value(
            state.with(|st| st.add_user(&id, &name, &email, unix_now()))?,
        )?),
        HubRequest::UserList => Ok(serde_json::to_value(state.with(|st| st.user_views()))?),
        HubRequest::UserRemove { id } => {
            state.with(|st| st.remove_user(&id, unix_now()))?;
            Ok(serde_json::json!({ "removed": id }))
        }
        HubRequest::UserResetPassword { id } => Ok(serde_json::to_value(
            state.with(|st| st.reset_password(&id, unix_now()))?,
        )?),
        HubRequest::UserApprove { id } => Ok(serde_json::to_value(
            state.with(|st| st.approve_registration(&id, unix_now()))?,
        )?),
        HubRequest::UserDeny { id } => {
            state.with(|st| st.deny_registration(&id, unix_now()))?;
            Ok(serde_json::json!({ "denied": id }))
        }
        HubRequest::UserAllow { id, spoke } => Ok(serde_json::to_value(
            state.with(|st| st.allow_user(&id, &spoke, unix_now()))?,
        )?),
        other => anyhow::bail!("user request cannot answer {other:?}"),
    }
}

/// Key rotation, the rotation policy and per-link key status.
async fn key_request(state: &SharedState, req: HubRequest) -> Result<serde_json::Value> {
    match req {
        HubRequest::KeyRotate { spoke } => {
            let n = state.with(|st| {
                st.request_rotation(spoke.as_deref(), tasuki_core::rotation::Trigger::Admin)
            })?;
            Ok(serde_json::json!({ "links": n }))
        }
        HubRequest::KeyPolicyShow { spoke } => Ok(serde_json::to_value(
            state.with(|st| st.policy_of(spoke.as_deref()))?,
        )?),
        HubRequest::KeyPolicySet { spoke, policy } => {
            let now = state.with(|st| st.set_policy(spoke.as_deref(), policy))?;
            Ok(serde_json::to_value(now)?)
        }
        HubRequest::KeyStatus => {
            let dp = state.with(|st| st.dataplane()).status().await;
            let usage = crate::state::usage(dp.as_ref());
            Ok(serde_json::to_value(
                state.with(|st| st.key_status(unix_now(), &usage)),
            )?)
        }

        other => anyhow::bail!("key request cannot answer {other:?}"),
    }
}

/// The access policy and its groups.
async fn access_request(state: &SharedState, req: HubRequest) -> Result<serde_json::Value> {
    match req {
        HubRequest::AccessShow => Ok(serde_json::to_value(state.with(|st| st.access_view()))?),
        HubRequest::AccessMode { mode } => {
            access_edit(state, move |p| {
                p.mode = mode;
                Ok(format!("mode {}", mode.name()))
            })
            .await
        }
        HubRequest::AccessAllow { rule } => {
            let what = format!("allow {rule}");
            access_edit(state, move |p| p.allow(rule).map(|_| what)).await
        }
        HubRequest::AccessRemove { number } => {
            access_edit(state, move |p| {
                p.remove_rule(number)
                    .map(|r| format!("remove rule {number} ({r})"))
            })
            .await
        }
        HubRequest::AccessCheck { from, to, service } => Ok(serde_json::to_value(
            state.with(|st| st.access_check(&from, to, &service))?,
        )?),
        HubRequest::GroupAdd { name } => {
            let what = format!("group {name} added");
            access_edit(state, move |p| p.add_group(&name).map(|_| what)).await
        }
        HubRequest::GroupRemove { name } => {
            let what = format!("group {name} removed");
            access_edit(state, move |p| p.remove_group(&name).map(|_| what)).await
        }
        HubRequest::GroupMembers {
            name,
            members,
            remove,
        } => {
            let list: Vec<String> = members.iter().map(ToString::to_string).collect();
            let what = if remove {
                format!("group {name}: {} taken out", list.join(", "))
            } else {
                format!("group {name}: {} added", list.join(", "))
            };
            let edited = members.clone();
            let group = name.clone();
            let view = access_edit(state, move |p| {
                for m in &edited {
                    if remove {
                        p.remove_member(&group, m)?;
                    } else {
                        p.add_member(&group, m.clone())?;
                    }
                }
                Ok(what)
            })
            .await?;
            if remove {
                state.with(|st| st.rotate_group_leavers(&name, &members));
            }
            Ok(view)
        }
        other => anyhow::bail!("access request cannot answer {other:?}"),
    }
}

/// The audit log and the daemon's status.
async fn hub_request(state: &SharedState, req: HubRequest) -> Result<serde_json::Value> {
    match req {
        HubRequest::Audit { since } => Ok(serde_json::to_value(
            state.with(|st| st.audit_since(since))?,
        )?),
        HubRequest::Status => {
            let dp = state.with(|st| st.dataplane()).status().await;
            Ok(serde_json::to_value(
                state.with(|st| st.status(dp.as_ref())),
            )?)
        }
        other => anyhow::bail!("hub request cannot answer {other:?}"),
    }
}
