//! The local control socket: `ntmd status` connects, reads the state as JSON, and the
//! connection closes. The JSON is written here by hand (the agent carries no JSON
//! serializer); every string in it is a name, an address or a fixed word, and is escaped
//! anyway.

use std::fmt::Write;

/// Builds a JSON object field by field.
#[derive(Debug, Default)]
pub struct Json {
    out: String,
    first: Vec<bool>,
}

impl Json {
    /// An empty document; call [`Json::open`] first.
    pub fn new() -> Self {
        Json::default()
    }

    fn sep(&mut self) {
        if let Some(first) = self.first.last_mut() {
            if !*first {
                self.out.push(',');
            }
            *first = false;
        }
    }

    fn key(&mut self, k: &str) {
        self.sep();
        self.string_raw(k);
        self.out.push(':');
    }

    fn string_raw(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    /// Opens the top-level object or an object value under `key` (None at top level or
    /// inside an array).
    pub fn open(&mut self, key: Option<&str>) -> &mut Self {
        match key {
            Some(k) => self.key(k),
            None => self.sep(),
        }
        self.out.push('{');
        self.first.push(true);
        self
    }

    /// Closes the innermost object.
    pub fn close(&mut self) -> &mut Self {
        self.first.pop();
        self.out.push('}');
        self
    }

    /// Opens an array under `key`.
    pub fn array(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push('[');
        self.first.push(true);
        self
    }

    /// Closes the innermost array.
    pub fn end_array(&mut self) -> &mut Self {
        self.first.pop();
        self.out.push(']');
        self
    }

    /// A string field.
    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key);
        self.string_raw(v);
        self
    }

    /// A number field.
    pub fn num(&mut self, key: &str, v: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{v}");
        self
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.key(key);
        self.out.push_str(if v { "true" } else { "false" });
        self
    }

    /// A field that is null.
    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push_str("null");
        self
    }

    /// The text.
    pub fn finish(mut self) -> String {
        self.out.push('\n');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_nested_json() {
        let mut j = Json::new();
        j.open(None).str("name", "box\"1").num("n", 3).array("list");
        j.open(None).bool("up", true).close();
        j.open(None).null("x").close();
        j.end_array().open(Some("inner")).str("a", "b").close().close();
        assert_eq!(
            j.finish(),
            "{\"name\":\"box\\\"1\",\"n\":3,\"list\":[{\"up\":true},{\"x\":null}],\"inner\":{\"a\":\"b\"}}\n"
        );
    }
}
