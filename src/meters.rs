//! The local meter list (`list_meters`): meters with their points and
//! health, paged by id so a site with thousands of meters never floods an
//! assistant's context. Each meter is judged by the one meter definition
//! ([`MeterDefinition`]): a stored row the collector could not read is listed
//! with its `config_error`, never a failure of the listing.
//!
//! Guarantees: a page holds at most [`MAX_LIMIT`] meters and its meters'
//! JSON stays under [`MAX_PAGE_BYTES`] bytes (a page stops early, with a
//! cursor, rather than pass it); filters (tenant, name substring, ids,
//! health) are bound parameters of one fixed statement.

use serde::Serialize;

use crate::config::Side;
use crate::db::{Databases, DbError};
use crate::meter_def::{DefinitionError, MeterDefinition};

/// The largest page `list_meters` returns.
pub const MAX_LIMIT: i64 = 500;
/// The page size when none is asked for.
pub const DEFAULT_LIMIT: i64 = 50;
/// A page's meters never take more JSON than this (bytes), so the whole
/// result stays under 40 KB.
pub const MAX_PAGE_BYTES: usize = 36 * 1024;
/// Most ids one `ids` filter may hold.
pub const MAX_IDS: usize = 1000;
/// Longest `name_contains`.
pub const MAX_NAME_FILTER: usize = 200;

/// Which meters `list_meters` lists (all filters combine with AND).
#[derive(Debug, Clone, Default)]
pub struct MeterFilter {
    /// Only collected meters.
    pub active_only: bool,
    /// Only this tenant's meters.
    pub tenant_id: Option<i64>,
    /// Only meters whose name contains this (case-insensitive).
    pub name_contains: Option<String>,
    /// Only these ids (empty: all).
    pub ids: Vec<i64>,
    /// Only `failing` (last collection failed), `ok` (it succeeded) or
    /// `never` (never collected) meters.
    pub health: Option<String>,
    /// Leave the points out (`point_count` only).
    pub compact: bool,
}

/// A bad `list_meters` argument.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// `limit` out of range.
    #[error("limit must be between 1 and {MAX_LIMIT}, got {0}")]
    Limit(i64),
    /// A filter is malformed.
    #[error("invalid {0}")]
    Filter(String),
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
    /// Configured points: `[{"name", "object", "property"?}]`; left out in
    /// the compact form; `null` when the stored document cannot be read as
    /// JSON (see `config_error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<serde_json::Value>,
    /// How many points are configured.
    pub point_count: usize,
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

/// Lists the meters that pass `filter` with id greater than the cursor's,
/// up to `limit` and [`MAX_PAGE_BYTES`].
///
/// Fails on an out-of-range limit, a bad filter, a foreign cursor, or a
/// database error.
pub async fn list_meters(
    db: &Databases,
    filter: &MeterFilter,
    limit: Option<i64>,
    cursor: Option<&str>,
) -> Result<MeterPage, ListError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ListError::Limit(limit));
    }
    if let Some(h) = filter.health.as_deref() {
        if !["failing", "ok", "never"].contains(&h) {
            return Err(ListError::Filter(format!(
                "health {h:?}: use failing, ok or never"
            )));
        }
    }
    if filter.ids.len() > MAX_IDS {
        return Err(ListError::Filter(format!(
            "ids: at most {MAX_IDS}, got {}",
            filter.ids.len()
        )));
    }
    if filter
        .name_contains
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_FILTER)
    {
        return Err(ListError::Filter(format!(
            "name_contains: at most {MAX_NAME_FILTER} characters"
        )));
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
    const WHERE: &str = "(m.active OR NOT $2)
               AND ($3::bigint IS NULL OR m.tenant_id = $3)
               AND ($4::text IS NULL OR strpos(lower(m.name), lower($4)) > 0)
               AND (cardinality($5::bigint[]) = 0 OR m.id = ANY($5))
               AND ($6::text IS NULL
                    OR ($6 = 'failing' AND h.consecutive_failures > 0)
                    OR ($6 = 'ok' AND h.consecutive_failures = 0)
                    OR ($6 = 'never' AND h.meter_id IS NULL))";
    let rows = c
        .query(
            &format!(
                "SELECT m.id, m.name, m.site_id, m.tenant_id, m.device_instance, m.address, m.points::text,
                    m.active, h.meter_id IS NOT NULL, h.last_success_at, h.last_error,
                    coalesce(h.consecutive_failures, 0)
             FROM meters m LEFT JOIN meter_health h ON h.meter_id = m.id
             WHERE m.id > $1 AND {WHERE}
             ORDER BY m.id LIMIT $7"
            ),
            &[
                &after,
                &filter.active_only,
                &filter.tenant_id,
                &filter.name_contains,
                &filter.ids,
                &filter.health,
                &limit,
            ],
        )
        .await
        .map_err(q)?;
    let mut meters: Vec<MeterInfo> = Vec::new();
    let mut bytes = 0usize;
    for r in &rows {
        let m = meter_info(r, filter.compact).map_err(q)?;
        let size = serde_json::to_vec(&m).map_or(0, |v| v.len() + 1);
        if bytes + size > MAX_PAGE_BYTES && !meters.is_empty() {
            break;
        }
        bytes += size;
        meters.push(m);
    }
    let last = meters.last().map(|m| m.id).unwrap_or(after);
    let remaining: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM meters m LEFT JOIN meter_health h ON h.meter_id = m.id
                 WHERE m.id > $1 AND {WHERE}"
            ),
            &[
                &last,
                &filter.active_only,
                &filter.tenant_id,
                &filter.name_contains,
                &filter.ids,
                &filter.health,
            ],
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
fn meter_info(r: &tokio_postgres::Row, compact: bool) -> Result<MeterInfo, tokio_postgres::Error> {
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
        point_count: points.as_array().map_or(0, Vec::len),
        points: (!compact).then_some(points),
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
