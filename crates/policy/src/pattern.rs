//! Patterns: the `*` / `?` wildcards of actions, resources and the `Like`
//! operators, policy variables (`${aws:username}`), and ArnLike matching.
//!
//! A pattern is compiled once at parse time into tokens. Wildcards are
//! tokens only where the element allows them (`StringEquals` compares `*`
//! literally), and a variable's value is always literal text: a user named
//! `a*` does not turn into a wildcard.

use std::borrow::Cow;

use crate::ConditionKeys;

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A literal character.
    Lit(char),
    /// `?`: exactly one character.
    One,
    /// `*`: any sequence, possibly empty.
    Any,
    /// `${key}` or `${key, 'default'}`: the value of a single-valued
    /// context key, substituted at evaluation.
    Var {
        key: String,
        default: Option<String>,
    },
}

/// A token after variables are substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RTok {
    Lit(char),
    One,
    Any,
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    toks: Vec<Tok>,
    /// The tokens, resolved once, when the pattern has no variable (most
    /// patterns): matching then allocates nothing for the pattern.
    fixed: Option<Vec<RTok>>,
}

impl Pattern {
    /// Compiles `text`. `wildcards`: `*` and `?` are wildcards (otherwise
    /// literal). `variables`: `${...}` is a policy variable (policies with
    /// `"Version": "2012-10-17"`; older ones take it literally).
    pub(crate) fn compile(text: &str, wildcards: bool, variables: bool) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let mut toks = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if variables
                && c == '$'
                && chars.get(i + 1) == Some(&'{')
                && let Some(len) = chars[i + 2..].iter().position(|&c| c == '}')
            {
                let inner: String = chars[i + 2..i + 2 + len].iter().collect();
                toks.push(variable(&inner));
                i += len + 3;
                continue;
            }
            toks.push(match c {
                '*' if wildcards => Tok::Any,
                '?' if wildcards => Tok::One,
                c => Tok::Lit(c),
            });
            i += 1;
        }
        let fixed = toks
            .iter()
            .map(|t| match t {
                Tok::Lit(c) => Some(RTok::Lit(*c)),
                Tok::One => Some(RTok::One),
                Tok::Any => Some(RTok::Any),
                Tok::Var { .. } => None,
            })
            .collect();
        Self { toks, fixed }
    }

    /// The number of literal `:` separators outside variables.
    pub(crate) fn literal_colons(&self) -> usize {
        self.toks.iter().filter(|t| **t == Tok::Lit(':')).count()
    }

    /// Substitutes variables from `ctx`; `None` when a variable has no
    /// single value and no default (AWS: the comparison then fails).
    fn resolve(&self, ctx: &dyn ConditionKeys) -> Option<Cow<'_, [RTok]>> {
        if let Some(fixed) = &self.fixed {
            return Some(Cow::Borrowed(fixed));
        }
        let mut out = Vec::with_capacity(self.toks.len());
        for t in &self.toks {
            match t {
                Tok::Lit(c) => out.push(RTok::Lit(*c)),
                Tok::One => out.push(RTok::One),
                Tok::Any => out.push(RTok::Any),
                Tok::Var { key, default } => {
                    let value = match ctx.values(key) {
                        Some([one]) => one.as_str(),
                        _ => default.as_deref()?,
                    };
                    out.extend(value.chars().map(RTok::Lit));
                }
            }
        }
        Some(Cow::Owned(out))
    }

    /// Whether `value` matches the whole pattern; `fold`: ignore case.
    pub(crate) fn matches(&self, value: &str, fold: bool, ctx: &dyn ConditionKeys) -> bool {
        let Some(toks) = self.resolve(ctx) else {
            return false;
        };
        let chars: Vec<char> = value.chars().collect();
        glob(&toks, &chars, fold)
    }

    /// ArnLike: `*` alone matches anything; otherwise both must have six
    /// colon-separated parts (`arn:partition:service:region:account:resource`,
    /// the last may contain colons) and each part matches on its own, so a
    /// `*` never spans a colon in the first five parts. Case-sensitive.
    pub(crate) fn matches_arn(&self, value: &str, ctx: &dyn ConditionKeys) -> bool {
        let Some(toks) = self.resolve(ctx) else {
            return false;
        };
        if *toks == [RTok::Any] {
            return true;
        }
        let pattern_parts: Vec<&[RTok]> = split_parts(&toks);
        let value_chars: Vec<char> = value.chars().collect();
        let value_parts: Vec<&[char]> = split_parts_chars(&value_chars);
        pattern_parts.len() == 6
            && value_parts.len() == 6
            && pattern_parts
                .iter()
                .zip(&value_parts)
                .all(|(p, v)| glob(p, v, false))
    }
}

/// Parses the inside of `${...}`.
fn variable(inner: &str) -> Tok {
    // `${*}`, `${?}` and `${$}` stand for the literal characters.
    match inner.trim() {
        "*" => return Tok::Lit('*'),
        "?" => return Tok::Lit('?'),
        "$" => return Tok::Lit('$'),
        _ => {}
    }
    // `${key, 'default'}`.
    if let Some((key, rest)) = inner.split_once(',') {
        let rest = rest.trim();
        if let Some(default) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            return Tok::Var {
                key: key.trim().to_owned(),
                default: Some(default.to_owned()),
            };
        }
    }
    Tok::Var {
        key: inner.trim().to_owned(),
        default: None,
    }
}

/// Splits at the first five `:` into at most six parts.
fn split_parts(toks: &[RTok]) -> Vec<&[RTok]> {
    let mut parts = Vec::with_capacity(6);
    let mut start = 0;
    for (i, t) in toks.iter().enumerate() {
        if parts.len() == 5 {
            break;
        }
        if *t == RTok::Lit(':') {
            parts.push(&toks[start..i]);
            start = i + 1;
        }
    }
    parts.push(&toks[start..]);
    parts
}

fn split_parts_chars(chars: &[char]) -> Vec<&[char]> {
    let mut parts = Vec::with_capacity(6);
    let mut start = 0;
    for (i, c) in chars.iter().enumerate() {
        if parts.len() == 5 {
            break;
        }
        if *c == ':' {
            parts.push(&chars[start..i]);
            start = i + 1;
        }
    }
    parts.push(&chars[start..]);
    parts
}

fn same_char(a: char, b: char, fold: bool) -> bool {
    a == b || (fold && a.to_lowercase().eq(b.to_lowercase()))
}

/// Wildcard matching of a whole string, O(pattern × value) at worst (no
/// exponential backtracking).
fn glob(pattern: &[RTok], value: &[char], fold: bool) -> bool {
    let (mut p, mut v) = (0, 0);
    // The last `*` seen and the value position it currently stands up to.
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(RTok::One) => {
                p += 1;
                v += 1;
            }
            Some(RTok::Lit(c)) if same_char(*c, value[v], fold) => {
                p += 1;
                v += 1;
            }
            Some(RTok::Any) => {
                star = Some((p, v));
                p += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    // Let the `*` swallow one more character and retry.
                    star = Some((sp, sv + 1));
                    p = sp + 1;
                    v = sv + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|t| *t == RTok::Any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;

    fn like(p: &str, v: &str) -> bool {
        Pattern::compile(p, true, false).matches(v, false, &Context::new())
    }

    #[test]
    fn glob_wildcards() {
        assert!(like("*", ""));
        assert!(like("*", "anything"));
        assert!(like("kms:Generate*", "kms:GenerateDataKey"));
        assert!(like("kms:Generate*", "kms:Generate"));
        assert!(!like("kms:Generate*", "kms:Encrypt"));
        assert!(like("a?c", "abc"));
        assert!(!like("a?c", "ac"));
        assert!(!like("a?c", "abbc"));
        assert!(like("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!like("*a*b*c*", "xxaxxcxxbxx"));
        assert!(like("alias/*test*", "alias/my-test-key"));
        assert!(!like("abc", "abcd"));
        assert!(!like("abcd", "abc"));
        assert!(like("??", "éé"));
    }

    #[test]
    fn glob_is_not_exponential() {
        let pattern = "*a".repeat(30) + "b";
        let value = "a".repeat(3000);
        assert!(!like(&pattern, &value));
    }

    #[test]
    fn case_folding_only_when_asked() {
        let p = Pattern::compile("kms:encrypt", true, false);
        assert!(p.matches("KMS:Encrypt", true, &Context::new()));
        assert!(!p.matches("KMS:Encrypt", false, &Context::new()));
    }

    #[test]
    fn literal_wildcards_without_wildcard_mode() {
        let p = Pattern::compile("a*", false, false);
        assert!(p.matches("a*", false, &Context::new()));
        assert!(!p.matches("abc", false, &Context::new()));
    }

    #[test]
    fn variables_substitute_literally() {
        let mut ctx = Context::new();
        ctx.set("aws:username", "b*b");
        let p = Pattern::compile("home/${aws:username}/*", true, true);
        assert!(p.matches("home/b*b/x", false, &ctx));
        assert!(!p.matches("home/bob/x", false, &ctx));
        // Missing variable, no default: never matches.
        let missing = Pattern::compile("${aws:nothing}", true, true);
        assert!(!missing.matches("", false, &ctx));
        // A default applies when the key is missing.
        let d = Pattern::compile("${aws:nothing, 'dflt'}", true, true);
        assert!(d.matches("dflt", false, &ctx));
        // Escapes.
        let e = Pattern::compile("${*}${?}${$}", true, true);
        assert!(e.matches("*?$", false, &ctx));
        assert!(!e.matches("a?$", false, &ctx));
        // Without variables (2008-10-17) the text is literal.
        let lit = Pattern::compile("${aws:username}", true, false);
        assert!(lit.matches("${aws:username}", false, &ctx));
        // An unclosed `${` is literal text.
        let open = Pattern::compile("a${b", true, true);
        assert!(open.matches("a${b", false, &ctx));
    }

    #[test]
    fn arn_like_compares_parts() {
        let ctx = Context::new();
        let p = Pattern::compile("arn:aws:someservice:*:111122223333:finance/*", true, false);
        assert!(p.matches_arn(
            "arn:aws:someservice:us-east-2:111122223333:finance/doc.txt",
            &ctx
        ));
        // The IAM guide's example: StringLike matches, ArnLike does not.
        let v = "arn:aws:someservice:us-east-2:999999999999:store/abc:111122223333:finance/document.txt";
        assert!(p.matches(v, false, &ctx));
        assert!(!p.matches_arn(v, &ctx));
        // The resource part may contain colons.
        let q = Pattern::compile("arn:aws:kms:*:*:key/*", true, false);
        assert!(q.matches_arn("arn:aws:kms:us-east-1:111122223333:key/a:b", &ctx));
        assert!(!q.matches_arn("not-an-arn", &ctx));
        assert!(Pattern::compile("*", true, false).matches_arn("not-an-arn", &ctx));
        assert_eq!(q.literal_colons(), 5);
    }
}
