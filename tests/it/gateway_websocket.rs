//! The SignalFlow websocket protocol served by the gateway (`/v2/signalflow/connect`), driven by
//! the crate's own websocket client (`support::WsClient`): sharing of one upstream job across
//! sockets and with SSE, a stop that detaches only its client, upstream reconnects hidden from
//! clients, framing, keep-alives, limits and bad input.

use crate::support::interop::{START, TWO_BLOCKS};
use crate::support::*;
use serde_json::{Value as Json, json};
use signalflow_gateway::config::Settings;
use signalflow_gateway::protocol::control::ControlEvent;
use signalflow_gateway::protocol::messages::ServerMessage;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const LIVE: &str = "data('cpu.utilization').mean(by=['region']).publish('live')";

fn ws_url(gateway: &Gateway) -> String {
    gateway.base.replacen("http://", "ws://", 1) + "/v2/signalflow/connect"
}

async fn sim_jobs(gateway: &Gateway, program: &str) -> Vec<Json> {
    let jobs = gateway.get_json("/_sim/jobs").await;
    jobs.as_array().unwrap().iter().filter(|j| j["program"].as_str() == Some(program)).cloned().collect()
}

/// Reads `channel` until its JOB_START (other channels' messages are skipped); returns the
/// handle. Everything before it on the channel must be STREAM_START.
async fn job_start(client: &mut WsClient, channel: &str) -> String {
    let mut seen = Vec::new();
    loop {
        let message = client.next_message().await;
        if message.channel() != Some(channel) {
            continue;
        }
        if let ServerMessage::Control(c) = &message {
            match c.kind() {
                ControlEvent::StreamStart => {
                    seen.push("STREAM_START");
                    continue;
                }
                ControlEvent::JobStart { handle } => {
                    assert_eq!(seen, ["STREAM_START"], "STREAM_START comes first");
                    return handle.to_owned();
                }
                _ => {}
            }
        }
        panic!("expected JOB_START on {channel}, got {message:?} after {seen:?}");
    }
}

/// Data timestamps on `channel` until `count` distinct ones have arrived (metadata must precede
/// the data of its series; nothing terminal may arrive). `known` carries the series whose
/// metadata this client has seen across calls.
async fn data_timestamps(client: &mut WsClient, channel: &str, count: usize) -> Vec<i64> {
    data_timestamps_known(client, channel, count, &mut std::collections::BTreeSet::new()).await
}

async fn data_timestamps_known(
    client: &mut WsClient,
    channel: &str,
    count: usize,
    known: &mut std::collections::BTreeSet<signalflow_gateway::protocol::Tsid>,
) -> Vec<i64> {
    let mut stamps: Vec<i64> = Vec::new();
    while stamps.len() < count {
        let message = client.next_message().await;
        if message.channel() != Some(channel) {
            continue;
        }
        match message {
            ServerMessage::Metadata(m) => {
                known.insert(m.tsid);
            }
            ServerMessage::Data(d) => {
                for p in &d.body.points {
                    assert!(known.contains(&p.tsid), "data before its metadata: {p:?}");
                }
                if stamps.last() != Some(&d.body.logical_timestamp_ms) {
                    stamps.push(d.body.logical_timestamp_ms);
                }
            }
            ServerMessage::Control(c) if c.is_terminal() => panic!("{channel} ended: {c:?}"),
            ServerMessage::Error(e) => panic!("{channel} failed: {e:?}"),
            _ => {}
        }
    }
    stamps
}

/// The close code the socket ends with (frames before it are skipped).
async fn close_code(client: &mut WsClient) -> Option<u16> {
    loop {
        match client.next().await {
            Received::Message { .. } => continue,
            Received::Closed { code, .. } => return code,
            Received::Dropped => panic!("expected a close frame, the socket was dropped"),
        }
    }
}

fn execute(channel: &str, program: &str) -> Json {
    json!({ "type": "execute", "channel": channel, "program": program, "resolution": 1000 })
}

#[tokio::test]
async fn websocket_clients_share_one_job_a_stop_detaches_one_and_reconnects_stay_hidden() {
    let gateway = spawn_gateway(test_settings()).await;
    let url = ws_url(&gateway);
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = WsClient::connect_authenticated(&url).await;
        // Channel names are per socket: all three use the same one.
        client.send(execute("ch-1", LIVE)).await;
        clients.push(client);
        let _ = i;
    }
    let mut handles = Vec::new();
    for client in &mut clients {
        handles.push(job_start(client, "ch-1").await);
    }
    assert!(handles.iter().all(|h| h == &handles[0]), "one job: {handles:?}");
    assert_eq!(sim_jobs(&gateway, LIVE).await.len(), 1, "one upstream job for three clients");
    let mut known = vec![std::collections::BTreeSet::new(); 3];
    for (client, known) in clients.iter_mut().zip(known.iter_mut()) {
        data_timestamps_known(client, "ch-1", 1, known).await;
    }

    // A stop from the first client ends its channel only.
    let reason = "client 0 is done";
    clients[0].send(json!({ "type": "stop", "handle": handles[0], "reason": reason })).await;
    let ended = clients[0].collect_channel("ch-1").await;
    let Some(ServerMessage::Control(last)) = ended.last() else { panic!("{ended:?}") };
    match last.kind() {
        ControlEvent::ChannelAbort { state, reason: why } => assert_eq!((state, why), ("STOPPED", reason)),
        other => panic!("expected CHANNEL_ABORT, got {other:?}"),
    }
    for (client, known) in clients.iter_mut().zip(known.iter_mut()).skip(1) {
        data_timestamps_known(client, "ch-1", 2, known).await;
    }
    assert_eq!(sim_jobs(&gateway, LIVE).await.len(), 1, "the job still runs for the others");

    // Every upstream socket dies: the others' streams continue, without duplicates.
    let before: Vec<i64> = data_timestamps_known(&mut clients[1], "ch-1", 1, &mut known[1]).await;
    let killed = gateway.http.post(gateway.url("/_sim/connections/kill")).send().await.unwrap();
    assert!(killed.status().is_success());
    let after = data_timestamps_known(&mut clients[1], "ch-1", 4, &mut known[1]).await;
    let mut all = before.clone();
    all.extend(&after);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "strictly increasing, no duplicates: {all:?}");
    data_timestamps_known(&mut clients[2], "ch-1", 2, &mut known[2]).await;
    eventually("the job was re-executed upstream", || {
        let gateway = &gateway;
        async move { sim_jobs(gateway, LIVE).await.len() == 1 }
    })
    .await;

    // When every client has gone, the job stops after the linger.
    drop(clients);
    eventually("the job stops after its last client", || {
        let gateway = &gateway;
        async move { sim_jobs(gateway, LIVE).await.is_empty() }
    })
    .await;
    gateway.stop().await;
}

#[tokio::test]
async fn sse_subscribers_and_websocket_clients_of_one_program_share_the_job() {
    let gateway = spawn_gateway(test_settings()).await;
    let program = "data('memory.utilization').max().publish('shared')";
    let mut sse =
        gateway.sse(&format!("/computations/stream?program={}&resolution=1000", query_value(program)), None).await;
    sse.until_data(1).await;
    let mut client = WsClient::connect_authenticated(&ws_url(&gateway)).await;
    client.send(execute("R0", program)).await;
    job_start(&mut client, "R0").await;
    data_timestamps(&mut client, "R0", 2).await;
    assert_eq!(sim_jobs(&gateway, program).await.len(), 1, "SSE and websocket share one upstream job");
    sse.until_data(1).await;
    gateway.stop().await;
}

#[tokio::test]
async fn a_bounded_query_ends_with_end_of_channel_and_compress_gives_gzip_json_in_binary() {
    let gateway = spawn_gateway(test_settings()).await;
    let mut client = WsClient::connect_authenticated(&ws_url(&gateway)).await;
    let stop = START + 5 * 1000;
    let request = json!({
        "type": "execute", "channel": "channel-abcdefgh", "program": TWO_BLOCKS,
        "start": START, "stop": stop, "resolution": 1000, "compress": true,
    });
    client.send(request).await;
    let mut data_frames = 0;
    let mut stamps = std::collections::BTreeSet::new();
    let last = loop {
        let Received::Message { message, binary_flags } = client.next().await else { panic!("connection ended") };
        if matches!(*message, ServerMessage::KeepAlive { .. }) {
            continue;
        }
        assert_eq!(message.channel(), Some("channel-abcdefgh"));
        match &*message {
            ServerMessage::Data(d) => {
                data_frames += 1;
                stamps.insert(d.body.logical_timestamp_ms);
                assert!(binary_flags.is_some_and(|f| f & 0x02 == 0), "data is binary");
            }
            _ => assert_eq!(binary_flags, Some(0x03), "gzip JSON-in-binary under compress: {message:?}"),
        }
        if let ServerMessage::Control(c) = &*message
            && c.is_terminal()
        {
            break c.event.clone();
        }
    };
    assert_eq!(last, "END_OF_CHANNEL");
    assert_eq!(stamps.into_iter().collect::<Vec<_>>(), (0..5).map(|i| START + i * 1000).collect::<Vec<_>>());
    assert_eq!(data_frames, 10, "one data frame per publish block per timestamp");
    gateway.stop().await;
}

#[tokio::test]
async fn a_program_error_is_an_error_message_with_line_and_column() {
    let gateway = spawn_gateway(test_settings()).await;
    let mut client = WsClient::connect_authenticated(&ws_url(&gateway)).await;
    client.send(execute("bad", "A = data('x').publish()\nB = dta('y')")).await;
    let messages = client.collect_channel("bad").await;
    let Some(ServerMessage::Error(e)) = messages.last() else { panic!("{messages:?}") };
    assert_eq!(e.code(), Some(400));
    assert_eq!(e.error_type(), Some("ANALYTICS_PROGRAM_NAME_ERROR"));
    assert_eq!((e.line(), e.column()), (Some(2), Some(5)));
    // The socket still works.
    client.send(execute("good", LIVE)).await;
    job_start(&mut client, "good").await;
    gateway.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_typed_error_or_a_close_and_never_disturbs_other_clients() {
    let mut settings = test_settings();
    settings.websocket.max_channels_per_socket = 2;
    settings.websocket.max_message_bytes = 64 * 1024;
    settings.websocket.keepalive_interval = Duration::from_millis(200);
    let gateway = spawn_gateway(settings).await;
    let url = ws_url(&gateway);
    let mut bystander = WsClient::connect_authenticated(&url).await;
    bystander.send(execute("ok", LIVE)).await;
    job_start(&mut bystander, "ok").await;

    // Requests before authenticate close with 4401.
    let mut client = WsClient::connect(&url).await;
    client.send(execute("ch", LIVE)).await;
    assert_eq!(close_code(&mut client).await, Some(4401));
    let mut client = WsClient::connect(&url).await;
    client.send(json!({ "type": "authenticate", "token": "" })).await;
    assert_eq!(close_code(&mut client).await, Some(4401));

    // Errors on a named channel; the socket stays open.
    let mut client = WsClient::connect_authenticated(&url).await;
    let refusals = [
        json!({ "type": "execute", "channel": "c1" }),
        json!({ "type": "warp", "channel": "c2" }),
        json!({ "type": "execute", "channel": "a-name-longer-than-16", "program": LIVE }),
        json!({ "type": "execute", "channel": "c3", "program": "" }),
        json!({ "type": "attach", "channel": "c4", "handle": "AAAAAAAAAAE" }),
    ];
    for request in refusals {
        let channel = request["channel"].as_str().unwrap().to_owned();
        client.send(request).await;
        let messages = client.collect_channel(&channel).await;
        assert!(matches!(messages.last(), Some(ServerMessage::Error(_))), "{channel}: {messages:?}");
    }
    // The channel limit.
    client.send(execute("x1", LIVE)).await;
    client.send(execute("x2", LIVE)).await;
    client.send(execute("x3", LIVE)).await;
    let refused = client.collect_channel("x3").await;
    let Some(ServerMessage::Error(e)) = refused.last() else { panic!("{refused:?}") };
    assert_eq!((e.code(), e.error_type()), (Some(429), Some("TOO_MANY_CHANNELS")));
    // A KEEP_ALIVE comes on its own.
    loop {
        if let Received::Message { message, .. } = client.next().await
            && matches!(*message, ServerMessage::KeepAlive { .. })
        {
            break;
        }
    }

    // Unreadable frames that name no channel or an open one, reusing an open channel, binary
    // requests and oversized frames close.
    let reuse = json!({ "type": "execute", "channel": "open", "program": LIVE }).to_string();
    let broken = json!({ "type": "execute", "channel": "open" }).to_string();
    for opened in [reuse, broken] {
        let mut client = WsClient::connect_authenticated(&url).await;
        client.send(execute("open", LIVE)).await;
        job_start(&mut client, "open").await;
        client.send_raw(Message::Text(opened.into())).await;
        assert_eq!(close_code(&mut client).await, Some(4400));
    }
    for (frame, code) in [
        (Message::Text("{not json".into()), 4400),
        (Message::Binary(vec![1, 2, 3].into()), 4400),
        (Message::Text("x".repeat(100 * 1024).into()), 1009),
    ] {
        let mut client = WsClient::connect_authenticated(&url).await;
        client.send_raw(frame).await;
        assert_eq!(close_code(&mut client).await, Some(code));
    }
    data_timestamps(&mut bystander, "ok", 2).await;
    gateway.stop().await;
}

#[tokio::test]
async fn with_api_keys_the_token_is_an_api_key() {
    let mut settings: Settings = test_settings();
    let key = "a-key-of-at-least-16-chars";
    settings.auth.api_keys = vec![secrecy::SecretString::from(key)];
    let gateway = spawn_gateway(settings).await;
    let url = ws_url(&gateway);
    let mut client = WsClient::connect(&url).await;
    client.send(json!({ "type": "authenticate", "token": "not-the-key" })).await;
    assert_eq!(close_code(&mut client).await, Some(4401));
    let mut client = WsClient::connect(&url).await;
    client.send(json!({ "type": "authenticate", "token": key })).await;
    assert!(matches!(client.next_message().await, ServerMessage::Authenticated(_)));
    gateway.stop().await;
}

/// A client that stops reading while a large bounded query streams to it is disconnected (its
/// hub queue overflows, as for a slow SSE subscriber), and another client's live stream keeps
/// its pace meanwhile.
#[tokio::test]
async fn a_websocket_client_that_does_not_read_is_disconnected_and_delays_no_one() {
    let mut settings = test_settings();
    settings.limits.subscriber_queue = 8;
    settings.websocket.outbound_queue = 4;
    settings.websocket.write_timeout = Duration::from_secs(3);
    let gateway = spawn_gateway(settings).await;
    let url = ws_url(&gateway);
    let mut fast = WsClient::connect_authenticated(&url).await;
    fast.send(execute("live", LIVE)).await;
    job_start(&mut fast, "live").await;

    let mut slow = WsClient::connect_small_buffer(&url).await;
    slow.send(json!({ "type": "authenticate", "token": "t" })).await;
    // 167 series for 5000 timestamps: about 14 MB of data frames, far beyond the socket buffers.
    let big = json!({
        "type": "execute", "channel": "big", "program": "data('*').publish()",
        "start": START, "stop": START + 5000 * 1000, "resolution": 1000,
    });
    slow.send(big).await;
    // The live stream keeps a one-per-second pace while the slow client is stuck.
    let started = std::time::Instant::now();
    let stamps = data_timestamps(&mut fast, "live", 4).await;
    assert!(stamps.windows(2).all(|w| w[1] - w[0] == 1000), "{stamps:?}");
    assert!(started.elapsed() < Duration::from_secs(8), "the live stream was delayed: {:?}", started.elapsed());
    eventually("the slow client was dropped", || {
        let gateway = &gateway;
        async move {
            let metrics = gateway.http.get(gateway.url("/metrics")).send().await.unwrap().text().await.unwrap();
            metrics.lines().any(|l| l.starts_with("sfgw_subscribers_dropped_total{") && !l.trim_end().ends_with(" 0"))
        }
    })
    .await;
    // Reading now: what was buffered, then the end of the socket, never END_OF_CHANNEL.
    loop {
        match slow.next().await {
            Received::Message { message, .. } => {
                if let ServerMessage::Control(c) = *message {
                    assert!(!c.is_terminal(), "the slow client got its whole stream: {c:?}");
                }
            }
            Received::Closed { code, .. } => {
                assert_eq!(code, Some(1008));
                break;
            }
            Received::Dropped => break,
        }
    }
    gateway.stop().await;
}

#[tokio::test]
async fn a_gateway_shutdown_aborts_every_channel_then_closes_the_socket() {
    let gateway = spawn_gateway(test_settings()).await;
    let mut client = WsClient::connect_authenticated(&ws_url(&gateway)).await;
    client.send(execute("a", LIVE)).await;
    client.send(execute("b", "data('memory.utilization').max().publish()")).await;
    let mut started = std::collections::BTreeSet::new();
    while started.len() < 2 {
        if let ServerMessage::Control(c) = client.next_message().await
            && matches!(c.kind(), ControlEvent::JobStart { .. })
        {
            started.insert(c.channel.clone());
        }
    }
    let stopping = tokio::spawn(gateway.stop());
    let mut aborted = std::collections::BTreeSet::new();
    let code = loop {
        match client.next().await {
            Received::Message { message, .. } => {
                if let ServerMessage::Control(c) = *message
                    && let ControlEvent::ChannelAbort { state, .. } = c.kind()
                {
                    assert_eq!(state, "STOPPED");
                    aborted.insert(c.channel.clone());
                }
            }
            Received::Closed { code, .. } => break code,
            Received::Dropped => panic!("dropped without a close frame"),
        }
    };
    assert_eq!(code, Some(1001));
    assert_eq!(aborted.into_iter().collect::<Vec<_>>(), ["a", "b"]);
    stopping.await.unwrap();
}

/// Pass-through tenancy: the authenticate token is the client's SignalFx token. Clients with
/// the same token share a job; another token gets its own and cannot attach to the first.
#[tokio::test]
async fn with_pass_through_tenancy_the_token_names_the_tenant() {
    let mut settings = test_settings();
    settings.tenancy.pass_through = true;
    let gateway = spawn_gateway(settings).await;
    let url = ws_url(&gateway);
    let mut clients = Vec::new();
    for token in ["token-a", "token-a", "token-b"] {
        let mut client = WsClient::connect(&url).await;
        client.send(json!({ "type": "authenticate", "token": token })).await;
        assert!(matches!(client.next_message().await, ServerMessage::Authenticated(_)));
        client.send(execute("c", LIVE)).await;
        clients.push(client);
    }
    let mut handles = Vec::new();
    for client in &mut clients {
        handles.push(job_start(client, "c").await);
    }
    assert_eq!(handles[0], handles[1], "the same token shares");
    assert_ne!(handles[0], handles[2], "another token does not");
    assert_eq!(sim_jobs(&gateway, LIVE).await.len(), 2);
    clients[2].send(json!({ "type": "attach", "channel": "peek", "handle": handles[0] })).await;
    let refused = clients[2].collect_channel("peek").await;
    let Some(ServerMessage::Error(e)) = refused.last() else { panic!("{refused:?}") };
    assert_eq!(e.code(), Some(404));
    clients[1].send(json!({ "type": "attach", "channel": "again", "handle": handles[0] })).await;
    assert_eq!(job_start(&mut clients[1], "again").await, handles[0], "the same tenant may attach");
    gateway.stop().await;
}
