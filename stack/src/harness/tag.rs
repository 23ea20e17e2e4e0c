//! [`Tag`]: the smallest layer that has a header, for testing what carries
//! layers (the engine, transports, the simulator) rather than a protocol.

use crate::context::Context;
use crate::event::{Down, Up};
use crate::layer::Layer;

/// The byte [`Tag`] puts in front of every message.
pub const TAG_BYTE: u8 = 0x7a;

/// Pushes [`TAG_BYTE`] in front of every cast and send on the way down and
/// checks it on the way up; a message without it is dropped and counted as
/// `bad_tag`. A stack of `Tag`s shows that headers reach the other side in
/// order and that nothing else slips in.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tag;

impl Layer for Tag {
    fn down(&mut self, cx: &mut Context<'_>, ev: Down) {
        match ev {
            Down::Cast(mut msg) => {
                msg.push(&[TAG_BYTE]);
                cx.down(Down::Cast(msg));
            }
            Down::Send { to, mut msg } => {
                msg.push(&[TAG_BYTE]);
                cx.down(Down::Send { to, msg });
            }
            ev => cx.down(ev),
        }
    }

    fn up(&mut self, cx: &mut Context<'_>, ev: Up) {
        match ev {
            Up::Cast { from, mut msg } => match msg.pop_with(|r| r.u8()) {
                Ok(TAG_BYTE) => cx.up(Up::Cast { from, msg }),
                _ => cx.drop_malformed("bad_tag"),
            },
            Up::Send { from, mut msg } => match msg.pop_with(|r| r.u8()) {
                Ok(TAG_BYTE) => cx.up(Up::Send { from, msg }),
                _ => cx.drop_malformed("bad_tag"),
            },
            ev => cx.up(ev),
        }
    }
}
