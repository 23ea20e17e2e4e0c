//! `strata keygen` as a user runs it: the files it writes (contents, size,
//! modes), what it prints, and how it refuses (existing files, unwritable
//! places, missing arguments) with one line on stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use strata::layers::encrypt::{parse_key_hex, public_key, read_key_file, Secret};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata")).arg("keygen").args(args).stdin(Stdio::null()).output().expect("run the strata binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is text")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh, empty directory for one test's files.
fn scratch_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("strata-keygen-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn text(path: &Path) -> &str {
    path.to_str().expect("scratch paths are UTF-8")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Checks that `out` is a clean refusal: status 1, nothing on stdout, one
/// stderr line `strata keygen: ...` containing each of `mentions`.
fn refused(out: &Output, mentions: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("strata keygen: "), "{err:?}");
    for m in mentions {
        assert!(err.contains(m), "{err:?} does not mention {m:?}");
    }
}

#[test]
fn a_group_key_is_65_bytes_of_hex_with_mode_0600_and_one_line_on_stdout() {
    let dir = scratch_dir("group");
    let path = dir.join("group.key");
    let out = run(&[text(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("wrote a group key to {}\n", path.display()));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let contents = std::fs::read_to_string(&path).unwrap();
    assert_eq!(contents.len(), 65);
    assert!(contents.ends_with('\n') && contents[..64].chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{contents:?}");
    let key = parse_key_hex(&contents).unwrap();
    assert_eq!(read_key_file(&path).unwrap().bytes(), &key);
    #[cfg(unix)]
    assert_eq!(mode(&path), 0o600);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_runs_give_different_keys() {
    let dir = scratch_dir("twice");
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert!(run(&[text(&a)]).status.success());
    assert!(run(&[text(&b)]).status.success());
    let (ka, kb) = (read_key_file(&a).unwrap(), read_key_file(&b).unwrap());
    assert_ne!(ka.bytes(), kb.bytes());
    assert_ne!(ka.bytes(), &[0u8; 32]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_existing_path_is_refused_and_left_alone() {
    let dir = scratch_dir("exists");
    let path = dir.join("taken");
    std::fs::write(&path, "keep me\n").unwrap();
    let out = run(&[text(&path)]);
    refused(&out, &[]);
    assert_eq!(stderr(&out), format!("strata keygen: {} exists; remove it first or choose another path\n", path.display()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me\n");
    // A directory is an existing path too.
    refused(&run(&[text(&dir)]), &[text(&dir), "exists"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_path_that_cannot_be_created_is_named_with_the_reason() {
    let dir = scratch_dir("unwritable");
    let missing_dir = dir.join("no-such-dir").join("k");
    refused(&run(&[text(&missing_dir)]), &[&format!("cannot create {}", missing_dir.display()), "No such file or directory"]);
    // Under a regular file: fails even for root, unlike a read-only directory.
    let file = dir.join("plain");
    std::fs::write(&file, "").unwrap();
    let under_file = file.join("k");
    refused(&run(&[text(&under_file)]), &[&format!("cannot create {}", under_file.display()), "Not a directory"]);
    refused(&run(&["--identity", text(&under_file)]), &[&format!("cannot create {}", under_file.display())]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_identity_writes_secret_and_public_files_and_prints_the_public_key() {
    let dir = scratch_dir("identity");
    let path = dir.join("me");
    let pub_path = dir.join("me.pub");
    let out = run(&["--identity", text(&path)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert_eq!(printed.lines().count(), 1, "{printed:?}");
    assert_eq!(std::fs::read_to_string(&pub_path).unwrap(), printed, "stdout equals the .pub file");
    let secret = read_key_file(&path).unwrap();
    assert_eq!(parse_key_hex(&printed).unwrap(), public_key(&secret), "the .pub key belongs to the secret");
    assert_eq!(std::fs::read(&path).unwrap().len(), 65);
    #[cfg(unix)]
    assert_eq!((mode(&path), mode(&pub_path)), (0o600, 0o644));

    let shown = run(&["--public", text(&path)]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    assert_eq!(stdout(&shown), printed, "--public prints the same key");

    // A second identity differs from the first.
    let other = dir.join("other");
    let out = run(&["--identity", text(&other)]);
    assert!(out.status.success());
    assert_ne!(stdout(&out), printed);
    assert_ne!(read_key_file(&other).unwrap().bytes(), secret.bytes());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_identity_is_refused_if_either_file_exists_and_nothing_is_written() {
    let dir = scratch_dir("identity-exists");
    let (path, pub_path) = (dir.join("id"), dir.join("id.pub"));
    std::fs::write(&pub_path, "old public\n").unwrap();
    let out = run(&["--identity", text(&path)]);
    refused(&out, &[&format!("{} exists; remove it first or choose another path", pub_path.display())]);
    assert!(!path.exists(), "no secret is left behind");
    assert_eq!(std::fs::read_to_string(&pub_path).unwrap(), "old public\n");
    std::fs::remove_file(&pub_path).unwrap();

    let secret = Secret::from_bytes([7; 32]);
    strata::layers::encrypt::write_key_file(&path, secret.bytes()).unwrap();
    let out = run(&["--identity", text(&path)]);
    refused(&out, &[&format!("{} exists; remove it first or choose another path", path.display())]);
    assert_eq!(read_key_file(&path).unwrap().bytes(), &[7; 32]);
    assert!(!pub_path.exists(), "no public file without its secret");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn public_of_a_bad_or_missing_identity_names_the_file() {
    let dir = scratch_dir("public-bad");
    let missing = dir.join("missing");
    refused(&run(&["--public", text(&missing)]), &[&format!("key file {}: cannot read: No such file or directory", missing.display())]);
    let bad = dir.join("bad");
    std::fs::write(&bad, "not a key\n").unwrap();
    refused(&run(&["--public", text(&bad)]), &[&format!("key file {}: expected 64 hex digits (a 32-byte key), found 9 characters", bad.display())]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_or_conflicting_arguments_exit_2_with_one_line() {
    for args in [&[][..], &["--identity"][..], &["--public"][..], &["--identity", "--public", "x"][..], &["a", "b"][..]] {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.starts_with("strata keygen: "), "{args:?}: {err:?}");
        assert!(out.stdout.is_empty());
    }
    assert!(!Path::new("x").exists() && !Path::new("a").exists(), "nothing was written");
}
