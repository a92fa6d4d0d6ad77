//! Simulated meters defined on a remote: the setup the daemon, outage and
//! fleet tests share.

use metersync::bacnet::sim::{standard_points_json, SimDeviceConfig, Simulator};

/// Starts one simulated device per instance on 127.0.0.1 and defines each on
/// `remote` as meter 1, 2, ... (named `m0`, `m1`, ..., the standard points,
/// `site_id` when given). Keep the simulator alive for the test's length.
pub async fn simulated_meters_on(
    remote: &tokio_postgres::Client,
    instances: &[u32],
    site_id: Option<&str>,
) -> anyhow::Result<Simulator> {
    let mut configs = Vec::with_capacity(instances.len());
    for i in instances {
        configs.push(SimDeviceConfig::new(*i, "127.0.0.1:0".parse()?));
    }
    let sim = Simulator::start(configs).await?;
    for (i, d) in sim.devices().iter().enumerate() {
        remote
            .execute(
                "INSERT INTO meters (id, site_id, name, device_instance, address, points) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &(i as i64 + 1),
                    &site_id,
                    &format!("m{i}"),
                    &(d.instance() as i32),
                    &d.addr().to_string(),
                    &standard_points_json(),
                ],
            )
            .await?;
    }
    Ok(sim)
}
