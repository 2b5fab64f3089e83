//! Java `.properties` files, read as `java.util.Properties.load` reads them (Kafka
//! Connect loads its worker and connector files that way).
//!
//! - A natural line ends at `\n`, `\r` or `\r\n`. Leading white space (space, tab,
//!   form feed) is skipped; a line that is then empty is blank, one that starts with
//!   `#` or `!` is a comment (comment lines never continue).
//! - A line whose content ends in an odd number of backslashes continues on the next
//!   line; the backslash, the line break and the next line's leading white space are
//!   dropped. A trailing backslash at the end of the file is dropped.
//! - The key ends at the first `=`, `:` or white space not escaped by a backslash;
//!   white space, then one `=` or `:`, then white space separate it from the value.
//! - Escapes in keys and values: `\t \n \r \f`, `\uXXXX` (UTF-16, surrogate pairs
//!   joined), and a backslash before any other character stands for that character
//!   (`\\ \= \: \  \# \!`).
//! - A key given again replaces the earlier value (the later one wins); the repeats
//!   are reported so the user can clean the file up.
//!
//! The caller decodes the bytes: `Properties.load(InputStream)`, which Connect uses,
//! reads ISO-8859-1.

use std::fmt;

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, unescaped.
    pub key: String,
    /// The value, unescaped (not trimmed: Connect's `ConfigDef` trims it later).
    pub value: String,
    /// The line the entry starts on (1-based).
    pub line: usize,
}

/// A key given more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeat {
    /// The key.
    pub key: String,
    /// Where it was first given.
    pub first_line: usize,
    /// Where it was given again (this value wins).
    pub line: usize,
}

/// A parsed file: unique keys in the order they first appear, each with its last value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    entries: Vec<Entry>,
    /// Keys given more than once.
    pub repeats: Vec<Repeat>,
}

/// A line that `Properties.load` refuses too (a malformed `\uXXXX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong (never the value itself: it may be a secret).
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl Properties {
    /// The entry for `key`.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    /// The entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    fn put(&mut self, key: String, value: String, line: usize) {
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(e) => {
                self.repeats.push(Repeat {
                    key: key.clone(),
                    first_line: e.line,
                    line,
                });
                e.value = value;
                e.line = line;
            }
            None => self.entries.push(Entry { key, value, line }),
        }
    }
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

/// Parse the text of a `.properties` file.
pub fn parse(text: &str) -> Result<Properties, ParseError> {
    let mut props = Properties::default();
    for (line, logical) in logical_lines(text) {
        let (key, value) = split(&logical);
        let key = unescape(key).map_err(|reason| ParseError { line, reason })?;
        let value = unescape(value).map_err(|reason| ParseError { line, reason })?;
        props.put(key, value, line);
    }
    Ok(props)
}

/// The logical lines (escapes still in), each with the line it starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut natural = natural_lines(text).peekable();
    while let Some((n, line)) = natural.next() {
        let content = line.trim_start_matches(is_blank);
        if content.is_empty() || content.starts_with(['#', '!']) {
            continue;
        }
        let mut logical = String::new();
        let mut part = content;
        loop {
            if ends_in_odd_backslashes(part) {
                logical.push_str(&part[..part.len() - 1]);
                match natural.next() {
                    Some((_, next)) => part = next.trim_start_matches(is_blank),
                    // A continuation at the end of the file: the backslash is dropped.
                    None => break,
                }
            } else {
                logical.push_str(part);
                break;
            }
        }
        out.push((n, logical));
    }
    out
}

/// Natural lines with their 1-based numbers, without the line terminators.
fn natural_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text;
    let mut n = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        n += 1;
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let line = &rest[..end];
        let after = &rest[end..];
        rest = if let Some(r) = after.strip_prefix("\r\n") {
            r
        } else if after.is_empty() {
            after
        } else {
            &after[1..]
        };
        Some((n, line))
    })
}

fn ends_in_odd_backslashes(s: &str) -> bool {
    s.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// Split a logical line into its raw key and raw value.
fn split(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut key_end = line.len();
    let mut value_start = line.len();
    let mut has_separator = false;
    for (i, c) in line.char_indices() {
        if !escaped && (c == '=' || c == ':') {
            key_end = i;
            value_start = i + 1;
            has_separator = true;
            break;
        }
        if !escaped && is_blank(c) {
            key_end = i;
            value_start = i + 1;
            break;
        }
        escaped = c == '\\' && !escaped;
    }
    let mut rest = &line[value_start..];
    // White space, then at most one '=' or ':' (if the key ended at white space), then
    // white space.
    loop {
        match rest.chars().next() {
            Some(c) if is_blank(c) => rest = &rest[1..],
            Some(c @ ('=' | ':')) if !has_separator => {
                has_separator = true;
                rest = &rest[c.len_utf8()..];
            }
            _ => break,
        }
    }
    (&line[..key_end], rest)
}

/// Resolve the escapes of a key or value.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    // UTF-16 code units from \u escapes, joined into characters when a run ends.
    let mut units: Vec<u16> = Vec::new();
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush_units(&mut units, &mut out)?;
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else {
            // A lone trailing backslash (only inside a line; see logical_lines).
            break;
        };
        if e == 'u' {
            let hex: String = chars.by_ref().take(4).collect();
            let unit = (hex.len() == 4 && hex.chars().all(|h| h.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(&hex, 16).ok())
                .flatten()
                .ok_or_else(|| "malformed \\uXXXX escape".to_string())?;
            units.push(unit);
            continue;
        }
        flush_units(&mut units, &mut out)?;
        out.push(match e {
            't' => '\t',
            'n' => '\n',
            'r' => '\r',
            'f' => '\x0c',
            other => other,
        });
    }
    flush_units(&mut units, &mut out)?;
    Ok(out)
}

fn flush_units(units: &mut Vec<u16>, out: &mut String) -> Result<(), String> {
    if units.is_empty() {
        return Ok(());
    }
    let s = String::from_utf16(units).map_err(|_| {
        "\\uXXXX escapes hold an unpaired UTF-16 surrogate (not a character)".to_string()
    })?;
    out.push_str(&s);
    units.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    fn one(text: &str) -> (String, String) {
        let all = kv(text);
        assert_eq!(all.len(), 1, "{text:?} -> {all:?}");
        all.into_iter().next().unwrap()
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn the_three_separators() {
        assert_eq!(one("a=b"), pair("a", "b"));
        assert_eq!(one("a:b"), pair("a", "b"));
        assert_eq!(one("a b"), pair("a", "b"));
        assert_eq!(one("a\tb"), pair("a", "b"));
        assert_eq!(one("a\x0cb"), pair("a", "b"));
    }

    #[test]
    fn the_first_unescaped_separator_ends_the_key() {
        assert_eq!(one("a=b=c"), pair("a", "b=c"));
        assert_eq!(one("a:b=c"), pair("a", "b=c"));
        assert_eq!(one("url=tcp://h:1883"), pair("url", "tcp://h:1883"));
        assert_eq!(one("a b=c"), pair("a", "b=c"));
    }

    #[test]
    fn white_space_and_one_separator_around_the_value() {
        assert_eq!(one("a = b"), pair("a", "b"));
        assert_eq!(one("a   :   b"), pair("a", "b"));
        assert_eq!(one("a b"), pair("a", "b"));
        // Only one separator is eaten after white space.
        assert_eq!(one("a = = b"), pair("a", "= b"));
        assert_eq!(one("a == b"), pair("a", "= b"));
        // Trailing white space is part of the value.
        assert_eq!(one("a = b  "), pair("a", "b  "));
    }

    #[test]
    fn a_key_alone_has_an_empty_value() {
        assert_eq!(one("lonely"), pair("lonely", ""));
        assert_eq!(one("lonely="), pair("lonely", ""));
        assert_eq!(one("lonely   "), pair("lonely", ""));
        assert_eq!(one("=value"), pair("", "value"));
    }

    #[test]
    fn leading_white_space_is_skipped() {
        assert_eq!(one("   \t a=b"), pair("a", "b"));
        assert_eq!(one("\x0ca=b"), pair("a", "b"));
    }

    #[test]
    fn comments_and_blank_lines() {
        let text = "# comment\n! also a comment\n   # indented comment\n\n   \t\nk=v\n#k=w\n";
        assert_eq!(kv(text), vec![pair("k", "v")]);
        // '#' inside a value is not a comment.
        assert_eq!(one("k=v # not a comment"), pair("k", "v # not a comment"));
    }

    #[test]
    fn comment_lines_never_continue() {
        let text = "# comment \\\nk=v\n";
        assert_eq!(kv(text), vec![pair("k", "v")]);
    }

    #[test]
    fn continuation_lines() {
        assert_eq!(one("k=a,\\\n    b,\\\n\tc"), pair("k", "a,b,c"));
        // A continuation line starting with '#' is content, not a comment.
        assert_eq!(one("k=a\\\n  #b"), pair("k", "a#b"));
        // The key itself can continue.
        assert_eq!(one("ke\\\n  y=v"), pair("key", "v"));
        // \r\n and \r line ends.
        assert_eq!(one("k=a\\\r\n  b"), pair("k", "ab"));
        assert_eq!(kv("k=a\\\r  b\rx=y"), vec![pair("k", "ab"), pair("x", "y")]);
        // An empty line after a continuation ends the logical line.
        assert_eq!(kv("k=a\\\n\nx=y"), vec![pair("k", "a"), pair("x", "y")]);
    }

    #[test]
    fn odd_trailing_backslashes_continue_even_ones_do_not() {
        assert_eq!(kv("k=a\\\\\nx=y"), vec![pair("k", "a\\"), pair("x", "y")]);
        assert_eq!(one("k=a\\\\\\\nb"), pair("k", "a\\b"));
    }

    #[test]
    fn a_backslash_at_the_end_of_the_file_is_dropped() {
        assert_eq!(one("k=v\\"), pair("k", "v"));
    }

    #[test]
    fn escapes() {
        assert_eq!(one(r"k=a\tb\nc\rd\fe"), pair("k", "a\tb\nc\rd\x0ce"));
        assert_eq!(one(r"k=\\ \= \: \  \# \!"), pair("k", "\\ = :   # !"));
        // Any other escaped character stands for itself.
        assert_eq!(one(r"k=\q\z"), pair("k", "qz"));
        // Escaped separators and spaces belong to the key.
        assert_eq!(one(r"a\=b\:c\ d=v"), pair("a=b:c d", "v"));
        // An escaped leading space of the value is kept.
        assert_eq!(one(r"k=\  v"), pair("k", "  v"));
        // An escaped '#' or '!' starts a key, not a comment.
        assert_eq!(one(r"\#k=v"), pair("#k", "v"));
    }

    #[test]
    fn unicode_escapes() {
        assert_eq!(one(r"k=\u00e9t\u00C9"), pair("k", "étÉ"));
        // A surrogate pair becomes one character.
        assert_eq!(one(r"k=\uD83D\uDE00"), pair("k", "😀"));
        let bad = parse("a=1\nk=\\u12G4\n").unwrap_err();
        assert_eq!(bad.line, 2);
        assert!(bad.reason.contains("malformed"), "{bad}");
        assert!(parse(r"k=\u12").is_err());
        assert!(parse(r"k=\uD83D").unwrap_err().reason.contains("surrogate"));
    }

    #[test]
    fn later_duplicates_win_and_are_reported() {
        let p = parse("a=1\nb=2\na=3\n").unwrap();
        assert_eq!(
            p.iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect::<Vec<_>>(),
            vec![("a", "3"), ("b", "2")]
        );
        assert_eq!(
            p.repeats,
            vec![Repeat {
                key: "a".into(),
                first_line: 1,
                line: 3
            }]
        );
        assert_eq!(p.get("a").unwrap().line, 3);
    }

    #[test]
    fn line_numbers_count_natural_lines() {
        let p = parse("# c\n\nk=a\\\n b\nx=y\r\nz=w").unwrap();
        let lines: Vec<_> = p.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(lines, vec![("k", 3), ("x", 5), ("z", 6)]);
    }
}
