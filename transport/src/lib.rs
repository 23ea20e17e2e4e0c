//! # strata-transport
//!
//! Transports that carry a stack's datagrams: in-process channels ([`mem`]),
//! UDP ([`udp`]), and the deterministic simulated network ([`sim`]) on which
//! the protocol properties are checked.
#![warn(missing_docs)]

mod counters;
pub mod mem;
pub mod payload;
pub mod sim;
pub mod udp;
