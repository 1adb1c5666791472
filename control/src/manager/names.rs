//! Finding objects by what users call them, and the names they may be given (Docker's rules).

use tonic::Status;

/// Finds one of `items` (ID, name) by ID, name, or unique ID prefix.
pub(super) fn find<'a, T>(
    items: impl Iterator<Item = (&'a str, &'a str, &'a T)> + Clone,
    wanted: &str,
    what: &str,
) -> Result<&'a T, Status> {
    if let Some((_, _, t)) = items.clone().find(|(id, _, _)| *id == wanted) {
        return Ok(t);
    }
    if let Some((_, _, t)) = items.clone().find(|(_, name, _)| *name == wanted) {
        return Ok(t);
    }
    let prefixed: Vec<_> = items.filter(|(id, _, _)| id.starts_with(wanted)).collect();
    match prefixed[..] {
        [(_, _, t)] if !wanted.is_empty() => Ok(t),
        [] | [_] => Err(Status::not_found(format!("{what} {wanted} not found"))),
        _ => Err(Status::invalid_argument(format!(
            "{what} {wanted} is ambiguous ({} matches found)",
            prefixed.len()
        ))),
    }
}

/// Docker's rule for object names.
pub(super) fn check_name(name: &str, what: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid {what} name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, at most 63 characters"
        )))
    }
}
