//! # ENCRYPT's key material: key files, identity files and trust files
//!
//! ENCRYPT never invents or exchanges keys on its own; it reads them from
//! small text files (or an environment variable) that an operator makes with
//! `strata keygen` (docs/strata-keygen.md). This module reads and writes
//! those files and nothing else: no layer state, no I/O on the hot path.
//!
//! ## Formats
//! ```text
//! key file       64 hex digits (either case) = 32 bytes, surrounding whitespace allowed
//!                (keygen writes lowercase and one newline: 65 bytes, mode 0600).
//!                A group key (shared by every member) or an X25519 secret (an identity).
//! public file    the same format: an identity's X25519 public key (keygen: PATH.pub, mode 0644).
//! trust file     one public key per line: 64 hex digits, optionally whitespace and a free-text
//!                name; `#` starts a comment (anywhere on a line); blank lines are ignored.
//! ```
//!
//! ## What it guarantees
//! * **Every error names its source** (the file, with the line for trust
//!   files, or the environment variable) and says what was expected, so a
//!   user can fix it from the message alone.
//! * **Secrets do not leak through errors or logs.** [`Secret`] prints as
//!   `Secret(..)`; an error about an environment variable never quotes its
//!   value. An error about a key *file* quotes the one character that is not a
//!   hex digit (which is not key material), never the digits.
//! * **Secrets do not linger.** [`Secret`] and every buffer that held the
//!   text of a secret are zeroized when dropped.
//! * **Bounded reads.** A key file over [`MAX_KEY_FILE_LEN`] bytes and a
//!   trust file over [`MAX_TRUST_FILE_LEN`] bytes are refused without reading
//!   them whole (reads stop one byte past the limit, so pipes and growing
//!   files are bounded too); a trust file holds at most [`MAX_TRUSTED_KEYS`].
//! * **New key files are private from birth.** [`write_key_file`] creates the
//!   file with mode 0600 in the same call that creates it (`O_CREAT|O_EXCL`),
//!   so there is no moment when another user could open it, and never replaces
//!   an existing file.
//! * **Loose permissions are reported, not refused.** Reading a key file that
//!   group or others can access logs a `warn` (target `strata::encrypt`)
//!   naming the file and its mode.
//! * **Unusable public keys are refused.** A trust-file key that is a
//!   small-order point (all-zero and the like) would make every key agreement
//!   with it produce a known shared secret: it is an error on its line.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// The length in bytes of every key: a group key, an X25519 secret and an
/// X25519 public key.
pub const KEY_LEN: usize = 32;

/// The largest key file read, in bytes (a key is 64 digits; the rest is room
/// for whitespace and editors' line endings).
pub const MAX_KEY_FILE_LEN: u64 = 4096;

/// The largest trust file read, in bytes.
pub const MAX_TRUST_FILE_LEN: u64 = 1 << 20;

/// The most keys a trust file may hold.
pub const MAX_TRUSTED_KEYS: usize = 4096;

/// A 32-byte secret (group key or X25519 secret). Debug prints `Secret(..)`
/// only; the bytes are zeroized on drop (clones included: each clone owns
/// and wipes its own copy).
pub struct Secret([u8; KEY_LEN]);

impl Secret {
    /// Wraps 32 secret bytes.
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Secret {
        Secret(b)
    }

    /// The secret bytes (borrowed, so the only copies are the ones the caller makes).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret(self.0)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a text is not a key. Kept structured so that callers can choose
/// whether the offending character may be quoted.
enum HexError {
    /// Not 64 characters once surrounding whitespace is trimmed.
    Length(usize),
    /// The character at `position` (counting from 1, after leading whitespace) is not a hex digit.
    NotHex { found: char, position: usize },
}

impl HexError {
    /// The message; `quote` says whether the offending character may appear in it.
    fn describe(&self, quote: bool) -> String {
        match self {
            HexError::Length(n) => format!("expected 64 hex digits (a 32-byte key), found {n} characters"),
            HexError::NotHex { found, position } if quote => format!("`{}` at position {position} is not a hex digit", found.escape_debug()),
            HexError::NotHex { position, .. } => format!("the character at position {position} is not a hex digit"),
        }
    }
}

fn decode_hex(text: &str) -> Result<[u8; KEY_LEN], HexError> {
    let text = text.trim();
    // Count characters, not bytes, so the message matches what the user sees.
    let len = text.chars().count();
    if len != 2 * KEY_LEN {
        return Err(HexError::Length(len));
    }
    let mut key = [0u8; KEY_LEN];
    for (i, c) in text.chars().enumerate() {
        let Some(digit) = c.to_digit(16) else {
            key.zeroize();
            return Err(HexError::NotHex { found: c, position: i + 1 });
        };
        // `to_digit(16)` is below 16, so the cast is exact.
        key[i / 2] |= (digit as u8) << if i % 2 == 0 { 4 } else { 0 };
    }
    Ok(key)
}

/// Parses a key written as 64 hex digits (either case). Whitespace around the
/// digits (a trailing newline, say) is allowed; nothing else is. Errors:
/// "expected 64 hex digits (a 32-byte key), found N characters" (N counted
/// after trimming) and "`x` at position P is not a hex digit" (P counts from 1
/// at the first non-whitespace character).
pub fn parse_key_hex(text: &str) -> Result<[u8; KEY_LEN], String> {
    decode_hex(text).map_err(|e| e.describe(true))
}

/// Reads at most `limit` bytes of `file` into a buffer wiped on drop; `Err`
/// holds the length found (or `limit + 1` when it cannot be known) if there is more.
fn read_bounded(file: &mut File, limit: u64) -> io::Result<Result<Zeroizing<Vec<u8>>, u64>> {
    let declared = file.metadata()?.len();
    if declared > limit {
        return Ok(Err(declared));
    }
    // Sized up front: a Vec that grew would leave copies of a secret in freed
    // memory. Pipes declare 0 bytes; a key file from a pipe still fits.
    let expected = if declared == 0 { MAX_KEY_FILE_LEN } else { declared };
    let mut buf = Zeroizing::new(Vec::with_capacity(expected as usize + 1));
    // One byte past the limit tells "too large" from "exactly the limit" for
    // files whose metadata cannot say (pipes, files still growing).
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Ok(Err(limit + 1));
    }
    Ok(Ok(buf))
}

/// Opens `path` for reading, refusing directories up front (opening one
/// succeeds on Linux; only the read would fail, with a less helpful message).
fn open_regular(path: &Path) -> io::Result<File> {
    let file = File::open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "it is a directory"));
    }
    Ok(file)
}

/// Whether a key file's permission bits let group or others at it (any of
/// read, write or execute: a writable key can be replaced).
fn is_loose(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// [`read_key_file`] without the logging: the key and, if its permissions
/// are loose, its mode (so tests can see the warning's cause).
fn load_key_file(path: &Path) -> Result<(Secret, Option<u32>), String> {
    let name = path.display();
    let mut file = open_regular(path).map_err(|e| format!("key file {name}: cannot read: {e}"))?;
    let loose = loose_mode(&file);
    let text = match read_bounded(&mut file, MAX_KEY_FILE_LEN).map_err(|e| format!("key file {name}: cannot read: {e}"))? {
        Ok(text) => text,
        Err(len) => return Err(format!("key file {name}: too large for a key file ({len} bytes; a key is 64 hex digits, at most {MAX_KEY_FILE_LEN} bytes)")),
    };
    let text = std::str::from_utf8(&text).map_err(|_| format!("key file {name}: not text (expected 64 hex digits)"))?;
    let key = decode_hex(text).map_err(|e| format!("key file {name}: {}", e.describe(true)))?;
    Ok((Secret(key), loose))
}

#[cfg(unix)]
fn loose_mode(file: &File) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata().ok()?.permissions().mode() & 0o7777;
    is_loose(mode).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_file: &File) -> Option<u32> {
    None
}

/// Reads a key file (64 hex digits, whitespace around them allowed). Every
/// error names the file: "key file /p: cannot read: No such file or
/// directory (os error 2)", "key file /p: expected 64 hex digits ...".
/// Refuses files larger than [`MAX_KEY_FILE_LEN`] (4 KiB) without reading
/// them whole. A file that group or others can access is read, with a
/// `tracing::warn` naming it and its mode.
pub fn read_key_file(path: &Path) -> Result<Secret, String> {
    let (key, loose) = load_key_file(path)?;
    if let Some(mode) = loose {
        tracing::warn!(target: "strata::encrypt", "key file {} has mode {mode:04o}: group or others can access it; `chmod 600` it", path.display());
    }
    Ok(key)
}

/// Reads a key from environment variable `name`, in the format of a key
/// file. Errors name the variable and never quote its value: "environment
/// variable K is not set", "environment variable K: expected 64 hex digits
/// (a 32-byte key), found N characters", "environment variable K: the
/// character at position P is not a hex digit".
pub fn read_key_env(name: &str) -> Result<Secret, String> {
    let value = std::env::var_os(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
    // Only this copy can be wiped: the process environment keeps its own.
    let value = Zeroizing::new(value.into_string().map_err(|_| format!("environment variable {name}: not text (expected 64 hex digits)"))?);
    let key = decode_hex(&value).map_err(|e| format!("environment variable {name}: {}", e.describe(false)))?;
    Ok(Secret(key))
}

/// Writes `key` as 64 lowercase hex digits and a newline (65 bytes) to a
/// new file, created with mode 0600 on unix (`O_CREAT|O_EXCL`: an existing
/// file, or a symlink there, makes it fail with `AlreadyExists` untouched),
/// and syncs it to disk before returning. If writing fails after the file was
/// created, the partial file is removed so that a retry can succeed.
pub fn write_key_file(path: &Path, key: &[u8; KEY_LEN]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let mut text = Zeroizing::new(to_hex(key));
    text.push('\n');
    let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// The X25519 public key of a secret.
pub fn public_key(secret: &Secret) -> [u8; KEY_LEN] {
    // StaticSecret zeroizes its copy on drop (x25519-dalek's `zeroize` feature).
    let secret = x25519_dalek::StaticSecret::from(secret.0);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// Lowercase hex of 32 bytes (64 characters).
pub fn to_hex(bytes: &[u8; KEY_LEN]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * KEY_LEN);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Whether key agreement with `public` can produce a secret nobody else
/// knows. A small-order point multiplied by any (clamped) scalar gives the
/// all-zero result, so one agreement with a fixed scalar detects it.
fn is_usable_public_key(public: &[u8; KEY_LEN]) -> bool {
    let probe = x25519_dalek::StaticSecret::from([0x5a; KEY_LEN]);
    probe.diffie_hellman(&x25519_dalek::PublicKey::from(*public)).was_contributory()
}

/// Reads a trust file: one X25519 public key per line as 64 hex digits,
/// optionally followed by whitespace and a free-text name; `#` starts a
/// comment (anywhere on a line); blank lines are ignored. Returns the keys in
/// file order. Errors name the file and, for a bad line, its number (from 1):
/// "trust file /p line 3: expected 64 hex digits ...". A key seen twice, a
/// small-order key, a file with no key, more than [`MAX_TRUSTED_KEYS`] keys
/// or a file over [`MAX_TRUST_FILE_LEN`] bytes are errors.
pub fn read_trust_file(path: &Path) -> Result<Vec<[u8; KEY_LEN]>, String> {
    let name = path.display();
    let mut file = open_regular(path).map_err(|e| format!("trust file {name}: cannot read: {e}"))?;
    let text = match read_bounded(&mut file, MAX_TRUST_FILE_LEN).map_err(|e| format!("trust file {name}: cannot read: {e}"))? {
        Ok(text) => text,
        Err(len) => return Err(format!("trust file {name}: too large ({len} bytes; at most {MAX_TRUST_FILE_LEN})")),
    };
    let mut keys: Vec<[u8; KEY_LEN]> = Vec::new();
    // The line of each key so far, for the duplicate message.
    let mut line_of_key: BTreeMap<[u8; KEY_LEN], usize> = BTreeMap::new();
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let at = |what: String| format!("trust file {name} line {number}: {what}");
        let line = std::str::from_utf8(raw).map_err(|_| at("not UTF-8 text".to_string()))?;
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(hex) = line.split_whitespace().next() else { continue };
        let key = parse_key_hex(hex).map_err(at)?;
        if let Some(first) = line_of_key.get(&key) {
            return Err(at(format!("duplicate of the key on line {first}")));
        }
        if !is_usable_public_key(&key) {
            return Err(at("not a usable X25519 public key (a small-order point: key agreement with it yields a known secret)".to_string()));
        }
        if keys.len() == MAX_TRUSTED_KEYS {
            return Err(at(format!("more than {MAX_TRUSTED_KEYS} keys")));
        }
        keys.push(key);
        line_of_key.insert(key, number);
    }
    if keys.is_empty() {
        return Err(format!("trust file {name}: holds no keys (expected one X25519 public key, 64 hex digits, per line)"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A path in the temp dir that no other test (or test run) uses; nothing is created.
    fn scratch(label: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        std::env::temp_dir().join(format!("strata-keys-{label}-{}-{nanos}-{n}", std::process::id()))
    }

    /// Writes `contents` to a fresh scratch file with `mode`.
    fn file_with(label: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = scratch(label);
        std::fs::write(&path, contents).unwrap();
        set_mode(&path, mode);
        path
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(not(unix))]
    fn set_mode(_path: &Path, _mode: u32) {}

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn counting() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    /// Public keys of distinct fixed secrets: valid trust-file entries.
    fn public_of(seed: u8) -> [u8; 32] {
        public_key(&Secret::from_bytes([seed; 32]))
    }

    #[test]
    fn hex_in_either_case_with_surrounding_whitespace_parses() {
        assert_eq!(parse_key_hex(HEX), Ok(counting()));
        assert_eq!(parse_key_hex(&HEX.to_uppercase()), Ok(counting()));
        assert_eq!(parse_key_hex(&format!("{HEX}\n")), Ok(counting()));
        assert_eq!(parse_key_hex(&format!("  \t{HEX}\r\n\n")), Ok(counting()));
        let mixed = "FfEeDdCcBbAa99887766554433221100ffeeddccbbaa99887766554433221100";
        assert_eq!(parse_key_hex(mixed).unwrap()[..3], [0xff, 0xee, 0xdd]);
        assert_eq!(to_hex(&counting()), HEX);
    }

    #[test]
    fn wrong_lengths_say_how_many_characters_were_found() {
        assert_eq!(parse_key_hex(""), Err("expected 64 hex digits (a 32-byte key), found 0 characters".to_string()));
        assert_eq!(parse_key_hex(" \n"), Err("expected 64 hex digits (a 32-byte key), found 0 characters".to_string()));
        assert_eq!(parse_key_hex(&HEX[..63]), Err("expected 64 hex digits (a 32-byte key), found 63 characters".to_string()));
        assert_eq!(parse_key_hex(&format!("{HEX}0")), Err("expected 64 hex digits (a 32-byte key), found 65 characters".to_string()));
        // Two keys on one line, and a key with a comment, are not one key.
        assert!(parse_key_hex(&format!("{HEX} {HEX}")).unwrap_err().contains("found 129 characters"));
        // Characters, not bytes: 64 non-ASCII characters are 64 characters.
        assert_eq!(parse_key_hex(&"é".repeat(64)), Err("`é` at position 1 is not a hex digit".to_string()));
    }

    #[test]
    fn a_non_hex_character_is_quoted_with_its_position() {
        let mut bad = HEX.to_string();
        bad.replace_range(9..10, "g");
        assert_eq!(parse_key_hex(&bad), Err("`g` at position 10 is not a hex digit".to_string()));
        // Positions count from the first non-whitespace character.
        assert_eq!(parse_key_hex(&format!("\n {bad}")), Err("`g` at position 10 is not a hex digit".to_string()));
        // Whitespace inside the key is not allowed; control characters are escaped.
        let spaced = format!("{} {}", &HEX[..31], &HEX[32..]);
        assert_eq!(parse_key_hex(&spaced), Err("` ` at position 32 is not a hex digit".to_string()));
        let nul = format!("{}\0", &HEX[..63]);
        assert_eq!(parse_key_hex(&nul), Err("`\\0` at position 64 is not a hex digit".to_string()));
        // A `0x` prefix is not part of the format.
        assert_eq!(parse_key_hex(&format!("0x{}", &HEX[2..])), Err("`x` at position 2 is not a hex digit".to_string()));
    }

    #[test]
    fn secret_debug_hides_the_bytes_and_clones_are_equal() {
        let s = Secret::from_bytes([0xab; 32]);
        assert_eq!(format!("{s:?}"), "Secret(..)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(..))");
        assert_eq!(s.clone().bytes(), &[0xab; 32]);
    }

    #[test]
    fn a_written_key_file_reads_back_and_has_mode_0600_and_65_bytes() {
        let path = scratch("roundtrip");
        write_key_file(&path, &counting()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), format!("{HEX}\n").into_bytes());
        let (key, loose) = load_key_file(&path).unwrap();
        assert_eq!(key.bytes(), &counting());
        assert_eq!(loose, None, "a file keygen wrote is not reported as loose");
        assert_eq!(read_key_file(&path).unwrap().bytes(), &counting());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn writing_never_replaces_an_existing_file() {
        let path = file_with("exists", b"precious\n", 0o644);
        let err = write_key_file(&path, &counting()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"precious\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn writing_through_a_dangling_symlink_is_refused() {
        // O_EXCL does not follow symlinks: a planted link cannot redirect the key.
        let target = scratch("link-target");
        let link = scratch("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(write_key_file(&link, &counting()).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(!target.exists());
        std::fs::remove_file(&link).unwrap();
    }

    #[test]
    fn a_missing_file_is_named_with_the_os_reason() {
        let path = scratch("missing");
        let err = read_key_file(&path).unwrap_err();
        assert_eq!(err, format!("key file {}: cannot read: No such file or directory (os error 2)", path.display()));
    }

    #[test]
    fn a_directory_is_refused_by_name() {
        let dir = scratch("dir");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(read_key_file(&dir).unwrap_err(), format!("key file {}: cannot read: it is a directory", dir.display()));
        assert_eq!(read_trust_file(&dir).unwrap_err(), format!("trust file {}: cannot read: it is a directory", dir.display()));
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_file_over_4_kib_is_refused_and_one_at_the_limit_is_parsed() {
        let big = file_with("big", &vec![b'0'; 4097], 0o600);
        let err = read_key_file(&big).unwrap_err();
        assert_eq!(err, format!("key file {}: too large for a key file (4097 bytes; a key is 64 hex digits, at most 4096 bytes)", big.display()));
        // Exactly 4096 bytes is read (and then fails as a key, not as a size).
        let mut limit = format!("{HEX}\n").into_bytes();
        limit.resize(4096, b'\n');
        let at_limit = file_with("limit", &limit, 0o600);
        assert_eq!(read_key_file(&at_limit).unwrap().bytes(), &counting());
        for p in [big, at_limit] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn bad_contents_are_reported_with_the_file_name() {
        let short = file_with("short", &HEX.as_bytes()[..10], 0o600);
        assert_eq!(read_key_file(&short).unwrap_err(), format!("key file {}: expected 64 hex digits (a 32-byte key), found 10 characters", short.display()));
        let binary = file_with("binary", &[0xff; 64], 0o600);
        assert_eq!(read_key_file(&binary).unwrap_err(), format!("key file {}: not text (expected 64 hex digits)", binary.display()));
        for p in [short, binary] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_access_is_read_and_flagged() {
        for (mode, flagged) in [(0o600, None), (0o400, None), (0o640, Some(0o640)), (0o604, Some(0o604)), (0o620, Some(0o620))] {
            let path = file_with("mode", format!("{HEX}\n").as_bytes(), mode);
            let (key, loose) = load_key_file(&path).unwrap();
            assert_eq!((key.bytes(), loose), (&counting(), flagged), "mode {mode:o}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn an_environment_variable_is_read_and_its_value_never_quoted() {
        let name = format!("STRATA_KEYS_TEST_{}_SET", std::process::id());
        std::env::set_var(&name, format!("{}\n", HEX.to_uppercase()));
        assert_eq!(read_key_env(&name).unwrap().bytes(), &counting());

        let unset = format!("STRATA_KEYS_TEST_{}_UNSET", std::process::id());
        assert_eq!(read_key_env(&unset).unwrap_err(), format!("environment variable {unset} is not set"));

        let bad = format!("STRATA_KEYS_TEST_{}_BAD", std::process::id());
        let secretish = format!("{}Z", &HEX[..63]);
        std::env::set_var(&bad, &secretish);
        let err = read_key_env(&bad).unwrap_err();
        assert_eq!(err, format!("environment variable {bad}: the character at position 64 is not a hex digit"));
        assert!(!err.contains('Z'), "the value's non-hex character is not quoted");
        std::env::set_var(&bad, "hunter2");
        let err = read_key_env(&bad).unwrap_err();
        assert_eq!(err, format!("environment variable {bad}: expected 64 hex digits (a 32-byte key), found 7 characters"));
        assert!(!err.contains("hunter2"));
        std::env::remove_var(&name);
        std::env::remove_var(&bad);
    }

    #[test]
    fn public_key_matches_the_rfc_7748_vector() {
        // RFC 7748 section 6.1, Alice's key pair.
        let alice = parse_key_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        let expected = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
        assert_eq!(to_hex(&public_key(&Secret::from_bytes(alice))), expected);
    }

    #[test]
    fn a_trust_file_with_comments_names_and_blank_lines_parses_in_order() {
        let (a, b, c) = (public_of(1), public_of(2), public_of(3));
        let text = format!(
            "# the group's members\n\n{}  alice (laptop)\n   {}\t# bob, no name\n{} carol # comment after a name\r\n\n# end\n",
            to_hex(&a),
            to_hex(&b).to_uppercase(),
            to_hex(&c)
        );
        let path = file_with("trust", text.as_bytes(), 0o644);
        assert_eq!(read_trust_file(&path).unwrap(), vec![a, b, c]);
        std::fs::remove_file(&path).unwrap();
    }

    /// The error for a trust file holding `text`.
    fn trust_error(text: &str) -> String {
        let path = file_with("trust-bad", text.as_bytes(), 0o644);
        let err = read_trust_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        err.replace(&path.display().to_string(), "/p")
    }

    #[test]
    fn trust_file_errors_name_the_file_and_the_line() {
        let (a, b) = (to_hex(&public_of(1)), to_hex(&public_of(2)));
        assert_eq!(trust_error(&format!("# x\n{a}\n\n{}\n", &b[..60])), "trust file /p line 4: expected 64 hex digits (a 32-byte key), found 60 characters");
        assert_eq!(trust_error(&format!("{a} alice\n{}q bob\n", &b[..63])), "trust file /p line 2: `q` at position 64 is not a hex digit");
        assert_eq!(
            trust_error(&format!("{a} alice\n{b} bob\n# again:\n{} alice2\n", a.to_uppercase())),
            "trust file /p line 4: duplicate of the key on line 1"
        );
        assert_eq!(
            trust_error(&format!("{a}\n{}\n", "00".repeat(32))),
            "trust file /p line 2: not a usable X25519 public key (a small-order point: key agreement with it yields a known secret)"
        );
        let mut not_utf8 = format!("{a}\n").into_bytes();
        not_utf8.extend_from_slice(b"\xff\xfe\n");
        let path = file_with("trust-utf8", &not_utf8, 0o644);
        assert!(read_trust_file(&path).unwrap_err().ends_with(" line 2: not UTF-8 text"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_trust_file_without_keys_is_an_error() {
        let expected = "trust file /p: holds no keys (expected one X25519 public key, 64 hex digits, per line)";
        assert_eq!(trust_error(""), expected);
        assert_eq!(trust_error("# only a comment\n\n   \n"), expected);
        let missing = scratch("trust-missing");
        assert_eq!(read_trust_file(&missing).unwrap_err(), format!("trust file {}: cannot read: No such file or directory (os error 2)", missing.display()));
    }

    #[test]
    fn a_trust_file_holds_at_most_4096_keys() {
        // Distinct usable keys made cheaply: u = 9 + i for small i is a point
        // of the curve or its twist, never one of small order (u = 0, 1, p - 1
        // and two large values).
        let keys: Vec<[u8; 32]> = (0..=MAX_TRUSTED_KEYS as u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&(9 + i).to_le_bytes());
                k
            })
            .collect();
        let text: String = keys[..MAX_TRUSTED_KEYS].iter().map(|k| to_hex(k) + "\n").collect();
        let path = file_with("trust-max", text.as_bytes(), 0o644);
        assert_eq!(read_trust_file(&path).unwrap().len(), MAX_TRUSTED_KEYS);
        std::fs::remove_file(&path).unwrap();
        let over = text + &to_hex(&keys[MAX_TRUSTED_KEYS]) + "\n";
        assert_eq!(trust_error(&over), "trust file /p line 4097: more than 4096 keys");
    }

    #[test]
    fn parse_key_hex_never_panics_and_accepts_exactly_64_hex_digits() {
        fn prop(text: String) -> bool {
            let trimmed = text.trim();
            let well_formed = trimmed.chars().count() == 64 && trimmed.chars().all(|c| c.is_ascii_hexdigit());
            match parse_key_hex(&text) {
                Ok(key) => well_formed && to_hex(&key) == trimmed.to_lowercase(),
                Err(e) => !well_formed && !e.is_empty(),
            }
        }
        quickcheck::QuickCheck::new().tests(2000).quickcheck(prop as fn(String) -> bool);
        // Arbitrary strings are rarely 64 characters: also try near-keys.
        fn near(edits: Vec<(u8, char)>) -> bool {
            let mut chars: Vec<char> = HEX.chars().collect();
            for (at, c) in edits {
                chars[usize::from(at) % 64] = c;
            }
            prop(chars.into_iter().collect())
        }
        quickcheck::QuickCheck::new().tests(2000).quickcheck(near as fn(Vec<(u8, char)>) -> bool);
    }
}
