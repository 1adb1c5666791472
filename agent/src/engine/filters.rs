//! Docker's `filters` query parameter: a JSON object from a key to the values asked for, as
//! `{"name":{"web":true}}` (what the CLI sends) or `{"name":["web"]}` (older clients). A key
//! matches when any of its values does; every key must match.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// Parsed filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses `raw` (absent or empty: no filter), refusing keys not in `allowed` as Docker does.
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, String> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else {
            return Ok(Self::default());
        };
        let value: Value = serde_json::from_str(raw).map_err(|e| format!("invalid filter: {e}"))?;
        let Value::Object(keys) = value else {
            return Err("invalid filter: want a JSON object".into());
        };
        let mut out = BTreeMap::new();
        for (key, values) in keys {
            if !allowed.contains(&key.as_str()) {
                return Err(format!("invalid filter '{key}'"));
            }
            let values: Vec<String> = match values {
                Value::Object(set) => set
                    .into_iter()
                    .filter(|(_, on)| on.as_bool() != Some(false))
                    .map(|(v, _)| v)
                    .collect(),
                Value::Array(list) => list
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        other => Err(format!("invalid filter '{key}': {other} is not a string")),
                    })
                    .collect::<Result<_, _>>()?,
                other => return Err(format!("invalid filter '{key}': {other}")),
            };
            out.insert(key, values);
        }
        Ok(Self(out))
    }

    /// The values asked for `key` (empty: not filtered on).
    pub(crate) fn values(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// Whether `key` is unfiltered or one of its values passes `test`.
    pub(crate) fn any(&self, key: &str, test: impl Fn(&str) -> bool) -> bool {
        let values = self.values(key);
        values.is_empty() || values.iter().any(|v| test(v))
    }

    /// Whether `key` is unfiltered or one of its values is a prefix of `text` (how Docker
    /// matches IDs and names).
    pub(crate) fn prefix_of(&self, key: &str, text: &str) -> bool {
        self.any(key, |v| text.starts_with(v))
    }

    /// Whether every value of `key` (`k` or `k=v`) is among `labels`.
    pub(crate) fn labels(&self, key: &str, labels: &HashMap<String, String>) -> bool {
        self.values(key)
            .iter()
            .all(|want| match want.split_once('=') {
                Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
                None => labels.contains_key(want.as_str()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_parse_and_unknown_keys_are_refused() {
        let f = Filters::parse(
            Some(r#"{"name":{"web":true},"id":["ab"]}"#),
            &["name", "id"],
        )
        .unwrap();
        assert_eq!(f.values("name"), ["web"]);
        assert_eq!(f.values("id"), ["ab"]);
        assert!(f.values("label").is_empty());
        assert_eq!(Filters::parse(None, &[]).unwrap(), Filters::default());
        assert_eq!(Filters::parse(Some(""), &[]).unwrap(), Filters::default());
        assert_eq!(
            Filters::parse(Some(r#"{"colour":{"red":true}}"#), &["name"]),
            Err("invalid filter 'colour'".into())
        );
        assert!(Filters::parse(Some("[1]"), &["name"]).is_err());
        assert!(Filters::parse(Some(r#"{"name":[1]}"#), &["name"]).is_err());
        assert!(Filters::parse(Some("{"), &["name"]).is_err());
    }

    #[test]
    fn keys_match_when_any_value_does() {
        let f = Filters::parse(Some(r#"{"name":{"we":true,"db":true}}"#), &["name"]).unwrap();
        assert!(f.prefix_of("name", "web"));
        assert!(f.prefix_of("name", "db-1"));
        assert!(!f.prefix_of("name", "api"));
        assert!(f.prefix_of("id", "anything"), "an unfiltered key matches");
    }

    #[test]
    fn labels_need_every_value() {
        let labels: HashMap<String, String> = [
            ("tier".to_owned(), "front".to_owned()),
            ("x".into(), String::new()),
        ]
        .into();
        let f = |raw: &str| Filters::parse(Some(raw), &["label"]).unwrap();
        assert!(f(r#"{"label":{"tier":true}}"#).labels("label", &labels));
        assert!(f(r#"{"label":{"tier=front":true,"x":true}}"#).labels("label", &labels));
        assert!(!f(r#"{"label":{"tier=back":true}}"#).labels("label", &labels));
        assert!(!f(r#"{"label":{"tier":true,"y":true}}"#).labels("label", &labels));
        assert!(Filters::default().labels("label", &labels));
    }
}
