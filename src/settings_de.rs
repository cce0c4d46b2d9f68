//! Field deserializers shared by every settings section: the general ones in `configuration`
//! and each provider's own next to its adapter. Below both, so neither imports the other.

use reqwest::Url;
use serde::Deserialize;

/// A list written as a TOML array or, friendlier in an environment variable, `a, b`.
pub(crate) fn list_or_commas<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        List(Vec<String>),
        Text(String),
    }
    let items: Vec<String> = match Written::deserialize(deserializer)? {
        Written::List(items) => items,
        Written::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    items
        .iter()
        .map(|item| item.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// An optional http(s) URL.
pub(crate) fn http_url<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Url>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        None => Ok(None),
        Some(text) => parse_http_url(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// A required http(s) URL.
pub(crate) fn required_http_url<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Url, D::Error> {
    parse_http_url(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    match Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url),
        _ => Err(format!(
            "expected an http(s) URL, e.g. https://signup.example.com, not `{text}`"
        )),
    }
}
