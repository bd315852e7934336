//! Bounded JSON parsing for untrusted input: a size cap and a nesting cap
//! checked before serde builds anything.

/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 32;

/// Why untrusted JSON was refused.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("JSON nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Not valid JSON for the expected type.
    #[error("{0}")]
    Invalid(#[from] serde_json::Error),
}

/// Parses `body` after checking that it nests at most [`MAX_DEPTH`] levels.
pub fn parse_bounded<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, JsonError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(JsonError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(matches!(parse_bounded::<serde_json::Value>(deep.as_bytes()), Err(JsonError::TooDeep)));
        let ok = r#"{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[","b":[1]}"#;
        assert!(parse_bounded::<serde_json::Value>(ok.as_bytes()).is_ok());
    }
}
