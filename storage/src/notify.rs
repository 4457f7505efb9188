//! A single-threaded change notification: tasks of one shard wait for the next
//! `notify_all`. No atomics, no locks: owned by one shard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every waiting task when something changed.
#[derive(Debug, Default)]
pub struct Notify {
    version: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// A notifier with no waiters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every task waiting in [`Notify::changed`].
    pub fn notify_all(&self) {
        self.version.set(self.version.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the first `notify_all` after this call. Check the condition and
    /// call this with no `.await` in between, and no change is missed.
    pub fn changed(&self) -> Changed<'_> {
        Changed {
            notify: self,
            seen: self.version.get(),
        }
    }
}

/// Future of [`Notify::changed`].
#[derive(Debug)]
pub struct Changed<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for Changed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.version.get() != self.seen {
            return Poll::Ready(());
        }
        self.notify.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}
