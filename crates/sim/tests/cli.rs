//! The `voxsig-sim` command.

use voxsig_testkit::client as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use voxsig_sim::World;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_voxsig-sim"))
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_describes_every_subcommand() {
    let help = stdout(sim().arg("--help"));
    for word in ["serve", "world", "events"] {
        assert!(help.contains(word), "{help}");
    }
    let serve = stdout(sim().args(["serve", "--help"]));
    for flag in [
        "--accounts",
        "--users-per-account",
        "--contacts-per-account",
        "--reject-unknown",
        "--rate",
        "--ping-interval-ms",
    ] {
        assert!(serve.contains(flag), "{flag}: {serve}");
    }
}

#[test]
fn world_prints_a_loadable_world_and_a_bridge_config() {
    let args = [
        "world",
        "--accounts",
        "3",
        "--users-per-account",
        "2",
        "--contacts-per-account",
        "1",
    ];
    let toml_world = stdout(sim().args(args));
    let world = World::from_toml(&toml_world).unwrap();
    assert_eq!((world.accounts.len(), world.users.len()), (3, 6));
    let json_world = stdout(sim().args(args).args(["--format", "json"]));
    assert_eq!(World::from_json(&json_world).unwrap(), world);

    let config = stdout(sim().args(args).args([
        "--export-bridge-config",
        "--tokens",
        "all",
        "--max-per-account",
        "1",
    ]));
    assert_eq!(config.matches("[[accounts]]").count(), 6, "{config}");
    assert_eq!(config.matches("user_id").count(), 3);

    let dir = std::env::temp_dir().join(format!("voxsig-sim-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("world.toml");
    std::fs::write(&file, &toml_world).unwrap();
    let reloaded = stdout(
        sim()
            .args(["world", "--format", "json", "--world"])
            .arg(&file),
    );
    assert_eq!(World::from_json(&reloaded).unwrap(), world);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stdout(sim().arg("events")).contains("message.created"));
}

#[test]
fn serve_listens_and_speaks_actioncable() {
    let mut child = sim()
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--no-admin",
            "--ping-interval-ms",
            "100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first.rsplit(' ').next().unwrap().to_owned();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/cable"),
        "{first}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let mut c = common::Client::connect_url(&url, true).await?;
        let welcome = c.try_text(common::LONG).await;
        let ping = c.next(common::LONG).await;
        Ok::<_, common::ConnectError>((welcome, ping))
    });
    let _ = child.kill();
    let _ = child.wait();
    let (welcome, ping) = outcome.unwrap();
    assert_eq!(welcome.as_deref(), Some(r#"{"type":"welcome"}"#));
    assert!(matches!(ping, common::Got::Text(t) if t.contains("ping")));
}
