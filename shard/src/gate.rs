//! [`Gate`]: tracks the shard's tasks that must finish before its logs close (appends
//! that outlive their request: acks=0, a produce whose client went away). Shutdown
//! closes the gate, so no new task enters, and waits until the last one has left.

use std::cell::Cell;
use std::rc::Rc;

use ringmq_storage::Notify;

/// A count of tasks under way, and whether new ones may start.
#[derive(Debug, Default)]
pub struct Gate {
    inside: Cell<usize>,
    closed: Cell<bool>,
    left: Notify,
}

/// A task's pass through the [`Gate`]; dropping it leaves.
#[derive(Debug)]
pub struct Pass {
    gate: Rc<Gate>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        let n = self.gate.inside.get() - 1;
        self.gate.inside.set(n);
        if n == 0 {
            self.gate.left.notify_all();
        }
    }
}

impl Gate {
    /// An open gate.
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// A pass for a new task, or `None` once the gate is closed (the shard is
    /// stopping: the task must not start).
    pub fn enter(self: &Rc<Self>) -> Option<Pass> {
        if self.closed.get() {
            return None;
        }
        self.inside.set(self.inside.get() + 1);
        Some(Pass { gate: self.clone() })
    }

    /// Tasks inside now.
    pub fn inside(&self) -> usize {
        self.inside.get()
    }

    /// Closes the gate and waits until every task inside has left.
    pub async fn close(&self) {
        self.closed.set(true);
        loop {
            let left = self.left.changed();
            if self.inside.get() == 0 {
                return;
            }
            left.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_waits_for_every_pass_and_refuses_new_ones() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let gate = Gate::new();
                let a = gate.enter().unwrap();
                let b = gate.enter().unwrap();
                assert_eq!(gate.inside(), 2);
                let g = gate.clone();
                let done = Rc::new(Cell::new(false));
                let d = done.clone();
                let closing = glommio::spawn_local(async move {
                    g.close().await;
                    d.set(true);
                });
                glommio::executor().yield_task_queue_now().await;
                assert!(gate.enter().is_none(), "closed to new tasks");
                drop(a);
                glommio::executor().yield_task_queue_now().await;
                assert!(!done.get(), "one task still inside");
                drop(b);
                closing.await;
                assert!(done.get());
                assert_eq!(gate.inside(), 0);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
