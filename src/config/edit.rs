//! Changes to the port mapping file made while the server runs: [`set_proto_mapping`] and
//! [`remove_proto_mapping`] rewrite the lines of one port's TCP (`[MAPPER]`) or UDP (`[UDP]`)
//! mapping in the file's text and leave every other byte as it was (comments, blank lines,
//! the order and spelling of the other lines, the other protocol's mapping of the same port,
//! the line endings, a UTF-8 BOM, a missing final newline); [`set_mapping`] and
//! [`remove_mapping`] are the same for TCP. [`write_atomically`] puts the new text in place,
//! so a reader sees the old file or the new one, never a mix. The functions are re-exported
//! as `crate::config::{set_mapping, remove_mapping, set_proto_mapping, remove_proto_mapping,
//! write_atomically}`.
//!
//! Lines are read as `ini` reads them: section names compare without case, a port key by its
//! number as `load_mappings` parses it (`01234` is port 1234), and text after a `#`/`;` that
//! follows whitespace is a comment, never part of a value.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::ini::strip_comment;
use super::mappings::{Proto, check_tag, split_target, target_range};
use super::range::PortRange;
use super::{DEFAULT_TAG, Target};

/// [`set_proto_mapping`] for TCP: the mapping file's text with `port`'s `[MAPPER]` line
/// mapping it to `target`, and the port tagged `tag`.
pub fn set_mapping(text: &str, port: u16, target: &str, tag: &str) -> String {
    set_proto_mapping(text, Proto::Tcp, port, target, tag)
}

/// The mapping file's text with `port` mapped for `proto` to `target` (in `[MAPPER]` for TCP,
/// `[UDP]` for UDP) and tagged `tag`.
///
/// An existing line of the port in that section (or in `[TAG]`) keeps its key as written, its
/// separator, its spacing and its trailing comment: only the value changes. A new line
/// `port=target` (or `port=tag`) goes right after the last entry of the last such section,
/// or in a new section at the end of the file. Tag [`DEFAULT_TAG`] removes the port's `[TAG]`
/// line instead. The other protocol's section is not touched, but `[TAG]` is the port
/// number's: a TCP and a UDP mapping of one port share its tag, so pass the other mapping's
/// tag to keep it. No other line changes.
///
/// `target` must be a target [`Target::parse`] accepts and `tag` a valid tag that does not
/// end with `\` (a line may not), or the file will not load.
pub fn set_proto_mapping(text: &str, proto: Proto, port: u16, target: &str, tag: &str) -> String {
    debug_assert!(Target::parse(target).is_ok(), "target {target:?}");
    debug_assert!(
        check_tag(tag).is_ok() && !tag.ends_with('\\'),
        "tag {tag:?}"
    );
    let mut file = Lines::split(text);
    file.set(proto.section(), port, target);
    if tag == DEFAULT_TAG {
        file.remove("TAG", port);
    } else {
        file.set("TAG", port, tag);
    }
    file.join()
}

/// [`remove_proto_mapping`] for TCP: the mapping file's text without `port`'s `[MAPPER]` and
/// `[PROXY]` lines, nor, unless `[UDP]` maps the port, its `[TAG]`, `[ALLOW]` and `[LIMIT]`
/// lines.
pub fn remove_mapping(text: &str, port: u16) -> String {
    remove_proto_mapping(text, Proto::Tcp, port)
}

/// The mapping file's text without `port`'s mapping for `proto` (its `[MAPPER]` or `[UDP]`
/// line; a range line holding it is split). The port's `[TAG]`, `[ALLOW]` and `[LIMIT]` lines
/// serve both protocols: they go too when the other protocol does not map the port either
/// (such a line of an unmapped port would not load), and stay otherwise. Its `[PROXY]` line
/// is for TCP only and goes with the TCP mapping (or with the last mapping). No other line
/// changes (comments above the removed lines stay).
pub fn remove_proto_mapping(text: &str, proto: Proto, port: u16) -> String {
    let mut file = Lines::split(text);
    file.remove(proto.section(), port);
    let last = file.find(proto.other().section(), port).is_empty();
    if last || proto == Proto::Tcp {
        file.remove("PROXY", port);
    }
    if last {
        for section in ["TAG", "ALLOW", "LIMIT"] {
            file.remove(section, port);
        }
    }
    file.join()
}

/// Replace the file at `path` with `contents` atomically: write a temporary file in the same
/// folder (`.<name>.tmp-<pid>-<n>`), give it the old file's permission mode if there is one,
/// flush it to disk, rename it over `path` and flush the folder (best effort). If `path` is a
/// symbolic link, the file it points to is replaced and the link stays. On failure the
/// temporary file is removed and the error names `path`.
pub fn write_atomically(path: &Path, contents: &str) -> io::Result<()> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let real = real_path(path).map_err(named)?;
    let tmp = TempFile::create(&real).map_err(named)?;
    let mode = match fs::metadata(&real) {
        Ok(meta) => Some(meta.permissions().mode() & 0o7777),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(named(e)),
    };
    tmp.fill(mode, contents).map_err(named)?;
    tmp.rename_over(&real).map_err(named)?;
    if let Ok(dir) = File::open(folder(&real)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// `path`, or the file a symbolic link there points to (links followed to the end).
fn real_path(path: &Path) -> io::Result<PathBuf> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => fs::canonicalize(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot follow the symbolic link: {e}"))),
        _ => Ok(path.to_path_buf()),
    }
}

/// The folder of a file, `.` for a bare name.
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary file beside its destination, removed on drop unless renamed.
struct TempFile {
    path: PathBuf,
    file: File,
    renamed: bool,
}

impl TempFile {
    fn create(dest: &Path) -> io::Result<TempFile> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let Some(name) = dest.file_name() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file name",
            ));
        };
        loop {
            let mut tmp = OsString::from(".");
            tmp.push(name);
            tmp.push(format!(
                ".tmp-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let path = folder(dest).join(tmp);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file,
                        renamed: false,
                    });
                }
                // Left by an earlier process with the same id: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create temporary file {}: {e}", path.display()),
                    ));
                }
            }
        }
    }

    fn fill(&self, mode: Option<u32>, contents: &str) -> io::Result<()> {
        if let Some(mode) = mode {
            self.file
                .set_permissions(fs::Permissions::from_mode(mode))?;
        }
        (&self.file).write_all(contents.as_bytes())?;
        self.file.sync_all()
    }

    fn rename_over(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.path);
        }
    }
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

/// The value of an entry line, trimmed, without its comment.
fn value_of(line: &str) -> &str {
    let code = strip_comment(line);
    code.find(['=', ':'])
        .map_or("", |sep| code[sep + 1..].trim())
}

/// `line` with its key replaced by `key`; the indentation and everything from the
/// separator on stay.
fn with_key(line: &str, key: &str) -> String {
    let code = strip_comment(line);
    let sep = code
        .find(['=', ':'])
        .expect("an entry line has a separator");
    let indent = line.len() - line.trim_start().len();
    let spacing = code[..sep].len() - code[..sep].trim_end().len();
    format!("{}{key}{}", &line[..indent], &line[sep - spacing..])
}

/// What the ports `piece` of a line `keys=value` of `section` get: the value itself, or in
/// `[MAPPER]` and `[UDP]` the targets of those ports (`None` if the value is not a valid
/// target).
fn piece_value(section: &str, value: &str, keys: PortRange, piece: PortRange) -> Option<String> {
    if Proto::of_section(section).is_none() {
        return Some(value.to_string());
    }
    let (host, ports) = target_range(value, keys).ok()?;
    let bare = split_target(value).is_ok_and(|(_, port)| port.is_none());
    if piece.size() > 1 && bare {
        // `6000-6009=10.0.0.5`: the same ports, written as a bare host (a single port may
        // not be).
        return Some(value.to_string());
    }
    let offset = usize::from(piece.first - keys.first);
    let first = ports.nth(offset);
    let t = Target { host, port: first };
    Some(if piece.size() == 1 {
        t.to_string()
    } else {
        format!("{t}-{}", ports.nth(offset + piece.size() - 1))
    })
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

    /// The lines of `section` (any of that name) whose key is `port` or a range holding it,
    /// with that key.
    fn find(&self, section: &str, port: u16) -> Vec<(usize, PortRange)> {
        self.scan()
            .iter()
            .enumerate()
            .filter_map(|(i, (s, k))| match k {
                Kind::Entry(key) if s.as_deref() == Some(section) => PortRange::parse(key)
                    .ok()
                    .filter(|r| r.contains(port))
                    .map(|r| (i, r)),
                _ => None,
            })
            .collect()
    }

    /// Give `port` the value `value` in `section`: on its lines, or on a new line. A range
    /// line holding the port is split around it, unless it already gives the port `value`.
    fn set(&mut self, section: &str, port: u16, value: &str) {
        let found = self.find(section, port);
        for &(i, keys) in found.iter().rev() {
            if keys.size() == 1 {
                let text = with_value(&self.lines[i].text, value);
                self.lines[i].text = Cow::Owned(text);
            } else if piece_value(
                section,
                value_of(&self.lines[i].text),
                keys,
                PortRange::one(port),
            )
            .as_deref()
                != Some(value)
            {
                self.split_range(i, section, keys, port, Some(value));
            }
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

    /// Remove `port` from `section`: its own lines go, a range line holding it is split.
    fn remove(&mut self, section: &str, port: u16) {
        for (i, keys) in self.find(section, port).into_iter().rev() {
            if keys.size() == 1 {
                self.lines.remove(i);
            } else {
                self.split_range(i, section, keys, port, None);
            }
        }
    }

    /// Replace range line `i` (key `keys`) by the ports below `port`, `port=value` (if
    /// given) and the ports above. The first piece keeps the line's spacing and comment. A
    /// piece whose value cannot be worked out (the line does not load anyway) is dropped.
    fn split_range(
        &mut self,
        i: usize,
        section: &str,
        keys: PortRange,
        port: u16,
        value: Option<&str>,
    ) {
        let line = self.lines.remove(i);
        let old = value_of(&line.text).to_string();
        let mut texts = Vec::new();
        let below = (keys.first < port).then(|| PortRange {
            first: keys.first,
            last: port - 1,
        });
        let above = (port < keys.last).then(|| PortRange {
            first: port + 1,
            last: keys.last,
        });
        if let Some(r) = below
            && let Some(v) = piece_value(section, &old, keys, r)
        {
            texts.push((r, v));
        }
        if let Some(v) = value {
            texts.push((PortRange::one(port), v.to_string()));
        }
        if let Some(r) = above
            && let Some(v) = piece_value(section, &old, keys, r)
        {
            texts.push((r, v));
        }
        for (n, (r, v)) in texts.into_iter().enumerate() {
            let text = if n == 0 {
                with_key(&with_value(&line.text, &v), &r.to_string())
            } else {
                format!("{r}={v}")
            };
            self.lines.insert(
                i + n,
                Line {
                    text: Cow::Owned(text),
                    eol: if n == 0 { line.eol } else { self.eol },
                },
            );
        }
    }

    fn push(&mut self, text: String) {
        self.lines.push(Line {
            text: Cow::Owned(text),
            eol: self.eol,
        });
    }
}
