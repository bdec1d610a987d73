//! The spoke session's rules: delivery, re-acknowledgement, the store gate,
//! update reports re-sent until acknowledged, refusals, calls, keepalives.

use super::*;
use crate::control::KeyDelivery;
use crate::rotation::{LinkSchedule, RotationPolicy, ScheduleMeta};
use rand::{rngs::StdRng, SeedableRng};

const LINK: u32 = 7;

fn config() -> SpokeConfig {
    crate::test_packets::spoke_config(LINK)
}

/// A schedule with epoch 1 in use and epoch 2 issued: its crossed delivery.
fn second_epoch() -> (KeyEpoch, KeyDelivery) {
    let mut rng = StdRng::seed_from_u64(5);
    let mut s = LinkSchedule::restore(LINK, vec![], ScheduleMeta::default());
    let first = s.issue(100, &mut rng);
    assert!(s.on_receipt(1));
    s.issue(110, &mut rng);
    let delivery = s
        .deliveries(&RotationPolicy::default())
        .unwrap()
        .pop()
        .unwrap();
    (first, delivery)
}

/// What a spoke with no keys holds.
const NOTHING: Holding<'static> = Holding {
    epochs: &[],
    current: 0,
};

/// An attached session whose spoke holds epoch 1, and epoch 2's delivery.
fn attached_with_first() -> (SpokeSession, [KeyEpoch; 1], KeyDelivery) {
    let (first, delivery) = second_epoch();
    (attached(), [first], delivery)
}

fn drain(s: &mut SpokeSession) -> Vec<SessionAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn attached() -> SpokeSession {
    let mut s = SpokeSession::new(0, Some(config()));
    assert_eq!(
        drain(&mut s),
        vec![
            SessionAction::Send(SpokeMessage::Attach),
            SessionAction::Plane(PlaneCommand::Rehandshake)
        ]
    );
    s
}

#[test]
fn a_new_key_is_stored_before_it_is_used_or_acknowledged() {
    let (mut s, held, delivery) = attached_with_first();
    let holding = Holding {
        epochs: &held,
        current: 1,
    };
    s.handle_message(1, HubMessage::KeyDistribution(delivery), holding)
        .unwrap();
    let actions = drain(&mut s);
    let [SessionAction::StoreEpoch(stored)] = actions.as_slice() else {
        panic!("expected only a store, got {actions:?}");
    };
    assert_eq!(stored.epoch.number, 2);
    s.epoch_stored(2, 2, true);
    assert_eq!(
        drain(&mut s),
        vec![
            SessionAction::Plane(PlaneCommand::Hold(stored.clone())),
            SessionAction::Send(SpokeMessage::KeyReceipt { epoch: 2 })
        ]
    );
}

#[test]
fn a_key_that_could_not_be_stored_is_not_acknowledged_and_the_resend_is_taken() {
    let (mut s, held, delivery) = attached_with_first();
    let holding = Holding {
        epochs: &held,
        current: 1,
    };
    s.handle_message(1, HubMessage::KeyDistribution(delivery.clone()), holding)
        .unwrap();
    drain(&mut s);
    s.epoch_stored(1, 2, false);
    assert_eq!(drain(&mut s), vec![], "nothing used, nothing reported");
    // The hub sends it again after RESEND_SECS: the spoke tries again.
    s.handle_message(6, HubMessage::KeyDistribution(delivery), holding)
        .unwrap();
    assert!(matches!(
        drain(&mut s).as_slice(),
        [SessionAction::StoreEpoch(h)] if h.epoch.number == 2
    ));
}

#[test]
fn a_key_held_already_is_acknowledged_again_without_storing() {
    let (first, delivery) = second_epoch();
    let mut s = attached();
    let (_, d2) = second_epoch();
    let held = [first, open_second(&d2)];
    let holding = Holding {
        epochs: &held,
        current: 1,
    };
    s.handle_message(3, HubMessage::KeyDistribution(delivery.clone()), holding)
        .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::Send(SpokeMessage::KeyReceipt { epoch: 2 })]
    );
    // Or when a newer epoch carries traffic already (2 was erased).
    let held = [held[0].clone()];
    let holding = Holding {
        epochs: &held,
        current: 3,
    };
    s.handle_message(4, HubMessage::KeyDistribution(delivery), holding)
        .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::Send(SpokeMessage::KeyReceipt { epoch: 2 })]
    );
}

fn open_second(d: &KeyDelivery) -> KeyEpoch {
    let (first, _) = second_epoch();
    crate::rotation::open_delivery(LINK, d, &[first]).unwrap()
}

#[test]
fn a_key_before_the_configuration_or_sealed_under_an_unknown_epoch_ends_the_session() {
    let (first, delivery) = second_epoch();
    let mut s = SpokeSession::new(0, None);
    let held = [first];
    let holding = Holding {
        epochs: &held,
        current: 1,
    };
    assert!(matches!(
        s.handle_message(1, HubMessage::KeyDistribution(delivery.clone()), holding),
        Err(SessionEnd::KeyBeforeConfig)
    ));
    let mut s = attached();
    let none = NOTHING;
    assert!(matches!(
        s.handle_message(1, HubMessage::KeyDistribution(delivery), none),
        Err(SessionEnd::Delivery { epoch: 2, .. })
    ));
}

#[test]
fn a_configuration_is_in_effect_only_once_saved() {
    let mut s = SpokeSession::new(0, None);
    drain(&mut s);
    let none = NOTHING;
    s.handle_message(1, HubMessage::Welcome(config()), none)
        .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::SaveConfig {
            config: config(),
            changed: false
        }]
    );
    s.config_saved(false);
    assert_eq!(s.config(), None);
    s.handle_message(2, HubMessage::Welcome(config()), none)
        .unwrap();
    drain(&mut s);
    s.config_saved(true);
    assert_eq!(s.config(), Some(&config()));
    // The same configuration again: nothing to store.
    s.handle_message(3, HubMessage::Welcome(config()), none)
        .unwrap();
    assert_eq!(drain(&mut s), vec![]);
    let mut moved = config();
    moved.mtu = 1280;
    s.handle_message(4, HubMessage::Welcome(moved.clone()), none)
        .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::SaveConfig {
            config: moved,
            changed: true
        }]
    );
}

#[test]
fn an_update_report_goes_again_until_the_hub_acknowledges_it() {
    let mut s = attached();
    let none = NOTHING;
    s.handle_report(10, PlaneReport::Confirmed(4));
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::Send(SpokeMessage::UpdateReport { epoch: 4 })]
    );
    assert_eq!(s.poll_timeout(), 10 + RESEND_SECS);
    s.handle_message(11, HubMessage::Keepalive, none).unwrap();
    s.handle_timeout(10 + RESEND_SECS).unwrap();
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::Send(SpokeMessage::UpdateReport { epoch: 4 })]
    );
    s.handle_message(16, HubMessage::ReportAck { epoch: 3 }, none)
        .unwrap();
    s.handle_timeout(15 + RESEND_SECS).unwrap();
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::Send(SpokeMessage::UpdateReport { epoch: 4 })],
        "an older epoch's acknowledgement does not count"
    );
    s.handle_message(21, HubMessage::ReportAck { epoch: 4 }, none)
        .unwrap();
    s.handle_timeout(20 + RESEND_SECS).unwrap();
    assert_eq!(drain(&mut s), vec![]);
}

#[test]
fn keepalives_when_quiet_and_the_end_when_the_hub_is_silent() {
    let mut s = attached();
    let none = NOTHING;
    assert_eq!(s.poll_timeout(), KEEPALIVE_SECS);
    s.handle_timeout(KEEPALIVE_SECS - 1).unwrap();
    assert_eq!(drain(&mut s), vec![]);
    s.handle_timeout(KEEPALIVE_SECS).unwrap();
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::Send(SpokeMessage::Keepalive)]
    );
    s.handle_message(30, HubMessage::Keepalive, none).unwrap();
    s.handle_timeout(30 + IDLE_SECS - 1).unwrap();
    assert!(matches!(
        s.handle_timeout(30 + IDLE_SECS),
        Err(SessionEnd::Idle)
    ));
}

#[test]
fn replies_reach_the_call_that_asked_once() {
    let mut s = attached();
    let none = NOTHING;
    let id = s.call(
        1,
        UserRequest::Logout {
            user: "alice".into(),
        },
    );
    drain(&mut s);
    assert_eq!(s.waiting_calls().collect::<Vec<_>>(), vec![id]);
    let reply = HubMessage::UserReply {
        id,
        result: Err(crate::api_error::ApiError::new(
            crate::api_error::ErrorCode::NotFound,
            "no",
        )),
    };
    s.handle_message(2, reply.clone(), none).unwrap();
    assert_eq!(
        drain(&mut s),
        vec![SessionAction::Reply {
            id,
            result: Err(crate::api_error::ApiError::new(
                crate::api_error::ErrorCode::NotFound,
                "no"
            ))
        }]
    );
    s.handle_message(3, reply, none).unwrap();
    assert_eq!(drain(&mut s), vec![], "a duplicate answer is dropped");
    assert_eq!(s.waiting_calls().count(), 0);
}

#[test]
fn notifications_session_facts_and_refusals() {
    let mut s = attached();
    let none = NOTHING;
    s.handle_message(1, HubMessage::UpdateNotification { epoch: 9 }, none)
        .unwrap();
    s.handle_message(
        1,
        HubMessage::Session(SessionFacts {
            users: vec!["alice".into()],
            carrying: true,
        }),
        none,
    )
    .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![
            SessionAction::Plane(PlaneCommand::SwitchTo(9)),
            SessionAction::Session(SessionFacts {
                users: vec!["alice".into()],
                carrying: true
            }),
            SessionAction::Plane(PlaneCommand::Carrying(true)),
        ]
    );
    let refused = Refusal::new(RefusalCode::Revoked, "revoked");
    assert!(matches!(
        s.handle_message(2, HubMessage::Refused(refused), none),
        Err(SessionEnd::Refused(r)) if r.code == RefusalCode::Revoked
    ));
    assert_eq!(after_refusal(RefusalCode::Revoked), AfterRefusal::EraseKeys);
    assert_eq!(after_refusal(RefusalCode::Pending), AfterRefusal::RetrySoon);
    assert_eq!(after_refusal(RefusalCode::Internal), AfterRefusal::BackOff);
}

#[test]
fn data_plane_reports_become_key_commands() {
    let mut s = attached();
    s.handle_report(1, PlaneReport::NeedKeys);
    s.handle_report(1, PlaneReport::RequestUpdate);
    assert_eq!(
        drain(&mut s),
        vec![
            SessionAction::Send(SpokeMessage::DistributionRequest),
            SessionAction::Send(SpokeMessage::UpdateRequest {
                reason: "lifetime-over".into()
            }),
        ]
    );
}
