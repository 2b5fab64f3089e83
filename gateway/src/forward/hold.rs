//! Topics Kafka refuses for now: held, retried, and parked only after a grace.
//!
//! "Unknown topic or partition" and "topic authorization failed" are about a whole
//! topic, and an operator (or the broker's `auto.create.topics.enable`) can fix them: a
//! topic created a minute later, an ACL added. So a refused topic's records are not
//! parked at once. The topic is *held*: its records in flight come back and wait (in
//! the window, unsent), records of it read later wait behind them, and every other
//! topic keeps flowing. The topic is looked up in fresh metadata with backoff (1 s,
//! doubling to 30 s; with auto-creation on, that lookup creates it). Once the
//! metadata shows it, the held records are sent again, in order; once one is
//! delivered, the hold ends.
//!
//! Only when the topic has been refused for `forward.unknown_topic_grace` and is still
//! absent from fresh metadata (or still refused after being sent again) are the held
//! records parked in the dead-letter table, with one log line for the topic; from then
//! on its records are parked as they are read (one summary line a minute), until the
//! metadata shows it again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// How often records parked as they are read are summarised in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Where a refused topic stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Records wait; the topic is looked up with backoff.
    Holding,
    /// The metadata shows the topic: records are sent again; the hold ends with the
    /// first delivery.
    Released,
    /// The grace is over: records are parked as they are read.
    Parking,
}

/// One refused topic.
#[derive(Debug)]
pub struct Hold {
    /// The last refusal, as Kafka said it.
    pub reason: String,
    /// First refusal (kept across releases that were refused again).
    pub since: Instant,
    /// Where it stands.
    pub stage: Stage,
    /// The held records, in sequence order.
    pub seqs: BTreeSet<u64>,
    /// Records parked after the grace.
    pub parked: u64,
    /// Refused again after a release: the metadata shows the topic but writes fail
    /// (an authorization error usually).
    refused_after_release: bool,
    next_check: Instant,
    delay: Duration,
    parked_unlogged: u64,
    last_summary: Instant,
}

/// What a metadata lookup said about a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The topic exists and the gateway may see it.
    Present,
    /// Absent, or not authorized.
    Refused,
    /// No answer (Kafka unreachable): nothing can be concluded.
    Unknown,
}

/// What to do after a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the held records again, in order ([`Holds::pop_release`]).
    Release,
    /// Park these held records (the grace is over).
    Park(Vec<u64>),
    /// Keep waiting.
    Wait,
}

/// The refused topics.
#[derive(Debug)]
pub struct Holds {
    grace: Duration,
    topics: HashMap<Arc<str>, Hold>,
}

impl Holds {
    /// Park after `grace` (`forward.unknown_topic_grace`).
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            topics: HashMap::new(),
        }
    }

    /// Change the grace (a configuration reload).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// True when a topic was released and waits for a delivery to end its hold.
    pub fn any_released(&self) -> bool {
        self.topics.values().any(|h| h.stage == Stage::Released)
    }

    /// True when no topic is refused.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The stage of `topic`, if it is refused.
    #[cfg(test)]
    pub fn stage(&self, topic: &str) -> Option<Stage> {
        self.topics.get(topic).map(|h| h.stage)
    }

    /// What to do with a record of `topic` just read: `None` = send it;
    /// `Some(Parking)` = park it; otherwise it waits behind the held ones.
    pub fn on_read(&self, topic: &str) -> Option<Stage> {
        let h = self.topics.get(topic)?;
        match h.stage {
            Stage::Released if h.seqs.is_empty() => None,
            stage => Some(stage),
        }
    }

    /// The next held record to send again (the lowest sequence of a released topic).
    pub fn pop_release(&mut self) -> Option<(Arc<str>, u64)> {
        let (topic, seq) = self
            .topics
            .iter()
            .filter(|(_, h)| h.stage == Stage::Released)
            .filter_map(|(t, h)| Some((t.clone(), *h.seqs.first()?)))
            .min_by_key(|(_, s)| *s)?;
        self.topics.get_mut(&topic)?.seqs.remove(&seq);
        Some((topic, seq))
    }

    /// Give back a record [`Holds::pop_release`] returned and that could not be sent
    /// yet.
    pub fn unpop(&mut self, topic: &str, seq: u64) {
        self.add(topic, seq);
    }

    /// The last refusal of `topic`, as Kafka said it.
    pub fn reason(&self, topic: &str) -> Option<String> {
        self.topics.get(topic).map(|h| h.reason.clone())
    }

    /// Every refused topic.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Hold)> {
        self.topics.iter()
    }

    /// Kafka refused record `seq` of `topic` for a topic-wide reason: hold it. Returns
    /// true when the topic was not held before (worth a log line).
    pub fn refuse(&mut self, topic: &Arc<str>, seq: u64, reason: &str, now: Instant) -> bool {
        match self.topics.get_mut(topic) {
            Some(h) => {
                if h.stage == Stage::Released {
                    h.stage = Stage::Holding;
                    h.refused_after_release = true;
                    h.next_check = now + h.delay;
                    h.delay = (h.delay * 2).min(MAX_DELAY);
                }
                h.reason = reason.to_string();
                h.seqs.insert(seq);
                false
            }
            None => {
                self.topics.insert(
                    topic.clone(),
                    Hold {
                        reason: reason.to_string(),
                        since: now,
                        stage: Stage::Holding,
                        seqs: BTreeSet::from([seq]),
                        parked: 0,
                        refused_after_release: false,
                        next_check: now + FIRST_DELAY,
                        delay: FIRST_DELAY * 2,
                        parked_unlogged: 0,
                        last_summary: now,
                    },
                );
                true
            }
        }
    }

    /// Record `seq` of held `topic` was read: it waits behind the others.
    pub fn add(&mut self, topic: &str, seq: u64) {
        if let Some(h) = self.topics.get_mut(topic) {
            h.seqs.insert(seq);
        }
    }

    /// A record of `topic` was parked as it was read (stage [`Stage::Parking`]).
    /// Returns a summary line's count when one is due.
    pub fn parked_on_read(&mut self, topic: &str, now: Instant) -> Option<u64> {
        let h = self.topics.get_mut(topic)?;
        h.parked += 1;
        h.parked_unlogged += 1;
        if now.duration_since(h.last_summary) < SUMMARY_EVERY {
            return None;
        }
        h.last_summary = now;
        Some(std::mem::take(&mut h.parked_unlogged))
    }

    /// A record of `topic` was delivered: once its held records are all sent again,
    /// the topic is accepted again and the hold ends (returned).
    pub fn delivered(&mut self, topic: &str) -> Option<Hold> {
        match self.topics.get(topic) {
            Some(h) if h.stage == Stage::Released && h.seqs.is_empty() => self.topics.remove(topic),
            _ => None,
        }
    }

    /// The topics to look up now.
    pub fn due(&self, now: Instant) -> Vec<Arc<str>> {
        self.topics
            .iter()
            .filter(|(_, h)| h.stage != Stage::Released && h.next_check <= now)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// What a lookup of `topic` found.
    pub fn looked_up(&mut self, topic: &str, found: Lookup, now: Instant) -> Verdict {
        let grace = self.grace;
        let Some(h) = self.topics.get_mut(topic) else {
            return Verdict::Wait;
        };
        let grace_over = now.duration_since(h.since) >= grace;
        match found {
            // Sent again, unless it was refused again after the last release and the
            // grace is over (visible in the metadata, yet not writable).
            Lookup::Present
                if h.stage == Stage::Parking || !(h.refused_after_release && grace_over) =>
            {
                h.stage = Stage::Released;
                Verdict::Release
            }
            Lookup::Refused | Lookup::Present if h.stage == Stage::Holding && grace_over => {
                h.stage = Stage::Parking;
                h.next_check = now + MAX_DELAY;
                h.last_summary = now;
                h.parked += h.seqs.len() as u64;
                Verdict::Park(std::mem::take(&mut h.seqs).into_iter().collect())
            }
            _ => {
                h.next_check = now + h.delay;
                h.delay = (h.delay * 2).min(MAX_DELAY);
                Verdict::Wait
            }
        }
    }

    /// The window was rewound to `seq`: the held records from there on will be read
    /// (and held) again.
    pub fn forget_from(&mut self, seq: u64) {
        for h in self.topics.values_mut() {
            h.seqs.split_off(&seq);
        }
    }

    /// Records held, over all topics.
    #[cfg(test)]
    pub fn held_records(&self) -> usize {
        self.topics.values().map(|h| h.seqs.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn a_topic_that_appears_is_released_in_order() {
        let t0 = Instant::now();
        let mut h = Holds::new(Duration::from_secs(600));
        let t = topic("new");
        assert!(h.refuse(&t, 7, "unknown topic", t0));
        assert!(!h.refuse(&t, 5, "unknown topic", t0));
        h.add("new", 9);
        assert_eq!(h.stage("new"), Some(Stage::Holding));
        assert!(h.due(t0).is_empty(), "looked up at once");
        let later = t0 + Duration::from_secs(1);
        assert_eq!(h.due(later), vec![t.clone()]);
        assert_eq!(h.looked_up("new", Lookup::Refused, later), Verdict::Wait);
        // Backoff: not due again right away.
        assert!(h.due(later + Duration::from_millis(500)).is_empty());
        let appeared = later + Duration::from_secs(5);
        assert_eq!(
            h.looked_up("new", Lookup::Present, appeared),
            Verdict::Release
        );
        assert_eq!(h.stage("new"), Some(Stage::Released));
        // New records wait behind the held ones until those are sent again.
        assert_eq!(h.on_read("new"), Some(Stage::Released));
        h.add("new", 12);
        assert_eq!(h.pop_release(), Some((t.clone(), 5)));
        assert!(h.delivered("new").is_none(), "records still to send again");
        assert_eq!(h.pop_release(), Some((t.clone(), 7)));
        h.unpop("new", 7);
        let order: Vec<u64> = std::iter::from_fn(|| h.pop_release().map(|(_, s)| s)).collect();
        assert_eq!(order, vec![7, 9, 12]);
        assert_eq!(h.on_read("new"), None);
        assert!(h.delivered("new").is_some());
        assert!(h.is_empty());
    }

    #[test]
    fn after_the_grace_the_held_records_are_parked_and_later_ones_as_read() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut h = Holds::new(grace);
        let t = topic("gone");
        h.refuse(&t, 1, "unknown topic", t0);
        h.add("gone", 2);
        // Kafka unreachable at the end of the grace: nothing concluded.
        let end = t0 + grace;
        assert_eq!(h.looked_up("gone", Lookup::Unknown, end), Verdict::Wait);
        assert_eq!(
            h.looked_up("gone", Lookup::Refused, end + Duration::from_secs(1)),
            Verdict::Park(vec![1, 2])
        );
        assert_eq!(h.stage("gone"), Some(Stage::Parking));
        let now = end + Duration::from_secs(2);
        assert_eq!(h.parked_on_read("gone", now), None);
        assert_eq!(h.parked_on_read("gone", now + SUMMARY_EVERY), Some(2));
        // Still absent: parked records are not looked up more than every 30 s.
        assert_eq!(h.looked_up("gone", Lookup::Refused, now), Verdict::Wait);
        // The topic appears: records flow again.
        let back = now + Duration::from_secs(120);
        assert_eq!(h.looked_up("gone", Lookup::Present, back), Verdict::Release);
        assert!(h.delivered("gone").is_some());
    }

    #[test]
    fn visible_but_still_refused_is_parked_after_the_grace() {
        // Not authorized to write: the metadata shows the topic, every send fails.
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let mut h = Holds::new(grace);
        let t = topic("acl");
        h.refuse(&t, 1, "not authorized", t0);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(h.looked_up("acl", Lookup::Present, t1), Verdict::Release);
        assert_eq!(h.pop_release(), Some((t.clone(), 1)));
        // Refused again once sent: held, with the first refusal's time.
        assert!(!h.refuse(&t, 1, "not authorized", t1));
        assert_eq!(h.stage("acl"), Some(Stage::Holding));
        let end = t0 + grace;
        assert_eq!(
            h.looked_up("acl", Lookup::Present, end),
            Verdict::Park(vec![1])
        );
        // An ACL added later: sent again (and parked again if still refused).
        let later = end + MAX_DELAY;
        assert_eq!(h.looked_up("acl", Lookup::Present, later), Verdict::Release);
        assert!(h.delivered("acl").is_some());
    }

    #[test]
    fn a_rewind_forgets_the_records_read_again() {
        let mut h = Holds::new(Duration::from_secs(60));
        let now = Instant::now();
        h.refuse(&topic("x"), 3, "r", now);
        h.add("x", 8);
        h.forget_from(5);
        assert_eq!(h.held_records(), 1);
    }
}
