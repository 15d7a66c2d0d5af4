//! NumPy `.npy` headers: the magic, the version, and the Python dict literal that gives the
//! array's dtype, memory order and shape. Only the header is read; the data is not.

use std::io::Read;

/// The magic string every `.npy` file starts with.
pub(crate) const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The largest header accepted; real ones are well under a kilobyte.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How deeply the dict literal may nest.
const MAX_DEPTH: usize = 16;

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NpyHeader {
    /// The dtype string, such as `<f8` or `|u1`.
    pub descr: String,
    pub fortran_order: bool,
    pub shape: Vec<u64>,
    /// The byte size of one element.
    pub item_size: u64,
    /// Where the data starts, from the start of the `.npy` content.
    pub data_offset: u64,
}

impl NpyHeader {
    /// The number of bytes the data must have.
    pub(crate) fn data_len(&self) -> Option<u64> {
        self.shape.iter().try_fold(self.item_size, |acc, &d| acc.checked_mul(d))
    }

    /// Samples are the first axis.
    pub(crate) fn sample_count(&self) -> u64 {
        self.shape.first().copied().unwrap_or(0)
    }

    /// The shape of one sample: the other axes joined by `x` (`8x8`), or `1` for a vector.
    pub(crate) fn sample_dimensions(&self) -> String {
        if self.shape.len() <= 1 {
            "1".to_owned()
        } else {
            self.shape[1..].iter().map(u64::to_string).collect::<Vec<_>>().join("x")
        }
    }

    /// The header as statistics JSON.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "dtype": self.descr, "shape": self.shape, "fortran_order": self.fortran_order })
    }

    /// Checks that `available` bytes (the file or zip entry length) hold exactly the data.
    pub(crate) fn check_len(&self, available: u64) -> Result<(), String> {
        let need = self.data_len().ok_or_else(|| format!("npy shape {:?} is too large", self.shape))?;
        let have = available.saturating_sub(self.data_offset);
        match have.cmp(&need) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Less => Err(format!("npy data is truncated: shape {:?} needs {need} bytes, found {have}", self.shape)),
            std::cmp::Ordering::Greater => Err(format!("npy data has {} trailing bytes after shape {:?}", have - need, self.shape)),
        }
    }
}

/// Reads a `.npy` header from the start of `r`.
///
/// # Errors
/// A message saying what is wrong: no magic, unknown version, a header over 64 KiB, a dict
/// that does not parse, an object or structured dtype, or a 0-dimensional array.
pub(crate) fn read_header(r: &mut impl Read) -> Result<NpyHeader, String> {
    let mut preamble = [0u8; 8];
    r.read_exact(&mut preamble).map_err(|_| "npy file is shorter than its preamble".to_owned())?;
    if &preamble[..6] != MAGIC {
        return Err("not a NumPy .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, len_bytes) = match preamble[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| "npy header length is truncated".to_owned())?;
            (usize::from(u16::from_le_bytes(b)), 2)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| "npy header length is truncated".to_owned())?;
            let len = usize::try_from(u32::from_le_bytes(b)).unwrap_or(usize::MAX);
            (len, 4)
        }
        v => return Err(format!("unsupported npy format version {v}")),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(format!("npy header is {header_len} bytes, more than the 64 KiB allowed"));
    }
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).map_err(|_| "npy header is truncated".to_owned())?;
    let text = std::str::from_utf8(&header).map_err(|_| "npy header is not text".to_owned())?;
    let data_offset = (8 + len_bytes + header_len) as u64;
    parse_dict(text, data_offset)
}

fn parse_dict(text: &str, data_offset: u64) -> Result<NpyHeader, String> {
    let mut p = Parser { s: text.as_bytes(), i: 0 };
    let value = p.value(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err("npy header has text after its dict".into());
    }
    let Py::Dict(entries) = value else { return Err("npy header is not a dict".into()) };
    let get = |key: &str| entries.iter().find(|(k, _)| matches!(k, Py::Str(s) if s == key)).map(|(_, v)| v);
    let descr = match get("descr") {
        Some(Py::Str(s)) => s.clone(),
        Some(Py::Seq(_)) => return Err("structured npy dtypes (record arrays) are not supported".into()),
        _ => return Err("npy header has no 'descr'".into()),
    };
    let fortran_order = match get("fortran_order") {
        Some(Py::Bool(b)) => *b,
        _ => return Err("npy header has no 'fortran_order'".into()),
    };
    let shape = match get("shape") {
        Some(Py::Seq(dims)) => dims
            .iter()
            .map(|d| match d {
                Py::Int(n) => Ok(*n),
                _ => Err("npy shape holds a non-integer".to_owned()),
            })
            .collect::<Result<Vec<u64>, String>>()?,
        _ => return Err("npy header has no 'shape'".into()),
    };
    if shape.is_empty() {
        return Err("npy array is 0-dimensional: it holds no samples".into());
    }
    let item_size = item_size(&descr)?;
    Ok(NpyHeader { descr, fortran_order, shape, item_size, data_offset })
}

/// The element size of a simple dtype string (`<f8`, `|u1`, `<U10`).
fn item_size(descr: &str) -> Result<u64, String> {
    let body = descr.trim_start_matches(['<', '>', '|', '=']);
    let kind = body.chars().next().ok_or_else(|| "npy dtype is empty".to_owned())?;
    if kind == 'O' {
        return Err(format!("npy object arrays (dtype {descr:?}) are not supported: they hold pickled Python objects"));
    }
    let count: u64 = body[kind.len_utf8()..].parse().map_err(|_| format!("unsupported npy dtype {descr:?}"))?;
    match kind {
        'b' | 'i' | 'u' | 'f' | 'c' | 'S' | 'a' | 'V' | 'm' | 'M' => Ok(count),
        'U' => Ok(count * 4),
        _ => Err(format!("unsupported npy dtype {descr:?}")),
    }
}

/// The Python literals a `.npy` header uses.
#[derive(Debug, Clone, PartialEq)]
enum Py {
    Str(String),
    Int(u64),
    Bool(bool),
    None,
    /// A tuple or a list.
    Seq(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Py, String> {
        if depth > MAX_DEPTH {
            return Err("npy header nests too deeply".into());
        }
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(b'(') => self.seq(b')', depth).map(Py::Seq),
            Some(b'[') => self.seq(b']', depth).map(Py::Seq),
            Some(b'{') => self.dict(depth),
            Some(c) if c.is_ascii_digit() => self.int(),
            Some(_) => self.word(),
            None => Err("npy header ends early".into()),
        }
    }

    fn string(&mut self, quote: u8) -> Result<Py, String> {
        self.i += 1;
        let start = self.i;
        while let Some(&c) = self.s.get(self.i) {
            if c == quote {
                let s = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(Py::Str(s));
            }
            self.i += 1;
        }
        Err("npy header has an unterminated string".into())
    }

    fn int(&mut self) -> Result<Py, String> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        // Python 2 wrote long integers with an L suffix.
        let digits = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        digits.parse().map(Py::Int).map_err(|_| format!("npy header integer {digits} is out of range"))
    }

    fn word(&mut self) -> Result<Py, String> {
        for (word, value) in [("True", Py::Bool(true)), ("False", Py::Bool(false)), ("None", Py::None)] {
            if self.s[self.i..].starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(value);
            }
        }
        Err(format!("npy header has an unexpected character at byte {}", self.i))
    }

    fn seq(&mut self, close: u8, depth: usize) -> Result<Vec<Py>, String> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(items);
            }
            items.push(self.value(depth + 1)?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => return Err("npy header has a malformed tuple or list".into()),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Py, String> {
        self.i += 1;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Py::Dict(entries));
            }
            let key = self.value(depth + 1)?;
            if self.peek() != Some(b':') {
                return Err("npy header has a malformed dict".into());
            }
            self.i += 1;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err("npy header has a malformed dict".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, data_len: usize) -> Vec<u8> {
        let mut h = header.to_owned();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&u16::try_from(h.len()).unwrap().to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data_len));
        out
    }

    #[test]
    fn parses_a_numpy_header() {
        let bytes = npy("{'descr': '|u1', 'fortran_order': False, 'shape': (1797, 8, 8), }", 1797 * 64);
        let h = read_header(&mut bytes.as_slice()).unwrap();
        assert_eq!((h.descr.as_str(), h.fortran_order, h.shape.as_slice(), h.item_size), ("|u1", false, &[1797, 8, 8][..], 1));
        assert_eq!((h.sample_count(), h.sample_dimensions(), h.data_offset), (1797, "8x8".to_owned(), 128));
        assert_eq!(h.check_len(bytes.len() as u64), Ok(()));
        assert!(h.check_len(bytes.len() as u64 - 1).unwrap_err().contains("truncated"));
        let v = npy("{'descr': '<i8', 'fortran_order': True, 'shape': (5,)}", 40);
        let h = read_header(&mut v.as_slice()).unwrap();
        assert_eq!((h.sample_dimensions(), h.fortran_order, h.item_size), ("1".to_owned(), true, 8));
    }

    #[test]
    fn refuses_object_structured_scalar_and_huge_headers() {
        let object = npy("{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", 24);
        assert!(read_header(&mut object.as_slice()).unwrap_err().contains("object"));
        let rec = npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }", 12);
        assert!(read_header(&mut rec.as_slice()).unwrap_err().contains("structured"));
        let scalar = npy("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", 8);
        assert!(read_header(&mut scalar.as_slice()).unwrap_err().contains("0-dimensional"));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[2, 0]);
        huge.extend_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(read_header(&mut huge.as_slice()).unwrap_err().contains("64 KiB"));
        assert!(read_header(&mut &b"\x93NUMPY\x01\x00\x05\x00{'a'"[..]).is_err());
    }
}
