//! The device's operation queue: switches, loads, unloads, test-loads, frees and resets — the
//! explicit ones and the loads behind auto-switches alike — run one at a time, in arrival
//! order. A caller waits its turn; it is turned away only when the queue is full or its wait
//! passes a bound, and then it is told what is ahead of it.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::OwnedMutexGuard;

/// One operation, running or waiting.
#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    doing: String,
    since: Instant,
}

/// Why an operation was turned away.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Refused {
    /// What the device is doing now.
    pub doing: String,
    /// For how long, in seconds.
    pub secs: f64,
    /// What waits ahead of the refused operation, oldest first.
    pub ahead: Vec<String>,
    /// Why: the queue is full, or the wait bound passed.
    pub why: String,
}

/// A FIFO of device operations (tokio's mutex hands the lock out in request order).
pub(super) struct OpQueue {
    lock: Arc<tokio::sync::Mutex<()>>,
    running: Mutex<Option<Entry>>,
    waiting: Mutex<VecDeque<Entry>>,
    ids: AtomicU64,
    /// Most operations that may wait at once.
    capacity: usize,
}

/// The device is held by one operation until this is dropped.
pub(super) struct Turn<'a> {
    queue: &'a OpQueue,
    _lock: OwnedMutexGuard<()>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.queue.running.lock().unwrap() = None;
    }
}

/// Takes a waiting entry off the queue however the wait ends (granted, timed out, cancelled).
struct Waiting<'a> {
    queue: &'a OpQueue,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queue
            .waiting
            .lock()
            .unwrap()
            .retain(|e| e.id != self.id);
    }
}

impl OpQueue {
    /// A queue that lets at most `capacity` operations wait.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            lock: Arc::new(tokio::sync::Mutex::new(())),
            running: Mutex::new(None),
            waiting: Mutex::new(VecDeque::new()),
            ids: AtomicU64::new(0),
            capacity,
        }
    }

    /// Waits for the device in arrival order, up to `bound`.
    pub(super) async fn enter(&self, doing: String, bound: Duration) -> Result<Turn<'_>, Refused> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        {
            let mut waiting = self.waiting.lock().unwrap();
            if waiting.len() >= self.capacity {
                drop(waiting);
                return Err(self.refused(format!(
                    "its queue is full ({} operations waiting)",
                    self.capacity
                )));
            }
            waiting.push_back(Entry {
                id,
                doing: doing.clone(),
                since: Instant::now(),
            });
        }
        let waiting = Waiting { queue: self, id };
        let lock = match tokio::time::timeout(bound, self.lock.clone().lock_owned()).await {
            Ok(lock) => lock,
            Err(_) => {
                let ahead = self.ahead_of(id);
                drop(waiting);
                let mut refused = self.refused(format!(
                    "the operation waited {:.0} s for its turn",
                    bound.as_secs_f64()
                ));
                refused.ahead = ahead;
                return Err(refused);
            }
        };
        drop(waiting);
        *self.running.lock().unwrap() = Some(Entry {
            id,
            doing,
            since: Instant::now(),
        });
        Ok(Turn {
            queue: self,
            _lock: lock,
        })
    }

    /// Renames what the running operation is doing (for status and busy answers).
    pub(super) fn set_doing(&self, doing: String) {
        if let Some(e) = self.running.lock().unwrap().as_mut() {
            e.doing = doing;
        }
    }

    /// What the running operation is doing, if one runs.
    pub(super) fn doing(&self) -> Option<String> {
        self.running
            .lock()
            .unwrap()
            .as_ref()
            .map(|e| e.doing.clone())
    }

    /// What waits, oldest first.
    pub(super) fn waiting(&self) -> Vec<String> {
        let waiting = self.waiting.lock().unwrap();
        waiting.iter().map(|e| e.doing.clone()).collect()
    }

    fn ahead_of(&self, id: u64) -> Vec<String> {
        let waiting = self.waiting.lock().unwrap();
        waiting
            .iter()
            .take_while(|e| e.id != id)
            .map(|e| e.doing.clone())
            .collect()
    }

    fn refused(&self, why: String) -> Refused {
        let running = self.running.lock().unwrap().clone();
        Refused {
            doing: running
                .as_ref()
                .map_or("another operation".into(), |e| e.doing.clone()),
            secs: running.map_or(0.0, |e| e.since.elapsed().as_secs_f64()),
            ahead: self.waiting(),
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn operations_run_in_arrival_order() {
        let queue = Arc::new(OpQueue::new(8));
        let order = Arc::new(Mutex::new(vec![]));
        let first = queue.enter("first".into(), Duration::from_secs(5)).await;
        let mut tasks = vec![];
        for i in 0..4 {
            let (q, order) = (queue.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = q
                    .enter(format!("op {i}"), Duration::from_secs(60))
                    .await
                    .unwrap();
                order.lock().unwrap().push(i);
            }));
            // Each waiter is queued before the next one arrives.
            while queue.waiting().len() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(queue.waiting(), ["op 0", "op 1", "op 2", "op 3"]);
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
        assert!(queue.doing().is_none());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_says_what_is_ahead() {
        let queue = Arc::new(OpQueue::new(1));
        let _held = queue
            .enter("switching a → b".into(), Duration::from_secs(5))
            .await;
        let q = queue.clone();
        let waiter = tokio::spawn(async move {
            q.enter("unloading".into(), Duration::from_secs(60))
                .await
                .map(|_| ())
        });
        while queue.waiting().is_empty() {
            tokio::task::yield_now().await;
        }
        let refused = queue
            .enter("freeing".into(), Duration::from_secs(60))
            .await
            .err()
            .expect("the queue is full");
        assert_eq!(refused.doing, "switching a → b");
        assert_eq!(refused.ahead, ["unloading"]);
        assert!(refused.why.contains("full"), "{}", refused.why);
        waiter.abort();
    }

    #[tokio::test]
    async fn a_wait_past_its_bound_is_refused_and_leaves_the_queue() {
        let queue = OpQueue::new(4);
        let _held = queue
            .enter("resetting".into(), Duration::from_secs(5))
            .await;
        let refused = queue
            .enter("freeing".into(), Duration::from_millis(20))
            .await
            .err()
            .expect("bound passed");
        assert!(refused.why.contains("waited"), "{}", refused.why);
        assert!(
            queue.waiting().is_empty(),
            "the refused entry left the queue"
        );
    }
}
