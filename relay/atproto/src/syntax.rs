//! Strict validators for the ATProto string formats (DIDs, handles, NSIDs, TIDs,
//! record keys, AT-URIs, datetimes, CIDs, language tags, URIs).
//!
//! Each validator follows the atproto syntax specs; they are exercised by every
//! line of the interop `syntax/` vectors in `tests/vectors.rs`.

use regex::Regex;
use std::sync::LazyLock;

/// Which syntax rule a string broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct SyntaxError {
    pub kind: &'static str,
    pub reason: &'static str,
}

fn fail<T>(kind: &'static str, reason: &'static str) -> Result<T, SyntaxError> {
    Err(SyntaxError { kind, reason })
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("static regex compiles")
}

static HANDLE_RE: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
});
static NSID_RE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+(\.[a-zA-Z][a-zA-Z0-9]{0,62})$",
    )
});
static DATETIME_RE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"^[0-9]{4}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-9][0-9]:[0-9][0-9](\.[0-9]{1,20})?(Z|([+-][0-2][0-9]:[0-5][0-9]))$",
    )
});
static CID_RE: LazyLock<Regex> = LazyLock::new(|| regex(r"^[a-zA-Z0-9+=]{8,256}$"));
static LANGUAGE_RE: LazyLock<Regex> = LazyLock::new(|| regex(r"^(i|[a-z]{2,3}|[xX])(-[a-zA-Z0-9]{1,8})*$"));
static URI_RE: LazyLock<Regex> = LazyLock::new(|| regex(r"^[a-z][a-z.-]{0,80}:[!-~]+$"));
static ATURI_RE: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"^at://([a-zA-Z0-9._:%-]+)(/([a-zA-Z0-9.-]+)(/([a-zA-Z0-9._~:@!$&%')(*+,;=-]+))?)?(#(/[a-zA-Z0-9._~:@!$&%')(*+,;=\[\]/\\-]*))?$",
    )
});

// The three checks every event goes through are written out byte by byte rather than as
// regexes: they run several times per event on every validation worker, and the regex
// engine's per-thread scratch pool and search setup were ~1 µs per event at saturation.
// Each is exactly its spec regex (kept in the tests, which compare the two).

/// `^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$`
fn is_did_shaped(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("did:") else { return false };
    let Some((method, identifier)) = rest.split_once(':') else { return false };
    let identifier_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-');
    let last_byte = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_lowercase())
        && identifier.as_bytes().last().is_some_and(last_byte)
        && identifier.as_bytes().iter().all(identifier_byte)
}

/// `^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$`
fn is_tid_shaped(s: &str) -> bool {
    let base32 = |b: &u8| matches!(b, b'2'..=b'7' | b'a'..=b'z');
    match s.as_bytes() {
        [first, rest @ ..] => {
            rest.len() == 12 && matches!(first, b'2'..=b'7' | b'a'..=b'j') && rest.iter().all(base32)
        }
        [] => false,
    }
}

/// `^[a-zA-Z0-9_~.:-]{1,512}$`
fn is_record_key_shaped(s: &str) -> bool {
    (1..=512).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'.' | b':' | b'-'))
}

/// Maximum lengths from the specs.
pub const MAX_DID_LEN: usize = 2048;
pub const MAX_HANDLE_LEN: usize = 253;
pub const MAX_NSID_LEN: usize = 317;
pub const MAX_ATURI_LEN: usize = 8192;
pub const MAX_URI_LEN: usize = 8192;
pub const MAX_DATETIME_LEN: usize = 64;

pub fn validate_did(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_DID_LEN {
        return fail("did", "longer than 2048 characters");
    }
    if !is_did_shaped(s) {
        return fail("did", "does not match did:<method>:<identifier>");
    }
    Ok(())
}

pub fn validate_handle(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_HANDLE_LEN {
        return fail("handle", "longer than 253 characters");
    }
    if !HANDLE_RE.is_match(s) {
        return fail("handle", "not a valid domain name");
    }
    Ok(())
}

/// A DID or a handle, as used in the authority of AT-URIs and in XRPC params.
pub fn validate_at_identifier(s: &str) -> Result<(), SyntaxError> {
    if s.starts_with("did:") {
        validate_did(s)
    } else {
        validate_handle(s)
    }
}

pub fn validate_nsid(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_NSID_LEN {
        return fail("nsid", "longer than 317 characters");
    }
    if !NSID_RE.is_match(s) {
        return fail("nsid", "not a reversed domain followed by a name");
    }
    Ok(())
}

pub fn validate_tid(s: &str) -> Result<(), SyntaxError> {
    if !is_tid_shaped(s) {
        return fail("tid", "not 13 base32-sortable characters");
    }
    Ok(())
}

pub fn validate_record_key(s: &str) -> Result<(), SyntaxError> {
    if s == "." || s == ".." {
        return fail("record key", "'.' and '..' are reserved");
    }
    if !is_record_key_shaped(s) {
        return fail("record key", "1-512 characters of A-Za-z0-9 . - _ : ~");
    }
    Ok(())
}

/// Syntax-only datetime check (RFC 3339 subset required by atproto).
pub fn validate_datetime_syntax(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_DATETIME_LEN {
        return fail("datetime", "longer than 64 characters");
    }
    if !DATETIME_RE.is_match(s) {
        return fail("datetime", "not an RFC 3339 datetime with timezone");
    }
    if s.ends_with("-00:00") {
        return fail("datetime", "-00:00 is not an allowed offset");
    }
    Ok(())
}

/// Full datetime check: syntax, then a real calendar parse (rejects month 00,
/// hour 25, and instants before year 0 once the offset is applied).
pub fn parse_datetime(s: &str) -> Result<chrono::DateTime<chrono::FixedOffset>, SyntaxError> {
    validate_datetime_syntax(s)?;
    let parsed = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|_| SyntaxError { kind: "datetime", reason: "not a real calendar instant" })?;
    if parsed.naive_utc().and_utc().timestamp() < -62_167_219_200 {
        // 0000-01-01T00:00:00Z: anything earlier cannot be written with a 4-digit year.
        return fail("datetime", "before year 0 after applying the offset");
    }
    Ok(parsed)
}

pub fn validate_cid_syntax(s: &str) -> Result<(), SyntaxError> {
    if !CID_RE.is_match(s) {
        return fail("cid", "8-256 base-encoded characters");
    }
    if s.starts_with("Qmb") {
        return fail("cid", "CIDv0 is not allowed");
    }
    Ok(())
}

pub fn validate_language_syntax(s: &str) -> Result<(), SyntaxError> {
    if !LANGUAGE_RE.is_match(s) {
        return fail("language", "not a BCP-47 language tag");
    }
    Ok(())
}

/// Syntax plus the RFC 5646 rule that variants and extension singletons are not repeated.
pub fn parse_language(s: &str) -> Result<(), SyntaxError> {
    validate_language_syntax(s)?;
    let mut variants: Vec<String> = Vec::new();
    let mut singletons: Vec<String> = Vec::new();
    let mut in_extension = false;
    for subtag in s.split('-').skip(1) {
        let lower = subtag.to_ascii_lowercase();
        if lower == "x" {
            break; // private use: anything goes after this
        }
        if lower.len() == 1 {
            if singletons.contains(&lower) {
                return fail("language", "repeated extension singleton");
            }
            singletons.push(lower);
            in_extension = true;
            continue;
        }
        let is_variant =
            (5..=8).contains(&lower.len()) || (lower.len() == 4 && lower.as_bytes()[0].is_ascii_digit());
        if !in_extension && is_variant {
            if variants.contains(&lower) {
                return fail("language", "repeated variant subtag");
            }
            variants.push(lower);
        }
    }
    Ok(())
}

pub fn validate_uri(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_URI_LEN {
        return fail("uri", "longer than 8192 characters");
    }
    if !URI_RE.is_match(s) {
        return fail("uri", "not scheme:rest without whitespace");
    }
    Ok(())
}

pub fn validate_at_uri(s: &str) -> Result<(), SyntaxError> {
    if s.len() > MAX_ATURI_LEN {
        return fail("at-uri", "longer than 8192 characters");
    }
    let Some(caps) = ATURI_RE.captures(s) else {
        return fail("at-uri", "not at://authority[/collection[/rkey]]");
    };
    let authority = caps.get(1).map_or("", |m| m.as_str());
    validate_at_identifier(authority)
        .map_err(|_| SyntaxError { kind: "at-uri", reason: "authority is not a DID or handle" })?;
    if let Some(collection) = caps.get(3) {
        validate_nsid(collection.as_str())
            .map_err(|_| SyntaxError { kind: "at-uri", reason: "collection is not an NSID" })?;
    }
    if let Some(rkey) = caps.get(5) {
        validate_record_key(rkey.as_str())
            .map_err(|_| SyntaxError { kind: "at-uri", reason: "record key is invalid" })?;
    }
    Ok(())
}

/// Microseconds since the Unix epoch encoded in a TID (its 53-bit timestamp field).
pub fn tid_timestamp_micros(tid: &str) -> Result<u64, SyntaxError> {
    validate_tid(tid)?;
    const ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    let mut value: u64 = 0;
    for byte in tid.bytes() {
        let digit = ALPHABET.iter().position(|c| *c == byte).unwrap_or(0) as u64;
        value = (value << 5) | digit;
    }
    Ok(value >> 10)
}

/// Encode a TID from a microsecond timestamp and a 10-bit clock id.
pub fn tid_from_parts(micros: u64, clock_id: u16) -> String {
    const ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    let value = ((micros & ((1 << 53) - 1)) << 10) | u64::from(clock_id & 0x3ff);
    let mut out = [0u8; 13];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 5 * (12 - i);
        *slot = ALPHABET[((value >> shift) & 31) as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A repository path `<collection>/<rkey>` as stored in the MST.
pub fn validate_repo_path(path: &str) -> Result<(), SyntaxError> {
    let Some((collection, rkey)) = path.split_once('/') else {
        return fail("repo path", "missing '/' between collection and record key");
    };
    if collection.is_empty() || rkey.contains('/') {
        return fail("repo path", "must be exactly <collection>/<rkey>");
    }
    if !collection.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return fail("repo path", "collection has characters outside A-Za-z0-9._-");
    }
    validate_record_key(rkey).map_err(|_| SyntaxError { kind: "repo path", reason: "invalid record key" })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written shape checks against the spec regexes, on strings built from the
    /// characters that matter (both classes' members, their neighbours, `:` and non-ASCII).
    #[test]
    fn shape_checks_are_exactly_their_regexes() {
        // (spec regex, hand-written check, a prefix that gets samples past the first test)
        type Case = (&'static str, fn(&str) -> bool, &'static str);
        let cases: [Case; 3] = [
            (r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$", is_did_shaped, "did:"),
            (r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$", is_tid_shaped, ""),
            (r"^[a-zA-Z0-9_~.:-]{1,512}$", is_record_key_shaped, ""),
        ];
        let alphabet: Vec<char> = "abjkzAZ0129178:%._~-/ @é\n".chars().collect();
        let mut rng = fastrand::Rng::with_seed(3);
        for (pattern, check, prefix) in cases {
            let spec = regex(pattern);
            let mut samples: Vec<String> =
                vec![String::new(), "did:".into(), "did:plc:".into(), "a".repeat(512), "a".repeat(513)];
            for _ in 0..50_000 {
                let body: String =
                    (0..rng.usize(0..16)).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
                let prefix = if rng.bool() { prefix } else { "" };
                samples.push(format!("{prefix}{body}"));
            }
            samples.push("2222222222222".into());
            samples.push("3jzfcijpj2z2a".into());
            samples.push("kjzfcijpj2z2a".into());
            for sample in samples {
                assert_eq!(check(&sample), spec.is_match(&sample), "{pattern} on {sample:?}");
            }
        }
    }

    #[test]
    fn tid_round_trip() {
        let tid = tid_from_parts(1_700_000_000_000_000, 42);
        validate_tid(&tid).expect("valid tid");
        assert_eq!(tid_timestamp_micros(&tid).expect("parse"), 1_700_000_000_000_000);
    }

    #[test]
    fn repo_paths() {
        assert!(validate_repo_path("app.bsky.feed.post/3jzfcijpj2z2a").is_ok());
        assert!(validate_repo_path("app.bsky.feed.post").is_err());
        assert!(validate_repo_path("a/b/c").is_err());
        assert!(validate_repo_path("/abc").is_err());
    }
}
