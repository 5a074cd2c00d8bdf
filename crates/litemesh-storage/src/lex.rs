//! The little of SQL's lexical structure litemesh needs to read a statement
//! it does not compile itself: where string literals, quoted identifiers
//! and comments begin and end, and where statements end. (The schema's
//! placement directives live in comments; the client sandbox looks for
//! names in statements before SQLite compiles them.)

/// A piece of SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// A string literal, quotes included (`'…'`, `''` inside is a quote).
    Literal(&'a str),
    /// A quoted identifier, quotes included (`"…"`, `` `…` ``, `[…]`).
    Quoted(&'a str),
    /// A comment's text, without its delimiters (`-- …` to the end of the
    /// line, `/* … */`); `whole` is the comment with them.
    Comment { text: &'a str, whole: &'a str },
    /// A `;`.
    End,
    /// Anything else, up to the next piece of another kind.
    Other(&'a str),
}

/// Splits `sql` into [`Piece`]s, in order; their texts cover it whole.
pub(crate) fn pieces<'a>(sql: &'a str) -> Vec<Piece<'a>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut other = 0;
    let flush = |out: &mut Vec<Piece<'a>>, other: usize, i: usize| {
        if other < i {
            out.push(Piece::Other(&sql[other..i]));
        }
    };
    while i < b.len() {
        let start = i;
        let piece = match b[i] {
            q @ (b'\'' | b'"' | b'`' | b'[') => {
                let close = if q == b'[' { b']' } else { q };
                i += 1;
                while i < b.len() {
                    if b[i] == close {
                        // Doubled, the quote is part of the text ('' "" ``).
                        if close != b']' && b.get(i + 1) == Some(&close) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
                if q == b'\'' {
                    Piece::Literal(&sql[start..i])
                } else {
                    Piece::Quoted(&sql[start..i])
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = sql[i + 2..].find('\n').map_or(b.len(), |n| i + 2 + n);
                i = end;
                Piece::Comment {
                    text: &sql[start + 2..end],
                    whole: &sql[start..end],
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let text_end = sql[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n);
                i = (text_end + 2).min(b.len());
                Piece::Comment {
                    text: &sql[start + 2..text_end],
                    whole: &sql[start..i],
                }
            }
            b';' => {
                i += 1;
                Piece::End
            }
            _ => {
                i += 1;
                continue;
            }
        };
        flush(&mut out, other, start);
        out.push(piece);
        other = i;
    }
    flush(&mut out, other, b.len());
    out
}

/// The comments' texts of `sql`.
pub(crate) fn comments(sql: &str) -> Vec<&str> {
    pieces(sql)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Comment { text, .. } => Some(text),
            _ => None,
        })
        .collect()
}

/// `sql` with its comments replaced by spaces.
pub(crate) fn without_comments(sql: &str) -> String {
    pieces(sql)
        .into_iter()
        .map(|p| match p {
            Piece::Literal(s) | Piece::Quoted(s) | Piece::Other(s) => s.to_string(),
            Piece::Comment { whole, .. } => " ".repeat(whole.len()),
            Piece::End => ";".to_string(),
        })
        .collect()
}

/// The statements of `sql`, split at `;` outside literals, quoted names and
/// comments (each with its comments; blank ones left out).
pub(crate) fn statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for p in pieces(sql) {
        let len = match p {
            Piece::Literal(s) | Piece::Quoted(s) | Piece::Other(s) => s.len(),
            Piece::Comment { whole, .. } => whole.len(),
            Piece::End => {
                out.push(&sql[start..at]);
                at += 1;
                start = at;
                continue;
            }
        };
        at += len;
    }
    if !sql[start..].trim().is_empty() {
        out.push(&sql[start..]);
    }
    out
}

/// Whether `sql` names something starting with `prefix` (ASCII case
/// ignored) outside string literals and comments: a bare or a quoted name.
pub(crate) fn names_prefix(sql: &str, prefix: &str) -> bool {
    let p = prefix.as_bytes();
    pieces(sql).into_iter().any(|piece| match piece {
        Piece::Quoted(s) | Piece::Other(s) => s
            .as_bytes()
            .windows(p.len())
            .any(|w| w.eq_ignore_ascii_case(p)),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_text_and_know_quotes_from_comments() {
        let sql = "SELECT 'a;--b', \"x'y\", [c/*d], `e``f` -- g'h\n/* i;\"j */; k";
        let joined: String = pieces(sql)
            .iter()
            .map(|p| match p {
                Piece::Literal(s) | Piece::Quoted(s) | Piece::Other(s) => s.to_string(),
                Piece::Comment { whole, .. } => whole.to_string(),
                Piece::End => ";".into(),
            })
            .collect();
        assert_eq!(joined, sql);
        assert_eq!(comments(sql), [" g'h", " i;\"j "]);
        assert_eq!(statements(sql), [&sql[..sql.len() - 3], " k"]);
        assert_eq!(without_comments(sql).len(), sql.len());
        assert!(!without_comments(sql).contains("g'h"));
    }

    #[test]
    fn names_are_found_bare_or_quoted_never_in_literals_or_comments() {
        for sql in [
            "SELECT * FROM __lm_log",
            "SELECT * FROM \"__LM_log\"",
            "WITH \"--\" AS (SELECT 1), __lm_z AS (SELECT 1) SELECT 1",
            "WITH \"x'\" AS (SELECT 1) SELECT * FROM [__lm_site]",
            "SELECT `'`, __lm_version()",
        ] {
            assert!(names_prefix(sql, "__lm_"), "{sql}");
        }
        for sql in [
            "SELECT '__lm_log', 'it''s __lm_'",
            "SELECT 1 -- __lm_log",
            "SELECT 1 /* __lm_log */",
        ] {
            assert!(!names_prefix(sql, "__lm_"), "{sql}");
        }
    }
}
