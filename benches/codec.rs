//! Codec throughput: decoding a 1,000-point data frame (uncompressed and gzip), and decoding
//! plus rendering it as the gateway's one-line SSE JSON `data` event into a reused buffer.
//!
//! Run: `cargo bench --bench codec`. Throughput is reported in points (elements) per second.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use signalflow_gateway::protocol::binary::{self, ChannelName, Compression, DecodeLimits, FrameBody, HeaderVersion};
use signalflow_gateway::protocol::data::write_data_json;
use signalflow_gateway::protocol::{DataBody, DataPoint, Tsid, Value};
use std::hint::black_box;

const POINTS: usize = 1_000;

fn frame(compression: Option<Compression>) -> Vec<u8> {
    let body = DataBody {
        logical_timestamp_ms: 1_700_000_000_000,
        max_delay_ms: None,
        points: (0..POINTS as u64)
            .map(|i| DataPoint {
                tsid: Tsid(0x0000_0000_4802_5668 + i * 7919),
                // Plausible metric values: a mix of doubles with fractions and integers.
                value: if i % 4 == 0 { Value::Long(i as i64 * 13) } else { Value::Double(i as f64 * 1.37 + 0.25) },
            })
            .collect(),
    };
    binary::encode_data_frame(ChannelName::new("ch-1").unwrap(), HeaderVersion::V1, &body, compression)
}

fn codec(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let mut group = c.benchmark_group("data_frame_1000_points");
    group.throughput(Throughput::Elements(POINTS as u64));
    for (name, compression) in [("uncompressed", None), ("gzip", Some(Compression::Gzip))] {
        let bytes = frame(compression);
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| binary::decode_frame(black_box(&bytes), &limits).unwrap())
        });
        let mut out = Vec::with_capacity(64 * 1024);
        group.bench_function(format!("decode_and_render_json/{name}"), |b| {
            b.iter(|| {
                let frame = binary::decode_frame(black_box(&bytes), &limits).unwrap();
                let FrameBody::Data(body) = frame.body else { unreachable!() };
                out.clear();
                write_data_json(&mut out, body.logical_timestamp_ms, body.max_delay_ms, &body.points);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
