//! Named placeholders in a tool's SQL: `:status`, `:caller.user_id`. They
//! are rewritten to positional parameters (`$1`, `$2`, …, one per distinct
//! name) and bound as values, never formatted into the SQL text.

/// A statement with its named placeholders made positional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL with `$N` in place of each placeholder.
    pub sql: String,
    /// The name bound to `$N` at index `N - 1`.
    pub names: Vec<String>,
}

/// Rewrites `sql`'s named placeholders. A placeholder is `:` followed by a
/// letter or `_`, then letters, digits, `_` and inner dots (`:caller.claims.org`).
/// Skipped: string literals (`'…'`, `E'…'`, dollar-quoted `$tag$…$tag$`),
/// quoted identifiers (`"…"`), comments (`-- …`, `/* … */`) and casts
/// (`::date`). Fails on positional parameters (`?`, `$1`), which would
/// bypass the declared ones, and on more than one statement.
pub fn parse(sql: &str) -> Result<Statement, String> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    // Text is copied in runs between the places that change it.
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => i = skip_quoted(bytes, i, bytes[i]),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
            }
            b'$' => {
                if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    return Err("positional parameters ($1) are not allowed: name each \
                                parameter (:name)"
                        .to_owned());
                }
                i = skip_dollar_quoted(sql, i);
            }
            b'?' => {
                return Err(
                    "positional parameters (?) are not allowed: name each parameter (:name)"
                        .to_owned(),
                );
            }
            b';' => {
                if sql[i + 1..].trim().is_empty() || only_comments(&sql[i + 1..]) {
                    out.push_str(&sql[copied..i]);
                    copied = bytes.len();
                    break;
                }
                return Err(
                    "a tool runs one statement: remove the `;` between statements".to_owned(),
                );
            }
            b':' if bytes.get(i + 1) == Some(&b':') => i += 2,
            b':' if bytes
                .get(i + 1)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_') =>
            {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() {
                    let b = bytes[end];
                    let dotted = b == b'.'
                        && bytes
                            .get(end + 1)
                            .is_some_and(|n| n.is_ascii_alphanumeric() || *n == b'_');
                    if b.is_ascii_alphanumeric() || b == b'_' || dotted {
                        end += 1;
                    } else {
                        break;
                    }
                }
                let name = &sql[start..end];
                let index = match names.iter().position(|n| n == name) {
                    Some(index) => index,
                    None => {
                        names.push(name.to_owned());
                        names.len() - 1
                    }
                };
                out.push_str(&sql[copied..i]);
                out.push('$');
                out.push_str(&(index + 1).to_string());
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    let sql = out.trim().to_owned();
    if sql.is_empty() {
        return Err("the statement is empty".to_owned());
    }
    Ok(Statement { sql, names })
}

/// The index just past a quoted run that starts at `start`; a doubled
/// quote inside is an escaped one.
fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        // E'…' strings escape with a backslash.
        if bytes[i] == b'\\' && quote == b'\'' && start > 0 && bytes[start - 1] == b'E' {
            i += 2;
            continue;
        }
        i += 1;
    }
    bytes.len()
}

/// The index just past a dollar-quoted string (`$$…$$`, `$tag$…$tag$`) that
/// starts at `start`, or just past the `$` when none starts there.
fn skip_dollar_quoted(sql: &str, start: usize) -> usize {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if rest.as_bytes().get(tag_len) != Some(&b'$') {
        return start + 1;
    }
    let tag = &sql[start..start + tag_len + 2];
    let body = start + tag.len();
    sql[body..]
        .find(tag)
        .map_or(sql.len(), |n| body + n + tag.len())
}

fn only_comments(rest: &str) -> bool {
    rest.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with("--"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_positions_once_each() {
        let s = parse(
            "SELECT * FROM orders WHERE owner = :caller.subject AND status = :status \
                       OR owner = :caller.subject",
        )
        .unwrap();
        assert_eq!(
            s.sql,
            "SELECT * FROM orders WHERE owner = $1 AND status = $2 OR owner = $1"
        );
        assert_eq!(s.names, ["caller.subject", "status"]);
    }

    #[test]
    fn quotes_comments_and_casts_are_left_alone() {
        let s = parse(
            "SELECT ':no', \"a:b\", E'it\\'s :no', $$ :no $$, $t$ :no $t$, x::date, \
             :due::date -- :no\n/* :no */ FROM t;",
        )
        .unwrap();
        assert_eq!(s.names, ["due"]);
        assert!(s.sql.contains("$1::date"), "{}", s.sql);
        assert!(!s.sql.ends_with(';'));
    }

    #[test]
    fn positional_and_several_statements_are_refused() {
        assert!(parse("SELECT ?").is_err());
        assert!(parse("SELECT $1").is_err());
        assert!(parse("DELETE FROM t; DROP TABLE t").is_err());
        assert!(parse("SELECT 1; -- done").is_ok());
        assert!(parse("  ").is_err());
    }

    #[test]
    fn a_trailing_dot_ends_the_name() {
        let s = parse("SELECT :a.b. FROM t").unwrap();
        assert_eq!(s.names, ["a.b"]);
    }
}
