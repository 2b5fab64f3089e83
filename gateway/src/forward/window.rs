//! The forwarder's window: which records were read from the WAL and are not done yet,
//! and the contiguous acknowledged prefix that may be deleted (rule 2).
//!
//! Records are read in sequence order. Each one read is, from then on, exactly one of:
//! * **in flight**: handed to the producer, its delivery report not in yet;
//! * **held**: not sent, because Kafka refuses its whole topic for now (see `hold`);
//! * **done**: delivered (acknowledged by Kafka) or parked in the dead-letter table.
//!
//! Only in-flight and held records are stored; a record read and not stored is done
//! (so are the sequence numbers the WAL no longer has). The *watermark* is the highest
//! sequence with every record at or below it done: the prefix the WAL may delete.
//! Delivery reports come back in any order across partitions; the watermark only
//! moves over a contiguous prefix. Memory is bounded by what is in flight or held,
//! never by how far the reports ran ahead of the oldest open record.
//!
//! No librdkafka here: the type is checked against a model by a property test.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
struct Open {
    bytes: u32,
    held: bool,
    /// Its receipt, Unix ms (the delivery latency).
    received_ms: u64,
}

/// Records read and not done, and the watermark.
#[derive(Debug)]
pub struct AckWindow {
    /// The next sequence to read: every record below it was read.
    cursor: u64,
    open: BTreeMap<u64, Open>,
    in_flight: usize,
    in_flight_bytes: usize,
}

impl AckWindow {
    /// A window that reads from `first` on (everything below is done).
    pub fn new(first: u64) -> Self {
        Self {
            cursor: first.max(1),
            open: BTreeMap::new(),
            in_flight: 0,
            in_flight_bytes: 0,
        }
    }

    /// The next sequence to read.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Every record at or below this sequence is done.
    pub fn watermark(&self) -> u64 {
        self.open.keys().next().map_or(self.cursor, |first| *first) - 1
    }

    /// Records in flight (held by the producer).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Their encoded bytes.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Records in flight or held.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// True while `seq` is in flight.
    pub fn is_in_flight(&self, seq: u64) -> bool {
        self.open.get(&seq).is_some_and(|o| !o.held)
    }

    fn read(&mut self, seq: u64) {
        debug_assert!(
            seq >= self.cursor,
            "read {seq} behind the cursor {}",
            self.cursor
        );
        self.cursor = seq + 1;
    }

    /// When open record `seq` was received (Unix ms).
    pub fn received_ms(&self, seq: u64) -> Option<u64> {
        self.open.get(&seq).map(|o| o.received_ms)
    }

    /// Record `seq` (at or after the cursor), received at `received_ms`, was handed
    /// to the producer.
    pub fn sent(&mut self, seq: u64, bytes: u32, received_ms: u64) {
        self.opened(seq, bytes, received_ms, false);
        self.in_flight += 1;
        self.in_flight_bytes += bytes as usize;
    }

    /// Record `seq` (at or after the cursor) is done without being sent.
    pub fn skipped(&mut self, seq: u64) {
        self.read(seq);
    }

    /// Record `seq` (at or after the cursor), received at `received_ms`, is held
    /// back unsent.
    pub fn held(&mut self, seq: u64, bytes: u32, received_ms: u64) {
        self.opened(seq, bytes, received_ms, true);
    }

    fn opened(&mut self, seq: u64, bytes: u32, received_ms: u64, held: bool) {
        self.read(seq);
        let open = Open {
            bytes,
            held,
            received_ms,
        };
        self.open.insert(seq, open);
    }

    /// Kafka is done with `seq` (delivered or parked). False when it was not open (a
    /// report for a record already done, or from a replaced producer).
    pub fn done(&mut self, seq: u64) -> bool {
        match self.open.remove(&seq) {
            Some(o) => {
                if !o.held {
                    self.in_flight -= 1;
                    self.in_flight_bytes -= o.bytes as usize;
                }
                true
            }
            None => false,
        }
    }

    /// In-flight record `seq` is held back (its topic is refused for now). False when
    /// it was not in flight.
    pub fn hold(&mut self, seq: u64) -> bool {
        match self.open.get_mut(&seq) {
            Some(o) if !o.held => {
                o.held = true;
                self.in_flight -= 1;
                self.in_flight_bytes -= o.bytes as usize;
                true
            }
            _ => false,
        }
    }

    /// Held record `seq` was handed to the producer again. False when it was not held.
    pub fn resend(&mut self, seq: u64) -> bool {
        match self.open.get_mut(&seq) {
            Some(o) if o.held => {
                o.held = false;
                self.in_flight += 1;
                self.in_flight_bytes += o.bytes as usize;
                true
            }
            _ => false,
        }
    }

    /// Read again from `seq` (at most the cursor): forget the open records at or after
    /// it (their reports, if any come, are stale).
    pub fn rewind(&mut self, seq: u64) {
        for (_, o) in self.open.split_off(&seq) {
            if !o.held {
                self.in_flight -= 1;
                self.in_flight_bytes -= o.bytes as usize;
            }
        }
        self.cursor = self.cursor.min(seq);
    }

    /// A new producer: read again from just after the watermark.
    pub fn restart(&mut self) {
        let from = self.watermark() + 1;
        self.rewind(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum State {
        InFlight(u32),
        Held(u32),
        Done,
    }

    /// The model: every sequence read, in order, with its state.
    #[derive(Debug)]
    struct Model {
        first: u64,
        states: Vec<State>,
    }

    impl Model {
        fn cursor(&self) -> u64 {
            self.first + self.states.len() as u64
        }
        fn watermark(&self) -> u64 {
            let done = self
                .states
                .iter()
                .take_while(|s| **s == State::Done)
                .count();
            self.first + done as u64 - 1
        }
        fn in_flight(&self) -> (usize, usize) {
            self.states.iter().fold((0, 0), |(n, b), s| match s {
                State::InFlight(x) => (n + 1, b + *x as usize),
                _ => (n, b),
            })
        }
        fn pick(&self, i: usize, want: fn(&State) -> bool) -> Option<u64> {
            let candidates: Vec<u64> = (self.states.iter().enumerate())
                .filter(|(_, s)| want(s))
                .map(|(k, _)| self.first + k as u64)
                .collect();
            (!candidates.is_empty()).then(|| candidates[i % candidates.len()])
        }
        fn set(&mut self, seq: u64, s: State) {
            self.states[(seq - self.first) as usize] = s;
        }
        fn get(&self, seq: u64) -> State {
            self.states[(seq - self.first) as usize]
        }
        fn truncate(&mut self, seq: u64) {
            self.states.truncate((seq - self.first) as usize);
        }
    }

    #[derive(Debug, Clone)]
    enum Action {
        /// Read a record `gap` sequences after the cursor (the WAL has holes) and send,
        /// skip or hold it.
        Read { gap: u8, how: u8, bytes: u32 },
        /// A delivery report (success or parked) for the i-th in-flight record.
        Done(usize),
        /// A stale report for a record that is not open.
        Stale(u64),
        /// The i-th in-flight record's topic is refused: hold it.
        Hold(usize),
        /// Send the i-th held record again.
        Resend(usize),
        /// Send the i-th in-flight record again alone (the refusal ladder).
        Rewind(usize),
        /// A new producer replays from the watermark.
        Restart,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            5 => (0u8..3, 0u8..6, 1u32..500).prop_map(|(gap, how, bytes)| Action::Read { gap, how, bytes }),
            4 => any::<usize>().prop_map(Action::Done),
            1 => (0u64..200).prop_map(Action::Stale),
            1 => any::<usize>().prop_map(Action::Hold),
            1 => any::<usize>().prop_map(Action::Resend),
            1 => any::<usize>().prop_map(Action::Rewind),
            1 => Just(Action::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn window_matches_model(first in 1u64..5, actions in prop::collection::vec(action(), 1..120)) {
            let mut w = AckWindow::new(first);
            let mut m = Model { first, states: Vec::new() };
            for a in actions {
                match a {
                    Action::Read { gap, how, bytes } => {
                        for _ in 0..gap {
                            m.states.push(State::Done);
                        }
                        let seq = m.cursor();
                        match how {
                            0 => { w.skipped(seq); m.states.push(State::Done); }
                            1 => { w.held(seq, bytes, 0); m.states.push(State::Held(bytes)); }
                            _ => { w.sent(seq, bytes, 0); m.states.push(State::InFlight(bytes)); }
                        }
                    }
                    Action::Done(i) => {
                        if let Some(seq) = m.pick(i, |s| matches!(s, State::InFlight(_))) {
                            prop_assert!(w.done(seq));
                            m.set(seq, State::Done);
                        }
                    }
                    Action::Stale(seq) => {
                        let open = seq >= m.first && seq < m.cursor() && m.get(seq) != State::Done;
                        if !open {
                            prop_assert!(!w.done(seq));
                        }
                    }
                    Action::Hold(i) => {
                        if let Some(seq) = m.pick(i, |s| matches!(s, State::InFlight(_))) {
                            let State::InFlight(b) = m.get(seq) else { unreachable!() };
                            prop_assert!(w.hold(seq));
                            prop_assert!(!w.hold(seq));
                            m.set(seq, State::Held(b));
                        }
                    }
                    Action::Resend(i) => {
                        if let Some(seq) = m.pick(i, |s| matches!(s, State::Held(_))) {
                            let State::Held(b) = m.get(seq) else { unreachable!() };
                            prop_assert!(w.resend(seq));
                            m.set(seq, State::InFlight(b));
                        }
                    }
                    Action::Rewind(i) => {
                        if let Some(seq) = m.pick(i, |s| matches!(s, State::InFlight(_))) {
                            w.rewind(seq);
                            m.truncate(seq);
                        }
                    }
                    Action::Restart => {
                        w.restart();
                        let from = m.watermark() + 1;
                        m.truncate(from);
                    }
                }
                prop_assert_eq!(w.cursor(), m.cursor());
                prop_assert_eq!(w.watermark(), m.watermark());
                let (n, bytes) = m.in_flight();
                prop_assert_eq!(w.in_flight(), n);
                prop_assert_eq!(w.in_flight_bytes(), bytes);
                let open = m.states.iter().filter(|s| **s != State::Done).count();
                prop_assert_eq!(w.open(), open);
            }
        }
    }

    #[test]
    fn reports_out_of_order_move_the_watermark_only_over_a_contiguous_prefix() {
        let mut w = AckWindow::new(10);
        for seq in 10..15 {
            w.sent(seq, 100, 0);
        }
        assert_eq!(w.watermark(), 9);
        assert!(w.done(12));
        assert!(w.done(11));
        assert_eq!(w.watermark(), 9);
        assert!(w.done(10));
        assert_eq!(w.watermark(), 12);
        // A held record keeps the prefix behind it, not the reads after it.
        assert!(w.hold(13));
        assert!(w.done(14));
        w.sent(20, 5, 0);
        assert!(w.done(20));
        assert_eq!((w.watermark(), w.in_flight(), w.open()), (12, 0, 1));
        assert!(w.resend(13));
        assert!(w.done(13));
        assert_eq!(w.watermark(), 20);
        assert!(!w.done(13), "a second report for the same record");
    }
}
