//! A reader of the Prometheus text exposition format, just enough for the relay's own
//! `/metrics`: sample lines with labels and a value; comments, timestamps and anything
//! unreadable are skipped (a relay newer than the operator may add lines it does not know).

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of a label, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// Every readable sample of an exposition.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    // The value; a timestamp may follow and is not needed.
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample { name: name.to_string(), labels, value })
}

/// Labels up to the closing brace; returns them and the text after the brace.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let equals = rest.find('=')?;
        let key = rest[..equals].trim().to_string();
        let (value, after) = quoted(rest[equals + 1..].trim_start())?;
        labels.push((key, value));
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
}

/// A double-quoted label value with `\\`, `\"` and `\n` escapes; returns it and the rest.
fn quoted(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((value, &body[index + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_with_and_without_labels() {
        let text = "# HELP relay_seq_head Highest sequence number written\n\
                    # TYPE relay_seq_head gauge\n\
                    relay_seq_head 1234\n\
                    relay_hosts{status=\"active\"} 2\n\
                    relay_coverage_ratio{reference=\"wss://a.example\"} 0.9876\n\
                    relay_x{a=\"1\",b=\"two words\"} 5 1700000000000\n\
                    relay_inf +Inf\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 5);
        assert_eq!(samples[0], Sample { name: "relay_seq_head".into(), labels: vec![], value: 1234.0 });
        assert_eq!(samples[1].label("status"), Some("active"));
        assert_eq!(samples[2].value, 0.9876);
        assert_eq!(samples[3].label("b"), Some("two words"));
        assert_eq!(samples[3].value, 5.0);
        assert!(samples[4].value.is_infinite());
    }

    #[test]
    fn escapes_in_label_values() {
        let samples = parse(r#"m{path="a\"b\\c\nd",z="}"} 1"#);
        assert_eq!(samples[0].label("path"), Some("a\"b\\c\nd"));
        assert_eq!(samples[0].label("z"), Some("}"));
    }

    #[test]
    fn unreadable_lines_are_skipped() {
        for line in ["m{a=\"unterminated} 1", "m{a=1} 2", "m notanumber", "m", "{a=\"b\"} 1"] {
            assert!(parse(line).is_empty(), "{line:?} should be skipped");
        }
        assert_eq!(parse("bad line\nok 1\n").len(), 1);
    }
}
