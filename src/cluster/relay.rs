//! Relays: each computation this replica serves is a hub computation fed from the cluster's
//! stream by a reader task (its own Redis connection, blocking `XREAD`), so the hub's replay
//! ring, snapshot and subscriber queues serve it as they serve a local one.

use super::keys::Keys;
use super::{ClusterError, Inner, Local, wire};
use crate::hub::{ComputationSpec, EPOCH_FACTOR, Entry, RelayComputation, RelayInput, Tenant};
use crate::protocol::metadata::MetadataMessage;
use crate::upstream::{RemoteComputation, RemoteRequest};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamRangeReply, StreamReadReply};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events read per command.
const BATCH: usize = 512;
/// How long one `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(2);
/// The relay's input queue: the reader waits when it is full (the pump never does).
const INPUT_QUEUE: usize = 1024;

/// This replica's relay of computation `id`, started if it has none (or only an ended one).
pub(super) fn attach(
    inner: &Arc<Inner>,
    id: &str,
    tenant: &Tenant,
    spec: ComputationSpec,
    created_at: i64,
) -> Result<Arc<Entry>, ClusterError> {
    let mut locals = inner.locals.lock();
    if let Some(local) = locals.get(id) {
        if !local.entry.is_ended() && *local.entry.tenant == *tenant.id {
            return Ok(local.entry.clone());
        }
        // An ended run of a recreated computation: forget it here.
        inner.hub.discard(&local.entry);
        local.cancel.cancel();
        locals.remove(id);
    }
    let (control, remote) = RemoteComputation::new(spec.to_execute(created_at));
    let (input, rx) = mpsc::channel(INPUT_QUEUE);
    let key = spec.key(&tenant.id, created_at);
    let entry = inner.hub.relay(RelayComputation {
        id: id.to_owned(),
        spec,
        key,
        tenant: tenant.id.to_string(),
        created_at_ms: created_at,
        control,
        input: rx,
    })?;
    let cancel = inner.shutdown.child_token();
    let keys = Keys::new(&tenant.id, id);
    inner.tracker.spawn(read(inner.clone(), keys, entry.clone(), input.clone(), cancel.clone()));
    inner.tracker.spawn(requests(Arc::downgrade(inner), entry.clone(), remote, cancel.clone()));
    locals.insert(id.to_owned(), Local { entry: entry.clone(), tenant: tenant.clone(), input, cancel });
    Ok(entry)
}

/// The relay's control: a client's stop goes to the cluster; a local idle stop or a shutdown
/// only ends this replica's relay. Ends with the relay (`cancel`: detached, replaced, pruned
/// after its end, or shutdown), since the entry it holds keeps `remote` open.
async fn requests(
    inner: std::sync::Weak<Inner>,
    entry: Arc<Entry>,
    mut remote: RemoteComputation,
    cancel: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = cancel.cancelled() => return,
            request = remote.request() => match request {
                Some(request) => request,
                None => return,
            },
        };
        let Some(inner) = inner.upgrade() else { return };
        match request {
            RemoteRequest::Stop(reason) if entry.stop_requested.load(Ordering::Relaxed) => {
                let cluster = super::Cluster { inner: inner.clone() };
                if let Err(e) = cluster.stop(&entry, &reason).await {
                    tracing::warn!(computation = %entry.id, error = %e, "could not pass the stop to the cluster");
                }
            }
            RemoteRequest::Stop(_) | RemoteRequest::Detach => {
                detach(&inner, &entry);
                return;
            }
        }
    }
}

/// Ends this replica's relay of a computation (nobody here listens any more).
fn detach(inner: &Inner, entry: &Arc<Entry>) {
    let mut locals = inner.locals.lock();
    if let Some(local) = locals.get(&entry.id)
        && Arc::ptr_eq(&local.entry, entry)
    {
        inner.hub.discard(entry);
        local.cancel.cancel();
        let _ = local.input.try_send(RelayInput::Detach);
        locals.remove(&entry.id);
        tracing::debug!(computation = %entry.id, "relay detached");
    }
}

/// The reader: the metadata snapshot and the stream's backlog, then the stream as it grows.
/// Reconnects with backoff; stops at the terminal event, when the relay is detached, or at
/// shutdown.
async fn read(
    inner: Arc<Inner>,
    keys: Keys,
    entry: Arc<Entry>,
    input: mpsc::Sender<RelayInput>,
    cancel: CancellationToken,
) {
    // What the relay already holds (the leader's own replica is fed each event directly too):
    // such an entry is not decoded again.
    let relayed = &entry.last_seq;
    let mut last = "0-0".to_owned();
    let mut caught_up = false;
    let mut leader = None;
    let mut backoff = Duration::from_millis(100);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
    loop {
        let step = async {
            let mut conn = inner.client.get_multiplexed_async_connection_with_config(&config).await?;
            if !caught_up {
                let metadata: HashMap<String, Vec<u8>> =
                    redis::cmd("HGETALL").arg(keys.metadata()).query_async(&mut conn).await?;
                for json in metadata.values() {
                    if let Ok(m) = serde_json::from_slice::<MetadataMessage>(json) {
                        let _ = input.send(RelayInput::Snapshot(Arc::new(m))).await;
                    }
                }
                loop {
                    let reply: StreamRangeReply = redis::cmd("XRANGE")
                        .arg(keys.events())
                        .arg(format!("({last}"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut conn)
                        .await?;
                    if reply.ids.is_empty() {
                        break;
                    }
                    for entry in &reply.ids {
                        if feed(&inner, &input, relayed, &entry.id, &entry.map, &mut last, &mut leader).await {
                            return Ok::<bool, redis::RedisError>(true);
                        }
                    }
                }
                caught_up = true;
                let _ = input.send(RelayInput::CaughtUp).await;
            }
            follow(&inner, &keys, &mut conn, &input, relayed, &mut last, &mut leader).await
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = step => outcome,
        };
        match outcome {
            Ok(true) => return,
            Ok(false) => backoff = Duration::from_millis(100),
            Err(e) => {
                inner.redis_failed(&e);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        if input.is_closed() {
            return;
        }
    }
}

/// Blocking reads until the terminal event (`Ok(true)`) or an error.
async fn follow(
    inner: &Inner,
    keys: &Keys,
    conn: &mut MultiplexedConnection,
    input: &mpsc::Sender<RelayInput>,
    relayed: &AtomicU64,
    last: &mut String,
    leader: &mut Option<Arc<str>>,
) -> Result<bool, redis::RedisError> {
    loop {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys.events())
            .arg(&*last)
            .query_async(conn)
            .await?;
        inner.up.store(true, Ordering::Relaxed);
        if input.is_closed() {
            return Ok(true);
        }
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in &stream.ids {
                if feed(inner, input, relayed, &entry.id, &entry.map, last, leader).await {
                    return Ok(true);
                }
            }
        }
    }
}

/// One stream entry to the relay; true at the terminal event.
async fn feed(
    inner: &Inner,
    input: &mpsc::Sender<RelayInput>,
    relayed: &AtomicU64,
    id: &str,
    map: &HashMap<String, redis::Value>,
    last: &mut String,
    leader: &mut Option<Arc<str>>,
) -> bool {
    id.clone_into(last);
    if wire::parse_entry_id(id).is_some_and(|n| n <= relayed.load(Ordering::Relaxed)) {
        inner.stats.relayed.fetch_add(1, Ordering::Relaxed);
        return wire::is_end(map);
    }
    let Some(event) = wire::parse_entry(id, map, leader) else {
        tracing::warn!(entry = id, "skipped an unreadable cluster stream entry");
        return false;
    };
    let terminal = matches!(event.tag, crate::hub::RelayTag::End(_));
    inner.stats.relayed.fetch_add(1, Ordering::Relaxed);
    input.send(RelayInput::Event(event)).await.is_err() || terminal
}

/// Records, per computation relayed here, whether this replica has subscribers (a sorted set
/// member scored by its expiry), which the leader reads to decide the linger.
pub(super) async fn refresh_presence(inner: &Inner, conn: &mut redis::aio::ConnectionManager) {
    let expires = crate::clock::now_ms() + (inner.settings.lease.as_millis() as i64).max(1000);
    let mut pipe = redis::pipe();
    let mut any = false;
    {
        let mut locals = inner.locals.lock();
        // Ended relays the hub no longer holds (their retention is over, or they were discarded).
        locals.retain(|id, l| {
            let keep =
                !l.entry.is_ended() || inner.hub.get(id, &l.entry.tenant).is_some_and(|e| Arc::ptr_eq(&e, &l.entry));
            if !keep {
                l.cancel.cancel();
            }
            keep
        });
        for (id, local) in locals.iter() {
            let keys = Keys::new(&local.tenant.id, id);
            if local.entry.is_ended() {
                continue;
            }
            any = true;
            if local.entry.subscribers.load(Ordering::Relaxed) > 0 {
                pipe.cmd("ZADD").arg(keys.presence()).arg(expires).arg(&*inner.node).ignore();
            } else {
                pipe.cmd("ZREM").arg(keys.presence()).arg(&*inner.node).ignore();
            }
        }
    }
    if any && let Err(e) = pipe.query_async::<()>(conn).await {
        inner.redis_failed(&e);
    }
}

/// A relay with subscribers here: a candidate for a takeover, with what this replica knows of it.
pub(super) struct Served {
    pub id: String,
    pub tenant: Tenant,
    pub spec: ComputationSpec,
    pub created_at: i64,
    /// The epoch of the last event relayed (0: none).
    pub last_epoch: u64,
    /// The newest logical timestamp with data relayed.
    pub last_data_ms: Option<i64>,
}

/// The relays with subscribers here: candidates for a takeover.
pub(super) fn with_subscribers(inner: &Inner) -> Vec<Served> {
    inner
        .locals
        .lock()
        .iter()
        .filter(|(_, l)| !l.entry.is_ended() && l.entry.subscribers.load(Ordering::Relaxed) > 0)
        .map(|(id, l)| Served {
            id: id.clone(),
            tenant: l.tenant.clone(),
            spec: l.entry.spec.clone(),
            created_at: l.entry.created_at_ms,
            last_epoch: l.entry.last_seq.load(Ordering::Relaxed) / EPOCH_FACTOR,
            last_data_ms: *l.entry.watch_latest().borrow(),
        })
        .collect()
}

/// The local relay's input, for the leader's direct feed.
pub(super) fn local_input(inner: &Inner, id: &str) -> Option<mpsc::Sender<RelayInput>> {
    inner.locals.lock().get(id).map(|l| l.input.clone())
}
