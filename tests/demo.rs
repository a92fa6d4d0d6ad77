//! `metersync demo` on this machine: exits 0 and its summary shows readings
//! uploaded to the throwaway remote.

mod common;

#[tokio::test]
async fn the_demo_runs_a_full_cycle_and_uploads_readings() -> anyhow::Result<()> {
    let out = common::run_cli(&common::base_env(), &["demo"], "demo").await?;
    assert!(out.ok, "demo failed: {}", out.stderr);
    assert!(
        out.stdout.contains("4 meters read, 1 failed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("32 readings uploaded"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("now holds 32 readings"),
        "{}",
        out.stdout
    );
    Ok(())
}
