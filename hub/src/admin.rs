//! The hub's admin socket: one handler per request, each a thin call into
//! [`HubState`] that returns exactly the request's reply type
//! ([`AdminCall::Reply`]), which `--json` prints.

use tasuki_core::admin_api::{AccessView, Reply};
use tasuki_core::admin_calls::*;
use tasuki_core::api_error::{ApiError, ErrorCode};
use tasuki_core::registry::SpokeRecord;
use tasuki_core::rotation::Trigger;
use tasuki_shell::unix_now;

use crate::dataplane::DpStatus;
use crate::state::{HubState, SharedState, StateError};

/// A handler's answer, ready for the socket.
type Answer = Result<serde_json::Value, ApiError>;

/// Handles one admin request.
pub(crate) async fn handle(state: &SharedState, req: HubRequest) -> Reply<serde_json::Value> {
    let answer = match req {
        HubRequest::ListSpokes(r) => {
            let dp = dataplane_status(state).await;
            call(state, r, |st, _| Ok(st.spoke_views(dp.as_ref())))
        }
        HubRequest::KeyStatus(r) => {
            let dp = dataplane_status(state).await;
            let usage = crate::state::usage(dp.as_ref());
            call(state, r, |st, _| Ok(st.key_status(unix_now(), &usage)))
        }
        HubRequest::Status(r) => {
            let dp = dataplane_status(state).await;
            call(state, r, |st, _| Ok(st.status(dp.as_ref())))
        }
        HubRequest::AccessShow(r) => call(state, r, |st, _| Ok(st.access_view())),
        HubRequest::AccessCheck(r) => {
            call(state, r, |st, r| st.access_check(&r.from, r.to, &r.service))
        }
        HubRequest::Audit(r) => call(state, r, |st, r| st.audit_since(r.since)),
        HubRequest::Ipv6Enable(r) => enable_ipv6(state, r).await,
        HubRequest::HubJoin(r) => crate::uplink::join(state, &r.invitation)
            .await
            .and_then(|view| encode(Ok::<_, StateError>(view))),
        HubRequest::HubList(r) => {
            let dp = dataplane_status(state).await;
            let parent = crate::uplink::parent_view(state).await;
            call(state, r, |st, _| Ok(st.tree_view(dp.as_ref(), parent)))
        }
        other => state.with(|st| change(st, other)),
    };
    match answer {
        Ok(v) => Reply::Ok(v),
        Err(e) => {
            tracing::warn!(code = %e.code, error = %e.message, "admin request failed");
            Reply::Error(e)
        }
    }
}

/// Runs one request's handler on the state and encodes its reply; the
/// handler's result type is the request's reply type.
fn call<C: AdminCall>(
    state: &SharedState,
    req: C,
    handler: impl FnOnce(&mut HubState, C) -> Result<C::Reply, StateError>,
) -> Answer {
    state.with(|st| encode(handler(st, req)))
}

/// A handler's result as the socket carries it.
fn encode<T: serde::Serialize>(result: Result<T, StateError>) -> Answer {
    let reply = result.map_err(|e| ApiError::from(&e))?;
    serde_json::to_value(reply).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("the reply could not be encoded: {e}"),
        )
    })
}

/// The same, for a handler that gets the request's type.
fn answer<C: AdminCall>(
    st: &mut HubState,
    req: C,
    handler: impl FnOnce(&mut HubState, C) -> Result<C::Reply, StateError>,
) -> Answer {
    encode(handler(st, req))
}

/// `tasuki-hub ipv6 enable`: the prefix stored and in force, then the
/// hub's own interface given its address (with the state unlocked).
async fn enable_ipv6(state: &SharedState, r: Ipv6Enable) -> Answer {
    let enabled = state.with(|st| {
        st.enable_ipv6(r.tunnel_net, r.routes, unix_now())
            .map(|plan| (plan, st.interface.clone()))
    });
    let (plan, interface) = enabled.map_err(|e| ApiError::from(&e))?;
    let own = ipnet::Ipv6Net::new(plan.hub_addr, plan.tunnel_net.prefix_len())
        .unwrap_or_else(|_| plan.hub_addr.into());
    let added = tasuki_shell::netdev::add_address6(&interface, own).await;
    state.with(HubState::announce_ipv6);
    if let Err(e) = added {
        return Err(ApiError::new(
            ErrorCode::Internal,
            format!(
                "IPv6 is stored and carried between spokes, but {interface} did not take {own}: \
                 {e:#}; restart the hub to give it its address"
            ),
        ));
    }
    let dp = dataplane_status(state).await;
    state.with(|st| encode(Ok::<_, StateError>(st.status(dp.as_ref()))))
}

/// The data plane's status, asked for with the state unlocked.
async fn dataplane_status(state: &SharedState) -> Option<DpStatus> {
    state.with(|st| st.dataplane()).status().await
}

/// A spoke's state after a change to it.
fn spoke_state(s: SpokeRecord) -> SpokeStateView {
    SpokeStateView {
        spoke: s.name,
        state: s.state.name().into(),
    }
}

/// Requests that change the state (or read it with no data-plane facts).
fn change(st: &mut HubState, req: HubRequest) -> Answer {
    let now = unix_now();
    match req {
        HubRequest::Invite(r) => answer(st, r, |st, r| {
            st.invite(&r.name, r.pre_approved, r.service, None, r.valid_secs, now)
        }),
        HubRequest::WireGuardAdd(r) => answer(st, r, |st, r| {
            st.add_wireguard(&r.name, r.public_key.as_deref(), r.user.as_deref(), now)
        }),
        HubRequest::WireGuardConfig(r) => answer(st, r, |st, r| st.wireguard_config(&r.name, now)),
        HubRequest::Approve(r) => answer(st, r, |st, r| {
            st.approve(&r.name, "admin", now).map(spoke_state)
        }),
        HubRequest::HubInvite(r) => {
            answer(st, r, |st, r| st.invite_child(&r.name, r.valid_secs, now))
        }
        HubRequest::HubApprove(r) => answer(st, r, |st, r| st.approve_child(&r.name, "admin", now)),
        HubRequest::HubRevoke(r) => answer(st, r, |st, r| st.revoke_child(&r.name, now)),
        HubRequest::Deny(r) => answer(st, r, |st, r| st.deny(&r.name, now).map(spoke_state)),
        HubRequest::Revoke(r) => answer(st, r, |st, r| st.revoke(&r.name, now).map(spoke_state)),
        HubRequest::KeyRotate(r) => answer(st, r, |st, r| {
            if let Some(group) = &r.group {
                st.request_group_rotation(group)?;
                return Ok(RotationsAsked {
                    links: 0,
                    groups: 1,
                });
            }
            let links = st.request_rotation(r.spoke.as_deref(), Trigger::Admin)?;
            Ok(RotationsAsked { links, groups: 0 })
        }),
        HubRequest::KeyPolicyShow(r) => answer(st, r, |st, r| st.policy_of(r.spoke.as_deref())),
        HubRequest::KeyPolicySet(r) => {
            answer(st, r, |st, r| st.set_policy(r.spoke.as_deref(), r.policy))
        }
        HubRequest::DirectShow(r) => answer(st, r, |st, r| st.direct_view(r.spoke.as_deref())),
        HubRequest::DirectSet(r) => answer(st, r, |st, r| {
            st.set_direct(r.spoke.as_deref(), r.direct, now)
        }),
        HubRequest::PairList(r) => answer(st, r, |st, _| Ok(st.pair_views(now))),
        other => user_change(st, other, now),
    }
}

/// Users: accounts, passwords, registrations, permissions.
fn user_change(st: &mut HubState, req: HubRequest, now: u64) -> Answer {
    match req {
        HubRequest::UserAdd(r) => answer(st, r, |st, r| st.add_user(&r.id, &r.name, &r.email, now)),
        HubRequest::UserList(r) => answer(st, r, |st, _| Ok(st.user_views())),
        HubRequest::UserRemove(r) => answer(st, r, |st, r| {
            st.remove_user(&r.id, now)?;
            Ok(UserRemoved { removed: r.id })
        }),
        HubRequest::UserResetPassword(r) => answer(st, r, |st, r| st.reset_password(&r.id, now)),
        HubRequest::UserApprove(r) => answer(st, r, |st, r| st.approve_registration(&r.id, now)),
        HubRequest::UserDeny(r) => answer(st, r, |st, r| {
            st.deny_registration(&r.id, now)?;
            Ok(RegistrationDenied { denied: r.id })
        }),
        HubRequest::UserAllow(r) => answer(st, r, |st, r| st.allow_user(&r.id, &r.spoke, now)),
        other => access_change(st, other, now),
    }
}

/// Edits of the access policy and its groups, each answered with the
/// policy after it; each edit returns the words for the audit log.
fn access_change(st: &mut HubState, req: HubRequest, now: u64) -> Answer {
    match req {
        HubRequest::AccessMode(r) => answer(st, r, |st, r| {
            st.edit_access(now, |p| {
                p.mode = r.mode;
                Ok(format!("mode {}", r.mode.name()))
            })
        }),
        HubRequest::AccessAllow(r) => answer(st, r, |st, r| {
            let what = format!("allow {}", r.rule);
            st.edit_access(now, |p| p.allow(r.rule).map(|_| what))
        }),
        HubRequest::AccessRemove(r) => answer(st, r, |st, r| {
            st.edit_access(now, |p| {
                let removed = p.remove_rule(r.number)?;
                Ok(format!("remove rule {} ({removed})", r.number))
            })
        }),
        HubRequest::GroupAdd(r) => answer(st, r, |st, r| {
            st.edit_access(now, |p| {
                p.add_group(&r.name)
                    .map(|_| format!("group {} added", r.name))
            })
        }),
        HubRequest::GroupRemove(r) => answer(st, r, |st, r| {
            st.check_group_unused_by_requests(&r.name)?;
            st.edit_access(now, |p| {
                p.remove_group(&r.name)
                    .map(|_| format!("group {} removed", r.name))
            })?;
            // A removed group's keys go with it, everywhere.
            st.unkey_group(&r.name)?;
            Ok(st.access_view())
        }),
        HubRequest::GroupMembers(r) => answer(st, r, group_members),
        HubRequest::GroupKey(r) => answer(st, r, |st, r| {
            st.set_group_key(&r.name, r.on, r.interval, now)?;
            Ok(st.access_view())
        }),
        HubRequest::GroupMulticastSet(r) => answer(st, r, |st, r| {
            st.set_group_multicast(&r, now)?;
            Ok(st.access_view())
        }),
        HubRequest::RequestPolicySet(r) => {
            answer(st, r, |st, r| st.set_request_policy(r.policy, now))
        }
        HubRequest::RequestPolicyList(r) => answer(st, r, |st, _| Ok(st.request_policies())),
        HubRequest::RequestPolicyRemove(r) => answer(st, r, |st, r| {
            st.remove_request_policy(&r.name, now)?;
            Ok(st.request_policies())
        }),
        HubRequest::RequestList(r) => answer(st, r, |st, _| Ok(st.access_requests())),
        HubRequest::RequestDecide(r) => {
            answer(st, r, |st, r| st.admin_decide_request(r.id, r.approve, now))
        }
        HubRequest::RequestRevoke(r) => answer(st, r, |st, r| st.revoke_request(r.id, now)),
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!("no handler for {other:?}"),
        )),
    }
}

/// Puts members into a group or takes them out; those taken out rotate
/// their keys (what they held may have reached the group).
fn group_members(st: &mut HubState, r: GroupMembers) -> Result<AccessView, StateError> {
    let list: Vec<String> = r.members.iter().map(ToString::to_string).collect();
    let what = if r.remove {
        format!("group {}: {} taken out", r.name, list.join(", "))
    } else {
        format!("group {}: {} added", r.name, list.join(", "))
    };
    let view = st.edit_access(unix_now(), |p| {
        for m in &r.members {
            if r.remove {
                p.remove_member(&r.name, m)?;
            } else {
                p.add_member(&r.name, m.clone())?;
            }
        }
        Ok(what)
    })?;
    if r.remove {
        st.rotate_group_leavers(&r.name, &r.members);
    }
    Ok(view)
}
