//! The `.env` file reader: `NAME=value` lines into a map, with line numbers,
//! without touching the process environment.
//!
//! Guarantees:
//! - an error names the line and what is wrong with it, never its content
//!   (a malformed line may hold a password);
//! - nothing panics, whatever the bytes (a NUL, invalid UTF-8, a binary file);
//! - the process environment is not modified (`set_var` panics on a NUL and
//!   is unsound with threads), so values stay in the returned map.
//!
//! The grammar is the common subset of dotenv files: blank lines and `#`
//! comments; `NAME=value` with an optional `export ` prefix; a value is bare
//! (up to a ` #` comment, trimmed), `'single-quoted'` (literal) or
//! `"double-quoted"` (escapes `\n`, `\t`, `\r`, `\\`, `\"`, `\$`). No `$VAR`
//! expansion, no values spanning lines. The first definition of a name wins.

use std::collections::HashMap;

/// One variable read from the file, with the line it came from (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value (may hold a password: never print it).
    pub value: String,
    /// The line it was defined on.
    pub line: usize,
}

/// What is wrong with one line. The message never quotes the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of ./.env: {problem}")]
pub struct LineError {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong, in words that quote nothing from the file.
    pub problem: &'static str,
}

/// Parses the bytes of a `.env` file.
///
/// Fails on the first malformed line.
pub fn parse(bytes: &[u8]) -> Result<HashMap<String, Entry>, LineError> {
    let mut out: HashMap<String, Entry> = HashMap::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let err = |problem| LineError { line, problem };
        if raw.contains(&0) {
            return Err(err("contains a NUL byte"));
        }
        let text = std::str::from_utf8(raw).map_err(|_| err("is not valid UTF-8"))?;
        let text = text.strip_suffix('\r').unwrap_or(text).trim_start();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let text = text.strip_prefix("export ").unwrap_or(text).trim_start();
        let Some((name, rest)) = text.split_once('=') else {
            return Err(err("expected NAME=value (no `=` found)"));
        };
        let name = name.trim_end();
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(err(
                "the name before `=` is not a variable name (letters, digits and _)",
            ));
        }
        let value = value(rest.trim_start()).map_err(err)?;
        out.entry(name.to_string()).or_insert(Entry { value, line });
    }
    Ok(out)
}

fn value(rest: &str) -> Result<String, &'static str> {
    let (v, after) = if let Some(body) = rest.strip_prefix('\'') {
        let end = body
            .find('\'')
            .ok_or("the single-quoted value is not closed on this line")?;
        (body[..end].to_string(), &body[end + 1..])
    } else if let Some(body) = rest.strip_prefix('"') {
        let mut v = String::new();
        let mut it = body.char_indices();
        let mut end = None;
        while let Some((i, c)) = it.next() {
            match c {
                '"' => {
                    end = Some(i);
                    break;
                }
                '\\' => match it.next().map(|(_, e)| e) {
                    Some('n') => v.push('\n'),
                    Some('t') => v.push('\t'),
                    Some('r') => v.push('\r'),
                    Some(e @ ('\\' | '"' | '$' | '\'')) => v.push(e),
                    Some(_) => return Err("the double-quoted value has an unknown `\\` escape"),
                    None => break,
                },
                c => v.push(c),
            }
        }
        let end = end.ok_or("the double-quoted value is not closed on this line")?;
        (v, &body[end + 1..])
    } else {
        let end = rest
            .char_indices()
            .find(|&(i, c)| c == '#' && (i == 0 || rest[..i].ends_with(char::is_whitespace)))
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        return Ok(rest[..end].trim_end().to_string());
    };
    let after = after.trim_start();
    if !after.is_empty() && !after.starts_with('#') {
        return Err("unexpected text after the closing quote");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(bytes: &str) -> HashMap<String, String> {
        parse(bytes.as_bytes())
            .unwrap()
            .into_iter()
            .map(|(k, e)| (k, e.value))
            .collect()
    }

    #[test]
    fn the_common_forms_parse() {
        let m = get("# comment\n\nA=1\nexport B = two words # note\nC='x # y'\r\nD=\"a\\nb \\\"q\\\"\" # c\nE=\nF=p#ss\nA=ignored\n");
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "x # y");
        assert_eq!(m["D"], "a\nb \"q\"");
        assert_eq!(m["E"], "");
        assert_eq!(m["F"], "p#ss");
        let lines = parse(b"A=1\n\nB=2").unwrap();
        assert_eq!(lines["B"].line, 3);
    }

    #[test]
    fn errors_name_the_line_and_never_the_content() {
        let secret = "Sup3r-Secret-Value";
        for (text, line) in [
            (format!("A=1\nPOSTGRES_CLIENT_PASSWORD=\"{secret}\n"), 2),
            (format!("A=1\nB=2\n{secret}\n"), 3),
            (format!("POSTGRES_CLIENT_PASSWORD='{secret}\n"), 1),
            (
                format!("X=1\nPOSTGRES_CLIENT_PASSWORD=\"{secret}\" trailing\n"),
                2,
            ),
            (format!("{secret} x=1\n"), 1),
            (format!("P=\"{secret}\\q\"\n"), 1),
        ] {
            let e = parse(text.as_bytes()).unwrap_err();
            assert_eq!(e.line, line, "{text}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("line {line} of ./.env: ")),
                "{msg}"
            );
            assert!(!msg.contains("Secret"), "{msg}");
        }
    }

    #[test]
    fn nul_and_invalid_utf8_are_errors_not_panics() {
        let e = parse(b"A=1\nPOSTGRES_CLIENT_PASSWORD=pa\0ss\n").unwrap_err();
        assert_eq!(
            e,
            LineError {
                line: 2,
                problem: "contains a NUL byte"
            }
        );
        let e = parse(b"A=\xff\xfe\n").unwrap_err();
        assert_eq!(e.line, 1);
        // Arbitrary bytes never panic.
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..40)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 13) as u8)
                .collect();
            let _ = parse(&bytes);
        }
    }
}
