//! Access requests at the hub: policies checked against the groups and
//! stored, decisions stored before they count, and a restart between
//! any two of them.

use tasuki_core::requests::{Approver, ApproverSel, Grant, RequestPolicy, RequestState};

use super::test_hub::{load, new_hub, TempDir};
use super::*;

fn policy(required: u32) -> RequestPolicy {
    RequestPolicy {
        name: "prod-db".into(),
        grant: Grant::Group("prod".into()),
        approvers: vec![
            ApproverSel::User("bob".into()),
            ApproverSel::User("carol".into()),
        ],
        required,
        max_duration_secs: 3600,
        decide_within_secs: 600,
        requesters: None,
    }
}

#[test]
fn policies_name_groups_that_exist_and_requests_survive_a_restart() {
    let dir = TempDir::new("requests");
    let (mut st, key) = new_hub(&dir);
    let refused = st.set_request_policy(policy(2), 1);
    assert!(
        matches!(refused, Err(StateError::NotFound(_))),
        "no group prod yet: {refused:?}"
    );
    st.edit_access(1, |p| p.add_group("prod").map(|_| "prod".into()))
        .unwrap();
    st.set_request_policy(policy(2), 1).unwrap();
    let asked = st
        .requests
        .ask("prod-db", ("alice", "laptop", &[]), 1800, "hotfix", 10)
        .unwrap();
    st.commit_outcomes(std::slice::from_ref(&asked)).unwrap();
    let id = asked.request.id;
    // One approval from an admin, then a restart: it is still counted.
    st.admin_decide_request(id, true, 20).unwrap();
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(st.request_policies().len(), 1);
    let r = &st.access_requests()[0];
    assert_eq!(r.approvals.len(), 1);
    assert_eq!(r.state, RequestState::Waiting);
    assert!(
        st.admin_decide_request(id, true, 21).is_err(),
        "the admins count once"
    );
    let user = Approver::User {
        id: "bob".into(),
        spoke: "bob-laptop".into(),
    };
    let out = st.requests.approve(id, &user, &[], 22).unwrap();
    st.commit_outcomes(std::slice::from_ref(&out)).unwrap();
    assert!(out.grants_changed);
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(
        st.requests.grants().count(),
        1,
        "granted across the restart"
    );
    assert!(
        st.remove_request_policy("prod-db", 23).is_err(),
        "a granted request holds its policy"
    );
    // Its time ends it, stored.
    st.requests_tick(22 + 1800);
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(st.access_requests()[0].state, RequestState::Over);
    st.remove_request_policy("prod-db", 30).unwrap();
    let audit = st.audit_since(0).unwrap();
    let lines: Vec<&str> = audit.iter().map(|a| a.detail.as_str()).collect();
    assert!(
        lines.iter().any(|l| l.contains("waiting by an admin")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("over by time")),
        "{lines:?}"
    );
}
