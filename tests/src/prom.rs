//! A small, strict parser of the Prometheus / OpenMetrics text exposition, for tests that
//! scrape `/metrics`: every line must be a well-formed `# HELP`, `# TYPE`, `# UNIT`, `# EOF` or
//! sample line, every sample must belong to the family declared before it (with the suffixes
//! its type allows), label sets must not repeat, and histograms must be consistent (cumulative
//! buckets ending in `+Inf` equal to `_count`).

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family (`# TYPE` and its samples).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricFamily {
    pub kind: String,
    pub help: String,
    pub unit: String,
    pub samples: Vec<Sample>,
}

/// A parsed exposition, by family name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: BTreeMap<String, MetricFamily>,
}

fn valid_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `{a="x",b="y"}` from the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The suffixes a sample of a family of `kind` may add to the family's name.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

impl Exposition {
    /// Parses `text` strictly; the error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Exposition::default();
        let mut current: Option<String> = None;
        let mut eof = false;
        for (n, line) in text.lines().enumerate() {
            let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if eof {
                return Err(err("content after # EOF".into()));
            }
            if line == "# EOF" {
                eof = true;
                continue;
            }
            if let Some(meta) = line.strip_prefix("# ") {
                let mut parts = meta.splitn(3, ' ');
                let (word, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let arg = parts.next().unwrap_or("");
                if !valid_name(name, true) {
                    return Err(err(format!("bad metric name {name:?}")));
                }
                let fam = out.families.entry(name.to_string()).or_default();
                match word {
                    "TYPE" => {
                        if !fam.kind.is_empty() {
                            return Err(err("family declared twice".into()));
                        }
                        const KINDS: [&str; 8] = [
                            "counter",
                            "gauge",
                            "histogram",
                            "gaugehistogram",
                            "summary",
                            "info",
                            "stateset",
                            "unknown",
                        ];
                        if !KINDS.contains(&arg) {
                            return Err(err(format!("unknown type {arg:?}")));
                        }
                        fam.kind = arg.to_string();
                        current = Some(name.to_string());
                    }
                    "HELP" => fam.help = arg.to_string(),
                    "UNIT" => fam.unit = arg.to_string(),
                    other => return Err(err(format!("unknown comment {other:?}"))),
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                return Err(err("stray line".into()));
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            if !valid_name(name, true) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(err)?
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let mut fields = rest
                .strip_prefix(' ')
                .ok_or_else(|| err("no space before the value".into()))?
                .split(' ');
            let value = parse_value(fields.next().unwrap_or("")).map_err(err)?;
            if let Some(ts) = fields.next() {
                parse_value(ts).map_err(|e| err(format!("timestamp: {e}")))?;
            }
            if fields.next().is_some() {
                return Err(err("trailing fields".into()));
            }
            let fam_name = current
                .as_deref()
                .ok_or_else(|| err("sample before any # TYPE".into()))?;
            let fam = out.families.get_mut(fam_name).expect("declared");
            let suffix = name
                .strip_prefix(fam_name)
                .filter(|s| suffixes(&fam.kind).contains(s))
                .ok_or_else(|| {
                    err(format!(
                        "sample {name} does not belong to {} family {fam_name}",
                        fam.kind
                    ))
                })?;
            if fam.kind == "histogram" && suffix == "_bucket" && !labels.contains_key("le") {
                return Err(err("bucket without le".into()));
            }
            if fam
                .samples
                .iter()
                .any(|s| s.name == name && s.labels == labels)
            {
                return Err(err("sample repeated".into()));
            }
            fam.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        for (name, fam) in &out.families {
            if fam.kind.is_empty() {
                return Err(format!("{name}: HELP or UNIT without TYPE"));
            }
            if fam.kind == "histogram" {
                check_histogram(name, fam)?;
            }
        }
        Ok(out)
    }

    pub fn family(&self, name: &str) -> Option<&MetricFamily> {
        self.families.get(name)
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .filter(move |s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
    }

    /// The value of the one sample named `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels)
            .find(|s| s.labels.len() == labels.len())
            .map(|s| s.value)
    }

    /// The sum of the samples named `name` whose labels include `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).map(|s| s.value).sum()
    }
}

/// One histogram series: its buckets (upper bound, count) and its `_count`.
type HistogramSeries = (Vec<(f64, f64)>, Option<f64>);

/// Per label set (without `le`): buckets cumulative, ending in `+Inf` equal to `_count`.
fn check_histogram(name: &str, fam: &MetricFamily) -> Result<(), String> {
    let mut series: BTreeMap<Vec<(String, String)>, HistogramSeries> = BTreeMap::new();
    for s in &fam.samples {
        let key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let entry = series.entry(key).or_default();
        if s.name.ends_with("_bucket") {
            entry.0.push((parse_value(&s.labels["le"])?, s.value));
        } else if s.name.ends_with("_count") {
            entry.1 = Some(s.value);
        }
    }
    for (labels, (buckets, count)) in series {
        let ordered = buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        let last = buckets.last().copied();
        if !ordered || last.is_none_or(|(le, n)| le != f64::INFINITY || Some(n) != count) {
            return Err(format!(
                "{name}{labels:?}: buckets {buckets:?} inconsistent with count {count:?}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
# HELP x_requests Requests.
# TYPE x_requests counter
x_requests_total{code=\"200\",path=\"/a \\\"b\\\"\"} 3
x_requests_total{code=\"500\",path=\"/\"} 1
# HELP x_up Up.
# TYPE x_up gauge
x_up 1
# HELP x_latency_seconds Latency.
# TYPE x_latency_seconds histogram
# UNIT x_latency_seconds seconds
x_latency_seconds_sum{op=\"get\"} 0.5
x_latency_seconds_count{op=\"get\"} 2
x_latency_seconds_bucket{le=\"0.1\",op=\"get\"} 1
x_latency_seconds_bucket{le=\"+Inf\",op=\"get\"} 2
# EOF
";

    #[test]
    fn parses_families_labels_and_histograms() {
        let e = Exposition::parse(GOOD).unwrap();
        assert_eq!(e.family("x_requests").unwrap().kind, "counter");
        assert_eq!(
            e.value("x_requests_total", &[("code", "200"), ("path", "/a \"b\"")]),
            Some(3.0)
        );
        assert_eq!(e.sum("x_requests_total", &[]), 4.0);
        assert_eq!(e.value("x_up", &[]), Some(1.0));
        assert_eq!(
            e.value("x_latency_seconds_count", &[("op", "get")]),
            Some(2.0)
        );
        assert_eq!(e.family("x_latency_seconds").unwrap().unit, "seconds");
    }

    #[test]
    fn refuses_malformed_text() {
        for (bad, why) in [
            ("x_up 1\n", "sample before TYPE"),
            ("# TYPE x_up gauge\nx_up\n", "no value"),
            ("# TYPE x_up gauge\nx_up one\n", "bad value"),
            ("# TYPE x_up gauge\nx_down 1\n", "other family"),
            ("# TYPE x_up gauge\nx_up{a=b} 1\n", "unquoted label"),
            (
                "# TYPE x_up gauge\nx_up{a=\"b\",a=\"c\"} 1\n",
                "repeated label",
            ),
            ("# TYPE x_up gauge\nx_up 1\nx_up 2\n", "repeated sample"),
            ("# TYPE x_up gauge\n# EOF\nx_up 1\n", "after EOF"),
            ("# TYPE x_up wobble\n", "unknown type"),
            (
                "# TYPE h histogram\nh_count 2\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\n",
                "non-cumulative buckets",
            ),
            (
                "# TYPE h histogram\nh_count 2\nh_bucket{le=\"1\"} 1\n",
                "no +Inf",
            ),
        ] {
            assert!(Exposition::parse(bad).is_err(), "{why}: {bad:?}");
        }
    }
}
