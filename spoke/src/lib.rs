//! `tasuki-spoke`: the daemon on each device. Enrols with the hub once, then
//! keeps a control channel and a WireGuard tunnel to it, with the keys the
//! hub issues and rotates.
//!
//! A library as well as the binary: a child hub runs a spoke of its parent
//! (its uplink) inside its own process, through [`uplink`].

pub mod cli;
mod cli_requests;
mod cli_users;
mod config;
mod control;
mod daemon;
mod dataplane;
mod enrol;
mod groups;
mod ipv6;
mod local;
mod pairs;
mod routes;
mod state;
mod underlay;
pub mod uplink;
mod writer;
