//! Cluster mode with a real `redis-server`, three gateway processes and one simulator: one job
//! per computation across the fleet, the same events on every replica, resumes that move
//! between replicas, stops from anywhere, failover, Redis outages and tenancy.

use crate::support::cluster::{Frame, RawSse, RedisServer, Replica, gateway_notice, is_terminal};
use crate::support::{Control, WAIT, eventually, spawn_default_simulator};
use serde_json::{Value as Json, json};
use signalflow_gateway::simulator::SimulatorHandle;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";

struct Fleet {
    redis: RedisServer,
    sim: SimulatorHandle,
    replicas: Vec<Replica>,
}

async fn fleet(env: &[(&str, &str)]) -> Fleet {
    let redis = RedisServer::start().await;
    let sim = spawn_default_simulator().await;
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas.push(Replica::start(&format!("node-{n}"), &sim.ws_url(), &redis.url(), env).await);
    }
    Fleet { redis, sim, replicas }
}

impl Fleet {
    async fn jobs(&self, program: &str) -> usize {
        let jobs = Control::new(&self.sim).get("/jobs").await;
        jobs.as_array().unwrap().iter().filter(|j| j["program"] == program).count()
    }
}

async fn create(replica: &Replica, body: Json, token: Option<&str>) -> (u16, Json) {
    let mut request = replica.http.post(replica.url("/computations")).json(&body).timeout(WAIT);
    if let Some(token) = token {
        request = request.header("x-sf-token", token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn get(replica: &Replica, path: &str) -> (u16, Json) {
    let response = replica.http.get(replica.url(path)).timeout(WAIT).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Json::Null))
}

fn ids(frames: &[Frame]) -> Vec<u64> {
    frames.iter().filter_map(|f| f.id).collect()
}

fn data_timestamps(frames: &[Frame]) -> Vec<i64> {
    frames.iter().filter(|f| f.event == "data").map(|f| f.data["logicalTimestampMs"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn thirty_identical_creates_over_three_replicas_run_one_job_under_one_id() {
    let fleet = fleet(&[]).await;
    let creates = (0..30).map(|i| create(&fleet.replicas[i % 3], json!({ "program": PROGRAM }), None));
    let answers = futures::future::join_all(creates).await;
    let ids: HashSet<&str> = answers.iter().map(|(_, body)| body["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "one create started it: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 200), "{statuses:?}");
    assert_eq!(fleet.jobs(PROGRAM).await, 1);
    // Every replica names the leader.
    let id = ids.into_iter().next().unwrap();
    let mut leaders = HashSet::new();
    for replica in &fleet.replicas {
        let (status, view) = get(replica, &format!("/computations/{id}")).await;
        assert_eq!(status, 200);
        leaders.insert(view["leader"].as_str().unwrap_or("").to_owned());
        let (_, list) = get(replica, "/computations").await;
        assert!(list["computations"].as_array().unwrap().iter().any(|c| c["id"] == id), "{list}");
    }
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    let leader = leaders.into_iter().next().unwrap();
    assert!(leader.starts_with("node-"));
    // Only the leader took a lease.
    for replica in &fleet.replicas {
        let metrics = replica.http.get(replica.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let expected = if replica.node == leader { 1 } else { 0 };
        assert!(
            metrics.contains(&format!("sfgw_cluster_leaderships_total {expected}\n")),
            "{}: {metrics}",
            replica.node
        );
        assert!(metrics.contains("sfgw_cluster_redis_up 1\n"));
    }
}

#[tokio::test]
async fn every_replica_streams_the_same_ids_and_bytes_and_a_resume_moves_between_replicas() {
    let fleet = fleet(&[]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM, "start": "-10s" }), None).await;
    assert_eq!(status, 201, "{view}");
    let id = view["id"].as_str().unwrap().to_owned();
    let path = format!("/computations/{id}/events");
    let mut streams = Vec::new();
    for replica in &fleet.replicas {
        streams.push(RawSse::open(replica, &path, None, None).await);
    }
    let mut seen = Vec::new();
    for stream in &mut streams {
        seen.push(stream.data(4).await);
    }
    // Compare over the ids every replica has delivered.
    let last = seen.iter().map(|frames| *ids(frames).last().unwrap()).min().unwrap();
    let with_ids = |frames: &[Frame]| -> Vec<(u64, Vec<u8>)> {
        frames.iter().filter_map(|f| f.id.filter(|i| *i <= last).map(|i| (i, f.bytes.clone()))).collect()
    };
    let reference = with_ids(&seen[0]);
    assert!(reference.len() >= 4, "{reference:?}");
    for other in &seen[1..] {
        assert_eq!(with_ids(other), reference, "replicas differ");
    }
    // The latest values are read from the relayed events on every replica, the leader's too.
    let mut series_sets = Vec::new();
    for replica in &fleet.replicas {
        let (status, latest) = get(replica, &format!("/computations/{id}/latest")).await;
        assert_eq!(status, 200, "{latest}");
        let series = latest["series"].as_array().expect("series");
        assert!(!series.is_empty(), "no latest values on a replica: {latest}");
        assert!(series.iter().all(|s| s["value"].is_number() && s["logicalTimestampMs"].is_i64()), "{latest}");
        let mut tsids: Vec<String> = series.iter().map(|s| s["tsId"].as_str().unwrap().to_owned()).collect();
        tsids.sort();
        series_sets.push(tsids);
    }
    assert!(series_sets.windows(2).all(|w| w[0] == w[1]), "replicas hold different series: {series_sets:?}");
    // Ids are global: epoch × 10¹² + sequence, one after the other.
    let first = reference[0].0;
    assert!(first > 1_000_000_000_000, "{first}");
    let expected: Vec<u64> = (first..first + reference.len() as u64).collect();
    assert_eq!(reference.iter().map(|(i, _)| *i).collect::<Vec<_>>(), expected);

    // A stream read on replica 1, cut, resumed on replica 2, then on replica 0.
    let mut whole: Vec<Frame> = Vec::new();
    let mut last_id = None;
    for hop in [1, 2, 0] {
        let mut stream = RawSse::open(&fleet.replicas[hop], &path, last_id, None).await;
        let got = stream.data(3).await;
        let fresh: Vec<Frame> = got.into_iter().filter(|f| f.id.is_some()).collect();
        last_id = fresh.last().and_then(|f| f.id);
        whole.extend(fresh);
    }
    let resumed = ids(&whole);
    let expected: Vec<u64> = (resumed[0]..resumed[0] + resumed.len() as u64).collect();
    assert_eq!(resumed, expected, "nothing missing or repeated across replicas");
    let timestamps = data_timestamps(&whole);
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]), "{timestamps:?}");
    assert!(!whole.iter().any(|f| gateway_notice(f, "REPLAY_INCOMPLETE")));
    assert_eq!(fleet.jobs(PROGRAM).await, 1);
}

#[tokio::test]
async fn delete_on_a_follower_ends_every_stream_with_the_reason() {
    let fleet = fleet(&[]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), None).await;
    assert_eq!(status, 201);
    let id = view["id"].as_str().unwrap().to_owned();
    assert_eq!(view["leader"], "node-0", "{view}");
    let path = format!("/computations/{id}/events");
    let mut streams = Vec::new();
    for replica in &fleet.replicas {
        let mut stream = RawSse::open(replica, &path, None, None).await;
        stream.data(1).await;
        streams.push(stream);
    }
    let follower = &fleet.replicas[2];
    let response =
        follower.http.delete(follower.url(&format!("/computations/{id}?reason=cluster%20test"))).send().await.unwrap();
    assert_eq!(response.status(), 200);
    for stream in &mut streams {
        let end = stream.until(is_terminal).await;
        let terminal = end.last().unwrap();
        assert_eq!(terminal.data["event"], "CHANNEL_ABORT", "{terminal:?}");
        assert_eq!(terminal.data["abortInfo"]["sf_job_abortReason"], "cluster test");
        assert!(stream.next().await.is_none(), "the stream closes after its end");
    }
    eventually("the job is gone upstream", || async { fleet.jobs(PROGRAM).await == 0 }).await;
}

#[tokio::test]
async fn two_tenants_with_the_same_program_get_two_jobs_and_never_read_each_other() {
    let fleet = fleet(&[("SFGW_TENANCY__PASS_THROUGH", "true")]).await;
    let (s1, a) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), Some("token-tenant-a")).await;
    let (s2, b) = create(&fleet.replicas[1], json!({ "program": PROGRAM }), Some("token-tenant-b")).await;
    assert_eq!((s1, s2), (201, 201), "{a} {b}");
    assert_ne!(a["id"], b["id"]);
    assert_eq!(fleet.jobs(PROGRAM).await, 2);
    let id_a = a["id"].as_str().unwrap();
    let response = fleet.replicas[2]
        .http
        .get(fleet.replicas[2].url(&format!("/computations/{id_a}")))
        .header("x-sf-token", "token-tenant-b")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "tenant b cannot see tenant a's computation");
    let response = fleet.replicas[2]
        .http
        .get(fleet.replicas[2].url(&format!("/computations/{id_a}")))
        .header("x-sf-token", "token-tenant-a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The same tenant again, on another replica: shared.
    let (s3, again) = create(&fleet.replicas[2], json!({ "program": PROGRAM }), Some("token-tenant-a")).await;
    assert_eq!((s3, &again["id"]), (200, &a["id"]));
    assert_eq!(fleet.jobs(PROGRAM).await, 2);
    // No key in Redis carries a token.
    let keys = redis_keys(&fleet.redis).await;
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| !k.contains("token-tenant")), "{keys:?}");
}

async fn redis_keys(redis: &RedisServer) -> Vec<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap()
}

#[tokio::test]
async fn sigkill_of_the_leader_hands_the_job_over_within_the_lease_without_duplicate_timestamps() {
    let mut fleet = fleet(&[]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), None).await;
    assert_eq!(status, 201);
    assert_eq!(view["leader"], "node-0");
    let id = view["id"].as_str().unwrap().to_owned();
    let path = format!("/computations/{id}/events");
    let mut one = RawSse::open(&fleet.replicas[1], &path, None, None).await;
    let mut two = RawSse::open(&fleet.replicas[2], &path, None, None).await;
    let mut before_one = one.data(2).await;
    two.data(2).await;
    fleet.replicas[0].kill().await;
    let killed = Instant::now();
    // The lease is 2 s in these tests.
    let to_resume = one.until(|f| gateway_notice(f, "UPSTREAM_RESUMED")).await;
    let took = killed.elapsed();
    // Lease (2 s) + 2 s, as the issue asks; the takeover itself is measured from the kill.
    let disconnected_at = to_resume.iter().position(|f| gateway_notice(f, "UPSTREAM_DISCONNECTED"));
    assert!(disconnected_at.is_some(), "{to_resume:?}");
    assert!(took <= Duration::from_secs(2) + Duration::from_secs(2), "took {took:?}");
    assert!(to_resume.iter().any(|f| gateway_notice(f, "UPSTREAM_DISCONNECTED")), "{to_resume:?}");
    let resumed = to_resume.last().unwrap();
    assert!(resumed.data["gapMs"].as_i64().is_some(), "{resumed:?}");
    before_one.extend(to_resume);
    before_one.extend(one.data(3).await);
    let timestamps = data_timestamps(&before_one);
    let unique: HashSet<i64> = timestamps.iter().copied().collect();
    assert_eq!(unique.len(), timestamps.len(), "duplicate timestamps: {timestamps:?}");
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]), "{timestamps:?}");
    // Ids keep growing: the new epoch's are above the old one's.
    let all_ids = ids(&before_one);
    assert!(all_ids.windows(2).all(|w| w[0] < w[1]), "{all_ids:?}");
    let (_, view) = get(&fleet.replicas[2], &format!("/computations/{id}")).await;
    let leader = view["leader"].as_str().unwrap().to_owned();
    assert!(leader == "node-1" || leader == "node-2", "{view}");
    // Replica two saw the same.
    let rest = two.until(|f| gateway_notice(f, "UPSTREAM_RESUMED")).await;
    assert!(rest.iter().any(|f| gateway_notice(f, "UPSTREAM_DISCONNECTED")));
    assert_eq!(fleet.jobs(PROGRAM).await, 1);
    // An id from the dead leader's epoch that the stream still holds resumes exactly.
    let old = all_ids[0];
    let mut resumed = RawSse::open(&fleet.replicas[2], &path, Some(old), None).await;
    let next = resumed.until(|f| f.id.is_some()).await;
    assert_eq!(next.last().unwrap().id, Some(old + 1), "{next:?}");
    assert!(!next.iter().any(|f| gateway_notice(f, "REPLAY_INCOMPLETE")));
    // An id of the old epoch that no replica holds: said, never skipped silently.
    let mut unknown = RawSse::open(&fleet.replicas[1], &path, Some(old + 1_000_000), None).await;
    let said = unknown.until(|f| gateway_notice(f, "REPLAY_INCOMPLETE") || f.id.is_some()).await;
    assert!(gateway_notice(said.last().unwrap(), "REPLAY_INCOMPLETE"), "{said:?}");
}

#[tokio::test]
async fn the_cluster_stream_is_capped_in_bytes_like_the_replay_ring() {
    // The metadata alone (two series) is about 1 KiB: without the byte cap the stream holds more.
    let fleet = fleet(&[("SFGW_LIMITS__REPLAY_BYTES", "1024")]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), None).await;
    assert_eq!(status, 201);
    let id = view["id"].as_str().unwrap().to_owned();
    let mut stream = RawSse::open(&fleet.replicas[1], &format!("/computations/{id}/events"), None, None).await;
    stream.data(6).await;
    let events_key = redis_keys(&fleet.redis).await.into_iter().find(|k| k.ends_with(":events")).expect("a stream");
    let client = redis::Client::open(fleet.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let entries: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(&events_key).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let sizes: Vec<usize> = entries
        .ids
        .iter()
        .map(|e| match e.map.get("j") {
            Some(redis::Value::BulkString(b)) => b.len(),
            _ => 0,
        })
        .collect();
    let total: usize = sizes.iter().sum();
    let newest = sizes.last().copied().unwrap_or(0);
    assert!(total <= 1024 + newest, "the stream holds {total} bytes of events: {sizes:?}");
    assert!(sizes.len() >= 2, "{sizes:?}");
}

#[tokio::test]
async fn redis_restarted_empty_after_the_leader_died_a_follower_with_subscribers_takes_over() {
    let mut fleet = fleet(&[]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), None).await;
    assert_eq!(status, 201);
    let id = view["id"].as_str().unwrap().to_owned();
    let path = format!("/computations/{id}/events");
    let mut one = RawSse::open(&fleet.replicas[1], &path, None, None).await;
    let mut before = one.data(2).await;
    // The leader dies, then Redis loses everything: no record, no lease, no epoch.
    fleet.replicas[0].kill().await;
    fleet.redis.kill().await;
    fleet.redis.restart().await;
    // The replica with a subscriber writes the record back from what it knows and leads.
    let to_resume = one.until(|f| gateway_notice(f, "UPSTREAM_RESUMED")).await;
    assert!(to_resume.iter().any(|f| gateway_notice(f, "UPSTREAM_DISCONNECTED")), "{to_resume:?}");
    before.extend(to_resume);
    before.extend(one.data(2).await);
    let timestamps = data_timestamps(&before);
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]), "no timestamp twice: {timestamps:?}");
    let all_ids = ids(&before);
    assert!(all_ids.windows(2).all(|w| w[0] < w[1]), "ids keep growing: {all_ids:?}");
    let (_, view) = get(&fleet.replicas[2], &format!("/computations/{id}")).await;
    assert_eq!(view["leader"], "node-1", "{view}");
    assert_eq!(fleet.jobs(PROGRAM).await, 1);
}

#[tokio::test]
async fn redis_killed_and_restarted_the_cluster_recovers_and_reports_the_gap() {
    // A leader holds at most two events for Redis: a longer outage loses some for the followers.
    let mut fleet = fleet(&[("SFGW_CLUSTER__PUBLISH_QUEUE", "2")]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), None).await;
    assert_eq!(status, 201);
    let id = view["id"].as_str().unwrap().to_owned();
    let path = format!("/computations/{id}/events");
    let mut leader_stream = RawSse::open(&fleet.replicas[0], &path, None, None).await;
    let mut follower_stream = RawSse::open(&fleet.replicas[1], &path, None, None).await;
    leader_stream.data(1).await;
    let mut followed = follower_stream.data(1).await;

    fleet.redis.kill().await;
    for replica in &fleet.replicas {
        let replica_url = replica.url("/readyz");
        eventually("readyz answers 503", || async {
            replica.http.get(&replica_url).timeout(WAIT).send().await.is_ok_and(|r| r.status() == 503)
        })
        .await;
    }
    let (status, problem) = create(&fleet.replicas[2], json!({ "program": "data('other').publish()" }), None).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], "/problems/cluster-unavailable");
    // The leader's own subscribers go on while Redis is away (more than the two events the
    // leader may hold for it).
    let during = leader_stream.data(4).await;
    assert_eq!(data_timestamps(&during).len(), 4);

    fleet.redis.restart().await;
    for replica in &fleet.replicas {
        let replica_url = replica.url("/readyz");
        eventually("readyz answers 200 again", || async {
            replica.http.get(&replica_url).timeout(WAIT).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    // The follower's stream continues past the outage; every id it skips is announced by a
    // REPLAY_INCOMPLETE naming exactly the missing ids, never skipped silently.
    let last_during = *data_timestamps(&during).last().unwrap();
    loop {
        let more = follower_stream.data(1).await;
        let done = data_timestamps(&more).last().is_some_and(|t| *t > last_during);
        followed.extend(more);
        if done {
            break;
        }
    }
    let mut previous: Option<u64> = None;
    let mut announced: Option<(u64, u64)> = None;
    let mut gaps = 0;
    for f in &followed {
        if gateway_notice(f, "REPLAY_INCOMPLETE") {
            announced = Some((f.data["fromId"].as_u64().unwrap(), f.data["toId"].as_u64().unwrap()));
            continue;
        }
        let Some(id) = f.id else { continue };
        if let Some(p) = previous
            && id != p + 1
        {
            assert_eq!(announced, Some((p + 1, id - 1)), "a silent skip from {p} to {id}: {followed:?}");
            gaps += 1;
        }
        announced = None;
        previous = Some(id);
    }
    assert!(gaps >= 1, "the outage outlasted the leader's queue, so a gap is reported: {followed:?}");
    let timestamps = data_timestamps(&followed);
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]), "{timestamps:?}");
    // New creates work again, and the leader still runs the one job.
    let (status, _) = create(&fleet.replicas[2], json!({ "program": "data('other').publish()" }), None).await;
    assert_eq!(status, 201);
    assert_eq!(fleet.jobs(PROGRAM).await, 1);
}

#[tokio::test]
async fn the_leader_stops_the_job_after_the_linger_once_no_replica_has_subscribers() {
    let fleet = fleet(&[("SFGW_STREAM__LINGER", "1s")]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), None).await;
    assert_eq!(status, 201);
    let id = view["id"].as_str().unwrap().to_owned();
    let path = format!("/computations/{id}/events");
    let mut one = RawSse::open(&fleet.replicas[1], &path, None, None).await;
    let mut two = RawSse::open(&fleet.replicas[2], &path, None, None).await;
    one.data(1).await;
    two.data(1).await;
    drop(one);
    // Replica two still listens: three lingers later the job runs and its stream goes on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fleet.jobs(PROGRAM).await, 1);
    two.data(2).await;
    drop(two);
    eventually("the job stops once nobody listens anywhere", || async { fleet.jobs(PROGRAM).await == 0 }).await;
}

#[tokio::test]
async fn a_program_error_is_a_400_on_every_replica_and_leaves_nothing_running() {
    let fleet = fleet(&[]).await;
    let bad = "data('cpu.utilization').publish(\n  nope(";
    for replica in &fleet.replicas {
        let (status, problem) = create(replica, json!({ "program": bad }), None).await;
        assert_eq!(status, 400, "{}: {problem}", replica.node);
        assert_eq!(problem["type"], "/problems/program-error", "{problem}");
    }
    assert_eq!(fleet.jobs(bad).await, 0);
    let (_, list) = get(&fleet.replicas[1], "/computations").await;
    assert!(list["computations"].as_array().unwrap().iter().all(|c| c["program"] != bad), "{list}");
}

/// The check at its size: 1,000 identical creates spread over three replicas, 100 at a
/// time (a few seconds in a debug build).
#[tokio::test]
async fn a_thousand_identical_creates_over_three_replicas_run_exactly_one_job() {
    let fleet = fleet(&[]).await;
    let started = Instant::now();
    let mut ids = HashSet::new();
    let mut created = 0;
    for round in 0..10 {
        let creates =
            (0..100).map(|i| create(&fleet.replicas[(round * 100 + i) % 3], json!({ "program": PROGRAM }), None));
        for (status, body) in futures::future::join_all(creates).await {
            assert!(status == 200 || status == 201, "{status} {body}");
            created += usize::from(status == 201);
            ids.insert(body["id"].as_str().unwrap().to_owned());
        }
    }
    println!("1000 creates in {:?}", started.elapsed());
    assert_eq!((ids.len(), created), (1, 1));
    assert_eq!(fleet.jobs(PROGRAM).await, 1);
}

#[tokio::test]
async fn a_late_joiner_on_a_fresh_replica_gets_the_metadata_before_the_data() {
    let fleet = fleet(&[]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), None).await;
    assert_eq!(status, 201);
    let id = view["id"].as_str().unwrap().to_owned();
    let path = format!("/computations/{id}/events");
    RawSse::open(&fleet.replicas[0], &path, None, None).await.data(3).await;
    // Replica two has never seen this computation: it relays it from Redis now.
    let mut late = RawSse::open(&fleet.replicas[2], &path, None, None).await;
    let frames = late.data(1).await;
    let (data, before) = frames.split_last().unwrap();
    let described: HashSet<&str> =
        before.iter().filter(|f| f.event == "metadata").map(|f| f.data["tsId"].as_str().unwrap()).collect();
    let points = data.data["data"].as_array().unwrap();
    assert!(!points.is_empty());
    for point in points {
        assert!(described.contains(point["tsId"].as_str().unwrap()), "no metadata before {point}: {frames:?}");
    }
}

#[tokio::test]
async fn a_computation_whose_leader_died_with_no_subscribers_anywhere_is_forgotten() {
    let mut fleet = fleet(&[]).await;
    let (status, view) = create(&fleet.replicas[0], json!({ "program": PROGRAM }), None).await;
    assert_eq!(status, 201);
    let id = view["id"].as_str().unwrap().to_owned();
    let (_, list) = get(&fleet.replicas[1], "/computations").await;
    assert!(list["computations"].as_array().unwrap().iter().any(|c| c["id"] == id.as_str()), "{list}");
    fleet.replicas[0].kill().await;
    // Nobody listens, so nobody takes over; its keys outlive the 2 s lease by six leases.
    eventually("the orphan leaves the list", || async {
        let (_, list) = get(&fleet.replicas[1], "/computations").await;
        !list["computations"].as_array().unwrap().iter().any(|c| c["id"] == id.as_str())
    })
    .await;
    assert_eq!(get(&fleet.replicas[2], &format!("/computations/{id}")).await.0, 404);
}
