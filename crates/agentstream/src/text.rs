//! Text as agentstream keeps it: every U+0000 (NUL) becomes U+FFFD.
//!
//! PostgreSQL's `text` refuses NUL and SQLite's accepts it, so the same
//! input would be stored on one and refused by the other. Text is cleaned
//! where it enters, whoever wrote it (a user's message or title, the
//! model's reply and tool-call arguments, a tool's output), so both
//! databases store, and every client sees, the same characters. U+FFFD,
//! the replacement character, marks where the NUL was rather than hiding it.
//!
//! Enums kept as text (a stored column, a JSON field) are defined by
//! `text_enum!`, so that their stored and sent names are one list.

use std::borrow::Cow;

/// What a NUL becomes.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `text` with every NUL replaced; borrowed when it has none.
pub fn clean(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// `text` with every NUL replaced, reusing its buffer when it has none.
pub fn clean_string(text: String) -> String {
    match clean(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(cleaned) => cleaned,
    }
}

/// Replaces every NUL in the strings and object keys of `value`, in place.
pub fn clean_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) => {
            if text.contains('\0') {
                *text = text.replace('\0', "\u{FFFD}");
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(clean_json),
        serde_json::Value::Object(fields) => {
            if fields.keys().any(|key| key.contains('\0')) {
                let taken = std::mem::take(fields);
                *fields = taken
                    .into_iter()
                    .map(|(key, value)| (clean_string(key), value))
                    .collect();
            }
            fields.values_mut().for_each(clean_json);
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
    }
}

/// Longest title made from a message, in characters (an ellipsis included).
const TITLE_CHARS: usize = 60;

/// The title a conversation gets from its first message, when it has none:
/// the message's first line that is not blank, its runs of whitespace made
/// one space, cut at a word boundary to at most 60 characters with an
/// ellipsis. None for a message with no text.
pub fn title_from(message: &str) -> Option<String> {
    let line = message.lines().find(|line| !line.trim().is_empty())?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let whole = words.join(" ");
    if whole.chars().count() <= TITLE_CHARS {
        return Some(whole);
    }
    let mut title = String::new();
    for word in &words {
        let longer = title.chars().count() + usize::from(!title.is_empty()) + word.chars().count();
        if longer > TITLE_CHARS - 1 {
            break;
        }
        if !title.is_empty() {
            title.push(' ');
        }
        title.push_str(word);
    }
    if title.is_empty() {
        // One word longer than a title: its start.
        title = whole.chars().take(TITLE_CHARS - 1).collect();
    }
    title.push('…');
    Some(title)
}

/// The start of `text` for a list: its runs of whitespace made one space,
/// at most `max` characters, with an ellipsis when cut.
pub fn preview(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Defines a text-backed enum with `ALL`, `as_str`, `FromStr`, `Display` and
/// serde as the names given, so stored columns and JSON agree.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every variant, in the order defined.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(()) }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_the_first_line_cut_at_a_word() {
        assert_eq!(
            title_from("  \n  Plan a trip\tto  Rome \nmore"),
            Some("Plan a trip to Rome".into())
        );
        assert_eq!(title_from(" \n\t"), None);
        let long = "word ".repeat(30);
        let title = title_from(&long).unwrap();
        assert!(
            title.ends_with("word…") && title.chars().count() <= 60,
            "{title}"
        );
        let one = "x".repeat(100);
        assert_eq!(title_from(&one).unwrap().chars().count(), 60);
        assert_eq!(preview("a\n b", 10), "a b");
        assert_eq!(preview("abcdef", 4), "abc…");
    }

    #[test]
    fn nul_becomes_the_replacement_character_everywhere() {
        assert_eq!(clean("K\0rsou"), "K\u{FFFD}rsou");
        assert!(matches!(clean("plain"), Cow::Borrowed("plain")));
        assert_eq!(clean_string("\0\0".to_owned()), "\u{FFFD}\u{FFFD}");
        let mut value = serde_json::json!({
            "a\u{0}b": ["x\u{0}", 1, null, {"deep": "\u{0}"}],
            "n": 2.5,
        });
        clean_json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "a\u{FFFD}b": ["x\u{FFFD}", 1, null, {"deep": "\u{FFFD}"}],
                "n": 2.5,
            })
        );
        assert!(!value.to_string().contains("\\u0000"));
    }
}
