//! The hub session's rules: the version check, the enrolment and attach
//! order, what an attached spoke may ask, and refusals that end it.

use super::*;
use crate::rotation::{LinkSchedule, RotationPolicy, ScheduleMeta};
use rand::{rngs::StdRng, SeedableRng};

fn hello(version: u16, invitation: Option<InvitationId>) -> Hello {
    Hello {
        version,
        invitation,
    }
}

fn config() -> SpokeConfig {
    crate::test_packets::spoke_config(3)
}

fn drain(s: &mut HubSession) -> Vec<HubAction> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn first_key() -> KeyDelivery {
    let mut s = LinkSchedule::restore(3, vec![], ScheduleMeta::default());
    s.issue(100, &mut StdRng::seed_from_u64(1));
    let delivery = s.deliveries(&RotationPolicy::default()).unwrap().pop();
    delivery.unwrap()
}

#[test]
fn another_version_or_an_enrolment_without_invitation_is_refused() {
    let id = InvitationId([7; 16]);
    let v = crate::PROTOCOL_VERSION;
    let e = accept(Purpose::Attach, &hello(v + 1, None)).unwrap_err();
    assert_eq!(e.code, RefusalCode::VersionMismatch);
    assert!(e.detail.contains(&format!("hub speaks {v}")), "{e}");
    let e = accept(Purpose::Enrol, &hello(v, None)).unwrap_err();
    assert_eq!(e.code, RefusalCode::ProtocolViolation);
    assert_eq!(
        accept(Purpose::Enrol, &hello(v, Some(id))).unwrap(),
        Exchange::Enrol(id)
    );
    assert_eq!(
        accept(Purpose::Attach, &hello(v, None)).unwrap(),
        Exchange::Attach
    );
}

#[test]
fn an_enrolment_goes_request_welcome_key_receipt_close() {
    let mut s = HubSession::new(&Exchange::Enrol(InvitationId([1; 16])));
    assert!(s.handle(SpokeMessage::Attach).is_err(), "attach first");
    let mut s = HubSession::new(&Exchange::Enrol(InvitationId([1; 16])));
    s.handle(SpokeMessage::EnrolRequest {
        hostname: "h".into(),
        as_user: None,
    })
    .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![HubAction::Enrol {
            hostname: "h".into(),
            as_user: None,
            serves: None,
        }]
    );
    s.enrolled(Enrolled::Done {
        config: Box::new(config()),
        first_key: Some(first_key()),
    });
    assert_eq!(
        drain(&mut s),
        vec![
            HubAction::Send(HubMessage::Welcome(config())),
            HubAction::Send(HubMessage::KeyDistribution(first_key())),
        ]
    );
    assert!(!s.is_attached());
    assert!(s.handle(SpokeMessage::Keepalive).is_err());
    let mut s = HubSession::new(&Exchange::Enrol(InvitationId([1; 16])));
    s.handle(SpokeMessage::EnrolRequest {
        hostname: "h".into(),
        as_user: None,
    })
    .unwrap();
    s.enrolled(Enrolled::Done {
        config: Box::new(config()),
        first_key: Some(first_key()),
    });
    drain(&mut s);
    s.handle(SpokeMessage::KeyReceipt { epoch: 1 }).unwrap();
    assert_eq!(drain(&mut s), vec![HubAction::Receipt(1), HubAction::Close]);
}

#[test]
fn an_enrolment_that_waits_or_fails_is_told_and_closed() {
    for (outcome, code) in [
        (
            Enrolled::Done {
                config: Box::new(config()),
                first_key: None,
            },
            RefusalCode::Pending,
        ),
        (Enrolled::NotStored, RefusalCode::Internal),
        (
            Enrolled::Refused(Refusal::new(RefusalCode::InvitationUsed, "used")),
            RefusalCode::InvitationUsed,
        ),
    ] {
        let mut s = HubSession::new(&Exchange::Enrol(InvitationId([1; 16])));
        s.handle(SpokeMessage::EnrolRequest {
            hostname: "h".into(),
            as_user: None,
        })
        .unwrap();
        drain(&mut s);
        s.enrolled(outcome);
        let actions = drain(&mut s);
        assert_eq!(actions.last(), Some(&HubAction::Close));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, HubAction::Send(HubMessage::Refused(r)) if r.code == code)),
            "{actions:?}"
        );
        s.send(HubMessage::Keepalive);
        assert_eq!(drain(&mut s), vec![], "nothing after the end");
    }
}

#[test]
fn an_attached_spoke_asks_and_the_hub_answers() {
    let mut s = HubSession::new(&Exchange::Attach);
    assert!(s.handle(SpokeMessage::KeyReceipt { epoch: 1 }).is_err());
    let mut s = HubSession::new(&Exchange::Attach);
    s.handle(SpokeMessage::Attach).unwrap();
    assert_eq!(drain(&mut s), vec![HubAction::Attach]);
    let note = HubMessage::UpdateNotification { epoch: 2 };
    s.attached(Some((config(), vec![note.clone()])));
    assert!(s.is_attached());
    assert_eq!(
        drain(&mut s),
        vec![
            HubAction::Send(HubMessage::Welcome(config())),
            HubAction::Send(note)
        ]
    );
    s.handle(SpokeMessage::Keepalive).unwrap();
    s.handle(SpokeMessage::KeyReceipt { epoch: 2 }).unwrap();
    s.handle(SpokeMessage::UpdateReport { epoch: 2 }).unwrap();
    s.handle(SpokeMessage::DistributionRequest).unwrap();
    s.handle(SpokeMessage::UpdateRequest {
        reason: "lifetime-over".into(),
    })
    .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![
            HubAction::Send(HubMessage::Keepalive),
            HubAction::Receipt(2),
            HubAction::Send(HubMessage::ReportAck { epoch: 2 }),
            HubAction::Report(2),
            HubAction::Distribute,
            HubAction::Rotate(Trigger::SpokeRequest("lifetime-over".into())),
        ]
    );
    s.answer(
        4,
        Err(crate::api_error::ApiError::new(
            crate::api_error::ErrorCode::NotFound,
            "no",
        )),
    );
    assert_eq!(
        drain(&mut s),
        vec![HubAction::Send(HubMessage::UserReply {
            id: 4,
            result: Err(crate::api_error::ApiError::new(
                crate::api_error::ErrorCode::NotFound,
                "no"
            ))
        })]
    );
    let e = s.handle(SpokeMessage::Attach).unwrap_err();
    assert_eq!(e.to_string(), "unexpected Attach from an attached spoke");
}

#[test]
fn an_attach_without_a_stored_key_is_refused_and_a_cut_off_ends_the_session() {
    let mut s = HubSession::new(&Exchange::Attach);
    s.handle(SpokeMessage::Attach).unwrap();
    drain(&mut s);
    s.attached(None);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [HubAction::Send(HubMessage::Refused(r)), HubAction::Close] if r.code == RefusalCode::Internal
    ));
    let mut s = HubSession::new(&Exchange::Attach);
    s.handle(SpokeMessage::Attach).unwrap();
    s.attached(Some((config(), vec![])));
    drain(&mut s);
    s.send(HubMessage::Refused(Refusal::new(
        RefusalCode::Revoked,
        "revoked",
    )));
    assert!(matches!(
        drain(&mut s).as_slice(),
        [HubAction::Send(HubMessage::Refused(_)), HubAction::Close]
    ));
    assert!(!s.is_attached());
}
