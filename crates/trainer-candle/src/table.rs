//! The one CSV/TSV reader that inspection and training share: delimiter sniffing, header and
//! label-column detection, numeric parsing and line-numbered errors, streamed with a cap on
//! the size of a single line so that a malicious file cannot make it buffer without bound.

use std::{
    collections::VecDeque,
    fmt,
    io::{self, Read},
};

/// The longest line (or quoted record) the reader accepts.
pub(crate) const MAX_LINE_BYTES: usize = 1 << 20;

/// Header names that mark the label column, compared case-insensitively.
const LABEL_NAMES: [&str; 3] = ["label", "target", "class"];

/// Cell spellings read as a missing value.
const MISSING: [&str; 6] = ["", "na", "n/a", "nan", "null", "?"];

/// Why a table could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TableError {
    /// The content is malformed; the message names the line.
    #[error("{0}")]
    Invalid(String),
    /// Reading the file failed.
    #[error("{0}")]
    Io(String),
}

/// The delimiters the reader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delimiter {
    Comma,
    Tab,
}

impl Delimiter {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Self::Comma => b',',
            Self::Tab => b'\t',
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Comma => "','",
            Self::Tab => "tab",
        }
    }
}

/// A feature cell: a finite number or a missing value.
fn parse_feature(raw: &str) -> Result<Option<f64>, ()> {
    if is_missing(raw) {
        return Ok(None);
    }
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(v)),
        _ => Err(()),
    }
}

fn is_missing(raw: &str) -> bool {
    MISSING.iter().any(|m| raw.eq_ignore_ascii_case(m))
}

/// Whether a cell reads as a number or a missing value.
fn numeric_like(raw: &str) -> bool {
    parse_feature(raw).is_ok()
}

/// Guesses whether `head` (the start of a UTF-8 file) is a table, and with which delimiter.
///
/// `hint` is the delimiter the file name suggests (`.csv`, `.tsv`). With a hint, a first line
/// that splits into two or more fields is enough: the strict reader then reports what is wrong
/// with the rest. Without one, at least half of the following lines must have the first line's
/// field count and be numeric in all but at most one field (the label), so that prose with
/// commas stays text. `complete` says whether `head` is the whole file.
pub(crate) fn sniff(head: &str, complete: bool, hint: Option<Delimiter>) -> Option<Delimiter> {
    // Only whole lines: the last one may be cut off unless the head is the whole file.
    let head = if complete { head } else { head.rfind('\n').map_or("", |end| &head[..end]) };
    let first_line = head.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut order = vec![Delimiter::Comma, Delimiter::Tab];
    if hint == Some(Delimiter::Tab) || (hint.is_none() && first_line.contains('\t')) {
        order.reverse();
    }
    order.into_iter().find(|&delimiter| {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter.byte())
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(head.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().take(50).map_while(Result::ok).collect();
        let Some(width) = records.first().map(csv::StringRecord::len).filter(|&n| n >= 2) else { return false };
        if hint == Some(delimiter) {
            return true;
        }
        let rest = &records[1..];
        let tabular = rest.iter().filter(|r| r.len() == width && r.iter().filter(|c| !numeric_like(c)).count() <= 1).count();
        !rest.is_empty() && tabular * 2 >= rest.len()
    })
}

/// Streams the rows of a table: header detection, label column, numeric features.
#[derive(Debug)]
pub(crate) struct TableReader<R: Read> {
    reader: csv::Reader<LineCapped<R>>,
    delimiter: Delimiter,
    /// Records read ahead to detect the header, replayed before the rest.
    pending: VecDeque<csv::StringRecord>,
    record: csv::StringRecord,
    columns: Vec<String>,
    label: usize,
    has_header: bool,
}

/// One data row; its features are written into the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// The 1-based line the row starts on.
    pub line: u64,
    pub label: String,
}

impl<R: Read> TableReader<R> {
    /// Reads the first two records to decide whether the first is a header and which column
    /// holds the label.
    ///
    /// The first row is a header when one of its fields is not a number where the second row's
    /// field is one. The label column is the one named `label`, `target` or `class`, else the last.
    pub(crate) fn open(inner: R, delimiter: Delimiter) -> Result<Self, TableError> {
        let reader = csv::ReaderBuilder::new()
            .delimiter(delimiter.byte())
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(LineCapped::new(inner));
        let mut this = Self {
            reader,
            delimiter,
            pending: VecDeque::new(),
            record: csv::StringRecord::new(),
            columns: Vec::new(),
            label: 0,
            has_header: false,
        };
        let first = this.read_raw()?.ok_or_else(|| TableError::Invalid("the file holds no rows".into()))?;
        let width = first.len();
        if width < 2 {
            return Err(TableError::Invalid(format!(
                "line {}: found a single column; a table needs feature columns and a label column separated by {}",
                line_of(&first),
                delimiter.describe()
            )));
        }
        let second = this.read_raw()?;
        if let Some(second) = &second {
            check_width(second, width)?;
        }
        this.has_header = match &second {
            Some(second) => first.iter().zip(second.iter()).any(|(a, b)| !numeric_like(a) && numeric_like(b)),
            None => first.iter().any(|a| !numeric_like(a)),
        };
        if this.has_header {
            this.columns =
                first.iter().enumerate().map(|(i, name)| if name.is_empty() { column_name(i) } else { name.to_owned() }).collect();
            let named = this.columns.iter().position(|c| LABEL_NAMES.iter().any(|l| c.eq_ignore_ascii_case(l)));
            this.label = named.unwrap_or(width - 1);
        } else {
            this.columns = (0..width).map(column_name).collect();
            this.label = width - 1;
            this.pending.push_back(first);
        }
        this.pending.extend(second);
        Ok(this)
    }

    /// Every column's name (generated `column_N` when there is no header), label included.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The index of the label column.
    pub(crate) fn label_index(&self) -> usize {
        self.label
    }

    /// The feature columns' names, in file order.
    pub(crate) fn feature_names(&self) -> Vec<String> {
        self.columns.iter().enumerate().filter(|(i, _)| *i != self.label).map(|(_, c)| c.clone()).collect()
    }

    pub(crate) fn has_header(&self) -> bool {
        self.has_header
    }

    pub(crate) fn delimiter(&self) -> Delimiter {
        self.delimiter
    }

    /// The next data row, its features (missing ones as `None`) written into `features`.
    pub(crate) fn next_row(&mut self, features: &mut Vec<Option<f64>>) -> Result<Option<Row>, TableError> {
        let record = match self.pending.pop_front() {
            Some(record) => record,
            None => match self.read_raw()? {
                Some(record) => record,
                None => return Ok(None),
            },
        };
        check_width(&record, self.columns.len())?;
        let line = line_of(&record);
        features.clear();
        for (i, cell) in record.iter().enumerate() {
            if i == self.label {
                continue;
            }
            let value = parse_feature(cell).map_err(|()| {
                TableError::Invalid(format!("line {line}, column '{}': {:?} is not a finite number", self.columns[i], shorten(cell)))
            })?;
            features.push(value);
        }
        let label = record.get(self.label).unwrap_or_default();
        if label.is_empty() {
            return Err(TableError::Invalid(format!("line {line}: the label column '{}' is empty", self.columns[self.label])));
        }
        Ok(Some(Row { line, label: label.to_owned() }))
    }

    fn read_raw(&mut self) -> Result<Option<csv::StringRecord>, TableError> {
        match self.reader.read_record(&mut self.record) {
            Ok(true) => Ok(Some(self.record.clone())),
            Ok(false) => Ok(None),
            Err(e) => Err(csv_error(&e, self.reader.get_ref().line)),
        }
    }
}

fn check_width(record: &csv::StringRecord, width: usize) -> Result<(), TableError> {
    if record.len() == width {
        Ok(())
    } else {
        Err(TableError::Invalid(format!("line {}: expected {width} fields, found {} (ragged row)", line_of(record), record.len())))
    }
}

fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

fn column_name(i: usize) -> String {
    format!("column_{}", i + 1)
}

/// At most 40 characters of a cell, for error messages.
fn shorten(cell: &str) -> String {
    if cell.chars().count() <= 40 {
        cell.to_owned()
    } else {
        cell.chars().take(40).chain("...".chars()).collect()
    }
}

fn csv_error(e: &csv::Error, current_line: u64) -> TableError {
    match e.kind() {
        csv::ErrorKind::Io(io) => match io.get_ref().and_then(|inner| inner.downcast_ref::<LineTooLong>()) {
            Some(too_long) => TableError::Invalid(too_long.to_string()),
            None => TableError::Io(io.to_string()),
        },
        csv::ErrorKind::Utf8 { pos, .. } => {
            let line = pos.as_ref().map_or(current_line, csv::Position::line);
            TableError::Invalid(format!("line {line} is not valid UTF-8"))
        }
        _ => TableError::Invalid(format!("line {current_line}: {e}")),
    }
}

/// The error [`LineCapped`] fails with.
#[derive(Debug)]
struct LineTooLong {
    line: u64,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} is longer than {} MiB", self.line, MAX_LINE_BYTES >> 20)
    }
}

impl std::error::Error for LineTooLong {}

/// A reader that fails once a line grows past [`MAX_LINE_BYTES`], and counts lines.
#[derive(Debug)]
struct LineCapped<R> {
    inner: R,
    since_newline: usize,
    /// The 1-based line the next byte belongs to.
    line: u64,
}

impl<R> LineCapped<R> {
    fn new(inner: R) -> Self {
        Self { inner, since_newline: 0, line: 1 }
    }
}

impl<R: Read> Read for LineCapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.since_newline = 0;
                self.line += 1;
            } else {
                self.since_newline += 1;
                if self.since_newline > MAX_LINE_BYTES {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, LineTooLong { line: self.line }));
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns, label index, whether there was a header, and every row's features and label.
    type Read = (Vec<String>, usize, bool, Vec<(Vec<Option<f64>>, String)>);

    fn rows(text: &str) -> Result<Read, TableError> {
        let mut t = TableReader::open(text.as_bytes(), Delimiter::Comma)?;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(row) = t.next_row(&mut buf)? {
            out.push((buf.clone(), row.label));
        }
        Ok((t.columns().to_vec(), t.label_index(), t.has_header(), out))
    }

    #[test]
    fn detects_headers_and_labels() {
        let (cols, label, header, data) = rows("a,label,b\n1,0,2\n3,1,4\n").unwrap();
        assert_eq!((cols, label, header), (vec!["a".into(), "label".into(), "b".into()], 1, true));
        assert_eq!(data[1], (vec![Some(3.0), Some(4.0)], "1".into()));

        let (cols, label, header, data) = rows("5.1,3.5,setosa\n4.9,3.0,versicolor\n").unwrap();
        assert_eq!((cols[2].as_str(), label, header, data.len()), ("column_3", 2, false, 2));
        assert_eq!(data[0].1, "setosa");

        let (cols, _, header, data) = rows("\u{feff}5.1,3.5,0\n4.9,3.0,1\n").unwrap();
        assert_eq!((cols[0].as_str(), header, data[0].0[0]), ("column_1", false, Some(5.1)), "a byte-order mark is no header");
        let (cols, _, header, _) = rows("\u{feff}a,b\n1,2\n").unwrap();
        assert_eq!((cols[0].as_str(), header), ("a", true));

        let (_, label, header, data) = rows("x,y,TARGET,z\n1,2,a,3\n4,NA,b,6\n").unwrap();
        assert_eq!((label, header), (2, true));
        assert_eq!(data[1].0, vec![Some(4.0), None, Some(6.0)]);
    }

    #[test]
    fn reports_ragged_and_non_numeric_lines() {
        let e = rows("a,b,label\n1,2,0\n3,4\n5,6,1\n").unwrap_err();
        assert_eq!(e, TableError::Invalid("line 3: expected 3 fields, found 2 (ragged row)".into()));
        let e = rows("a,b,label\n1,2,0\n3,x,1\n").unwrap_err();
        assert_eq!(e, TableError::Invalid("line 3, column 'b': \"x\" is not a finite number".into()));
        let e = rows("a,b,label\n1,2,\n").unwrap_err();
        assert!(e.to_string().contains("label column 'label' is empty"), "{e}");
        assert!(matches!(rows(""), Err(TableError::Invalid(_))));
        assert!(rows("onecolumn\n1\n").unwrap_err().to_string().contains("single column"));
        assert!(rows("a,b,label\n1,inf,0\n").unwrap_err().to_string().contains("finite"));
    }

    #[test]
    fn caps_the_length_of_a_line() {
        let mut text = "a,label\n1,0\n".to_owned();
        text.push_str(&"9".repeat(MAX_LINE_BYTES + 10));
        text.push_str(",1\n");
        let e = rows(&text).unwrap_err();
        assert_eq!(e, TableError::Invalid("line 3 is longer than 1 MiB".into()));
    }

    #[test]
    fn sniffs_tables_but_not_prose() {
        assert_eq!(sniff("a,b,label\n1,2,0\n3,4,1\n", true, None), Some(Delimiter::Comma));
        assert_eq!(sniff("a\tb\tlabel\n1\t2\t0\n", true, None), Some(Delimiter::Tab));
        assert_eq!(sniff("a,b,label\n1,2,0\n3,4\n5,6,1\n", true, None), Some(Delimiter::Comma), "ragged, still a table");
        let prose = "Hello, world.\nThis is prose, with commas, here and there.\nAnd more lines.\n";
        assert_eq!(sniff(prose, true, None), None);
        assert_eq!(sniff("Hello, world\n", true, Some(Delimiter::Comma)), Some(Delimiter::Comma), "a .csv name is trusted");
        assert_eq!(sniff("just one column\n", true, Some(Delimiter::Comma)), None);
        assert_eq!(sniff("a,b\n1,2\n3,", false, None), Some(Delimiter::Comma), "a cut-off last line is ignored");
    }
}
