//! `strata keygen`: makes the key files ENCRYPT reads (docs/strata-keygen.md).
//!
//! - `strata keygen PATH` writes a fresh 32-byte group key to PATH (mode 0600).
//! - `strata keygen --identity PATH` writes an X25519 secret to PATH (0600)
//!   and its public key to PATH.pub (0644), and prints the public key.
//! - `strata keygen --public PATH` prints the public key of the identity in PATH.
//!
//! Files are created, never replaced: an existing PATH (or PATH.pub) is an
//! error before anything is written. Randomness comes from the operating
//! system (`getrandom`), never from a seeded generator.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use strata::layers::encrypt::{public_key, read_key_file, to_hex, write_key_file, Secret, KEY_LEN};

/// Options of `strata keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Write an X25519 identity instead of a group key: the secret to PATH,
    /// the public key to PATH.pub; print the public key.
    #[arg(long, conflicts_with = "public")]
    identity: bool,
    /// Write nothing: print the public key of the identity (secret) file PATH.
    #[arg(long)]
    public: bool,
    /// The file to create (or, with --public, to read).
    #[arg(value_name = "PATH")]
    path: PathBuf,
}

/// Runs `strata keygen`.
pub fn run(args: &KeygenArgs) -> Result<ExitCode, String> {
    let path = args.path.as_path();
    if args.public {
        let secret = read_key_file(path)?;
        print_line(&to_hex(&public_key(&secret)))?;
    } else if args.identity {
        let public = write_identity(path)?;
        print_line(&to_hex(&public))?;
    } else {
        create_key_file(path, fresh_secret()?.bytes())?;
        print_line(&format!("wrote a group key to {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// 32 bytes from the operating system's random source.
fn fresh_secret() -> Result<Secret, String> {
    let mut bytes = [0u8; KEY_LEN];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("cannot get random bytes from the operating system: {e}"))?;
    Ok(Secret::from_bytes(bytes))
}

fn exists(path: &Path) -> String {
    format!("{} exists; remove it first or choose another path", path.display())
}

/// Writes `key` to the new file `path` (mode 0600), with keygen's messages.
fn create_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), String> {
    write_key_file(path, key).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => exists(path),
        _ => format!("cannot create {}: {e}", path.display()),
    })
}

/// `path` with ".pub" appended (not an extension replaced: `id.key` gives `id.key.pub`).
fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes a fresh identity to `path` and its public key to `path`.pub;
/// returns the public key. Either file existing is refused with nothing
/// written; if the public file cannot be written, the secret is removed
/// again so that the same command can be retried.
fn write_identity(path: &Path) -> Result<[u8; KEY_LEN], String> {
    let pub_path = public_path(path);
    // Checked first so that a refusal leaves no new secret behind; the
    // create-new open below still catches a file appearing in between.
    if pub_path.symlink_metadata().is_ok() {
        return Err(exists(&pub_path));
    }
    let secret = fresh_secret()?;
    let public = public_key(&secret);
    create_key_file(path, secret.bytes())?;
    if let Err(e) = write_public_file(&pub_path, &public) {
        let _ = std::fs::remove_file(path);
        return Err(match e.kind() {
            io::ErrorKind::AlreadyExists => exists(&pub_path),
            _ => format!("cannot create {}: {e}", pub_path.display()),
        });
    }
    Ok(public)
}

/// Creates `path` holding the public key's hex and a newline, mode 0644
/// whatever the umask (others need to read it to trust it), synced.
fn write_public_file(path: &Path, public: &[u8; KEY_LEN]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    let written = (|| {
        #[cfg(unix)]
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        file.write_all(format!("{}\n", to_hex(public)).as_bytes())?;
        file.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

fn print_line(line: &str) -> Result<(), String> {
    match writeln!(io::stdout().lock(), "{line}") {
        // The files are written by now; a closed pipe only loses the echo.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(format!("cannot write to stdout: {e}")),
        _ => Ok(()),
    }
}
