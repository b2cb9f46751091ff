//! Changes to the port mapping file made while the server runs: [`set_mapping`] and
//! [`remove_mapping`] rewrite the lines of one port in the file's text and leave every other
//! byte as it was (comments, blank lines, the order and spelling of the other lines, the line
//! endings, a UTF-8 BOM, a missing final newline). The functions are re-exported as
//! `crate::config::{set_mapping, remove_mapping}`.
//!
//! Lines are read as `ini` reads them: section names compare without case, a port key by its
//! number as `load_mappings` parses it (`01234` is port 1234), and text after a `#`/`;` that
//! follows whitespace is a comment, never part of a value.

use std::borrow::Cow;

use super::ini::strip_comment;
use super::mappings::check_tag;
use super::{DEFAULT_TAG, Target, parse_port};

/// The mapping file's text with `port` mapped to `target` and tagged `tag`.
///
/// An existing `[MAPPER]` (or `[TAG]`) line of the port keeps its key as written, its
/// separator, its spacing and its trailing comment: only the value changes. A new line
/// `port=target` (or `port=tag`) goes right after the last entry of the last such section,
/// or in a new section at the end of the file. Tag [`DEFAULT_TAG`] removes the port's `[TAG]`
/// line instead. No other line changes.
///
/// `target` must be a target [`Target::parse`] accepts and `tag` a valid tag that does not
/// end with `\` (a line may not), or the file will not load.
pub fn set_mapping(text: &str, port: u16, target: &str, tag: &str) -> String {
    debug_assert!(Target::parse(target).is_ok(), "target {target:?}");
    debug_assert!(
        check_tag(tag).is_ok() && !tag.ends_with('\\'),
        "tag {tag:?}"
    );
    let mut file = Lines::split(text);
    file.set("MAPPER", port, target);
    if tag == DEFAULT_TAG {
        file.remove("TAG", port);
    } else {
        file.set("TAG", port, tag);
    }
    file.join()
}

/// The mapping file's text without the `[MAPPER]` and `[TAG]` lines of `port`; no other line
/// changes (comments above the removed lines stay).
pub fn remove_mapping(text: &str, port: u16) -> String {
    let mut file = Lines::split(text);
    file.remove("MAPPER", port);
    file.remove("TAG", port);
    file.join()
}

/// A file's text as lines, each with its own line ending, to edit and join again.
struct Lines<'a> {
    bom: bool,
    lines: Vec<Line<'a>>,
    /// The file's line ending (that of its first line), for new lines.
    eol: &'static str,
    /// Whether the text ends with a line ending (an empty text counts as one).
    final_eol: bool,
}

struct Line<'a> {
    /// Without its line ending.
    text: Cow<'a, str>,
    /// `\n`, `\r\n`, or empty on a last line without one.
    eol: &'static str,
}

/// What a line is, read as `ini` reads it.
enum Kind<'a> {
    /// Blank or a comment.
    Blank,
    /// A `[section]` header; the name in upper case.
    Header(String),
    /// A `key=value` (or `key:value`); the key trimmed.
    Entry(&'a str),
    /// Neither: the file does not load.
    Bad,
}

fn kind(line: &str) -> Kind<'_> {
    let t = strip_comment(line).trim();
    if t.is_empty() {
        return Kind::Blank;
    }
    if let Some(rest) = t.strip_prefix('[') {
        return match rest.strip_suffix(']') {
            Some(name) => Kind::Header(name.trim().to_ascii_uppercase()),
            None => Kind::Bad,
        };
    }
    match t.find(['=', ':']) {
        Some(pos) => Kind::Entry(t[..pos].trim()),
        None => Kind::Bad,
    }
}

/// `line` with its value replaced by `value`; key, separator, spacing and trailing comment
/// stay.
fn with_value(line: &str, value: &str) -> String {
    let code = strip_comment(line);
    let sep = code
        .find(['=', ':'])
        .expect("an entry line has a separator");
    let after = &code[sep + 1..];
    let end = code.trim_end().len();
    let mut start = sep + 1 + (after.len() - after.trim_start().len());
    // An empty value, or one that would read as a comment after the spacing.
    if start > end || value.starts_with(['#', ';']) {
        start = sep + 1;
    }
    let mut out = String::with_capacity(line.len() + value.len());
    out.push_str(&line[..start]);
    out.push_str(value);
    out.push_str(&line[end.max(start)..]);
    out
}

impl<'a> Lines<'a> {
    fn split(text: &'a str) -> Lines<'a> {
        let (bom, body) = match text.strip_prefix('\u{feff}') {
            Some(body) => (true, body),
            None => (false, text),
        };
        let lines: Vec<Line<'a>> = body
            .split_inclusive('\n')
            .map(|piece| {
                let (text, eol) = if let Some(t) = piece.strip_suffix("\r\n") {
                    (t, "\r\n")
                } else if let Some(t) = piece.strip_suffix('\n') {
                    (t, "\n")
                } else {
                    (piece, "")
                };
                Line {
                    text: Cow::Borrowed(text),
                    eol,
                }
            })
            .collect();
        let eol = lines.first().map_or("\n", |l| l.eol);
        Lines {
            bom,
            eol: if eol.is_empty() { "\n" } else { eol },
            lines,
            final_eol: body.is_empty() || body.ends_with('\n'),
        }
    }

    fn join(&self) -> String {
        let mut out = String::new();
        if self.bom {
            out.push('\u{feff}');
        }
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            out.push_str(&line.text);
            if i < last || self.final_eol {
                out.push_str(if line.eol.is_empty() {
                    self.eol
                } else {
                    line.eol
                });
            }
        }
        out
    }

    /// The section each line stands in (a header stands in its own), and what it is.
    fn scan(&self) -> Vec<(Option<String>, Kind<'_>)> {
        let mut current = None;
        self.lines
            .iter()
            .map(|line| {
                let k = kind(&line.text);
                if let Kind::Header(name) = &k {
                    current = Some(name.clone());
                }
                (current.clone(), k)
            })
            .collect()
    }

    /// The lines of `section` (any of that name) whose key is `port`.
    fn find(&self, section: &str, port: u16) -> Vec<usize> {
        self.scan()
            .iter()
            .enumerate()
            .filter(|(_, (s, k))| {
                s.as_deref() == Some(section)
                    && matches!(k, Kind::Entry(key) if parse_port(key) == Some(port))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Give `port` the value `value` in `section`: on its lines, or on a new line.
    fn set(&mut self, section: &str, port: u16, value: &str) {
        let found = self.find(section, port);
        for &i in &found {
            let text = with_value(&self.lines[i].text, value);
            self.lines[i].text = Cow::Owned(text);
        }
        if !found.is_empty() {
            return;
        }
        let entry = format!("{port}={value}");
        let scan = self.scan();
        let header = scan
            .iter()
            .rposition(|(_, k)| matches!(k, Kind::Header(name) if name == section));
        let Some(header) = header else {
            let blank_before = self.lines.last().is_some_and(|l| !l.text.trim().is_empty());
            if blank_before {
                self.push(String::new());
            }
            self.push(format!("[{section}]"));
            self.push(entry);
            return;
        };
        let after = (header + 1..scan.len())
            .take_while(|&i| !matches!(scan[i].1, Kind::Header(_)))
            .filter(|&i| matches!(scan[i].1, Kind::Entry(_)))
            .last()
            .unwrap_or(header);
        self.lines.insert(
            after + 1,
            Line {
                text: Cow::Owned(entry),
                eol: self.eol,
            },
        );
    }

    /// Remove the lines of `port` in `section`.
    fn remove(&mut self, section: &str, port: u16) {
        for i in self.find(section, port).into_iter().rev() {
            self.lines.remove(i);
        }
    }

    fn push(&mut self, text: String) {
        self.lines.push(Line {
            text: Cow::Owned(text),
            eol: self.eol,
        });
    }
}
