//! The per-packet decision: an inner packet's flow, the flows a rule
//! allowed (so that their replies pass), fragments, and the gate that puts
//! them together.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use etherparse::{
    Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, IpNumber, Ipv6HeaderSlice, LaxIpv4Slice,
};

use super::{CompiledAccess, Origin, Proto, Service, MAX_FLOWS};

/// The facts of an inner packet that rules and flow tracking look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source and destination port (TCP, UDP); for ICMP echo, the
    /// identifier and the request's type (in that order for a request, the
    /// other way for a reply); `None` when the packet has none (a later
    /// fragment, other ICMP messages, other protocols).
    pub ports: Option<(u16, u16)>,
}

/// ICMP's echo request type, the second half of an echo request's key
/// (ICMPv6's echoes are keyed the same way).
const ECHO_REQUEST: u16 = 8;
/// IP protocol numbers of ICMP and ICMPv6.
pub(super) const ICMP: u8 = 1;
/// See [`ICMP`].
pub(super) const ICMPV6: u8 = 58;

/// What [`Flow::parse`] found besides the flow itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// An ordinary packet.
    Plain,
    /// An ICMP error (unreachable, time exceeded, parameter problem) about
    /// the packet of this flow, which the receiver of the error sent.
    IcmpError(Flow),
    /// The first fragment of the IP datagram with this identification
    /// (16 bits in IPv4, 32 in IPv6's fragment header).
    FirstFragment(u32),
    /// A later fragment (no ports of its own): it passes when its first
    /// fragment passed.
    LaterFragment(u32),
}

impl Flow {
    /// Reads an IPv4 or IPv6 packet's flow; `None` when it is neither
    /// (the routing rules drop those before the policy sees them).
    pub fn parse(packet: &[u8]) -> Option<(Flow, PacketKind)> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => Self::parse_v4(packet),
            Some(6) => Self::parse_v6(packet),
            _ => None,
        }
    }

    fn parse_v4(packet: &[u8]) -> Option<(Flow, PacketKind)> {
        // Lax: the packet inside an ICMP error is cut short by design.
        let (ip, _) = LaxIpv4Slice::from_slice(packet).ok()?;
        let header = ip.header();
        let mut flow = Flow {
            proto: header.protocol().0,
            src: header.source_addr().into(),
            dst: header.destination_addr().into(),
            ports: None,
        };
        let payload = ip.payload().payload;
        if ip.is_payload_fragmented() {
            let id = u32::from(header.identification());
            if header.fragments_offset().value() != 0 {
                return Some((flow, PacketKind::LaterFragment(id)));
            }
            // A first fragment: its ports decide, for its later fragments too.
            flow.ports = ports(flow.proto, payload);
            return Some((flow, PacketKind::FirstFragment(id)));
        }
        let kind = flow.read_transport(payload);
        Some((flow, kind))
    }

    fn parse_v6(packet: &[u8]) -> Option<(Flow, PacketKind)> {
        // Cut short is fine (the packet inside an ICMP error is); a chain
        // that does not parse, or a source route still to follow, is
        // refused (see [`super::ipv6_chain`]).
        let header = Ipv6HeaderSlice::from_slice(packet).ok()?;
        let chain = super::ipv6_chain::walk(packet).ok()?;
        let mut flow = Flow {
            proto: chain.proto,
            src: header.source_addr().into(),
            dst: header.destination_addr().into(),
            ports: None,
        };
        match chain.fragment {
            Some((id, 0)) => {
                flow.ports = ports(flow.proto, chain.payload);
                Some((flow, PacketKind::FirstFragment(id)))
            }
            Some((id, _)) => Some((flow, PacketKind::LaterFragment(id))),
            None => {
                let kind = flow.read_transport(chain.payload);
                Some((flow, kind))
            }
        }
    }

    /// Fills in the ports (or an echo's key) from an unfragmented
    /// packet's transport header, and says whether it is an ICMP error.
    fn read_transport(&mut self, payload: &[u8]) -> PacketKind {
        match self.proto {
            ICMP => {
                let Ok(icmp) = Icmpv4Slice::from_slice(payload) else {
                    return PacketKind::Plain;
                };
                match icmp.icmp_type() {
                    // The identifier and the direction: a reply answers the
                    // request (see [`Flow::reversed`]); a request the other
                    // way is a flow of its own.
                    Icmpv4Type::EchoRequest(e) => self.ports = Some((e.id, ECHO_REQUEST)),
                    Icmpv4Type::EchoReply(e) => self.ports = Some((ECHO_REQUEST, e.id)),
                    Icmpv4Type::DestinationUnreachable(_)
                    | Icmpv4Type::TimeExceeded(_)
                    | Icmpv4Type::ParameterProblem(_) => return icmp_error(icmp.payload()),
                    _ => {}
                }
            }
            ICMPV6 => {
                let Ok(icmp) = Icmpv6Slice::from_slice(payload) else {
                    return PacketKind::Plain;
                };
                match icmp.icmp_type() {
                    Icmpv6Type::EchoRequest(e) => self.ports = Some((e.id, ECHO_REQUEST)),
                    Icmpv6Type::EchoReply(e) => self.ports = Some((ECHO_REQUEST, e.id)),
                    // Packet Too Big is how IPv6 finds a path's MTU.
                    Icmpv6Type::DestinationUnreachable(_)
                    | Icmpv6Type::PacketTooBig { .. }
                    | Icmpv6Type::TimeExceeded(_)
                    | Icmpv6Type::ParameterProblem(_) => return icmp_error(icmp.payload()),
                    _ => {}
                }
            }
            _ => self.ports = ports(self.proto, payload),
        }
        PacketKind::Plain
    }

    /// The first packet of a flow that `service` names, for an admin's
    /// "would this pass?" (`None` for `any`, which names no protocol).
    pub fn probe(src: IpAddr, dst: IpAddr, service: &Service) -> Option<Flow> {
        let proto = match (service.proto, dst) {
            (Proto::Icmp, IpAddr::V6(_)) => ICMPV6,
            (p, _) => p.number()?,
        };
        Some(Flow {
            proto,
            src,
            dst,
            ports: match service.proto {
                Proto::Icmp => Some((0, ECHO_REQUEST)),
                _ => Some((49152, service.ports.map_or(0, |(lo, _)| lo))),
            },
        })
    }

    fn reversed(&self) -> Flow {
        Flow {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            ports: self.ports.map(|(s, d)| (d, s)),
        }
    }

    /// How long a tracked flow lives without a packet, in milliseconds.
    fn idle_ms(&self) -> u64 {
        match self.proto {
            6 => 15 * 60 * 1000,
            17 => 2 * 60 * 1000,
            _ => 30 * 1000,
        }
    }
}

/// TCP's and UDP's source and destination ports, when the header is there.
fn ports(proto: u8, payload: &[u8]) -> Option<(u16, u16)> {
    let p = payload.get(..4)?;
    matches!(IpNumber(proto), IpNumber::TCP | IpNumber::UDP).then(|| {
        (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        )
    })
}

/// An ICMP error about the packet `invoking` (cut short, as errors carry
/// it); plain when that packet does not parse or is an ICMP message itself.
fn icmp_error(invoking: &[u8]) -> PacketKind {
    match Flow::parse(invoking) {
        Some((inner, _)) if inner.proto != ICMP && inner.proto != ICMPV6 => {
            PacketKind::IcmpError(inner)
        }
        _ => PacketKind::Plain,
    }
}

struct Tracked {
    origin: Origin,
    expires_ms: u64,
    /// The policy generation this flow was last found allowed under.
    generation: u64,
}

/// Flows a rule allowed, so that their replies pass: keyed in the allowed
/// direction, refreshed by every packet, forgotten after an idle time (TCP
/// 15 min, UDP 2 min, other 30 s). One origin tracks at most
/// [`MAX_FLOWS_PER_ORIGIN`]; past that its new flows pass but their replies
/// do not, so one busy spoke cannot push the others' flows out.
#[derive(Default)]
pub struct FlowTable {
    flows: HashMap<Flow, Tracked>,
    per_origin: HashMap<Origin, usize>,
}

/// Most flows one origin (a spoke, or the hub's side) tracks at once.
pub const MAX_FLOWS_PER_ORIGIN: usize = MAX_FLOWS / 8;

impl FlowTable {
    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub(super) fn note(&mut self, origin: Origin, flow: Flow, now_ms: u64, generation: u64) {
        let expires_ms = now_ms.saturating_add(flow.idle_ms());
        if let Some(t) = self.flows.get_mut(&flow) {
            t.expires_ms = expires_ms;
            t.generation = generation;
            return;
        }
        if self.per_origin.get(&origin).copied().unwrap_or(0) >= MAX_FLOWS_PER_ORIGIN {
            return;
        }
        if self.flows.len() >= MAX_FLOWS {
            self.prune(now_ms);
            if self.flows.len() >= MAX_FLOWS - MAX_FLOWS / 16 {
                // Still (nearly) full of live flows from many origins: a
                // sixteenth of them go, in the map's arbitrary order, so
                // that the next many inserts cost no scan.
                let victims: Vec<Flow> = self.flows.keys().take(MAX_FLOWS / 16).copied().collect();
                for f in &victims {
                    self.remove(f);
                }
            }
        }
        self.flows.insert(
            flow,
            Tracked {
                origin,
                expires_ms,
                generation,
            },
        );
        *self.per_origin.entry(origin).or_default() += 1;
    }

    fn remove(&mut self, key: &Flow) {
        if let Some(t) = self.flows.remove(key) {
            if let Some(n) = self.per_origin.get_mut(&t.origin) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_origin.remove(&t.origin);
                }
            }
        }
    }

    /// Forgets every flow that has idled out.
    pub(super) fn prune(&mut self, now_ms: u64) {
        self.flows.retain(|_, t| t.expires_ms > now_ms);
        self.per_origin.clear();
        for t in self.flows.values() {
            *self.per_origin.entry(t.origin).or_default() += 1;
        }
    }

    fn clear(&mut self) {
        self.flows.clear();
        self.per_origin.clear();
    }
}

/// Most fragmented datagrams whose first fragment passed, tracked at once.
pub const MAX_FRAGMENTED: usize = 8192;
/// How long the later fragments of a datagram may follow its first, ms.
const FRAGMENT_MS: u64 = 10_000;

/// Fragmented datagrams whose first fragment passed: their later fragments,
/// which carry no ports, pass too (and others' do not).
#[derive(Default)]
struct Fragments {
    passed: HashMap<(IpAddr, IpAddr, u32), u64>,
}

impl Fragments {
    /// A datagram's fragments share addresses and identification (the
    /// protocol a later IPv6 fragment seems to carry is its data).
    fn key(flow: &Flow, id: u32) -> (IpAddr, IpAddr, u32) {
        (flow.src, flow.dst, id)
    }

    fn note(&mut self, flow: &Flow, id: u32, now_ms: u64) {
        if self.passed.len() >= MAX_FRAGMENTED {
            self.prune(now_ms);
            if self.passed.len() >= MAX_FRAGMENTED {
                // Full of live ones: this datagram's later fragments drop.
                return;
            }
        }
        self.passed
            .insert(Self::key(flow, id), now_ms.saturating_add(FRAGMENT_MS));
    }

    fn passes(&self, flow: &Flow, id: u32, now_ms: u64) -> bool {
        self.passed
            .get(&Self::key(flow, id))
            .is_some_and(|until| *until > now_ms)
    }

    fn prune(&mut self, now_ms: u64) {
        self.passed.retain(|_, until| *until > now_ms);
    }
}

/// The per-packet decision: the compiled policy and the flows it allowed.
#[derive(Default)]
pub struct AccessGate {
    policy: Arc<CompiledAccess>,
    flows: FlowTable,
    fragments: Fragments,
    /// Counts policy changes: a tracked flow is checked against the rules
    /// again, once, at its next packet after one.
    generation: u64,
}

impl AccessGate {
    /// A gate that enforces `policy` from its first packet.
    pub fn new(policy: Arc<CompiledAccess>) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Takes a new compiled policy. Tracked flows it no longer allows are
    /// forgotten at their next packet (so their replies stop too), which
    /// costs this call no scan of the table.
    pub fn replace(&mut self, policy: Arc<CompiledAccess>) {
        if !policy.enforcing() {
            self.flows.clear();
            self.fragments.passed.clear();
        }
        self.policy = policy;
        self.generation += 1;
    }

    /// Whether the rules decide at all: when not, [`AccessGate::check`]
    /// passes everything and need not be called.
    pub fn enforcing(&self) -> bool {
        self.policy.enforcing()
    }

    /// Flows tracked now.
    pub fn tracked(&self) -> usize {
        self.flows.len()
    }

    /// Forgets the flows that have idled out (the data plane calls this
    /// every second or so).
    pub fn prune(&mut self, now_ms: u64) {
        self.flows.prune(now_ms);
        self.fragments.prune(now_ms);
    }

    /// Whether the tracked flow `key` is live and still allowed (checked
    /// against the rules once per policy change); refreshes it if so,
    /// forgets it if not.
    fn still_allowed(&mut self, key: &Flow, from: Option<Origin>, now_ms: u64) -> bool {
        let Some(t) = self.flows.flows.get_mut(key) else {
            return false;
        };
        if from.is_some_and(|o| o != t.origin) {
            return false;
        }
        let ok = t.expires_ms > now_ms
            && (t.generation == self.generation || self.policy.allows(t.origin, key));
        if ok {
            t.expires_ms = now_ms.saturating_add(key.idle_ms());
            t.generation = self.generation;
        } else {
            self.flows.remove(key);
        }
        ok
    }

    /// Whether a packet from `origin` may pass; `now_ms` is a monotonic
    /// clock in milliseconds.
    pub fn check(&mut self, origin: Origin, packet: &[u8], now_ms: u64) -> bool {
        if !self.policy.enforcing() {
            return true;
        }
        let Some((flow, kind)) = Flow::parse(packet) else {
            return false;
        };
        if let PacketKind::LaterFragment(id) = kind {
            return self.fragments.passes(&flow, id, now_ms);
        }
        let pass = self.decide(origin, &flow, kind, now_ms);
        if let (true, PacketKind::FirstFragment(id)) = (pass, kind) {
            self.fragments.note(&flow, id, now_ms);
        }
        pass
    }

    /// The decision on a packet with its own flow (all but later fragments).
    fn decide(&mut self, origin: Origin, flow: &Flow, kind: PacketKind, now_ms: u64) -> bool {
        let flow = *flow;
        // A packet of a flow already allowed, the way it was allowed: one
        // lookup, no rule walk.
        if self.still_allowed(&flow, Some(origin), now_ms) {
            return true;
        }
        // A reply to one.
        if self.still_allowed(&flow.reversed(), None, now_ms) {
            return true;
        }
        if self.policy.allows(origin, &flow) {
            self.flows.note(origin, flow, now_ms, self.generation);
            return true;
        }
        match kind {
            // An error about a packet of a tracked flow (path MTU discovery,
            // a closed port), on its way to that packet's sender.
            PacketKind::IcmpError(about) if about.src == flow.dst => {
                self.still_allowed(&about, None, now_ms)
                    || self.still_allowed(&about.reversed(), None, now_ms)
            }
            _ => false,
        }
    }
}
