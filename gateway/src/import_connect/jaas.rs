//! Kafka's `sasl.jaas.config` value: one JAAS login module entry,
//! `<LoginModule class> <flag> key="value" key=value ... ;`, as Kafka's `JaasConfig`
//! reads it (values quoted with `"` and backslash escapes, or bare words; `//` and
//! `/* */` comments). Errors name a position, never the text: the value holds a
//! password.

/// One login module entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jaas {
    /// The login module's class, e.g.
    /// `org.apache.kafka.common.security.scram.ScramLoginModule`.
    pub module: String,
    /// `required`, `requisite`, `sufficient` or `optional`.
    pub flag: String,
    /// The options in order.
    pub options: Vec<(String, String)>,
}

impl Jaas {
    /// The value of option `key`.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse a `sasl.jaas.config` value.
pub fn parse(text: &str) -> Result<Jaas, String> {
    let mut p = Parser {
        chars: text.chars().collect(),
        at: 0,
    };
    let module = p.word().ok_or("no login module class at the start")?;
    let flag = p.word().ok_or("no control flag after the login module")?;
    if !matches!(
        flag.as_str(),
        "required" | "requisite" | "sufficient" | "optional"
    ) {
        return Err(
            "the control flag after the login module is not required, requisite, sufficient or optional"
                .into(),
        );
    }
    let mut options = Vec::new();
    loop {
        p.skip_space()?;
        match p.peek() {
            Some(';') => {
                p.at += 1;
                break;
            }
            None => return Err("missing ';' at the end".into()),
            _ => {}
        }
        let start = p.at;
        let key = p
            .word()
            .ok_or_else(|| format!("an option name expected at character {}", start + 1))?;
        p.skip_space()?;
        if p.peek() != Some('=') {
            return Err(format!("'=' expected after option {key:?}"));
        }
        p.at += 1;
        p.skip_space()?;
        let value = if p.peek() == Some('"') {
            p.quoted().map_err(|e| format!("option {key:?}: {e}"))?
        } else {
            p.word()
                .ok_or_else(|| format!("option {key:?} has no value"))?
        };
        options.push((key, value));
    }
    p.skip_space()?;
    if p.peek().is_some() {
        return Err(
            "text after the first login module's ';' (Kafka takes exactly one login module)".into(),
        );
    }
    Ok(Jaas {
        module,
        flag,
        options,
    })
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) -> Result<(), String> {
        loop {
            match (self.peek(), self.chars.get(self.at + 1)) {
                (Some(c), _) if c.is_whitespace() => self.at += 1,
                (Some('/'), Some('/')) => {
                    while self.peek().is_some_and(|c| c != '\n' && c != '\r') {
                        self.at += 1;
                    }
                }
                (Some('/'), Some('*')) => {
                    let start = self.at;
                    self.at += 2;
                    loop {
                        match (self.peek(), self.chars.get(self.at + 1)) {
                            (Some('*'), Some('/')) => {
                                self.at += 2;
                                break;
                            }
                            (Some(_), _) => self.at += 1,
                            (None, _) => {
                                return Err(format!(
                                    "comment opened at character {} is not closed",
                                    start + 1
                                ))
                            }
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// A bare word: letters, digits and `. - _ $`.
    fn word(&mut self) -> Option<String> {
        let _ = self.skip_space();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '$'))
        {
            self.at += 1;
        }
        (self.at > start).then(|| self.chars[start..self.at].iter().collect())
    }

    /// A `"..."` string with backslash escapes (`\n \t \r \b \f`, any other character
    /// stands for itself).
    fn quoted(&mut self) -> Result<String, String> {
        let start = self.at;
        self.at += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(format!(
                    "the quote opened at character {} is not closed",
                    start + 1
                ));
            };
            self.at += 1;
            match c {
                '"' => return Ok(out),
                '\\' => {
                    let Some(e) = self.peek() else { continue };
                    self.at += 1;
                    out.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'b' => '\x08',
                        'f' => '\x0c',
                        other => other,
                    });
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_with_quoted_values() {
        let j = parse(
            r#"org.apache.kafka.common.security.scram.ScramLoginModule required username="gw" password="p@ss w=rd;";"#,
        )
        .unwrap();
        assert_eq!(
            j.module,
            "org.apache.kafka.common.security.scram.ScramLoginModule"
        );
        assert_eq!(j.flag, "required");
        assert_eq!(j.option("username"), Some("gw"));
        assert_eq!(j.option("password"), Some("p@ss w=rd;"));
    }

    #[test]
    fn escapes_bare_words_comments_and_line_breaks() {
        let j = parse(
            "org.apache.kafka.common.security.plain.PlainLoginModule required\n  /* who */ username=gw_1 // the user\n  password=\"a\\\"b\\\\c\" ;  ",
        )
        .unwrap();
        assert_eq!(j.option("username"), Some("gw_1"));
        assert_eq!(j.option("password"), Some("a\"b\\c"));
    }

    #[test]
    fn errors_never_quote_the_text() {
        let secret = "hunter2-secret";
        for text in [
            format!(r#"org.x.Module required password="{secret}""#),
            format!(r#"org.x.Module required password="{secret}"#),
            format!(r#"org.x.Module required password {secret};"#),
            format!(r#"org.x.Module maybe password="{secret}";"#),
            format!(r#"org.x.Module required password="{secret}"; other.Module required;"#),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(!e.contains(secret), "{e}");
        }
        assert!(parse("").is_err());
    }
}
