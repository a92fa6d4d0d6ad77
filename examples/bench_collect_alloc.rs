//! Heap allocations of the collector's per-meter read path, per point and
//! run: [`MeterDefinition::parse_text`] (the stored definition checked each
//! run) then [`read_meter`] with the meter cache warm, as the collector's
//! `read_one` does, against an in-memory client (no socket, so the figures
//! are the read path's own, not the network's). 200 six-point meters.
//!
//! Printed in the same run: the allocations of the definition parse alone
//! (the anchor), of parse + read, and their difference (what read_meter and
//! the readings it returns cost per point). A counting global allocator
//! counts every allocation of the measured loop.
//!
//! Run: `cargo run --example bench_collect_alloc`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metersync::bacnet::{
    BacnetClient, BacnetError, BoxFuture, Device, DeviceAddress, ErrorCode, IAm, MeterCache,
    ObjectId, PropertyId, PropertyRef, PropertyResult, Value,
};
use metersync::meter_def::MeterDefinition;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const METERS: u32 = 200;
const POINTS: &str = r#"[{"name": "energy_kwh", "object": "analog-input:1"},
 {"name": "power_kw", "object": "analog-input:2"}, {"name": "voltage_v", "object": "analog-input:3"},
 {"name": "current_a", "object": "analog-input:4"}, {"name": "frequency_hz", "object": "analog-input:5"},
 {"name": "power_factor", "object": "analog-input:6"}]"#;

/// Every device answers: its identity, kWh units, a value, clean flags.
struct Memory(MeterCache);

impl BacnetClient for Memory {
    fn read_properties<'a>(
        &'a self,
        device: Device,
        props: &'a [PropertyRef],
    ) -> BoxFuture<'a, Result<Vec<PropertyResult>, BacnetError>> {
        let out = props
            .iter()
            .map(|p| match p.property {
                PropertyId::OBJECT_IDENTIFIER => ObjectId::device(device.instance)
                    .map(Value::ObjectId)
                    .ok_or(ErrorCode {
                        class: ErrorCode::CLASS_OBJECT,
                        code: ErrorCode::UNKNOWN_OBJECT,
                    }),
                PropertyId::UNITS => Ok(Value::Enumerated(19)),
                PropertyId::STATUS_FLAGS => Ok(Value::BitString {
                    unused_bits: 4,
                    bytes: vec![0],
                }),
                _ => Ok(Value::Real(1.5)),
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn who_is(
        &self,
        _target: DeviceAddress,
        _range: Option<(u32, u32)>,
        _wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<IAm>, BacnetError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn read_array_element(
        &self,
        _device: Device,
        _p: PropertyRef,
        _index: u32,
    ) -> BoxFuture<'_, Result<PropertyResult, BacnetError>> {
        Box::pin(async {
            Ok(Err(ErrorCode {
                class: ErrorCode::CLASS_PROPERTY,
                code: ErrorCode::UNKNOWN_PROPERTY,
            }))
        })
    }

    fn meter_cache(&self) -> Option<&MeterCache> {
        Some(&self.0)
    }
}

fn address(i: u32) -> String {
    format!("10.0.{}.{}:47808", i / 250, i % 250)
}

/// Allocations and bytes of `f`.
async fn count<F: std::future::Future<Output = ()>>(f: F) -> (u64, u64) {
    let (a, b) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    f.await;
    (
        ALLOCS.load(Ordering::Relaxed) - a,
        BYTES.load(Ordering::Relaxed) - b,
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let client = Memory(MeterCache::default());
    let addresses: Vec<String> = (1..=METERS).map(address).collect();
    let points = u64::from(METERS) * 6;
    let read_run = || async {
        for (i, addr) in (1..=METERS).zip(&addresses) {
            let Ok(def) = MeterDefinition::parse_text(i.into(), addr, POINTS) else {
                panic!("definition {i}")
            };
            let Ok(readings) =
                metersync::bacnet::read_meter(&client, def.device(), &def.points).await
            else {
                panic!("read {i}")
            };
            assert!(readings.iter().all(|r| r.value == Some(1.5)));
        }
    };
    read_run().await; // warms the meter cache, as the first run does
    let (parse, parse_bytes) = count(async {
        for (i, addr) in (1..=METERS).zip(&addresses) {
            assert!(MeterDefinition::parse_text(i.into(), addr, POINTS).is_ok());
        }
    })
    .await;
    let (total, total_bytes) = count(read_run()).await;
    let per = |n: u64| n as f64 / points as f64;
    println!("{METERS} meters x 6 points, meter cache warm, per point and run:");
    println!(
        "  definition parse alone (anchor): {:6.2} allocations, {:7.1} bytes",
        per(parse),
        per(parse_bytes)
    );
    println!(
        "  parse + read_meter:              {:6.2} allocations, {:7.1} bytes",
        per(total),
        per(total_bytes)
    );
    println!(
        "  read_meter's own:                {:6.2} allocations, {:7.1} bytes ({:.2}x the parse)",
        per(total - parse),
        per(total_bytes - parse_bytes),
        (total - parse) as f64 / parse.max(1) as f64
    );
    Ok(())
}
