//! The owner's character vocabulary: `vocabulary = {'char_to_idx': {ch: i}, 'idx_to_char': {i: ch},
//! 'vocab_size': n}`, read as an index-to-character table and checked to be a bijection on `0..n`.

use std::collections::HashSet;

use super::{error::PthError, value::PickleValue};

fn vocab_error(message: impl Into<String>) -> PthError {
    PthError::Vocabulary(message.into())
}

/// An index key: an int, or a decimal string (a vocabulary that went through JSON).
fn index_of(key: &PickleValue) -> Option<i64> {
    match key {
        PickleValue::Int(i) => Some(*i),
        PickleValue::Str(s) => s.parse().ok(),
        _ => None,
    }
}

/// A single-character string.
fn char_of(value: &PickleValue) -> Option<char> {
    let mut chars = value.as_str()?.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// Places `(index, char)` pairs into a table, refusing gaps, repeats and out-of-range indices.
fn table(pairs: Vec<(i64, char)>, field: &str) -> Result<Vec<char>, PthError> {
    let n = pairs.len();
    let mut slots: Vec<Option<char>> = vec![None; n];
    let mut seen = HashSet::with_capacity(n);
    for (index, ch) in pairs {
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| slots.get_mut(i))
            .ok_or_else(|| vocab_error(format!("{field}: index {index} is outside 0..{n}")))?;
        if slot.is_some() {
            return Err(vocab_error(format!("{field}: index {index} appears twice")));
        }
        if !seen.insert(ch) {
            return Err(vocab_error(format!("{field}: character {ch:?} appears twice")));
        }
        *slot = Some(ch);
    }
    // n distinct indices in 0..n fill every slot.
    Ok(slots.into_iter().flatten().collect())
}

fn from_idx_to_char(dict: &PickleValue) -> Result<Vec<char>, PthError> {
    let entries = dict.as_dict().ok_or_else(|| vocab_error("idx_to_char is not a dict"))?;
    let pairs = entries
        .iter()
        .map(|(key, value)| match (index_of(key), char_of(value)) {
            (Some(index), Some(ch)) => Ok((index, ch)),
            _ => Err(vocab_error(format!("idx_to_char maps a {} to a {}; expected int -> one-character str", key.kind(), value.kind()))),
        })
        .collect::<Result<_, _>>()?;
    table(pairs, "idx_to_char")
}

fn from_char_to_idx(dict: &PickleValue) -> Result<Vec<char>, PthError> {
    let entries = dict.as_dict().ok_or_else(|| vocab_error("char_to_idx is not a dict"))?;
    let pairs = entries
        .iter()
        .map(|(key, value)| match (char_of(key), value.as_int()) {
            (Some(ch), Some(index)) => Ok((index, ch)),
            _ => Err(vocab_error(format!("char_to_idx maps a {} to a {}; expected one-character str -> int", key.kind(), value.kind()))),
        })
        .collect::<Result<_, _>>()?;
    table(pairs, "char_to_idx")
}

/// The index-to-character table of `root['vocabulary']`.
pub(crate) fn char_vocabulary(root: &PickleValue) -> Result<Vec<char>, PthError> {
    let vocabulary = root.get("vocabulary").ok_or_else(|| vocab_error("the checkpoint has no 'vocabulary'"))?;
    let by_index = vocabulary.get("idx_to_char").map(from_idx_to_char).transpose()?;
    let by_char = vocabulary.get("char_to_idx").map(from_char_to_idx).transpose()?;
    let chars = match (by_index, by_char) {
        (Some(a), Some(b)) if a != b => return Err(vocab_error("idx_to_char and char_to_idx disagree")),
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(vocab_error("'vocabulary' has neither idx_to_char nor char_to_idx")),
    };
    if chars.is_empty() {
        return Err(vocab_error("the vocabulary is empty"));
    }
    if let Some(size) = vocabulary.get("vocab_size") {
        if size.as_int() != i64::try_from(chars.len()).ok() {
            return Err(vocab_error(format!("vocab_size is {size:?} but the table has {} characters", chars.len())));
        }
    }
    Ok(chars)
}

/// The owner's `vocabulary` dict for `chars` (index `i` is `chars[i]`), for [`write_pth`](super::write_pth)
/// extras: `{'char_to_idx': {ch: i}, 'idx_to_char': {i: ch}, 'vocab_size': n}`.
pub fn vocabulary_value(chars: &[char]) -> PickleValue {
    let char_to_idx = chars.iter().enumerate().map(|(i, c)| (PickleValue::Str(c.to_string()), PickleValue::Int(i as i64))).collect();
    let idx_to_char = chars.iter().enumerate().map(|(i, c)| (PickleValue::Int(i as i64), PickleValue::Str(c.to_string()))).collect();
    PickleValue::Dict(vec![
        (PickleValue::Str("char_to_idx".into()), PickleValue::Dict(char_to_idx)),
        (PickleValue::Str("idx_to_char".into()), PickleValue::Dict(idx_to_char)),
        (PickleValue::Str("vocab_size".into()), PickleValue::Int(chars.len() as i64)),
    ])
}
