//! Leaders: the replica holding a computation's lease runs its upstream job, renders each event
//! once, hands it to its own relay directly and to Redis through the fenced publish.

use super::keys::Keys;
use super::{ClusterError, Inner, relay, scripts, wire};
use crate::hub::render;
use crate::hub::{ComputationSpec, EPOCH_FACTOR, RelayInput, RelayTag, RelayedEvent, Tenant};
use crate::upstream::{Computation, ComputationControl, EventReceiver, UpstreamEvent};
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A job started by a new leader, and where a takeover resumes.
pub(super) struct Job {
    computation: Computation,
    resume: Option<Resume>,
    spec_json: String,
    created_at: i64,
}

/// What the previous leader got to.
struct Resume {
    /// The last complete logical timestamp published: data at or before it is not repeated.
    last_ms: i64,
    /// When the previous leader last published data (ms), for the outage.
    last_at_ms: Option<i64>,
    /// Series whose metadata is already in the cluster's snapshot.
    known: HashSet<String>,
}

/// How a leader starts its job.
pub(super) enum Start {
    /// A new computation: from its start.
    New,
    /// A takeover: after the last complete timestamp published (the record's, or the newest
    /// this replica relayed, whichever is later: Redis may have lost the record).
    TakeOver { relayed_last_ms: Option<i64> },
}

/// Starts the job as `start` says.
pub(super) async fn start_job(
    inner: &Inner,
    keys: &Keys,
    spec: &ComputationSpec,
    created_at: i64,
    tenant: &Tenant,
    start: Start,
) -> Result<Job, ClusterError> {
    let mut execute = spec.to_execute(created_at);
    let mut resume = None;
    if let Start::TakeOver { relayed_last_ms } = start {
        let mut conn = inner.conn.clone();
        let (last, at): (Option<i64>, Option<i64>) =
            redis::cmd("HMGET").arg(keys.record()).arg("last").arg("at").query_async(&mut conn).await.map_err(|e| {
                inner.redis_failed(&e);
                ClusterError::from(e)
            })?;
        let known: HashSet<String> =
            redis::cmd("HKEYS").arg(keys.metadata()).query_async(&mut conn).await.unwrap_or_default();
        let last = last.max(relayed_last_ms);
        if let Some(last_ms) = last {
            execute.start = Some(last_ms + 1);
        }
        resume = Some(Resume { last_ms: last.unwrap_or(i64::MIN), last_at_ms: at, known });
    }
    let computation = inner.hub.execute(execute, tenant).await?;
    Ok(Job { computation, resume, spec_json: wire::spec_to_json(spec), created_at })
}

/// Lets go of a lease (and of a record nobody ran).
pub(super) async fn release(inner: &Inner, keys: &Keys, id: &str, epoch: u64, drop_record: bool) {
    let mut conn = inner.conn.clone();
    let released = scripts::RELEASE
        .key(keys.lease())
        .key(keys.record())
        .key(keys.index())
        .arg(lease_value(&inner.node, epoch))
        .arg(if drop_record { "1" } else { "0" })
        .arg(id)
        .invoke_async::<i64>(&mut conn)
        .await;
    if let Err(e) = released {
        inner.redis_failed(&e);
    }
}

fn lease_value(node: &str, epoch: u64) -> String {
    format!("{node}|{epoch}")
}

/// Runs the leader's task on the cluster's tracker.
pub(super) fn spawn(inner: &Arc<Inner>, id: String, keys: Keys, epoch: u64, job: Job) {
    let cancel = inner.shutdown.child_token();
    inner.led.lock().insert(id.clone());
    inner.stats.leaderships.fetch_add(1, Ordering::Relaxed);
    if job.resume.is_some() {
        inner.stats.takeovers.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(computation = %id, epoch, takeover = job.resume.is_some(), "leading computation");
    let leader = Leader::new(inner.clone(), id, keys, epoch, cancel);
    inner.tracker.spawn(leader.run(job));
}

/// What the publisher task is handed.
enum Publish {
    Event {
        entry_id: String,
        name: &'static str,
        json: Bytes,
        kind: &'static str,
        arg: String,
    },
    /// After the terminal event: mark the end and release the lease.
    Finish,
}

struct Leader {
    inner: Arc<Inner>,
    id: String,
    keys: Keys,
    epoch: u64,
    seq: u64,
    buf: Vec<u8>,
    publish: mpsc::Sender<Publish>,
    publish_rx: Option<mpsc::Receiver<Publish>>,
    /// Set when the publish is refused (another replica leads under a newer epoch).
    lost: CancellationToken,
    cancel: CancellationToken,
}

impl Leader {
    fn new(inner: Arc<Inner>, id: String, keys: Keys, epoch: u64, cancel: CancellationToken) -> Self {
        let (publish, publish_rx) = mpsc::channel(inner.settings.publish_queue.max(1));
        Leader {
            inner,
            id,
            keys,
            epoch,
            seq: 0,
            buf: Vec::with_capacity(16 * 1024),
            publish,
            publish_rx: Some(publish_rx),
            lost: CancellationToken::new(),
            cancel,
        }
    }

    async fn run(mut self, job: Job) {
        let Job { computation, resume, spec_json, created_at } = job;
        let (mut events, control) = computation.into_parts();
        if let Some(rx) = self.publish_rx.take() {
            let publisher = Publisher {
                inner: self.inner.clone(),
                keys: self.keys.clone(),
                id: self.id.clone(),
                epoch: self.epoch,
                lost: self.lost.clone(),
                cancel: self.cancel.clone(),
            };
            self.inner.tracker.spawn(publisher.run(rx));
        }
        let renewing = self.cancel.child_token();
        let (answers_tx, mut answers) = mpsc::channel(1);
        let renewer = Renewer {
            inner: self.inner.clone(),
            id: self.id.clone(),
            keys: self.keys.clone(),
            epoch: self.epoch,
            spec_json,
            created_at,
            lost: self.lost.clone(),
        };
        self.inner.tracker.spawn(renewer.run(answers_tx, renewing.clone()));
        let mut resume = resume;
        if resume.is_some() {
            let reason = "the replica running the job was lost; another one re-executes it".to_owned();
            self.emit(UpstreamEvent::Disconnected { reason }).await;
        }
        let ended = self.lead(&mut events, &control, &mut resume, &mut answers).await;
        renewing.cancel();
        if !ended {
            // Shutdown or a lost lease: the job stops here without an end for the fleet.
            let reason = "the gateway replica leading it is stopping";
            control.stop(reason).await;
            if !self.lost.is_cancelled() {
                release(&self.inner, &self.keys, &self.id, self.epoch, false).await;
            }
        }
        self.inner.led.lock().remove(&self.id);
    }

    /// The loop; true when the computation ended (its terminal is published).
    async fn lead(
        &mut self,
        events: &mut EventReceiver,
        control: &ComputationControl,
        resume: &mut Option<Resume>,
        answers: &mut mpsc::Receiver<RenewAnswer>,
    ) -> bool {
        let settings = self.inner.hub.settings().stream.clone();
        let mut empty_since = Instant::now();
        let mut had_presence = false;
        let mut stop_sent = false;
        let lost = self.lost.clone();
        let cancel = self.cancel.clone();
        let hub = self.inner.hub.clone();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return false,
                // Before the pools stop the job: its end is not the computation's.
                _ = hub.shutting_down() => return false,
                _ = lost.cancelled() => {
                    self.inner.stats.leaderships_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(computation = %self.id, epoch = self.epoch, "lost the lead");
                    return false;
                }
                event = events.recv() => {
                    let Some(event) = event else { return false };
                    if let Some(r) = resume.as_mut() {
                        match &event {
                            UpstreamEvent::Data(batch) if batch.logical_timestamp_ms <= r.last_ms => continue,
                            UpstreamEvent::Data(batch) => {
                                // No data was published before the takeover: no gap to report.
                                let gap_ms = match r.last_ms {
                                    i64::MIN => 0,
                                    last => batch
                                        .logical_timestamp_ms
                                        .saturating_sub(last)
                                        .saturating_sub(control.state().resolution_ms.unwrap_or(0))
                                        .max(0),
                                };
                                let outage_ms = r.last_at_ms.map_or(0, |at| (crate::clock::now_ms() - at).max(0));
                                *resume = None;
                                self.emit(UpstreamEvent::Resumed { gap_ms, outage_ms }).await;
                            }
                            UpstreamEvent::Metadata(m) if r.known.contains(&m.tsid.to_string()) => continue,
                            _ => {}
                        }
                    }
                    let terminal = matches!(event, UpstreamEvent::Ended(_));
                    self.emit(event).await;
                    if terminal {
                        let _ = self.publish.send(Publish::Finish).await;
                        return true;
                    }
                }
                Some((stop, presence)) = answers.recv() => {
                    if let Some(reason) = stop.filter(|_| !stop_sent) {
                        stop_sent = true;
                        tracing::info!(computation = %self.id, %reason, "stopping computation (cluster request)");
                        control.stop(&reason).await;
                    }
                    if presence > 0 {
                        had_presence = true;
                        empty_since = Instant::now();
                    } else if !stop_sent {
                        let wait = if had_presence { settings.linger } else { settings.idle_timeout };
                        if empty_since.elapsed() >= wait {
                            stop_sent = true;
                            let reason = if had_presence {
                                "no subscribers left"
                            } else {
                                "no subscriber came before the idle timeout"
                            };
                            tracing::info!(computation = %self.id, reason, "stopping computation");
                            control.stop(reason).await;
                        }
                    }
                }
            }
        }
    }

    /// Renders an event once; gives it to this replica's relay and queues it for Redis.
    async fn emit(&mut self, event: UpstreamEvent) {
        let name = render::render(&event, crate::clock::now_ms(), &mut self.buf);
        self.seq += 1;
        let id = self.epoch * EPOCH_FACTOR + self.seq;
        let json = Bytes::copy_from_slice(&self.buf);
        let tag = match event {
            UpstreamEvent::JobStarted { handle } => RelayTag::JobStarted(handle),
            UpstreamEvent::Metadata(m) => RelayTag::Metadata(m),
            UpstreamEvent::Expired(tsid) => RelayTag::Expired(tsid),
            UpstreamEvent::Data(batch) => RelayTag::Data(batch),
            UpstreamEvent::Disconnected { .. } => RelayTag::Disconnected,
            UpstreamEvent::Resumed { .. } => RelayTag::Resumed,
            UpstreamEvent::Ended(terminal) => RelayTag::End(terminal),
            _ => RelayTag::Other,
        };
        let (kind, arg) = wire::tag_fields(&tag);
        let item =
            Publish::Event { entry_id: format!("{}-{}", self.epoch, self.seq), name, json: json.clone(), kind, arg };
        let end = matches!(tag, RelayTag::End(_));
        // This replica's subscribers first: they never wait on Redis.
        if let Some(local) = relay::local_input(&self.inner, &self.id) {
            let relayed = RelayedEvent { id, name, json, tag, leader: Some(self.inner.node.clone()) };
            // A full relay queue: the reader brings the event from Redis instead.
            let _ = local.try_send(RelayInput::Event(relayed));
        }
        // The end waits for room (the leader stops right after it); any other event is dropped
        // while Redis is slow or away, and the other replicas report the gap by its ids.
        let queued = if end { self.publish.send(item).await.is_ok() } else { self.publish.try_send(item).is_ok() };
        if !queued {
            self.inner.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Renews a leader's lease on its own timer, so that neither a slow Redis nor a busy event
/// stream holds up the other; each answer (the stop request and how many replicas have
/// subscribers) goes to the leader's loop.
struct Renewer {
    inner: Arc<Inner>,
    id: String,
    keys: Keys,
    epoch: u64,
    spec_json: String,
    created_at: i64,
    lost: CancellationToken,
}

type RenewAnswer = (Option<String>, i64);

impl Renewer {
    async fn run(self, answers: mpsc::Sender<RenewAnswer>, done: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.settings.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = self.lost.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Some(answer) = self.tick().await {
                // One answer waits at most; the leader acts on the newest it reads.
                let _ = answers.try_send(answer);
            }
        }
    }

    /// Renews the lease and reads the stop request and presence; `None` when Redis did not
    /// answer (the job goes on for this replica's subscribers).
    async fn tick(&self) -> Option<(Option<String>, i64)> {
        let mut conn = self.inner.conn.clone();
        let answer = scripts::TICK
            .key(self.keys.lease())
            .key(self.keys.epoch())
            .key(self.keys.record())
            .key(self.keys.presence())
            .key(self.keys.index())
            .key(self.keys.events())
            .key(self.keys.metadata())
            .arg(lease_value(&self.inner.node, self.epoch))
            .arg(self.inner.lease_ms())
            .arg(self.epoch)
            .arg(crate::clock::now_ms())
            .arg(&self.spec_json)
            .arg(self.created_at)
            .arg(&self.id)
            .invoke_async::<(i64, Option<String>, i64)>(&mut conn)
            .await;
        match answer {
            Ok((1, stop, presence)) => Some((stop, presence)),
            Ok(_) => {
                self.lost.cancel();
                None
            }
            Err(e) => {
                self.inner.redis_failed(&e);
                None
            }
        }
    }
}

/// Publishes in order, retrying with backoff while Redis is away (the queue is bounded).
struct Publisher {
    inner: Arc<Inner>,
    keys: Keys,
    id: String,
    epoch: u64,
    lost: CancellationToken,
    cancel: CancellationToken,
}

/// The sizes of the entries this leader published, oldest first, to cap the stream in bytes.
struct HeldBytes {
    entries: std::collections::VecDeque<(String, usize)>,
    bytes: usize,
    max_bytes: usize,
    max_entries: usize,
}

impl HeldBytes {
    fn new(max_bytes: usize, max_entries: usize) -> Self {
        HeldBytes { entries: std::collections::VecDeque::new(), bytes: 0, max_bytes, max_entries }
    }

    /// Counts a new entry; when older ones no longer fit, the id below which the stream is to
    /// be trimmed (the oldest entry kept).
    fn push(&mut self, entry_id: &str, size: usize) -> Option<String> {
        self.entries.push_back((entry_id.to_owned(), size));
        self.bytes += size;
        let mut dropped = false;
        while self.entries.len() > 1 && (self.bytes > self.max_bytes || self.entries.len() > self.max_entries) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
                dropped = true;
            }
        }
        dropped.then(|| self.entries.front().map(|(id, _)| id.clone())).flatten()
    }
}

impl Publisher {
    async fn run(self, mut rx: mpsc::Receiver<Publish>) {
        let limits = &self.inner.hub.settings().limits;
        let maxlen = limits.replay_events.max(1);
        let mut held = HeldBytes::new(limits.replay_bytes, maxlen);
        let retention = self.inner.hub.settings().stream.ended_retention.as_millis() as u64;
        while let Some(item) = rx.recv().await {
            let mut backoff = Duration::from_millis(50);
            // The stream is capped like the replay ring: in entries (MAXLEN) and in bytes (the
            // oldest entries past the byte bound are trimmed by id).
            let trim_below = match &item {
                Publish::Event { entry_id, json, .. } => held.push(entry_id, json.len()),
                Publish::Finish => None,
            };
            loop {
                if self.lost.is_cancelled() {
                    return;
                }
                let mut conn = self.inner.conn.clone();
                let outcome = match &item {
                    Publish::Event { entry_id, name, json, kind, arg } => {
                        let mut call = scripts::PUBLISH.key(self.keys.epoch());
                        call.key(self.keys.events()).key(self.keys.metadata()).key(self.keys.record());
                        // The record's `last` is a data event's timestamp, without its block sizes.
                        let record_arg = match *kind {
                            "data" => arg.split(';').next().unwrap_or(arg),
                            _ => arg,
                        };
                        call.arg(self.epoch).arg(entry_id).arg(maxlen).arg(*kind).arg(record_arg);
                        match *kind {
                            "meta" => call.arg(json.as_ref()),
                            _ => call.arg(crate::clock::now_ms()),
                        };
                        call.arg(trim_below.as_deref().unwrap_or(""));
                        call.arg("n").arg(*name).arg("j").arg(json.as_ref()).arg("k").arg(*kind);
                        call.arg("a").arg(arg).arg("o").arg(&*self.inner.node);
                        call.invoke_async::<i64>(&mut conn).await
                    }
                    Publish::Finish => {
                        scripts::FINISH
                            .key(self.keys.record())
                            .key(self.keys.lease())
                            .key(self.keys.index())
                            .key(self.keys.events())
                            .key(self.keys.metadata())
                            .key(self.keys.presence())
                            .key(self.keys.epoch())
                            .arg(lease_value(&self.inner.node, self.epoch))
                            .arg(retention.max(1000))
                            .arg(&self.id)
                            .arg(self.epoch)
                            .invoke_async::<i64>(&mut conn)
                            .await
                    }
                };
                match outcome {
                    Ok(1) => {
                        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(_) => {
                        self.inner.stats.publish_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(computation = %self.id, epoch = self.epoch, "publish refused: a newer epoch leads");
                        self.lost.cancel();
                        return;
                    }
                    Err(e) => {
                        self.inner.redis_failed(&e);
                        let transient = e.is_io_error()
                            || e.is_timeout()
                            || e.is_connection_dropped()
                            || e.is_connection_refusal()
                            || !matches!(e.retry_method(), redis::RetryMethod::NoRetry);
                        if !transient {
                            // Not Redis being away or loading (e.g. an id Redis refuses): skip it.
                            self.inner.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }
}

/// Takes over the computations relayed here with subscribers whose lease has expired.
/// Takes over the computations this replica serves whose leader is gone. `may_restore`: a
/// record Redis lost may be written back (see [`scripts::TAKE_OVER`]).
pub(super) async fn take_over_orphans(inner: &Arc<Inner>, conn: &mut redis::aio::ConnectionManager, may_restore: bool) {
    for served in relay::with_subscribers(inner) {
        let relay::Served { id, tenant, spec, created_at, last_epoch, last_data_ms } = served;
        if inner.led.lock().contains(&id) {
            continue;
        }
        let keys = Keys::new(&tenant.id, &id);
        let epoch = match scripts::TAKE_OVER
            .key(keys.record())
            .key(keys.lease())
            .key(keys.epoch())
            .key(keys.index())
            .arg(&*inner.node)
            .arg(inner.lease_ms())
            .arg(last_epoch)
            .arg(wire::spec_to_json(&spec))
            .arg(created_at)
            .arg(&id)
            .arg(if may_restore { "1" } else { "0" })
            .invoke_async::<u64>(conn)
            .await
        {
            Ok(0) => continue,
            Ok(epoch) => epoch,
            Err(e) => {
                inner.redis_failed(&e);
                return;
            }
        };
        tracing::info!(computation = %id, epoch, "taking over a computation whose leader is gone");
        let start = Start::TakeOver { relayed_last_ms: last_data_ms };
        match start_job(inner, &keys, &spec, created_at, &tenant, start).await {
            Ok(job) => spawn(inner, id, keys, epoch, job),
            Err(e) => {
                tracing::warn!(computation = %id, error = %e, "takeover failed; the lease is released");
                release(inner, &keys, &id, epoch, false).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeldBytes;

    #[test]
    fn the_stream_is_trimmed_below_the_oldest_entry_that_fits_the_byte_bound() {
        let mut held = HeldBytes::new(100, 1000);
        assert_eq!(held.push("1-1", 40), None);
        assert_eq!(held.push("1-2", 40), None);
        // 120 bytes: the oldest goes, the stream keeps 1-2 onwards.
        assert_eq!(held.push("1-3", 40), Some("1-2".to_owned()));
        // One entry larger than the bound is still kept (the newest always is).
        assert_eq!(held.push("2-1", 500), Some("2-1".to_owned()));
        let mut by_count = HeldBytes::new(usize::MAX, 2);
        by_count.push("1-1", 1);
        by_count.push("1-2", 1);
        assert_eq!(by_count.push("1-3", 1), Some("1-2".to_owned()));
    }
}
