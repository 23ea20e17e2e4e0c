//! # strata-layers
//!
//! strata's built-in protocol layers. Each is a sans-IO state machine in a
//! module of its own, opening with an essay on what it guarantees, its header
//! and its parameters. This crate depends on `strata-stack` only: no tokio, no
//! sockets, no clocks, so the same code runs in the simulator, in benches and
//! over real networks.
#![warn(missing_docs)]

pub mod causal;
pub mod debug;
pub mod encrypt;
pub mod frag;
pub mod nak;
pub mod query;
pub mod safe;
pub mod token;
pub mod total;
pub mod vsync;

use strata_stack::{LayerDescriptor, Registry};

/// Every built-in layer's descriptor, in the order `strata layers` lists them.
pub const BUILTIN: &[LayerDescriptor] =
    &[frag::FRAG, nak::NAK, causal::CAUSAL, encrypt::ENCRYPT, vsync::VSYNC, total::TOTAL, token::TOKEN, query::QUERY, safe::SAFE, debug::loss::LOSS];

/// A registry holding every built-in layer. Register your own layers on it
/// with [`Registry::register`].
pub fn builtin() -> Registry {
    let mut r = Registry::new();
    for d in BUILTIN {
        r.register(*d).expect("built-in layer names are unique and valid");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use nak::NAK;
    use strata_stack::{Instant, MemberId, Refused, Stack, StackConfig};

    fn stack(spec: &str) -> Stack {
        let (a, b) = (MemberId::sim(0), MemberId::sim(1));
        Stack::new(&builtin(), spec, StackConfig::new("g", a, vec![a, b]), Instant::ZERO).unwrap()
    }

    #[test]
    fn a_message_over_the_stack_limit_is_refused_before_any_layer_numbers_it() {
        let mut s = stack("FRAG(max_msg_size=4096):NAK");
        let nak_header = (NAK.max_header_len)(&strata_stack::Params::defaults(NAK.params).unwrap());
        assert_eq!(s.max_message(), 4096 - nak_header);
        let too_big = Bytes::from(vec![7u8; 4096]);
        assert_eq!(s.cast(Instant::ZERO, too_big.clone()), Err(Refused::TooLarge { len: 4096, max: 4096 - nak_header }));
        assert_eq!(s.send(Instant::ZERO, MemberId::sim(1), too_big), Err(Refused::TooLarge { len: 4096, max: 4096 - nak_header }));
        let nak = s.stats().into_iter().find(|l| l.name == "NAK").unwrap();
        assert_eq!((nak.counters.get("sent"), nak.counters.get("sent_p2p")), (Some(0), Some(0)), "NAK never saw them");
        assert!(s.poll_transmit().is_none());
        assert_eq!(s.cast(Instant::ZERO, Bytes::from(vec![7u8; 4096 - nak_header])), Ok(()));
    }

    #[test]
    fn without_frag_the_limit_is_a_datagram_minus_headers() {
        let s = stack("NAK");
        let nak_header = (NAK.max_header_len)(&strata_stack::Params::defaults(NAK.params).unwrap());
        assert_eq!(s.max_message(), 65_507 - strata_stack::engine::FRAME_HEADER_MAX - nak_header);
    }
}
