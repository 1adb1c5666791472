//! Output conventions shared by the commands.

/// `--format`: `json`, or a Go template as Docker takes it (`{{.ID}}`, `{{json .Spec}}`,
/// `table {{.ID}}\t{{.Name}}`), rendered by gtmpl (Go's text/template for Rust) with Docker's
/// `json`, `upper`, `lower`, `join` and `title` functions.
#[derive(Debug, Clone)]
pub(crate) enum Format {
    /// One JSON document (`inspect`, `info`) or one JSON object per line (`ls`, `ps`).
    Json,
    /// A Go template, applied to each object (each row for `ls`/`ps`).
    Template {
        /// `table TEMPLATE`: a header row, and columns aligned at the template's tabs.
        table: bool,
        /// The template's text, parsed once.
        text: String,
    },
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "json" {
            return Ok(Self::Json);
        }
        let (table, body) = match text.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                (true, rest.trim_start())
            }
            _ => (false, text),
        };
        // Docker's CLI takes `\t` and `\n` typed literally in a template.
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        template(&body).map_err(|e| format!("template parsing error: {e}"))?;
        Ok(Self::Template { table, text: body })
    }
}

fn template(text: &str) -> Result<gtmpl::Template, String> {
    let mut template = gtmpl::Template::default();
    template.add_funcs(&[
        ("json", json_func as gtmpl::Func),
        ("upper", upper as gtmpl::Func),
        ("lower", lower as gtmpl::Func),
        ("title", title as gtmpl::Func),
        ("join", join as gtmpl::Func),
    ]);
    template.parse(text).map_err(|e| e.to_string())?;
    Ok(template)
}

/// A JSON value as a template sees it: objects are maps (a missing key is `<no value>`, as for
/// Go maps).
fn to_template(value: &serde_json::Value) -> gtmpl::Value {
    use serde_json::Value as J;
    match value {
        J::Null => gtmpl::Value::Nil,
        J::Bool(b) => gtmpl::Value::Bool(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => gtmpl::Value::from(u),
            (_, Some(i), _) => gtmpl::Value::from(i),
            (_, _, Some(f)) => gtmpl::Value::from(f),
            _ => gtmpl::Value::Nil,
        },
        J::String(s) => gtmpl::Value::String(s.clone()),
        J::Array(items) => gtmpl::Value::Array(items.iter().map(to_template).collect()),
        J::Object(map) => gtmpl::Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), to_template(v)))
                .collect(),
        ),
    }
}

fn from_template(value: &gtmpl::Value) -> serde_json::Value {
    use gtmpl::Value as G;
    match value {
        G::NoValue | G::Nil | G::Function(_) => serde_json::Value::Null,
        G::Bool(b) => serde_json::Value::Bool(*b),
        G::String(s) => serde_json::Value::String(s.clone()),
        G::Number(n) => n
            .as_u64()
            .map(serde_json::Value::from)
            .or_else(|| n.as_i64().map(serde_json::Value::from))
            .or_else(|| n.as_f64().map(serde_json::Value::from))
            .unwrap_or(serde_json::Value::Null),
        G::Array(items) => serde_json::Value::Array(items.iter().map(from_template).collect()),
        G::Object(map) | G::Map(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), from_template(v)))
                .collect(),
        ),
    }
}

fn one_arg<'a>(name: &str, args: &'a [gtmpl::Value]) -> Result<&'a gtmpl::Value, gtmpl::FuncError> {
    match args {
        [one] => Ok(one),
        _ => Err(gtmpl::FuncError::ExactlyXArgs(name.into(), 1)),
    }
}

fn json_func(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    let value = from_template(one_arg("json", args)?);
    serde_json::to_string(&value)
        .map(gtmpl::Value::String)
        .map_err(|e| gtmpl::FuncError::Generic(e.to_string()))
}

fn text_of(name: &str, args: &[gtmpl::Value]) -> Result<String, gtmpl::FuncError> {
    Ok(one_arg(name, args)?.to_string())
}

fn upper(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    Ok(gtmpl::Value::String(text_of("upper", args)?.to_uppercase()))
}

fn lower(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    Ok(gtmpl::Value::String(text_of("lower", args)?.to_lowercase()))
}

fn title(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    let text = text_of("title", args)?;
    let mut chars = text.chars();
    Ok(gtmpl::Value::String(match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }))
}

fn join(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    match args {
        [gtmpl::Value::Array(items), sep] => Ok(gtmpl::Value::String(
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(&sep.to_string()),
        )),
        _ => Err(gtmpl::FuncError::Generic(
            "join takes a list and a separator".into(),
        )),
    }
}

/// `{{.CreatedAt}}` as a table header: `CREATED AT` (Docker's headers are the field names).
fn header_of(cell: &str) -> String {
    let names: Vec<String> = cell
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split("}}").next())
        .filter_map(|action| action.split_whitespace().find(|w| w.starts_with('.')))
        .map(|field| {
            let last = field.rsplit('.').next().unwrap_or(field);
            let mut out = String::new();
            let mut previous_upper = true;
            for c in last.chars() {
                if c.is_uppercase() && !previous_upper {
                    out.push(' ');
                }
                previous_upper = c.is_uppercase();
                out.extend(c.to_uppercase());
            }
            out
        })
        .collect();
    names.join(" ")
}

impl Format {
    /// Renders `value` with this template (`None` for `json`).
    fn render(&self, value: &serde_json::Value) -> Result<Option<String>, String> {
        let Self::Template { text, .. } = self else {
            return Ok(None);
        };
        let template = template(text)?;
        template
            .render(&gtmpl::Context::from(to_template(value)))
            .map(Some)
            .map_err(|e| format!("template: {e}"))
    }
}

/// Prints `rows` (`ls`, `ps`) as `format` asks: `json` one object per line, a template one line
/// per row (`table`: aligned, under a header). False without a format: the caller prints its
/// own table.
pub(crate) fn print_rows<T: serde::Serialize>(
    format: Option<&Format>,
    rows: &[T],
) -> Result<bool, crate::Failure> {
    let Some(format) = format else {
        return Ok(false);
    };
    if let Format::Json = format {
        json_lines(rows)?;
        return Ok(true);
    }
    let mut lines = Vec::new();
    for row in rows {
        let value = serde_json::to_value(row)?;
        lines.push(
            format
                .render(&value)
                .map_err(crate::Failure)?
                .unwrap_or_default(),
        );
    }
    if let Format::Template { table: true, text } = format {
        let header: Vec<String> = text.split('\t').map(header_of).collect();
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect();
        print!("{}", columns(&header, &rows));
    } else {
        for line in lines {
            println!("{line}");
        }
    }
    Ok(true)
}

/// Prints `objects` (`inspect`): pretty JSON by default and for `json`, else the template once
/// per object.
pub(crate) fn print_objects<T: serde::Serialize>(
    format: Option<&Format>,
    objects: &[T],
) -> Result<(), crate::Failure> {
    match format {
        None | Some(Format::Json) => println!("{}", serde_json::to_string_pretty(objects)?),
        Some(format) => {
            for object in objects {
                let value = serde_json::to_value(object)?;
                println!(
                    "{}",
                    format
                        .render(&value)
                        .map_err(crate::Failure)?
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Columns padded to their widest cell, three spaces apart, for rows of any width.
fn columns(header: &[String], rows: &[Vec<String>]) -> String {
    let n = header
        .len()
        .max(rows.iter().map(Vec::len).max().unwrap_or(0));
    let mut widths = vec![0; n];
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, w) in widths.iter().enumerate() {
            let cell = cells.get(i).map_or("", String::as_str);
            if i + 1 == n {
                out += cell;
            } else {
                out += &format!("{cell:<w$}   ");
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header);
    for row in rows {
        out += &line(row);
    }
    out
}

/// `ls`/`ps --format json`: one JSON object per line.
pub(crate) fn json_lines<T: serde::Serialize>(rows: &[T]) -> Result<(), serde_json::Error> {
    for row in rows {
        println!("{}", serde_json::to_string(row)?);
    }
    Ok(())
}

/// Columns padded to their widest cell, three spaces apart, as Docker's tables.
pub(crate) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.to_vec()).collect();
    columns(&header, &rows)
}

/// How long ago an RFC 3339 time was, as Docker says it ("5 seconds ago", "2 minutes ago").
pub(crate) fn ago(rfc3339: &str) -> String {
    let Ok(then) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return String::new();
    };
    let seconds = (time::OffsetDateTime::now_utc() - then)
        .whole_seconds()
        .max(0);
    let (n, unit) = match seconds {
        0 => return "Less than a second ago".into(),
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    if n == 1 {
        let article = if unit == "hour" { "An" } else { "A" };
        format!("{article} {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// Bytes in binary units with four significant digits, as Docker prints sizes ("23.47GiB").
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let integer_digits = if value < 1.0 {
        1
    } else {
        value.log10().floor() as usize + 1
    };
    let decimals = 4_usize.saturating_sub(integer_digits);
    let mut text = format!("{value:.decimals$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::{Format, header_of, human_bytes};

    fn render(format: &str, value: serde_json::Value) -> Result<String, String> {
        let format: Format = format.parse()?;
        format.render(&value).map(Option::unwrap_or_default)
    }

    #[test]
    fn go_templates_render_as_dockers_cli_renders_them() {
        let service = serde_json::json!({
            "ID": "abc", "Version": {"Index": 12},
            "Spec": {"Name": "web", "Labels": {"tier": "front"}, "Replicas": 3}
        });
        assert_eq!(
            render("{{.ID}} {{.Spec.Name}}", service.clone()).unwrap(),
            "abc web"
        );
        assert_eq!(
            render("{{json .Spec.Labels}}", service.clone()).unwrap(),
            r#"{"tier":"front"}"#
        );
        assert_eq!(
            render(
                r#"{{index .Spec.Labels "tier"}} {{.Version.Index}}"#,
                service.clone()
            )
            .unwrap(),
            "front 12"
        );
        assert_eq!(
            render("{{upper .Spec.Name}}", service.clone()).unwrap(),
            "WEB"
        );
        assert_eq!(
            render("{{if eq .Spec.Name \"web\"}}yes{{end}}", service.clone()).unwrap(),
            "yes"
        );
        // A key the object lacks reads as Go's map lookup does.
        assert_eq!(render("{{.Nope}}", service.clone()).unwrap(), "<no value>");
        assert!(
            "{{.ID"
                .parse::<Format>()
                .unwrap_err()
                .contains("template parsing error"),
        );
        assert!(matches!("json".parse::<Format>(), Ok(Format::Json)));
        assert!(matches!(
            r"table {{.Name}}\t{{.ID}}".parse::<Format>(),
            Ok(Format::Template { table: true, ref text }) if text == "{{.Name}}\t{{.ID}}"
        ));
    }

    #[test]
    fn table_headers_are_the_field_names() {
        assert_eq!(header_of("{{.ID}}"), "ID");
        assert_eq!(header_of("{{.CreatedAt}}"), "CREATED AT");
        assert_eq!(header_of("{{.Spec.Name}}"), "NAME");
        assert_eq!(header_of("{{json .Spec}}"), "SPEC");
    }

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(1024 * 1024), "1MiB");
        assert_eq!(human_bytes(25_198_723_072), "23.47GiB");
        assert_eq!(human_bytes(100 * 1024 * 1024 * 1024), "100GiB");
    }
}
