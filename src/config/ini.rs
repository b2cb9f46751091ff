//! The INI reader behind every config file: it knows lines. [`Doc::read`] turns a file into
//! its `[section]` headers and `key=value` entries, each with the 1-based line it stands on,
//! and every error or warning about them names the file and that line.
//!
//! The dialect (parsed with rust-ini, plus a line scanner of our own):
//! - section names and keys are case-insensitive (`[default]`, `inner_port`); values are trimmed;
//! - a line whose first non-blank character is `#` or `;` is a comment;
//! - a trailing comment starts at a `#` or `;` that follows whitespace: in `1234=10.0.0.5:22 # ssh`
//!   the value is `10.0.0.5:22`, while in `TOKEN=a#b;c` the value is `a#b;c`;
//! - values are taken literally: no quotes, no escapes, no line continuations (a line may not
//!   end with `\`), so a token can hold any character except a `#`/`;` right after whitespace;
//! - keys outside any section count as `[DEFAULT]` keys (the original's files had the header);
//! - a key given twice in one section is an error, never silently "last one wins".
//!
//! rust-ini keeps repeated keys (its `Properties` is a multimap), which is how duplicates are
//! found; the line scanner, run first over the same text, supplies line numbers, rejects lines
//! that are neither `[section]` nor `key=value` (rust-ini would glue them to the next key) and
//! strips comments, which rust-ini only handles at the start of a line without its optional
//! `inline-comment` feature.
//!
//! What the keys mean is the callers' business; this module knows no key names, and of the
//! sections only `[DEFAULT]` (see [`Doc::default_entries`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ::ini::{Ini, ParseOption};

use super::ConfigError;

/// One `key=value` of a file.
#[derive(Debug)]
pub(super) struct Entry {
    /// Section name in upper case; `None` before any section header.
    pub(super) section: Option<String>,
    /// Key in upper case.
    pub(super) key: String,
    /// Key as written.
    pub(super) raw_key: String,
    pub(super) value: String,
    pub(super) line: Option<usize>,
}

impl Entry {
    /// `[MAPPER] key 1234`, or `key INNER_PORT` before any section header.
    fn label(&self) -> String {
        match &self.section {
            Some(s) => format!("[{s}] key {}", self.raw_key),
            None => format!("key {}", self.raw_key),
        }
    }
}

/// A `[section]` header.
#[derive(Debug)]
pub(super) struct SectionHead {
    /// Name in upper case.
    pub(super) name: String,
    /// Name as written.
    pub(super) raw: String,
    pub(super) line: usize,
}

/// A parsed INI file.
#[derive(Debug)]
pub(super) struct Doc {
    path: PathBuf,
    pub(super) entries: Vec<Entry>,
    pub(super) sections: Vec<SectionHead>,
}

impl Doc {
    pub(super) fn read(path: &Path, what: &str) -> Result<Doc, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::in_file(path, None, None, format!("cannot read {what}: {e}"))
        })?;
        Doc::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Doc, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let syntax = |line: usize, msg: String| ConfigError::in_file(path, Some(line), None, msg);
        // The scan: (section, key, line) of every key line, in order; cleaned text for rust-ini
        // with the same line count.
        let mut clean = String::with_capacity(text.len());
        let mut keys: Vec<(Option<String>, String, usize)> = Vec::new();
        let mut sections = Vec::new();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let t = strip_comment(raw).trim();
            if t.is_empty() {
                clean.push('\n');
                continue;
            }
            if t.ends_with('\\') {
                return Err(syntax(
                    n,
                    "a line may not end with '\\' (line continuation is not supported)".into(),
                ));
            }
            if let Some(rest) = t.strip_prefix('[') {
                let Some(name) = rest.strip_suffix(']') else {
                    return Err(syntax(
                        n,
                        format!("section header {t:?} does not end with ']'"),
                    ));
                };
                let name = name.trim();
                if name.is_empty() || name.contains(['[', ']']) {
                    return Err(syntax(n, format!("bad section header {t:?}")));
                }
                let upper = name.to_ascii_uppercase();
                current = Some(upper.clone());
                sections.push(SectionHead {
                    name: upper,
                    raw: name.to_string(),
                    line: n,
                });
            } else {
                let Some(pos) = t.find(['=', ':']) else {
                    return Err(syntax(
                        n,
                        format!("expected key=value or [section], found {t:?}"),
                    ));
                };
                let key = t[..pos].trim();
                if key.is_empty() {
                    return Err(syntax(n, format!("missing key before '{}'", &t[pos..=pos])));
                }
                keys.push((current.clone(), key.to_ascii_uppercase(), n));
            }
            clean.push_str(t);
            clean.push('\n');
        }

        let opt = ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            ..ParseOption::default()
        };
        let ini =
            Ini::load_from_str_opt(&clean, opt).map_err(|e| syntax(e.line, e.msg.to_string()))?;
        let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
        let mut entries = Vec::new();
        for (section, props) in ini.iter() {
            let section = section.map(|s| s.trim().to_ascii_uppercase());
            for (k, v) in props.iter() {
                let key = k.trim().to_ascii_uppercase();
                let nth = seen.entry((section.clone(), key.clone())).or_insert(0);
                let line = keys
                    .iter()
                    .filter(|(s, k, _)| *s == section && *k == key)
                    .nth(*nth)
                    .map(|x| x.2);
                *nth += 1;
                entries.push(Entry {
                    section: section.clone(),
                    key,
                    raw_key: k.trim().to_string(),
                    value: v.trim().to_string(),
                    line,
                });
            }
        }
        // rust-ini groups repeated sections; restore file order where lines are known.
        entries.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Ok(Doc {
            path: path.to_path_buf(),
            entries,
            sections,
        })
    }

    pub(super) fn entries_in<'a>(
        &'a self,
        section: &'a str,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.section.as_deref() == Some(section))
    }

    /// Keys of `[DEFAULT]` and of the head of the file; a key given twice is an error.
    pub(super) fn default_entries(&self) -> Result<Vec<&Entry>, ConfigError> {
        let mut out: Vec<&Entry> = Vec::new();
        for e in self
            .entries
            .iter()
            .filter(|e| e.section.as_deref().is_none_or(|s| s == "DEFAULT"))
        {
            if let Some(first) = out.iter().find(|f| f.key == e.key) {
                return Err(self.err(e, format!("key given twice{}", first_at(first))));
            }
            out.push(e);
        }
        Ok(out)
    }

    pub(super) fn err(&self, e: &Entry, msg: String) -> ConfigError {
        ConfigError::in_file(&self.path, e.line, Some(e.label()), msg)
    }

    pub(super) fn missing(&self, key: &str, msg: &str) -> ConfigError {
        ConfigError::in_file(
            &self.path,
            None,
            Some(format!("[DEFAULT] key {key}")),
            msg.to_string(),
        )
    }

    /// A warning line: `<file>: [line N: ][<key>: ]<what>`.
    pub(super) fn note(&self, line: Option<usize>, e: Option<&Entry>, what: &str) -> String {
        ConfigError::in_file(&self.path, line, e.map(Entry::label), what.to_string()).to_string()
    }
}

/// The line without its comment: a whole-line `#`/`;` comment, or one that starts at a
/// `#`/`;` following whitespace.
pub(super) fn strip_comment(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with(['#', ';']) {
        return "";
    }
    let mut prev_space = false;
    for (i, c) in line.char_indices() {
        if prev_space && (c == '#' || c == ';') {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// ` (first on line N)` when the first of two clashing entries has a known line, else nothing.
pub(super) fn first_at(first: &Entry) -> String {
    first
        .line
        .map_or_else(String::new, |l| format!(" (first on line {l})"))
}
