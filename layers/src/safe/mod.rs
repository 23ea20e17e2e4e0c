//! # SAFE: uniform, durable total order (Paxos-style SafeSend)
//!
//! (Being written.)

pub(crate) mod log;
