//! The local meter list (`list_meters`): meters with their points and
//! health, paged by id so a site with thousands of meters never floods an
//! assistant's context. Each meter is judged by the one meter definition
//! ([`MeterDefinition`]): a stored row the collector could not read is listed
//! with its `config_error`, never a failure of the listing.

use serde::Serialize;

use crate::config::Side;
use crate::db::{Databases, DbError};
use crate::meter_def::{DefinitionError, MeterDefinition};

/// The largest page `list_meters` returns.
pub const MAX_LIMIT: i64 = 500;
/// The page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;

/// A bad `list_meters` argument.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// `limit` out of range.
    #[error("limit must be between 1 and {MAX_LIMIT}, got {0}")]
    Limit(i64),
    /// `cursor` is not one this tool returned.
    #[error("cursor {0:?} is not valid: pass the next_cursor of a previous list_meters result, or omit it")]
    Cursor(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A meter's collection health.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MeterHealth {
    /// Last successful collection (RFC 3339).
    pub last_success_at: Option<String>,
    /// Last error, if the last collection failed.
    pub last_error: Option<String>,
    /// Failed collections in a row.
    pub consecutive_failures: i32,
}

/// One meter as configured locally.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MeterInfo {
    /// Meter id (same as the remote's).
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Site it belongs to.
    pub site_id: Option<String>,
    /// Tenant billed for it.
    pub tenant_id: Option<i64>,
    /// BACnet device instance.
    pub device_instance: i32,
    /// BACnet/IP `host:port`.
    pub address: String,
    /// Configured points: `[{"name", "object", "property"?}]`; `null` when
    /// the stored document cannot be read as JSON (see `config_error`).
    pub points: serde_json::Value,
    /// Why the collector cannot read this meter as configured (the one
    /// meter definition's verdict, the same words collect would record);
    /// `null` when the definition is usable.
    pub config_error: Option<String>,
    /// Whether it is collected.
    pub active: bool,
    /// Collection health; `null` if never collected.
    pub health: Option<MeterHealth>,
}

/// One page of meters.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MeterPage {
    /// The meters, by id.
    pub meters: Vec<MeterInfo>,
    /// Pass this as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// Meters after this page (not listed here).
    pub remaining: i64,
}

/// Lists meters with id greater than the cursor's, up to `limit`.
///
/// Fails on an out-of-range limit, a foreign cursor, or a database error.
pub async fn list_meters(
    db: &Databases,
    active_only: bool,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<MeterPage, ListError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ListError::Limit(limit));
    }
    let after: i64 = match cursor {
        None => i64::MIN,
        Some(c) => c
            .strip_prefix("after:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ListError::Cursor(c.to_string()))?,
    };
    let c = db.local().await?;
    let q = |e: tokio_postgres::Error| DbError::query(Side::Local, &e);
    let rows = c
        .query(
            "SELECT m.id, m.name, m.site_id, m.tenant_id, m.device_instance, m.address, m.points::text,
                    m.active, h.meter_id IS NOT NULL, h.last_success_at, h.last_error,
                    coalesce(h.consecutive_failures, 0)
             FROM meters m LEFT JOIN meter_health h ON h.meter_id = m.id
             WHERE m.id > $1 AND (m.active OR NOT $2)
             ORDER BY m.id LIMIT $3",
            &[&after, &active_only, &limit],
        )
        .await
        .map_err(q)?;
    let meters: Vec<MeterInfo> = rows
        .iter()
        .map(meter_info)
        .collect::<Result<_, _>>()
        .map_err(q)?;
    let last = meters.last().map(|m| m.id).unwrap_or(after);
    let remaining: i64 = c
        .query_one(
            "SELECT count(*) FROM meters WHERE id > $1 AND (active OR NOT $2)",
            &[&last, &active_only],
        )
        .await
        .map_err(q)?
        .try_get(0)
        .map_err(q)?;
    Ok(MeterPage {
        next_cursor: (remaining > 0).then(|| format!("after:{last}")),
        meters,
        remaining,
    })
}

/// One row of the `list_meters` query, every column read fallibly; a
/// stored definition the collector cannot use is flagged, never a failure
/// of the listing.
fn meter_info(r: &tokio_postgres::Row) -> Result<MeterInfo, tokio_postgres::Error> {
    let device_instance: i32 = r.try_get(4)?;
    let address: String = r.try_get(5)?;
    let points_text: String = r.try_get(6)?;
    let (points, config_error) = match serde_json::from_str(&points_text) {
        Ok(points) => {
            let verdict = MeterDefinition::parse(device_instance.into(), &address, &points).err();
            (points, verdict.map(|e| e.to_string()))
        }
        Err(e) => (
            serde_json::Value::Null,
            Some(DefinitionError::PointsJson(e.to_string()).to_string()),
        ),
    };
    Ok(MeterInfo {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        site_id: r.try_get(2)?,
        tenant_id: r.try_get(3)?,
        device_instance,
        address,
        points,
        config_error,
        active: r.try_get(7)?,
        health: if r.try_get::<_, bool>(8)? {
            Some(MeterHealth {
                last_success_at: crate::status::ts(r.try_get(9)?),
                last_error: r.try_get(10)?,
                consecutive_failures: r.try_get(11)?,
            })
        } else {
            None
        },
    })
}
