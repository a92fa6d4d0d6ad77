//! What [`super::read_meter`] learns once per meter definition and keeps:
//! that the device at the address is the configured instance, each point's
//! units, and each accumulator's scale. Every run then reads only the values
//! and their status-flags.
//!
//! Guarantees: an entry is used only for the same address, instance and
//! points (objects and properties, in order) it was learned for, so a changed
//! definition (or address) is verified and learned again; an entry older than
//! [`MAX_AGE`] (a day) is learned again too. Scales are kept as exact decimals
//! so `12,345,000 x 0.001` is `12345`, not `12345.000586`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::address::DeviceAddress;
use super::points::PointSpec;
use super::types::{ObjectId, PropertyId, Value};
use super::Device;

/// How long learned metadata is trusted before it is read again.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// An accumulator's scale as an exact decimal: `mantissa x 10^exponent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scale {
    mantissa: i64,
    exponent: i32,
}

impl Scale {
    /// integer-scale: 10^n.
    pub(crate) fn power_of_ten(n: i32) -> Self {
        Self {
            mantissa: 1,
            exponent: n,
        }
    }

    /// float-scale: the shortest decimal that reads back as the same f32 (so
    /// 0.001f32 is 1 x 10^-3, not 0.0010000000474974513). `None` if not finite.
    pub(crate) fn from_f32(f: f32) -> Option<Self> {
        if !f.is_finite() {
            return None;
        }
        let text = format!("{f:e}");
        let (digits, exp) = text.split_once('e')?;
        let exp: i32 = exp.parse().ok()?;
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let mantissa: i64 = format!("{int}{frac}").parse().ok()?;
        let decimals = i32::try_from(frac.len()).ok()?;
        Some(Self {
            mantissa,
            exponent: exp.checked_sub(decimals)?,
        })
    }

    /// `raw x scale`, exact to the last bit where the product is representable:
    /// an integer count times the mantissa, then one correctly rounded division
    /// (or multiplication) by an exact power of ten.
    pub(crate) fn apply(self, raw: &Value) -> Option<f64> {
        let int = match *raw {
            Value::Unsigned(u) => i128::from(u),
            Value::Signed(i) => i128::from(i),
            _ => return raw.as_f64().map(|v| self.apply_f64(v)),
        };
        let product = int.checked_mul(i128::from(self.mantissa))?;
        const EXACT: i128 = 1 << 53;
        if !(-EXACT..=EXACT).contains(&product) || self.exponent.abs() > 22 {
            return Some(self.apply_f64(product as f64));
        }
        let p = product as f64;
        let pow = 10f64.powi(self.exponent.abs());
        Some(if self.exponent < 0 { p / pow } else { p * pow })
    }

    fn apply_f64(self, v: f64) -> f64 {
        let m = v * self.mantissa as f64;
        if self.exponent < 0 {
            m / 10f64.powi(-self.exponent)
        } else {
            m * 10f64.powi(self.exponent)
        }
    }
}

/// What is known about one point.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PointMeta {
    /// Readable unit, if the object has units; shared by every reading of
    /// the point.
    pub unit: Option<Arc<str>>,
    /// The accumulator's scale (`Ok(None)`: not scaled), or why it cannot be used.
    pub scale: Result<Option<Scale>, String>,
}

struct Entry {
    points: Vec<(ObjectId, PropertyId)>,
    meta: Arc<[PointMeta]>,
    learned: Instant,
}

/// Learned metadata of every meter definition read so far, keyed by address and instance.
#[derive(Default)]
pub struct MeterCache {
    entries: Mutex<HashMap<(DeviceAddress, u32), Entry>>,
}

fn key_points(points: &[PointSpec]) -> Vec<(ObjectId, PropertyId)> {
    points.iter().map(|p| (p.object, p.property)).collect()
}

impl MeterCache {
    /// The metadata learned for exactly this definition, if fresh (shared,
    /// not copied: a run allocates nothing for it).
    pub(crate) fn get(&self, device: Device, points: &[PointSpec]) -> Option<Arc<[PointMeta]>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(&(device.addr, device.instance))?;
        let same = e
            .points
            .iter()
            .copied()
            .eq(points.iter().map(|p| (p.object, p.property)));
        (e.learned.elapsed() < MAX_AGE && same).then(|| e.meta.clone())
    }

    pub(crate) fn put(&self, device: Device, points: &[PointSpec], meta: Arc<[PointMeta]>) {
        self.put_learned_at(device, points, meta, Instant::now());
    }

    fn put_learned_at(
        &self,
        device: Device,
        points: &[PointSpec],
        meta: Arc<[PointMeta]>,
        learned: Instant,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(
            (device.addr, device.instance),
            Entry {
                points: key_points(points),
                meta,
                learned,
            },
        );
    }

    /// Forget one device's metadata (the next read verifies and learns again).
    pub fn forget(&self, device: Device) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&(device.addr, device.instance));
    }

    /// Meter definitions known.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is known yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_the_definition_and_expire_after_a_day() {
        let cache = MeterCache::default();
        let device = Device {
            addr: DeviceAddress::direct("127.0.0.1:47808".parse().unwrap()),
            instance: 7,
        };
        let point = |object: &str| PointSpec {
            name: "p".into(),
            object: ObjectId::parse(object).unwrap(),
            property: PropertyId::PRESENT_VALUE,
        };
        let points = vec![point("analog-input:1")];
        let meta: Arc<[PointMeta]> = Arc::new([PointMeta {
            unit: Some("kWh".into()),
            scale: Ok(None),
        }]);
        cache.put(device, &points, meta.clone());
        assert_eq!(cache.get(device, &points), Some(meta.clone()));
        // Another definition, another instance, another address: learned again.
        assert_eq!(cache.get(device, &[point("analog-input:2")]), None);
        assert_eq!(
            cache.get(
                Device {
                    instance: 8,
                    ..device
                },
                &points
            ),
            None
        );
        let moved = Device {
            addr: DeviceAddress::direct("127.0.0.2:47808".parse().unwrap()),
            ..device
        };
        assert_eq!(cache.get(moved, &points), None);
        // A day old: learned again.
        let old = Instant::now().checked_sub(MAX_AGE + Duration::from_secs(1));
        if let Some(old) = old {
            cache.put_learned_at(device, &points, meta, old);
            assert_eq!(cache.get(device, &points), None);
        }
        cache.forget(device);
        assert!(cache.is_empty());
    }

    #[test]
    fn float_scale_is_exact_decimal() {
        let s = Scale::from_f32(0.001).unwrap();
        assert_eq!(
            s,
            Scale {
                mantissa: 1,
                exponent: -3
            }
        );
        assert_eq!(s.apply(&Value::Unsigned(12_345_000)), Some(12345.0));
        // The old way: 12345000 x f64::from(0.001f32).
        assert_ne!(12_345_000f64 * f64::from(0.001f32), 12345.0);
        assert_eq!(
            Scale::from_f32(0.5).unwrap().apply(&Value::Unsigned(10)),
            Some(5.0)
        );
        assert_eq!(
            Scale::from_f32(2.5).unwrap().apply(&Value::Unsigned(3)),
            Some(7.5)
        );
        assert_eq!(
            Scale::from_f32(0.01)
                .unwrap()
                .apply(&Value::Unsigned(123_456_789)),
            Some(1_234_567.89)
        );
        assert_eq!(
            Scale::power_of_ten(-1).apply(&Value::Unsigned(777)),
            Some(77.7)
        );
        assert_eq!(
            Scale::power_of_ten(-2).apply(&Value::Unsigned(1234)),
            Some(12.34)
        );
        assert_eq!(
            Scale::power_of_ten(3).apply(&Value::Signed(-2)),
            Some(-2000.0)
        );
        assert!(Scale::from_f32(f32::NAN).is_none());
        let tiny = Scale::from_f32(1e-30)
            .unwrap()
            .apply(&Value::Unsigned(1))
            .unwrap();
        assert!((tiny - 1e-30).abs() < 1e-40, "{tiny}");
    }
}
