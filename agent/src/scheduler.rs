//! When journeys run: interval or cron schedules, a deterministic start
//! offset per journey, no overlapping runs of one journey (a skipped tick is
//! counted), a global concurrency limit, and sharding.
//!
//! One task owns a min-heap of due times, so the cost per tick is O(log n)
//! and an idle agent with 10,000 journeys sleeps on a single timer. Due
//! times are aligned to wall-clock multiples of the interval plus an offset
//! hashed from the journey name: restarts and other agents keep the same
//! phase, and a thousand journeys do not fire in the same millisecond.
//! Offsets lie on a grid of slots, so the journeys of one slot start on one
//! wake-up instead of each on its own: at 1,000 runs a second that cut the
//! context switches per run from 1.95 to 0.8 and the CPU per probe by about
//! a fifth. A slot is sized for about [`RUNS_PER_SLOT`] runs of its lane,
//! and is at most 10 ms and a hundredth of the interval: a burst stays
//! small at any run rate (wider slots at 5,000 runs a second doubled the
//! lateness p99), and a new width after a reload moves a phase by less than
//! a slot.
//! Lateness (due time to actual start, concurrency waits included) is
//! measured and exported; it is never counted in a run's duration.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info};

use crate::journey::runner::{self, RunEnv};
use crate::journey::{Journey, Schedule};
use crate::report::Outcome;
use crate::telemetry::Telemetry;

/// The set of journeys to schedule; replaced whole on reload.
pub type JourneySet = Arc<Vec<Arc<Journey>>>;

/// FNV-1a plus the murmur3 finalizer: a stable hash (unlike `DefaultHasher`,
/// fixed across Rust versions), so offsets and shard assignment never change
/// between builds. The finalizer spreads names that differ only in their last
/// characters (`journey-1`, `journey-2`) over all the bits.
pub fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `--shard I/N` (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("invalid shard `{s}`: use I/N with 1 <= I <= N, e.g. 2/5");
        let (i, n) = s.split_once('/').ok_or_else(err)?;
        let index: u32 = i.trim().parse().map_err(|_| err())?;
        let count: u32 = n.trim().parse().map_err(|_| err())?;
        if count == 0 || index == 0 || index > count {
            return Err(err());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Jump consistent hashing: when N grows to N+1 only 1/(N+1) of the
    /// journeys move, and every agent decides alone.
    pub fn owns(&self, journey: &str) -> bool {
        jump_hash(stable_hash(journey), self.count) == self.index - 1
    }
}

/// The runs a second one lane is given before the next lane is used.
///
/// A lane is cheapest when it has the most work per wake-up: at 1,000 runs
/// a second one lane spent a fifth less CPU per probe than two, and at
/// 5,000 a tenth less, and one lane alone ran 13,900 probes a second on
/// one core (`bench/RESULTS.md`, figure 1). More lanes are for rates one
/// core cannot keep.
pub const RUNS_PER_LANE: f64 = 8_000.0;

/// Scheduled runs a second: interval journeys at their rate, cron ones at
/// one a minute (an estimate; it only decides how many lanes to use).
pub fn run_rate(set: &[Arc<Journey>]) -> f64 {
    set.iter()
        .map(|j| match &j.schedule {
            Schedule::Every(iv) => 1.0 / iv.as_secs_f64().max(1e-3),
            Schedule::Cron(_) => 1.0 / 60.0,
        })
        .sum()
}

/// How many of `max` lanes a set uses: one per [`RUNS_PER_LANE`] runs a
/// second, at least one.
pub fn lanes_for(set: &[Arc<Journey>], max: usize) -> usize {
    let wanted = (run_rate(set) / RUNS_PER_LANE).ceil() as usize;
    wanted.clamp(1, max.max(1))
}

/// Splits a journey set between `lanes` threads that each schedule and run
/// their own part (`app.rs`), by a hash of the name: the first
/// [`lanes_for`] of them get journeys, the others an empty part. While the
/// number of lanes in use stays the same, a journey stays on its lane
/// across reloads, so its phase stays with it; a journey that moves keeps
/// its running flag ([`Scheduler::running`]). The hash is rotated so that
/// the lanes stay even within one shard, which jump hashing chose from the
/// same hash.
pub fn partition(set: &[Arc<Journey>], lanes: usize) -> Vec<JourneySet> {
    let lanes = lanes.max(1);
    let used = lanes_for(set, lanes);
    let mut parts: Vec<Vec<Arc<Journey>>> = vec![Vec::new(); lanes];
    for j in set {
        parts[lane_of(&j.name, used)].push(j.clone());
    }
    parts
        .into_iter()
        .map(|mut p| {
            p.shrink_to_fit();
            Arc::new(p)
        })
        .collect()
}

fn lane_of(name: &str, lanes: usize) -> usize {
    (stable_hash(name).rotate_right(29) % lanes as u64) as usize
}

fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn from_unix_nanos(n: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// The widest slot that start offsets are rounded down to.
pub const MAX_SLOT: Duration = Duration::from_millis(10);

/// The runs a slot is sized to hold, on average, on one lane.
pub const RUNS_PER_SLOT: f64 = 8.0;

/// The slot width for a lane's journeys: [`RUNS_PER_SLOT`] of their runs
/// at their combined rate, at most [`MAX_SLOT`].
pub fn slot_for(set: &[Arc<Journey>]) -> Duration {
    let rate = run_rate(set);
    if rate * MAX_SLOT.as_secs_f64() <= RUNS_PER_SLOT {
        MAX_SLOT
    } else {
        Duration::from_secs_f64(RUNS_PER_SLOT / rate)
    }
}

/// An offset within `spread` (nanoseconds), rounded down to its slot:
/// `slot`, at most a hundredth of the spread, and no rounding when that is
/// under the runtime's 1 ms timer resolution anyway.
fn slotted_offset(hash: u64, spread: u128, slot: Duration) -> u128 {
    let offset = u128::from(hash) % spread.max(1);
    let slot = (spread / 100).min(slot.as_nanos());
    if slot < 1_000_000 {
        offset
    } else {
        offset - offset % slot
    }
}

/// The first due time strictly after `after`, with offsets on a grid of
/// `slot` (see [`slot_for`]).
pub fn next_due(name: &str, schedule: &Schedule, after: SystemTime, slot: Duration) -> SystemTime {
    let hash = stable_hash(name);
    match schedule {
        Schedule::Every(interval) => {
            let iv = interval.as_nanos().max(1);
            let offset = slotted_offset(hash, iv, slot);
            let t = unix_nanos(after);
            let k = (t.saturating_sub(offset)) / iv + 1;
            let mut due = k * iv + offset;
            while due <= t {
                due += iv;
            }
            from_unix_nanos(due)
        }
        Schedule::Cron(c) => {
            // Spread cron journeys over a tenth of their gap, at most 30s.
            let base = chrono::DateTime::<chrono::Utc>::from(after);
            let first = c.cron.find_next_occurrence(&base, false).ok();
            let second = first
                .as_ref()
                .and_then(|f| c.cron.find_next_occurrence(f, false).ok());
            let spread = match (&first, &second) {
                (Some(a), Some(b)) => {
                    (*b - *a)
                        .to_std()
                        .unwrap_or_default()
                        .min(Duration::from_secs(300))
                        / 10
                }
                _ => Duration::ZERO,
            };
            let offset = Duration::from_nanos(
                u64::try_from(slotted_offset(hash, spread.as_nanos(), slot)).unwrap_or(0),
            );
            let shifted =
                chrono::DateTime::<chrono::Utc>::from(after.checked_sub(offset).unwrap_or(after));
            match c.cron.find_next_occurrence(&shifted, false) {
                Ok(o) => SystemTime::from(o) + offset,
                // An expression with no future occurrence: never again.
                Err(_) => after + Duration::from_secs(365 * 24 * 3600),
            }
        }
    }
}

struct Entry {
    journey: Arc<Journey>,
    due: SystemTime,
    running: Arc<AtomicBool>,
}

/// Due times (Unix nanoseconds) in a min-heap, with a count per distinct
/// time, so the next two wake-ups are known without popping.
#[derive(Default)]
struct DueHeap {
    heap: BinaryHeap<Reverse<(u128, Arc<str>)>>,
    times: BTreeMap<u128, u32>,
}

impl DueHeap {
    fn push(&mut self, due: u128, name: Arc<str>) {
        self.heap.push(Reverse((due, name)));
        *self.times.entry(due).or_default() += 1;
    }

    /// The earliest entry, if it is due at `now`.
    fn pop_due(&mut self, now: u128) -> Option<(u128, Arc<str>)> {
        if self.heap.peek().is_none_or(|Reverse((due, _))| *due > now) {
            return None;
        }
        let Reverse((due, name)) = self.heap.pop()?;
        if let std::collections::btree_map::Entry::Occupied(mut n) = self.times.entry(due) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
        Some((due, name))
    }

    /// The earliest due time and the one after it.
    fn next_two(&self) -> (Option<u128>, Option<u128>) {
        let mut times = self.times.keys().copied();
        (times.next(), times.next())
    }
}

/// What one lane's scheduler keeps between wake-ups.
struct Plan {
    entries: HashMap<Arc<str>, Entry>,
    heap: DueHeap,
    slot: Duration,
}

pub struct Scheduler {
    pub env: Arc<RunEnv>,
    pub telemetry: Arc<Telemetry>,
    pub concurrency: Arc<Semaphore>,
    /// Owns every run task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancels runs still going after the shutdown grace period.
    pub cancel_runs: CancellationToken,
    /// Each journey's "a run is going" flag, shared by the lanes so that a
    /// journey moved to another lane by a reload cannot overlap the run
    /// still going on its old one. Read and written only when a lane
    /// applies a new set; [`Scheduler::retain`] drops removed journeys.
    pub running: std::sync::Mutex<HashMap<Arc<str>, Arc<AtomicBool>>>,
}

impl Scheduler {
    /// The shared running flag of a journey, made on first use.
    fn running_flag(&self, name: &Arc<str>) -> Arc<AtomicBool> {
        let mut map = self.running.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.clone()).or_default().clone()
    }

    /// Forgets the journeys no longer in `set` (a reload removed them):
    /// their running flags and their metric series.
    pub fn retain(&self, set: &[Arc<Journey>]) {
        let keep: std::collections::HashSet<&str> = set.iter().map(|j| &*j.name).collect();
        let mut map = self.running.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|name, _| {
            let kept = keep.contains(&**name);
            if !kept {
                self.telemetry.metrics.forget(name);
                info!(journey = %name, "journey removed");
            }
            kept
        });
    }

    /// Schedules until `stop` fires. New journey sets arrive on `journeys`.
    pub async fn run(&self, mut journeys: watch::Receiver<JourneySet>, stop: CancellationToken) {
        let mut plan = Plan {
            entries: HashMap::new(),
            heap: DueHeap::default(),
            slot: MAX_SLOT,
        };
        let set = journeys.borrow_and_update().clone();
        self.apply(&set, &mut plan);
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let mut wake = std::pin::pin!(tokio::time::sleep_until(far()));
        // Armed at the wake-up after `wake`, never awaited. tokio's timer
        // wakes its own event loop whenever a timer is added earlier than
        // the wake-up it last planned, and after a tick it plans the next
        // timer still registered: with this one there, the runs' deadlines
        // and the next `wake` are later than the plan and cost nothing,
        // where each cost a write to the lane's eventfd.
        let mut ahead = std::pin::pin!(tokio::time::sleep_until(far()));
        loop {
            let (first, second) = plan.heap.next_two();
            let (now, wall) = (tokio::time::Instant::now(), SystemTime::now());
            let at = |due: Option<u128>| match due {
                Some(due) => {
                    now + from_unix_nanos(due)
                        .duration_since(wall)
                        .unwrap_or(Duration::ZERO)
                }
                None => now + Duration::from_secs(3600),
            };
            // Reset only on a real change: the two clocks read afresh move a
            // deadline by nanoseconds, and a reset to an earlier time wakes
            // the event loop.
            let moved = |t: tokio::time::Instant, d: tokio::time::Instant| {
                t.max(d) - t.min(d) >= Duration::from_millis(1)
            };
            let t = at(first);
            if wake.is_elapsed() || moved(t, wake.deadline()) {
                wake.as_mut().reset(t);
            }
            let t = at(second);
            if ahead.is_elapsed() || moved(t, ahead.deadline()) {
                ahead.as_mut().reset(t);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = journeys.changed() => {
                    if changed.is_err() { break; }
                    let set = journeys.borrow_and_update().clone();
                    self.apply(&set, &mut plan);
                }
                _ = &mut wake => {
                    self.fire_due(&mut plan);
                }
            }
        }
        debug!("scheduler stopped");
    }

    fn apply(&self, set: &[Arc<Journey>], plan: &mut Plan) {
        let now = SystemTime::now();
        plan.slot = slot_for(set);
        let Plan {
            entries,
            heap,
            slot,
        } = plan;
        let mut next: HashMap<Arc<str>, Entry> = HashMap::with_capacity(set.len());
        for j in set.iter() {
            let entry = match entries.remove(&j.name) {
                // Same schedule: keep its phase and its running flag, so a
                // reload never causes an overlapping or an extra run.
                Some(old) if old.journey.schedule == j.schedule => Entry {
                    journey: j.clone(),
                    due: old.due,
                    running: old.running,
                },
                old => {
                    let due = next_due(&j.name, &j.schedule, now, *slot);
                    heap.push(unix_nanos(due), j.name.clone());
                    Entry {
                        journey: j.clone(),
                        due,
                        running: old.map_or_else(|| self.running_flag(&j.name), |o| o.running),
                    }
                }
            };
            next.insert(j.name.clone(), entry);
        }
        // Journeys no longer on this lane were removed or moved to another
        // lane; `retain` forgets the removed ones, once, for all lanes.
        *entries = next;
    }

    fn fire_due(&self, plan: &mut Plan) {
        let Plan {
            entries,
            heap,
            slot,
        } = plan;
        let now = SystemTime::now();
        let now_n = unix_nanos(now);
        while let Some((due_n, name)) = heap.pop_due(now_n) {
            let Some(entry) = entries.get_mut(&name) else {
                continue; // removed by a reload
            };
            if unix_nanos(entry.due) != due_n {
                continue; // superseded by a reload with a new schedule
            }
            let due = entry.due;
            entry.due = next_due(&name, &entry.journey.schedule, now.max(due), *slot);
            heap.push(unix_nanos(entry.due), name.clone());
            if entry.running.swap(true, Ordering::AcqRel) {
                self.telemetry.record_skip(&name);
                debug!(journey = %name, "previous run still going; tick skipped");
                continue;
            }
            self.spawn_run(entry.journey.clone(), entry.running.clone(), due);
        }
    }

    fn spawn_run(&self, journey: Arc<Journey>, running: Arc<AtomicBool>, due: SystemTime) {
        keep_buffer_pages();
        let env = self.env.clone();
        let telemetry = self.telemetry.clone();
        let permits = self.concurrency.clone();
        let cancel = self.cancel_runs.clone();
        // A debug span: at the default level, creating it and formatting its
        // field for every run was a measurable share of a probe's CPU, and
        // the log lines a run writes at `info` name their journey anyway.
        let span = debug_span!("run", journey = %journey.name);
        self.tracker.spawn(
            async move {
                // Clears the flag however the task ends.
                struct Done(Arc<AtomicBool>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Release);
                    }
                }
                let _done = Done(running);
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let lateness = SystemTime::now().duration_since(due).unwrap_or_default();
                telemetry.record_lateness(lateness);
                // Boxed: the run's state is large, and a spawned future is
                // moved by value; a waiting run then holds only a pointer.
                let reports =
                    Box::pin(runner::run_all(&journey, &env, Some(lateness), &cancel)).await;
                for report in reports {
                    log_report(&report);
                    telemetry.record(&report);
                }
            }
            .instrument(span),
        );
    }
}

/// Keeps a few of the allocator's pages for 8 KiB blocks in use on this
/// thread for its lifetime, by holding one block in each.
///
/// hyper gives every HTTP/1 connection an 8 KiB read and an 8 KiB write
/// buffer, and mimalloc keeps eight such blocks per 64 KiB page. A burst of
/// runs needs more than one page; when the burst is over the pages are
/// empty, and mimalloc keeps an empty page only when it is the only one of
/// its size: the others go back to the kernel at once (`madvise`, with the
/// agent's purge delay 0, see `main.rs`) and are faulted in again by the
/// next burst. A page that holds a live block is never returned, so its
/// other seven blocks serve every burst: at 1,000 runs a second, 0.12
/// `madvise` calls per probe instead of 0.36, and 10 % less CPU per probe
/// (18 % at 5,000; `bench/RESULTS.md`, figure 1). It costs at most
/// `PAGES` × 64 KiB on a thread that runs journeys, and nothing on the
/// others.
fn keep_buffer_pages() {
    #[cfg(feature = "mimalloc")]
    {
        const PAGE: usize = 64 * 1024;
        const BLOCK: usize = 8 * 1024;
        const PAGES: usize = 8;
        thread_local! {
            static KEPT: Vec<Vec<u8>> = {
                // Twice the blocks the kept pages hold, so that at least
                // `PAGES` distinct pages are among them; the blocks not kept
                // are freed at once.
                let blocks: Vec<Vec<u8>> =
                    (0..2 * PAGES * PAGE / BLOCK).map(|_| Vec::with_capacity(BLOCK)).collect();
                let mut pages: Vec<usize> = Vec::with_capacity(PAGES);
                let mut kept = Vec::with_capacity(PAGES);
                for b in blocks {
                    let page = b.as_ptr() as usize / PAGE;
                    if pages.len() < PAGES && !pages.contains(&page) {
                        pages.push(page);
                        kept.push(b);
                    }
                }
                kept
            };
        }
        KEPT.with(|_| ());
    }
}

/// One log line per run: a red target is `info`, not `error`.
pub fn log_report(r: &crate::report::JourneyReport) {
    match (r.outcome, r.error()) {
        (Outcome::Passed, _) | (_, None) => debug!(
            journey = %r.journey, trace_id = %r.trace_id,
            duration_ms = r.duration.as_millis() as u64, "journey passed"
        ),
        (Outcome::Failed, Some(e)) => {
            let step = r
                .failed_step
                .and_then(|i| r.steps.get(i))
                .map(|s| s.name.to_string())
                .unwrap_or_default();
            info!(
                journey = %r.journey, step = %step, error_type = %e.kind,
                trace_id = %r.trace_id, error = %e.message, "journey failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_due_times_are_aligned_and_strictly_later() {
        let s = Schedule::Every(Duration::from_secs(60));
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = next_due("j", &s, t, MAX_SLOT);
        assert!(a > t && a <= t + Duration::from_secs(60));
        let b = next_due("j", &s, a, MAX_SLOT);
        assert_eq!(b.duration_since(a).unwrap(), Duration::from_secs(60));
        // The same journey lands at the same phase from any starting point.
        let c = next_due("j", &s, t + Duration::from_secs(7), MAX_SLOT);
        assert!(c == a || c == b);
    }

    #[test]
    fn offsets_spread_journeys_over_the_interval() {
        let s = Schedule::Every(Duration::from_secs(1));
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms: Vec<u128> = (0..1000)
            .map(|i| {
                next_due(&format!("journey-{i}"), &s, t, MAX_SLOT)
                    .duration_since(t)
                    .unwrap()
                    .as_millis()
            })
            .collect();
        // On the 10 ms grid, and spread over all of its 100 slots: no slot
        // holds more than three times its share of 10.
        assert!(ms.iter().all(|m| m % 10 == 0), "off the grid: {ms:?}");
        let mut per_slot = [0usize; 100];
        for m in &ms {
            per_slot[(*m / 10) as usize % 100] += 1;
        }
        assert!(
            per_slot.iter().all(|n| (1..=30).contains(n)),
            "{per_slot:?}"
        );
    }

    #[test]
    fn slots_are_a_hundredth_of_the_interval_at_most_10_ms() {
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let offsets = |every: Duration| -> Vec<u128> {
            (0..200)
                .map(|i| {
                    next_due(&format!("j{i}"), &Schedule::Every(every), t, MAX_SLOT)
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                        % every.as_nanos()
                })
                .collect()
        };
        // 200 ms: 2 ms slots. An hour: still 10 ms ones.
        assert!(
            offsets(Duration::from_millis(200))
                .iter()
                .all(|o| o % 2_000_000 == 0)
        );
        let hour = offsets(Duration::from_secs(3600));
        assert!(hour.iter().all(|o| o % 10_000_000 == 0));
        assert!(
            hour.iter().any(|o| o % 20_000_000 != 0),
            "slots wider than 10 ms"
        );
        // 50 ms: a slot would be under the timer's 1 ms, so offsets keep
        // their nanoseconds.
        assert!(
            offsets(Duration::from_millis(50))
                .iter()
                .any(|o| o % 1_000_000 != 0)
        );
    }

    fn journeys(n: usize, every: Duration) -> Vec<Arc<Journey>> {
        (0..n)
            .map(|i| {
                Arc::new(Journey {
                    name: format!("j{i}").into(),
                    source: "test.yaml:1".into(),
                    schedule: Schedule::Every(every),
                    timeout: Duration::from_secs(5),
                    labels: Default::default(),
                    steps: Vec::new(),
                    redactor: Default::default(),
                    fan_out: None,
                })
            })
            .collect()
    }

    #[test]
    fn sets_use_one_lane_per_8000_runs_a_second() {
        let secs = Duration::from_secs;
        assert_eq!(lanes_for(&journeys(1000, secs(1)), 2), 1);
        assert_eq!(lanes_for(&journeys(8000, secs(1)), 4), 1);
        assert_eq!(lanes_for(&journeys(8001, secs(1)), 4), 2);
        assert_eq!(lanes_for(&journeys(20_000, secs(1)), 4), 3);
        // Never more than there are, never none.
        assert_eq!(lanes_for(&journeys(20_000, secs(1)), 2), 2);
        assert_eq!(lanes_for(&[], 2), 1);
        // 100,000 journeys every 10 s are 10,000 runs a second.
        assert_eq!(lanes_for(&journeys(100_000, secs(10)), 8), 2);

        // The lanes beyond those in use get nothing; the others share all.
        let set = journeys(9000, secs(1));
        let parts = partition(&set, 4);
        assert_eq!(parts.len(), 4);
        assert!(parts[2].is_empty() && parts[3].is_empty());
        assert_eq!(parts[0].len() + parts[1].len(), 9000);
        assert!(
            parts[0].len().abs_diff(parts[1].len()) < 500,
            "{} {}",
            parts[0].len(),
            parts[1].len()
        );
        let small = partition(&journeys(10, secs(1)), 4);
        assert_eq!(small[0].len(), 10);
    }

    #[test]
    fn the_due_heap_knows_its_next_two_wake_ups() {
        let mut h = DueHeap::default();
        assert_eq!(h.next_two(), (None, None));
        for (due, name) in [(30, "c"), (10, "a"), (20, "b"), (10, "a2"), (30, "c2")] {
            h.push(due, name.into());
        }
        assert_eq!(h.next_two(), (Some(10), Some(20)));
        assert_eq!(h.pop_due(9), None);
        let mut got = vec![h.pop_due(10).unwrap().1, h.pop_due(10).unwrap().1];
        got.sort();
        assert_eq!(got, [Arc::<str>::from("a"), "a2".into()]);
        assert_eq!(h.pop_due(10), None);
        assert_eq!(h.next_two(), (Some(20), Some(30)));
        h.push(25, "d".into());
        assert_eq!(h.next_two(), (Some(20), Some(25)));
        assert_eq!(h.pop_due(100).unwrap(), (20, "b".into()));
        assert_eq!(h.pop_due(100).unwrap(), (25, "d".into()));
        assert_eq!(h.next_two(), (Some(30), None));
        h.pop_due(100);
        h.pop_due(100);
        assert_eq!(h.next_two(), (None, None));
        assert!(h.times.is_empty());
    }

    #[test]
    fn a_journey_moved_to_another_lane_keeps_its_running_flag() {
        let scheduler = Scheduler {
            env: Arc::new(RunEnv {
                location: "test".into(),
                probes: crate::probes::ProbeEnv::new().unwrap().into(),
            }),
            telemetry: Arc::new(Telemetry::local()),
            concurrency: Arc::new(Semaphore::new(1)),
            tracker: TaskTracker::new(),
            cancel_runs: CancellationToken::new(),
            running: Default::default(),
        };
        let plan = || Plan {
            entries: HashMap::new(),
            heap: DueHeap::default(),
            slot: MAX_SLOT,
        };
        let (mut a, mut b) = (plan(), plan());
        let set = journeys(3, Duration::from_secs(1));
        scheduler.apply(&set, &mut a);
        // j1 has a run going on lane a when a reload moves it to lane b.
        a.entries["j1"].running.store(true, Ordering::Release);
        scheduler.apply(&[set[0].clone(), set[2].clone()], &mut a);
        scheduler.apply(&[set[1].clone()], &mut b);
        assert!(
            b.entries["j1"].running.load(Ordering::Acquire),
            "j1 could overlap its own run"
        );
        assert!(!a.entries.contains_key("j1"));
        // Removed from every lane: its flag is dropped, and a journey of the
        // same name added later starts afresh.
        scheduler.apply(&[], &mut b);
        scheduler.retain(&[set[0].clone(), set[2].clone()]);
        assert_eq!(scheduler.running.lock().unwrap().len(), 2);
        scheduler.apply(&[set[1].clone()], &mut b);
        assert!(!b.entries["j1"].running.load(Ordering::Acquire));
    }

    #[test]
    fn slots_narrow_as_the_run_rate_grows() {
        let secs = Duration::from_secs;
        // 10 runs a second: 8 of them would take 800 ms, so the 10 ms cap.
        assert_eq!(slot_for(&journeys(10, secs(1))), MAX_SLOT);
        // 500 runs a second (1,000 journeys on two lanes): 16 ms, capped.
        assert_eq!(slot_for(&journeys(500, secs(1))), MAX_SLOT);
        // 2,500 runs a second: 8 of them every 3.2 ms.
        let slot = slot_for(&journeys(2500, secs(1)));
        assert!(
            slot.abs_diff(Duration::from_micros(3200)) < Duration::from_micros(10),
            "{slot:?}"
        );
        // The same rate from longer intervals gives the same slot.
        let same = slot_for(&journeys(2500 * 4, secs(4)));
        assert!(same.abs_diff(slot) < Duration::from_micros(10), "{same:?}");
        assert_eq!(slot_for(&[]), MAX_SLOT);
    }

    #[test]
    fn shards_partition_journeys_deterministically() {
        let shards: Vec<Shard> = (1..=5).map(|i| format!("{i}/5").parse().unwrap()).collect();
        let mut counts = [0; 5];
        for i in 0..5000 {
            let name = format!("j{i}");
            let owners: Vec<usize> = (0..5).filter(|s| shards[*s].owns(&name)).collect();
            assert_eq!(owners.len(), 1, "{name} owned by {owners:?}");
            counts[owners[0]] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        assert!("0/5".parse::<Shard>().is_err());
        assert!("6/5".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }

    #[test]
    fn lanes_split_a_shard_evenly_and_keep_each_journey_in_place() {
        let shard: Shard = "2/3".parse().unwrap();
        let names: Vec<String> = (0..9000)
            .map(|i| format!("j{i}"))
            .filter(|n| shard.owns(n))
            .collect();
        for lanes in [2usize, 3, 8] {
            let mut counts = vec![0usize; lanes];
            for n in &names {
                counts[lane_of(n, lanes)] += 1;
            }
            let even = names.len() / lanes;
            assert!(
                counts.iter().all(|c| c.abs_diff(even) < even / 8),
                "{lanes} lanes: {counts:?}"
            );
        }
        // The same name always lands on the same lane.
        assert_eq!(lane_of("checkout", 4), lane_of("checkout", 4));
        assert_eq!(lane_of("anything", 1), 0);
    }

    #[test]
    fn cron_due_times_follow_the_expression() {
        let cron = crate::journey::CronSchedule {
            text: "*/5 * * * *".into(),
            cron: "*/5 * * * *".parse().unwrap(),
        };
        let s = Schedule::Cron(Arc::new(cron));
        let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let due = next_due("j", &s, t, MAX_SLOT);
        let secs = due.duration_since(UNIX_EPOCH).unwrap().as_secs();
        // On a 5-minute boundary plus at most 30 s of offset.
        assert!(secs % 300 <= 30, "{secs}");
        assert!(due > t && due <= t + Duration::from_secs(330));
    }
}
