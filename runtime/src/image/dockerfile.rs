//! Dockerfiles: their instructions, read as docker's builder reads them (comments, line
//! continuations, parser directives left aside), and the `$VAR` substitution it applies.

use std::collections::BTreeMap;

/// One instruction: its keyword (upper case), its arguments as written (continuations
/// joined), and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
    pub line: usize,
}

/// The instructions of a Dockerfile's text.
pub fn parse(text: &str) -> Result<Vec<Instruction>, String> {
    let mut instructions = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim_start();
        // A comment line, inside an instruction as well as between them.
        if trimmed.starts_with('#') {
            continue;
        }
        let (body, continues) = match line.trim_end().strip_suffix('\\') {
            Some(body) => (body, true),
            None => (line, false),
        };
        match &mut pending {
            Some((_, text)) => {
                text.push(' ');
                text.push_str(body.trim());
            }
            None if body.trim().is_empty() => continue,
            None => pending = Some((n + 1, body.trim().to_string())),
        }
        if !continues {
            if let Some((start, text)) = pending.take() {
                instructions.push(instruction(start, &text)?);
            }
        }
    }
    if let Some((start, text)) = pending {
        instructions.push(instruction(start, &text)?);
    }
    Ok(instructions)
}

fn instruction(line: usize, text: &str) -> Result<Instruction, String> {
    let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    if !keyword.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!("line {line}: {keyword:?} is not an instruction"));
    }
    Ok(Instruction { keyword: keyword.to_ascii_uppercase(), args: args.trim().to_string(), line })
}

/// The exec form (`["a", "b"]`) of `args`, or `None` for the shell form.
pub fn exec_form(args: &str) -> Option<Vec<String>> {
    args.trim_start().starts_with('[').then(|| serde_json::from_str(args).ok()).flatten()
}

/// `text` with `$NAME`, `${NAME}`, `${NAME:-default}` and `${NAME:+alternative}` replaced
/// from `vars` (an unset name gives nothing); `\$` is a plain `$`.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let (name, modifier) = match inner.split_once(':') {
                    Some((name, rest)) => (name, Some(rest)),
                    None => (inner.as_str(), None),
                };
                let value = vars.get(name).filter(|v| !v.is_empty());
                match (modifier.and_then(|m| m.split_at_checked(1)), value) {
                    (Some(("-", default)), None) => out.push_str(default),
                    (Some(("+", alternative)), Some(_)) => out.push_str(alternative),
                    (Some(("+", _)), None) => {}
                    (_, value) => out.push_str(value.map_or("", String::as_str)),
                }
            }
            '$' if chars.peek().is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') => {
                let mut name = String::new();
                while let Some(&c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
                    name.push(c);
                    chars.next();
                }
                out.push_str(vars.get(&name).map_or("", String::as_str));
            }
            c => out.push(c),
        }
    }
    out
}

/// `KEY=VALUE ...` pairs (values may be quoted), or the old `KEY VALUE` form of ENV and LABEL.
pub fn pairs(args: &str) -> Result<Vec<(String, String)>, String> {
    let words = words(args)?;
    match words.first() {
        Some(first) if !first.contains('=') => {
            let (key, value) = args.trim().split_once(char::is_whitespace).ok_or("expected KEY VALUE")?;
            Ok(vec![(key.to_string(), value.trim().to_string())])
        }
        _ => words
            .iter()
            .map(|w| {
                w.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or(format!("{w:?} is not KEY=VALUE"))
            })
            .collect(),
    }
}

/// Whitespace-separated words, with double or single quotes grouping and removed.
pub fn words(args: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => word.extend(chars.next()),
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in {args:?}"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_join_continuations_and_skip_comments() {
        let text = "# syntax\nFROM base:1 AS b\n\nrun apt-get update && \\\n  # a comment inside\n  apt-get install -y x\nCMD [\"a\", \"b\"]\n";
        let parsed = parse(text).unwrap();
        let got: Vec<(&str, &str, usize)> =
            parsed.iter().map(|i| (i.keyword.as_str(), i.args.as_str(), i.line)).collect();
        assert_eq!(
            got,
            [
                ("FROM", "base:1 AS b", 2),
                ("RUN", "apt-get update && apt-get install -y x", 4),
                ("CMD", "[\"a\", \"b\"]", 7)
            ]
        );
        assert!(parse("FR0M x").unwrap_err().contains("line 1"));
        assert_eq!(exec_form("[\"a\", \"b\"]"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(exec_form("echo [x]"), None);
    }

    #[test]
    fn variables_are_substituted_as_docker_does() {
        let vars: BTreeMap<String, String> =
            [("V".to_string(), "1.2".to_string()), ("E".to_string(), String::new())].into();
        assert_eq!(substitute("/opt/app-$V/${V}_x", &vars), "/opt/app-1.2/1.2_x");
        assert_eq!(substitute("${E:-dflt} ${V:-dflt} ${V:+set} ${E:+set}.", &vars), "dflt 1.2 set .");
        assert_eq!(substitute("\\$V $NONE end", &vars), "$V  end");
    }

    #[test]
    fn pairs_and_words_unquote() {
        assert_eq!(
            pairs("A=1 B=\"two words\" C='x y'").unwrap(),
            [("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "x y".into())]
        );
        assert_eq!(pairs("PATH /usr/bin:/bin").unwrap(), [("PATH".into(), "/usr/bin:/bin".into())]);
        assert_eq!(words("a 'b c' d\\ e").unwrap(), ["a", "b c", "d e"]);
        assert!(words("\"open").is_err());
    }
}
