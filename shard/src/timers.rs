//! The shard's timer service: a [`TimingWheel`] of wakers driven by one task.
//!
//! Owned by one shard (not `Send`). Fetch long-polls, request timeouts and
//! idle-connection reaping sleep on it; a thousand waiting fetches cost one glommio
//! timer (the driver's), not a thousand.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ringmq_storage::Notify;

use crate::wheel::{TimerId, TimingWheel};

/// Milliseconds per wheel tick.
pub const TICK_MS: u64 = 1;

/// A shard's timers, and the shard's clock: code that waits on them reads the time
/// from [`Timers::now`], so a test can run it on a clock it moves itself
/// ([`Timers::manual`]).
#[derive(Debug)]
pub struct Timers {
    wheel: RefCell<TimingWheel<Waker>>,
    epoch: Instant,
    changed: Notify,
    stopped: Cell<bool>,
    /// `Some(now)`: a manual clock, moved only by [`Timers::advance`].
    manual: Cell<Option<Instant>>,
}

impl Timers {
    /// A timer service on the monotonic clock; start [`Timers::run`] on the shard.
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            wheel: RefCell::new(TimingWheel::new(0)),
            epoch: Instant::now(),
            changed: Notify::new(),
            stopped: Cell::new(false),
            manual: Cell::new(None),
        })
    }

    /// A timer service whose time stands still until [`Timers::advance`] moves it (for
    /// tests: deadlines pass when the test says, not when the machine gets to them).
    pub fn manual() -> Rc<Self> {
        let t = Self::new();
        t.manual.set(Some(t.epoch));
        t
    }

    /// The time now: the monotonic clock, or the manual one.
    pub fn now(&self) -> Instant {
        self.manual.get().unwrap_or_else(Instant::now)
    }

    /// Moves a manual clock forward by `d` and wakes the timers due by then. No effect
    /// on the monotonic clock.
    pub fn advance(&self, d: Duration) {
        if let Some(now) = self.manual.get() {
            self.manual.set(Some(now + d));
            self.changed.notify_all();
        }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64 / TICK_MS
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.wheel.borrow().len()
    }

    /// True when no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves at `deadline` (to the tick); dropping it cancels the timer.
    pub fn sleep_until(self: &Rc<Self>, deadline: Instant) -> Sleep {
        Sleep {
            timers: self.clone(),
            deadline,
            id: None,
        }
    }

    /// Stops [`Timers::run`].
    pub fn stop(&self) {
        self.stopped.set(true);
        self.changed.notify_all();
    }

    /// The driver: wakes expired timers, sleeps until the next one or a new earlier one.
    pub async fn run(self: Rc<Self>) {
        let mut fired = Vec::new();
        while !self.stopped.get() {
            let now = self.tick_of(self.now());
            self.wheel.borrow_mut().advance(now, &mut fired);
            for w in fired.drain(..) {
                w.wake();
            }
            let next = self.wheel.borrow().next_event();
            let changed = self.changed.changed();
            match next {
                // A manual clock moves only by `advance`, which notifies.
                Some(_) if self.manual.get().is_some() => changed.await,
                Some(t) => {
                    let wait = Duration::from_millis(t.saturating_sub(now).max(1) * TICK_MS);
                    futures_lite::future::or(changed, glommio::timer::sleep(wait)).await;
                }
                None => changed.await,
            }
        }
    }
}

/// Future of [`Timers::sleep_until`].
#[derive(Debug)]
pub struct Sleep {
    timers: Rc<Timers>,
    deadline: Instant,
    id: Option<TimerId>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = self.timers.now();
        if now >= self.deadline {
            if let Some(id) = self.id.take() {
                self.timers.wheel.borrow_mut().cancel(id);
            }
            return Poll::Ready(());
        }
        let tick = self.timers.tick_of(self.deadline) + 1;
        let old = self.id.take();
        let timers = self.timers.clone();
        let mut wheel = timers.wheel.borrow_mut();
        if let Some(id) = old {
            wheel.cancel(id);
        }
        let earlier = wheel.next_event().is_none_or(|n| tick < n);
        let id = wheel.insert(tick, cx.waker().clone());
        drop(wheel);
        self.id = Some(id);
        if earlier {
            timers.changed.notify_all();
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.timers.wheel.borrow_mut().cancel(id);
        }
    }
}
