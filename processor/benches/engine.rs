//! Criterion micro-benchmarks of Waymark's hot paths, one group per layer:
//!
//! * `engine`: one event through [`Engine::apply`] (and the outputs it emits), on a loadgen
//!   trace of the reference journey, customer states kept in memory;
//! * `state`: the write-back cache over RocksDB — a hit, a miss that reads the store, and a
//!   flush of dirty customers in one batch;
//! * `codec`: Avro decode of a customer event, encode of a command and a journey event.
//!
//! `cargo bench -p waymark --bench engine` (or `make bench-micro`); compare runs on the same
//! machine, not absolute numbers across machines.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use waymark::codec::{self, InputFormat};
use waymark::engine::{CustomerState, Engine};
use waymark::journey::JourneySet;
use waymark::loadgen::{LoadgenArgs, generate};
use waymark::model::{CustomerEvent, Output};
use waymark::state::{RocksOptions, RocksStore, StateCache, encode_value};

const LATENESS: i64 = 300_000;

fn reference() -> Arc<Engine> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/journeys/b2b-onboarding.yaml");
    Arc::new(Engine::new(
        JourneySet::load(&path).expect("the reference journey loads"),
    ))
}

fn trace(customers: u64) -> Vec<CustomerEvent> {
    let args = LoadgenArgs {
        customers,
        ..LoadgenArgs::default()
    };
    generate(&args)
        .expect("loadgen arguments are valid")
        .collect()
}

/// Runs `events` through the engine as the runtime does: per customer state, the watermark
/// trailing the newest event time by the allowed lateness.
fn run_all(engine: &Engine, events: &[CustomerEvent], out: &mut Vec<Output>) -> usize {
    let mut states: HashMap<&str, CustomerState> = HashMap::new();
    let mut watermark = i64::MIN;
    let mut emitted = 0;
    for ev in events {
        let state = states.entry(ev.customer_id.as_str()).or_default();
        engine.apply(state, &ev.customer_id, ev, watermark, out);
        watermark = watermark.max(ev.occurred_at - LATENESS);
        emitted += out.len();
        out.clear();
    }
    // Fire everything still due, as a caught-up partition does.
    for (id, state) in states.iter_mut() {
        engine.advance(state, id, i64::MAX / 2, out);
    }
    emitted + out.len()
}

fn engine(c: &mut Criterion) {
    let engine = reference();
    let events = trace(2_000);
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("apply a loadgen trace (2000 customers)", |b| {
        let mut out = Vec::new();
        b.iter(|| run_all(&engine, &events, &mut out))
    });
    group.finish();
}

fn state(c: &mut Criterion) {
    let engine = reference();
    let events = trace(1_000);
    let mut states: HashMap<String, CustomerState> = HashMap::new();
    let mut out = Vec::new();
    for ev in &events {
        let s = states.entry(ev.customer_id.clone()).or_default();
        engine.apply(s, &ev.customer_id, ev, i64::MIN, &mut out);
    }
    let ids: Vec<String> = states.keys().cloned().collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = RocksStore::open(dir.path(), &RocksOptions::default()).expect("RocksDB opens");
    let mut cache: StateCache<CustomerState> = StateCache::new(ids.len() * 2);
    for (id, s) in &states {
        *cache
            .get_or_insert_with(&store, id, CustomerState::default)
            .unwrap() = s.clone();
    }
    cache.flush(&mut store).unwrap();

    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function("cache hit: get_mut of every customer", |b| {
        b.iter(|| {
            for id in &ids {
                std::hint::black_box(cache.get_mut(&store, id).unwrap());
            }
        })
    });
    group.bench_function(
        "cache miss: read and decode every customer from RocksDB",
        |b| {
            b.iter_batched(
                || StateCache::<CustomerState>::new(ids.len() * 2),
                |mut cold| {
                    for id in &ids {
                        std::hint::black_box(cold.get(&store, id).unwrap());
                    }
                },
                BatchSize::LargeInput,
            )
        },
    );
    group.bench_function("encode every customer's record", |b| {
        b.iter(|| {
            for (id, s) in &states {
                std::hint::black_box(encode_value(id, s).unwrap());
            }
        })
    });
    group.bench_function("flush: encode and write every customer in one batch", |b| {
        b.iter(|| {
            for id in &ids {
                cache.mark_dirty(id);
            }
            cache.flush(&mut store).unwrap()
        })
    });
    group.finish();
    drop(store);
}

fn codec(c: &mut Criterion) {
    let engine = reference();
    let events = trace(500);
    let avro: Vec<Vec<u8>> = events
        .iter()
        .map(|e| codec::encode_customer_event(e).unwrap())
        .collect();
    let mut out = Vec::new();
    run_all(&engine, &events, &mut out);
    let mut outputs = Vec::new();
    {
        let mut states: HashMap<&str, CustomerState> = HashMap::new();
        for ev in &events {
            let s = states.entry(ev.customer_id.as_str()).or_default();
            engine.apply(s, &ev.customer_id, ev, i64::MIN, &mut outputs);
        }
        for (id, s) in states.iter_mut() {
            engine.advance(s, id, i64::MAX / 2, &mut outputs);
        }
    }
    let commands: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::Command(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let journey_events: Vec<_> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::JourneyEvent(e) => Some(e.clone()),
            _ => None,
        })
        .collect();

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(avro.len() as u64));
    group.bench_function("decode CustomerEvent (Avro)", |b| {
        b.iter(|| {
            for bytes in &avro {
                std::hint::black_box(
                    codec::decode_customer_event(bytes, InputFormat::Avro).unwrap(),
                );
            }
        })
    });
    group.bench_function(
        "decode CustomerEvent (Avro, through apache-avro's Value)",
        |b| {
            b.iter(|| {
                for bytes in &avro {
                    std::hint::black_box(
                        codec::decode_validated::<CustomerEvent>(
                            bytes,
                            codec::Framing::Raw,
                            &codec::InMemorySchemas::new(),
                        )
                        .unwrap(),
                    );
                }
            })
        },
    );
    group.throughput(Throughput::Elements(commands.len() as u64));
    group.bench_function("encode InterventionCommand (Avro)", |b| {
        b.iter(|| {
            for c in &commands {
                std::hint::black_box(codec::encode_command(c).unwrap());
            }
        })
    });
    group.throughput(Throughput::Elements(journey_events.len() as u64));
    group.bench_function("encode JourneyEvent (Avro)", |b| {
        b.iter(|| {
            for e in &journey_events {
                std::hint::black_box(codec::encode_journey_event(e).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = engine, state, codec
}
criterion_main!(benches);
