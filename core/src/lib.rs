//! tasuki's protocol and key logic, free of I/O.
//!
//! Everything here is a plain state machine or a pure function: time comes in
//! as an argument and randomness through a passed RNG, so every rule can be
//! tested without sockets, clocks or sleeps. The `hub` and `spoke` crates are
//! thin tokio shells that drive these types.
//!
//! One exception is documented where it lives: boringtun's `Tunn` and snow's
//! handshake read the clock or the OS RNG themselves; [`link`] and
//! [`channel`] wrap them so that tasuki's own rules stay testable.

pub mod access;
pub mod address_plan;
pub mod admin_api;
pub mod admin_calls;
pub mod api_error;
pub mod audit;
pub mod batch;
pub mod channel;
pub mod codec;
pub mod control;
pub mod datagram;
pub mod erasure;
pub mod flood;
pub mod group;
pub mod group_keys;
pub mod group_messages;
pub mod hierarchy;
pub mod hub_plane;
pub mod hub_session;
pub mod invitation;
pub mod keys;
pub mod leadership;
pub mod link;
pub mod multicast;
pub mod pair;
pub mod pair_book;
pub mod pair_keys;
pub mod pair_rules;
pub mod pair_schedule;
pub mod path;
pub mod registry;
pub mod requests;
pub mod rotation;
pub mod routing;
pub mod scope_schedule;
pub mod scope_seal;
pub mod seal;
pub mod spoke_config;
pub mod spoke_groups;
pub mod spoke_keys;
pub mod spoke_pairs;
pub mod spoke_plane;
pub mod spoke_session;
pub mod store_seal;
pub mod users;
pub mod wireguard;

#[cfg(test)]
mod direct_tests;
#[cfg(test)]
mod pair_sim;
#[cfg(test)]
mod planes_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod test_packets;

/// Protocol version spoken on the control channel and the admin sockets.
/// Hub and spokes of different versions refuse each other with a clear
/// error (2: the spoke configuration carries IPv6, approvers are told
/// what waits for them; 3: it carries the members of a hub cluster).
pub const PROTOCOL_VERSION: u16 = 3;

/// Largest inner IP packet the data plane carries (the TUN MTU).
///
/// 1500 (outer MTU) − 20 (IPv4) − 8 (UDP) − 32 (WireGuard header and tag),
/// rounded down the way WireGuard does so IPv6 outer headers fit too.
pub const TUNNEL_MTU: u16 = 1420;

/// Size of every buffer handed to boringtun's `encapsulate`/`decapsulate`.
///
/// boringtun panics when a buffer is smaller than the packet + 32 bytes or
/// smaller than 148 bytes (a handshake initiation). 64 KiB covers any UDP
/// datagram with room to spare.
pub const DATAGRAM_BUFFER: usize = 65_536;
