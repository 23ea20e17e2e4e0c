//! The send window a layer closes when it holds too much.

use crate::context::Context;
use crate::layer::{ParamKind, ParamSpec};

/// The `max_pending` parameter of a layer that holds undelivered casts
/// behind a [`SendWindow`] (TOTAL, SAFE): it closes at this many and
/// reopens at three quarters ([`SendWindow::reopening_at_three_quarters`]).
pub const MAX_PENDING: ParamSpec = ParamSpec {
    name: "max_pending",
    kind: ParamKind::U64 { min: 1, max: 10_000_000 },
    default: "10000",
    doc: "undelivered casts held before this member's send window closes (it reopens at three quarters)",
    wire: false,
};

/// A send window with hysteresis: it closes ([`Context::set_backpressure`])
/// when what a layer holds reaches `limit`, and reopens only once that has
/// fallen to `reopen_at`, so it does not flap open and shut per message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SendWindow {
    limit: usize,
    reopen_at: usize,
    closed: bool,
}

impl SendWindow {
    /// An open window that closes at `limit` and reopens at `reopen_at`.
    pub fn new(limit: usize, reopen_at: usize) -> Self {
        SendWindow { limit, reopen_at, closed: false }
    }

    /// A window that closes at `limit` and reopens at three quarters of it
    /// (rounded down to a multiple of three), as [`MAX_PENDING`] says.
    pub fn reopening_at_three_quarters(limit: usize) -> Self {
        SendWindow::new(limit, limit / 4 * 3)
    }

    /// Records that the layer now holds `level`, closing or reopening the
    /// window as that crosses a threshold.
    pub fn update(&mut self, cx: &mut Context<'_>, level: usize) {
        let closed = if self.closed { level > self.reopen_at } else { level >= self.limit };
        if closed != self.closed {
            self.closed = closed;
            cx.set_backpressure(closed);
        }
    }

    /// Whether the window is closed (for the layer's `backpressure` stat).
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::LayerHarness;
    use crate::layer::Layer;
    use crate::view::{MemberId, View};

    /// A layer whose held level the test sets through casts' lengths.
    struct Holder(SendWindow);

    impl Layer for Holder {
        fn down(&mut self, cx: &mut Context<'_>, ev: crate::event::Down) {
            if let crate::event::Down::Cast(msg) = ev {
                self.0.update(cx, msg.len());
            }
        }
    }

    #[test]
    fn closes_at_the_limit_and_reopens_only_at_the_reopen_level() {
        let view = View::initial(vec![MemberId::sim(0)]).unwrap();
        let mut h = LayerHarness::new(Holder(SendWindow::new(8, 6)), MemberId::sim(0), view);
        let mut hold = |n: usize| {
            h.down(crate::event::Down::Cast(crate::msg::Msg::new(bytes::Bytes::from(vec![0; n]))));
            h.backpressure()
        };
        assert!(!hold(7));
        assert!(hold(8), "closed at the limit");
        assert!(hold(7), "still closed above the reopen level");
        assert!(!hold(6), "reopened at it");
        assert!(!hold(7), "and stays open below the limit");
    }
}
