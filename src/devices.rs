//! The device engines behind `discover_devices` / `metersync discover` and
//! `describe_device` / `metersync describe`: each takes the app's BACnet
//! client ([`App::bacnet`], bound on first use) and the running BACnet
//! timing, then applies the one set of rules in [`crate::bacnet::discover`]
//! and [`crate::bacnet::describe::describe`]. Front ends pass arguments only.

use crate::app::App;
use crate::bacnet::describe::{DescribeError, DeviceDescription};
use crate::bacnet::{DiscoverError, Discovery};

/// Who-Is to `address` (default broadcast), waiting `timeout_ms` (default
/// 3000, 100 to 60000): the devices by instance, at most
/// [`crate::bacnet::DISCOVER_CAP`] listed.
///
/// Fails on a bad argument, when BACNET_BIND cannot be bound, or when the
/// Who-Is cannot be sent.
pub async fn discover(
    app: &App,
    address: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<Discovery, DiscoverError> {
    let client = app.bacnet().await?;
    crate::bacnet::discover(client.as_ref(), address, timeout_ms).await
}

/// One page of the objects of the device at `address`, waiting
/// BACNET_TIMEOUT_MS for its Who-Is answer when `device_instance` is not
/// given.
///
/// Fails on a bad argument, when BACNET_BIND cannot be bound, when no
/// device answers, or when the device cannot be read.
pub async fn describe(
    app: &App,
    address: &str,
    device_instance: Option<u32>,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<DeviceDescription, DescribeError> {
    let client = app.bacnet().await?;
    crate::bacnet::describe::describe(
        client.as_ref(),
        address,
        device_instance,
        limit,
        cursor,
        app.config.bacnet_timeout,
    )
    .await
}
