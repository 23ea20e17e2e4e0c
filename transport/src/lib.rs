//! # strata-transport
//!
//! Transports that carry a stack's datagrams: in-process channels ([`mem`]),
//! UDP ([`udp`]), and the deterministic simulated network ([`sim`]) on which
//! the protocol properties are checked.
#![warn(missing_docs)]

mod batch;
pub mod bundle;
mod counters;
pub mod ipmc;
pub mod mem;
pub mod payload;
pub mod sim;
pub mod tcptree;
pub mod tree;
pub mod udp;
