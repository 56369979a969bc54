//! Where things are in a configuration file, and every structural problem in one run.
//!
//! Positions come from the TOML parser (toml_edit's spans), never from scanning the text:
//! [`Spans::locate`] turns a key path such as `camera.2.port` (the second `[[camera]]`
//! table's `port`, 1-based as a person counts) into a line and column.
//!
//! [`parse_all`] deserializes a file as serde does, but does not stop at the first problem:
//! each unknown key, value of the wrong type and missing key is recorded with its position,
//! then repaired in a scratch copy of the document (the unknown key removed, a placeholder of
//! the expected type put in its place), and the copy is deserialized again, until it goes
//! through. The placeholders only let the rest of the file be checked: a problem is already
//! recorded for each, and the caller drops later problems of the same key ([`covers`]).
//!
//! No message quotes the value of a secret key (`token`, `hmac_key`, `password`), and
//! structural messages quote no value at all: they name the key and the types.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml_edit::{Array, DocumentMut, ImDocument, InlineTable, Item, Value};

use super::Problem;

/// Keys whose values are secrets: never quoted in a message.
const SECRET_KEYS: [&str; 3] = ["token", "hmac_key", "password"];

/// Most repair rounds of one file: a file with more structural problems than this has its
/// first ones reported.
const MAX_ROUNDS: usize = 200;

/// Whether the last key of a dotted path holds a secret.
pub(super) fn is_secret(path: &str) -> bool {
    path.rsplit('.')
        .next()
        .is_some_and(|k| SECRET_KEYS.contains(&k))
}

/// Whether a problem already recorded for `recorded` covers `key` (the same key, or one inside it).
pub(super) fn covers(recorded: &str, key: &str) -> bool {
    key == recorded
        || key
            .strip_prefix(recorded)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// A file's text and the parser's spans of it.
pub(super) struct Spans<'t> {
    text: &'t str,
    doc: Option<ImDocument<&'t str>>,
}

impl<'t> Spans<'t> {
    /// Parse `text` (a file with a syntax error has no spans: nothing is located).
    pub(super) fn new(text: &'t str) -> Self {
        Spans {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let before = self
            .text
            .get(..offset.min(self.text.len()))
            .unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// Line and column of `path`: its key when written; else the nearest enclosing table
    /// that is (a missing key points at its table); `None` when not even that is written.
    pub(super) fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let doc = self.doc.as_ref()?;
        let span = span_of(doc.as_item(), path)?;
        Some(self.position(span.start))
    }
}

/// The span of `path`'s key (or element), or of the deepest part of it that is written.
fn span_of(root: &Item, path: &str) -> Option<Range<usize>> {
    let mut item = root;
    let mut best = None;
    for seg in path.split('.') {
        if let Some(t) = item.as_table_like() {
            let Some((k, v)) = t.get_key_value(seg) else {
                break;
            };
            best = k.span().or_else(|| v.span()).or(best);
            item = v;
        } else if let Some(v) = seg
            .parse::<usize>()
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| item.get(i))
        {
            best = v.span().or(best);
            item = v;
        } else {
            break;
        }
    }
    best
}

/// The path of the deepest key, table or element whose span holds byte `at`.
fn path_at(item: &Item, at: usize, path: &mut Vec<String>) {
    let holds = |s: &Option<Range<usize>>| {
        s.as_ref()
            .is_some_and(|s| s.start <= at && at < s.end.max(s.start + 1))
    };
    if let Some(t) = item.as_table_like() {
        // An array of tables spans from its first table to its last, and other tables may
        // be written between them (`[[camera]]`, `[[loop]]`, `[[camera]]`): a span that
        // holds `at` with nothing inside it that does is only the answer if no other does.
        let mut fallback = None;
        for (name, v) in t.iter() {
            if holds(&t.key(name).and_then(toml_edit::Key::span)) {
                path.push(name.to_string());
                return;
            }
            let span = v.span();
            // Tables made implicitly (`[a.b]` makes `a`) have no span: look inside them.
            if span.is_none() || holds(&span) {
                path.push(name.to_string());
                let depth = path.len();
                path_at(v, at, path);
                if path.len() > depth {
                    return;
                }
                if holds(&span) && fallback.is_none() {
                    fallback = Some(path.clone());
                }
                path.pop();
            }
        }
        if let Some(f) = fallback {
            *path = f;
        }
        return;
    }
    let n = match item {
        Item::ArrayOfTables(a) => a.len(),
        Item::Value(Value::Array(a)) => a.len(),
        _ => 0,
    };
    for i in 0..n {
        if let Some(v) = item.get(i) {
            if holds(&v.span()) {
                path.push((i + 1).to_string());
                path_at(v, at, path);
                return;
            }
        }
    }
}

/// How to repair the scratch document after a problem.
#[derive(Debug, Clone)]
enum Fix {
    /// Take the key out.
    Remove,
    /// Put this value in (or add the key with it).
    Set(Value),
}

impl Fix {
    /// What the repair does, to notice one that repeats.
    fn describe(&self) -> String {
        match self {
            Fix::Remove => "remove".into(),
            Fix::Set(v) => format!("set {v}"),
        }
    }
}

/// What a type serde expected is called in a message, and a placeholder of it.
fn expected(what: &str) -> (&'static str, Option<Value>) {
    let w = what.trim();
    let number_type = |p: char| {
        w.strip_prefix(p)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    if w.contains("string") || w.contains("path") || w.contains("char") {
        ("a string", Some(Value::from("")))
    } else if w.contains("bool") {
        ("true or false", Some(Value::from(false)))
    } else if number_type('i') || number_type('u') || w.contains("integer") {
        ("a whole number", Some(Value::from(0)))
    } else if number_type('f') || w.contains("float") {
        ("a number", Some(Value::from(0.0)))
    } else if w.contains("sequence") || w.contains("array") || w.contains("tuple") {
        ("an array", Some(Value::Array(Array::new())))
    } else if w.contains("map") || w.starts_with("struct ") || w.contains("table") {
        ("a table", Some(Value::InlineTable(InlineTable::new())))
    } else {
        ("another type", None)
    }
}

/// The names between backticks in a serde message ("expected one of `a`, `b`").
fn ticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// Turn one serde error into a problem (path, message) and a repair. `path` is where the
/// error's span is; `found` the type of the value there.
fn classify(mut path: Vec<String>, msg: &str, found: Option<&str>) -> (String, String, Fix) {
    let secret = |p: &[String]| p.last().is_some_and(|k| SECRET_KEYS.contains(&k.as_str()));
    let found = found.map_or_else(String::new, |f| format!(", found {}", article(f)));
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        if path.last().map(String::as_str) != Some(name) {
            path.push(name.to_string());
        }
        let allowed = rest
            .split_once("expected ")
            .map(|(_, list)| ticked(list))
            .unwrap_or_default();
        let message = if allowed.is_empty() {
            "unknown key".to_string()
        } else {
            format!("unknown key; allowed here: {}", allowed.join(", "))
        };
        return (path.join("."), message, Fix::Remove);
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        path.push(name.to_string());
        return (path.join("."), "missing".into(), Fix::Set(Value::from("")));
    }
    for (prefix, what) in [
        ("invalid type: ", "wrong type"),
        ("invalid value: ", "value not allowed"),
        ("invalid length ", "wrong length"),
    ] {
        if msg.starts_with(prefix) {
            let want = msg.rsplit_once(", expected ").map_or("", |(_, e)| e);
            let (name, placeholder) = expected(want);
            let message = format!("{what}: expected {name}{found}");
            let fix = placeholder.map_or(Fix::Remove, Fix::Set);
            return (path.join("."), message, fix);
        }
    }
    if msg.starts_with("data did not match any variant") {
        // An untagged choice of types (e.g. a `styles` value: a string or a number).
        return (
            path.join("."),
            format!("wrong type: expected a string or a whole number{found}"),
            Fix::Set(Value::from("")),
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let allowed: Vec<String> = rest
            .split_once("expected ")
            .map(|(_, list)| ticked(list))
            .unwrap_or_default()
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        let message = if secret(&path) {
            format!("not allowed; allowed are {}", allowed.join(", "))
        } else {
            let v = rest.split('`').next().unwrap_or_default();
            format!("{v:?}: allowed are {}", allowed.join(", "))
        };
        return (path.join("."), message, Fix::Remove);
    }
    let message = if secret(&path) {
        "not accepted (the value is not shown: the key holds a secret)".to_string()
    } else {
        msg.replace('\n', "; ")
    };
    (path.join("."), message, Fix::Remove)
}

/// "an integer", "a string".
fn article(type_name: &str) -> String {
    let t = match type_name {
        "integer" => "whole number",
        "float" => "number",
        "boolean" => "true/false",
        "inline table" => "table",
        other => other,
    };
    if t.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {t}")
    } else {
        format!("a {t}")
    }
}

/// The item at `path` in a document, for its type.
fn item_at<'d>(root: &'d Item, path: &str) -> Option<&'d Item> {
    let mut item = root;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        item = if let Some(t) = item.as_table_like() {
            t.get(seg)?
        } else {
            item.get(seg.parse::<usize>().ok()?.checked_sub(1)?)?
        };
    }
    Some(item)
}

/// Apply `fix` at `path` in the scratch document. `false` when the path is not there.
fn apply(doc: &mut DocumentMut, path: &str, fix: &Fix) -> bool {
    let (parent, last) = path.rsplit_once('.').unwrap_or(("", path));
    let mut item = doc.as_item_mut();
    for seg in parent.split('.').filter(|s| !s.is_empty()) {
        let next = if item.is_table_like() {
            item.as_table_like_mut().and_then(|t| t.get_mut(seg))
        } else {
            match seg.parse::<usize>().ok().and_then(|i| i.checked_sub(1)) {
                Some(i) => item.get_mut(i),
                None => None,
            }
        };
        let Some(next) = next else { return false };
        item = next;
    }
    if let Some(t) = item.as_table_like_mut() {
        match fix {
            Fix::Remove => t.remove(last).is_some(),
            Fix::Set(v) => {
                t.insert(last, Item::Value(v.clone()));
                true
            }
        }
    } else if let (Some(a), Some(i)) = (
        item.as_array_mut(),
        last.parse::<usize>().ok().and_then(|i| i.checked_sub(1)),
    ) {
        if i >= a.len() {
            return false;
        }
        match fix {
            Fix::Remove => {
                a.remove(i);
            }
            Fix::Set(v) => {
                a.replace(i, v.clone());
            }
        }
        true
    } else {
        false
    }
}

/// A TOML syntax error: one problem, at the parser's position. The message is the parser's
/// (which quotes no text); on a line that sets a secret key it is not even that.
fn syntax_problem(spans: &Spans<'_>, e: &toml_edit::TomlError) -> Problem {
    let (line, column) = e.span().map_or((1, 1), |s| spans.position(s.start));
    let line_text = spans.text.lines().nth(line - 1).unwrap_or_default();
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches(['"', '\'']))
        .unwrap_or_default();
    let message = if is_secret(key) {
        format!("malformed value of `{key}` (not shown: the key holds a secret)")
    } else {
        format!("TOML syntax: {}", e.message().trim().replace('\n', "; "))
    };
    Problem {
        key: "syntax".into(),
        message,
        line: Some(line),
        column: Some(column),
    }
}

/// Deserialize `text` into `T`, recording every unknown key, value of the wrong type and
/// missing key, each with the line and column of its key. Returns the value when the file
/// could be read (with placeholders where a problem was recorded), and the problems.
pub(super) fn parse_all<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<Problem>) {
    let spans = Spans::new(text);
    let mut work = match ImDocument::parse(text) {
        Ok(doc) => doc.into_mut(),
        Err(e) => return (None, vec![syntax_problem(&spans, &e)]),
    };
    let mut problems: Vec<Problem> = Vec::new();
    let mut done: Vec<(String, String)> = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let work_text = work.to_string();
        let err = match toml::from_str::<T>(&work_text) {
            Ok(v) => return (Some(v), problems),
            Err(e) => e,
        };
        let Ok(work_doc) = ImDocument::parse(work_text.as_str()) else {
            break;
        };
        let mut at = Vec::new();
        // The root table's span is empty (0..0): an error there is about the whole file.
        if let Some(s) = err.span().filter(|s| !s.is_empty()) {
            path_at(work_doc.as_item(), s.start, &mut at);
        }
        // An error inside a driver-tagged table comes at the table's position, naming its key.
        let message = match err
            .message()
            .strip_prefix(super::tagged::AT_KEY)
            .and_then(|rest| rest.split_once("`: "))
        {
            Some((key, inner)) => {
                at.extend(key.split('.').map(String::from));
                inner
            }
            None => err.message(),
        };
        let found = item_at(work_doc.as_item(), &at.join(".")).map(Item::type_name);
        let (path, message, fix) = classify(at, message, found);
        if !problems.iter().any(|p| covers(&p.key, &path)) {
            let (line, column) = spans.locate(&path).unzip();
            problems.push(Problem {
                key: if path.is_empty() {
                    "config".into()
                } else {
                    path.clone()
                },
                message,
                line,
                column,
            });
        }
        // Stop when a repair cannot be made or would repeat (no progress).
        let step = (path.clone(), fix.describe());
        if path.is_empty() || done.contains(&step) || !apply(&mut work, &path, &fix) {
            break;
        }
        done.push(step);
    }
    if problems.is_empty() {
        // Not seen in practice (a parsed document re-serializes to valid TOML), but never
        // fail without saying so.
        problems.push(Problem::new(
            "config",
            "the file could not be read as a whole (no single key to blame)",
        ));
    }
    (None, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[a]\nx = 1\n\n[[b]]\ny = \"s\"\n\n[[b]]\nz = { \"3\" = 4 }\nw = [1, 2]\n";

    #[test]
    fn paths_are_located_by_the_parsers_spans() {
        let s = Spans::new(TEXT);
        assert_eq!(s.locate("a.x"), Some((2, 1)));
        assert_eq!(s.locate("b.1.y"), Some((5, 1)));
        assert_eq!(s.locate("b.2"), Some((7, 1)));
        assert_eq!(s.locate("b.2.z.3"), Some((8, 7)));
        assert_eq!(s.locate("b.2.w.2"), Some((9, 9)));
        // A missing key points at its table; an absent table at nothing.
        assert_eq!(s.locate("b.2.missing"), Some((7, 1)));
        assert_eq!(s.locate("c.x"), None);
    }

    #[test]
    fn a_byte_offset_maps_back_to_its_key_path() {
        let doc = ImDocument::parse(TEXT).unwrap();
        let at = |needle: &str| {
            let mut p = Vec::new();
            path_at(doc.as_item(), TEXT.find(needle).unwrap(), &mut p);
            p.join(".")
        };
        assert_eq!(at("x = 1"), "a.x");
        assert_eq!(at("\"s\""), "b.1.y");
        assert_eq!(at("4 }"), "b.2.z.3");
        assert_eq!(at("2]"), "b.2.w.2");
    }

    #[test]
    fn an_offset_in_a_table_written_between_two_of_another_array_maps_to_its_own() {
        let text = "[[a]]\nx = 1\n\n[[b]]\ny = 2\n\n[[a]]\nx = 3\n";
        let doc = ImDocument::parse(text).unwrap();
        let at = |needle: &str| {
            let mut p = Vec::new();
            path_at(doc.as_item(), text.find(needle).unwrap(), &mut p);
            p.join(".")
        };
        assert_eq!(at("y = 2"), "b.1.y");
        assert_eq!(at("[[b]]"), "b.1");
        assert_eq!(at("x = 3"), "a.2.x");
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let s = Spans::new("\"名\" = { \"车\" = 1 }\n");
        assert_eq!(s.locate("名.车"), Some((1, 9)));
    }
}
