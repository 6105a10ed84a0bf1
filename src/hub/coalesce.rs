//! Identical work in flight shares one outcome: the first caller runs the work, the others
//! wait for it (should the first be cancelled, the next takes over). Used for the hub's and
//! the cluster's creates and the results cache's jobs; nothing is locked across an await.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::OnceCell;

pub struct Coalescer<K, V> {
    in_flight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Coalescer { in_flight: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Coalescer<K, V> {
    /// Runs `work` unless an identical one is in flight, whose outcome is then shared. The
    /// bool is true when this call ran the work.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self.in_flight.lock().entry(key.clone()).or_default().clone();
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                work()
            })
            .await
            .clone();
        let mut in_flight = self.in_flight.lock();
        if in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            in_flight.remove(&key);
        }
        (value, ran)
    }

    /// Calls waiting on (or running) the work for `key`.
    pub fn waiting(&self, key: &K) -> usize {
        self.in_flight.lock().get(key).map_or(0, |c| Arc::strong_count(c) - 1)
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_identical_work_runs_once_and_the_entry_is_gone_after() {
        let coalescer: Arc<Coalescer<&str, usize>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (c, runs, mut released) = (coalescer.clone(), runs.clone(), released.clone());
                tokio::spawn(async move {
                    c.run("k", || async move {
                        let _ = released.wait_for(|r| *r).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 7
                    })
                    .await
                })
            })
            .collect();
        while coalescer.waiting(&"k") < 20 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        let mut ran = 0;
        for t in tasks {
            let (value, here) = t.await.unwrap();
            assert_eq!(value, 7);
            ran += usize::from(here);
        }
        assert_eq!((runs.load(Ordering::SeqCst), ran), (1, 1));
        assert!(coalescer.is_empty());
    }
}
