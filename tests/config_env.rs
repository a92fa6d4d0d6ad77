//! The configuration as a process sees it (issue 10): a malformed `.env`
//! line or a NUL in `.env` stops metersync with the line number, a non-zero
//! exit and no panic, and never prints the value; `.env` is read from the
//! working directory only; a misspelt variable and an invalid `RUST_LOG` are
//! startup errors naming the right variable; a closed stdout ends a command
//! quietly instead of panicking.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use common::*;

/// A value that must never appear in any output.
const SECRET: &str = "Zq-Env-Secret-4471";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `metersync ARGS` in `wd` with `env`; nothing listens on its database port.
async fn run_in(wd: &Path, env: &HashMap<String, String>, args: &[&str]) -> Run {
    let out = metersync_cmd(env, wd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if let Ok((mut f, _)) = log_file("config-env") {
        let _ = std::io::Write::write_all(&mut f, stderr.as_bytes());
    }
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr,
    }
}

fn env() -> HashMap<String, String> {
    let mut e = base_env();
    e.insert("POSTGRES_SYNC_HOST".into(), "127.0.0.1".into());
    e.insert("POSTGRES_SYNC_PORT".into(), free_port().to_string());
    e.insert("MAX_CONNECTION_RETRIES".into(), "0".into());
    e
}

#[track_caller]
fn assert_refused_at_line(r: &Run, line: usize) {
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(r.code.is_some_and(|c| c != 0), "exit {:?}: {all}", r.code);
    assert!(!all.contains("panicked"), "{all}");
    assert!(!all.contains(SECRET), "the value leaked: {all}");
    assert!(!all.contains("Zq"), "part of the value leaked: {all}");
    assert!(
        all.contains(&format!("line {line} of ./.env")),
        "no line number: {all}"
    );
}

#[tokio::test]
async fn malformed_env_lines_and_nuls_print_the_line_number_never_the_value() {
    let cases: Vec<(Vec<u8>, usize)> = vec![
        // An unclosed quote (dotenvy printed the whole line, twice).
        (
            format!("POSTGRES_SYNC_DB=postgres\nPOSTGRES_SYNC_PASSWORD=\"{SECRET}\n").into_bytes(),
            2,
        ),
        // A line that is only a value.
        (format!("SITE_ID=a\n\n{SECRET}\n").into_bytes(), 3),
        // Text after a closing quote.
        (
            format!("POSTGRES_SYNC_PASSWORD='{SECRET}' x\n").into_bytes(),
            1,
        ),
        // A NUL inside the value (dotenvy's set_var panicked, printing it).
        (
            format!(
                "SITE_ID=a\nPOSTGRES_SYNC_PASSWORD=Zq-Env\0{}\n",
                &SECRET[6..]
            )
            .into_bytes(),
            2,
        ),
        // Invalid UTF-8.
        (
            b"SITE_ID=a\nPOSTGRES_SYNC_PASSWORD=Zq\xff\xfe\n".to_vec(),
            2,
        ),
    ];
    for (text, line) in cases {
        let wd = workdir();
        std::fs::write(wd.path().join(".env"), &text).unwrap_or_else(|e| panic!("{e}"));
        let r = run_in(wd.path(), &env(), &["status"]).await;
        assert_refused_at_line(&r, line);
    }
}

#[tokio::test]
async fn a_malformed_environment_value_is_named_not_printed() {
    let wd = workdir();
    for var in [
        "POSTGRES_SYNC_PORT",
        "DB_POOL_MAX",
        "METERSYNC_READ_ONLY",
        "POSTGRES_SYNC_SSLMODE",
    ] {
        let mut e = env();
        e.insert(var.into(), SECRET.into());
        let r = run_in(wd.path(), &e, &["status"]).await;
        assert_ne!(r.code, Some(0), "{var}");
        assert!(
            r.stderr.contains(&format!("{var} is not valid")),
            "{}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("Zq") && !r.stdout.contains("Zq"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}

#[tokio::test]
async fn env_is_read_from_the_working_directory_only() {
    let parent = workdir();
    let child = parent.path().join("site");
    std::fs::create_dir(&child).unwrap_or_else(|e| panic!("{e}"));
    // A parent .env that would fail if it were read.
    std::fs::write(parent.path().join(".env"), "POSTGRES_SYNC_HOTS=x\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let r = run_in(&child, &env(), &["status"]).await;
    assert!(
        r.stdout.contains("\"local\""),
        "status ran: {} {}",
        r.stdout,
        r.stderr
    );
    assert!(!r.stderr.contains("POSTGRES_SYNC_HOTS"), "{}", r.stderr);
    // The same file in the working directory is read (and refused).
    let r = run_in(parent.path(), &env(), &["status"]).await;
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr
            .contains("POSTGRES_SYNC_HOTS (on line 1 of ./.env)")
            && r.stderr.contains("did you mean POSTGRES_SYNC_HOST?"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn a_misspelt_variable_is_a_startup_error_naming_the_closest() {
    let wd = workdir();
    let mut e = env();
    e.insert("POSTGRES_CLIENT_HOTS".into(), "db.example.com".into());
    e.insert("POSTGRES_CLIENT_PASSWORD".into(), SECRET.into());
    let r = run_in(wd.path(), &e, &["status"]).await;
    assert_ne!(r.code, Some(0));
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("POSTGRES_CLIENT_HOTS (in the environment) is not a metersync variable; did you mean POSTGRES_CLIENT_HOST?"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(SECRET));
    assert!(!r.stderr.contains("db.example.com"));
}

#[tokio::test]
async fn an_invalid_rust_log_is_a_startup_error_naming_it() {
    let wd = workdir();
    let mut e = env();
    e.insert("RUST_LOG".into(), "verbose".into());
    let r = run_in(wd.path(), &e, &["status"]).await;
    assert_ne!(r.code, Some(0), "{}", r.stdout);
    assert!(
        r.stderr.contains("RUST_LOG=\"verbose\" is not valid"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "nothing ran: {}", r.stdout);
}

#[tokio::test]
async fn a_closed_stdout_ends_the_command_quietly() {
    let wd = workdir();
    let mut child = metersync_cmd(&env(), wd.path())
        .args(["migrate", "--print", "--local"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    // Close the read end before metersync writes: like `| head` exiting.
    drop(child.stdout.take());
    let out = child
        .wait_with_output()
        .await
        .unwrap_or_else(|e| panic!("wait: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
