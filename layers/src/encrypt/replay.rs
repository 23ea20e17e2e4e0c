//! A sliding replay window over one session's packet counters, as in
//! IPsec and WireGuard: the highest counter seen and a bitmap of the
//! `WINDOW` counters below it.

/// Counters this far below the highest one seen are refused as too old.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    /// The highest counter accepted (0: none yet; counters start at 1).
    top: u64,
    /// Bit `c % WINDOW` is set when counter `c` (within the window) was seen.
    seen: [u64; WORDS],
}

/// Why a counter was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Seen before.
    Replay,
    /// Older than the window.
    TooOld,
}

impl ReplayWindow {
    /// The highest counter accepted so far (0: none).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Whether `counter` would be accepted, without recording it.
    pub fn check(&self, counter: u64) -> Result<(), Refusal> {
        if counter == 0 {
            return Err(Refusal::TooOld);
        }
        if counter > self.top {
            return Ok(());
        }
        if self.top - counter >= WINDOW {
            return Err(Refusal::TooOld);
        }
        let (word, bit) = Self::slot(counter);
        if self.seen[word] & (1 << bit) != 0 {
            Err(Refusal::Replay)
        } else {
            Ok(())
        }
    }

    /// Records `counter`, which [`ReplayWindow::check`] accepted.
    pub fn record(&mut self, counter: u64) {
        if counter > self.top {
            let advance = counter - self.top;
            if advance >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                for c in self.top + 1..counter {
                    let (word, bit) = Self::slot(c);
                    self.seen[word] &= !(1 << bit);
                }
            }
            self.top = counter;
        }
        let (word, bit) = Self::slot(counter);
        self.seen[word] |= 1 << bit;
    }

    fn slot(counter: u64) -> (usize, u32) {
        let i = counter % WINDOW;
        ((i / 64) as usize, (i % 64) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn accepts_each_counter_once_and_in_any_order_within_the_window() {
        let mut w = ReplayWindow::default();
        for c in [5, 3, 4, 1, 2, 10] {
            assert_eq!(w.check(c), Ok(()));
            w.record(c);
            assert_eq!(w.check(c), Err(Refusal::Replay));
        }
        assert_eq!(w.check(9), Ok(()));
        assert_eq!(w.check(0), Err(Refusal::TooOld));
        w.record(10 + WINDOW);
        assert_eq!(w.check(10), Err(Refusal::TooOld));
        assert_eq!(w.check(11), Ok(()), "just inside the window and never seen");
    }

    quickcheck! {
        // Against a set of everything seen: a counter is accepted iff it was
        // never seen and is within the window of the highest.
        fn matches_a_model(counters: Vec<u16>) -> bool {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut top = 0u64;
            for c in counters {
                let c = u64::from(c);
                let expect = if c == 0 || (c <= top && top - c >= WINDOW) {
                    Err(Refusal::TooOld)
                } else if seen.contains(&c) {
                    Err(Refusal::Replay)
                } else {
                    Ok(())
                };
                if w.check(c) != expect {
                    return false;
                }
                if expect.is_ok() {
                    w.record(c);
                    seen.insert(c);
                    top = top.max(c);
                }
            }
            true
        }
    }
}
