//! The platform record's field rules: the length limits of its text fields and the remark
//! that says what the gateway changed. A leaf: it uses nothing else of the gateway (ingest
//! builds records with it, the uploader notes what it shrank with it).

/// Add `extra` to a remark, keeping it within the platform's 255 characters.
pub(crate) fn append_remark(existing: Option<&str>, extra: &str) -> String {
    let joined = match existing {
        Some(e) if !e.is_empty() => format!("{e}; {extra}"),
        _ => extra.to_string(),
    };
    joined.chars().take(255).collect()
}

/// Cut `s` to `max` characters; note it in `notes` when cut.
pub(crate) fn fit(s: &str, max: usize, field: &str, notes: &mut Vec<String>) -> String {
    if s.chars().count() > max {
        notes.push(format!("{field} truncated"));
        s.chars().take(max).collect()
    } else {
        s.to_string()
    }
}

/// [`fit`] for an optional field, trimmed; blank counts as absent.
pub(crate) fn opt_fit(
    s: Option<&str>,
    max: usize,
    field: &str,
    notes: &mut Vec<String>,
) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| fit(s, max, field, notes))
}
