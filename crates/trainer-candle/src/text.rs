//! Text data for the character-level LSTM: the vocabulary (index to character), corpora read
//! from one or more text datasets with a held-out tail of each for validation, and the
//! fixed-length training windows cut from them.

use std::{collections::HashMap, fs, path::Path};

use serde_json::Value;

/// Characters by index, and indices by character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    chars: Vec<char>,
    index: HashMap<char, u32>,
}

impl Vocabulary {
    /// The sorted distinct characters of `texts` (as the owner's PyTorch code builds it).
    #[must_use]
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut chars: Vec<char> = texts.into_iter().flat_map(str::chars).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        chars.dedup();
        Self::from_chars(chars)
    }

    /// A vocabulary whose index `i` is `chars[i]`; duplicates keep their first index.
    #[must_use]
    pub fn from_chars(chars: Vec<char>) -> Self {
        let mut index = HashMap::with_capacity(chars.len());
        for (i, c) in chars.iter().enumerate() {
            index.entry(*c).or_insert(u32::try_from(i).unwrap_or(u32::MAX));
        }
        Self { chars, index }
    }

    /// Appends the characters of `texts` this vocabulary lacks, sorted; returns them.
    pub fn extend_with<'a>(&mut self, texts: impl IntoIterator<Item = &'a str>) -> Vec<char> {
        let mut new: Vec<char> = texts
            .into_iter()
            .flat_map(str::chars)
            .filter(|c| !self.index.contains_key(c))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        new.dedup();
        for c in &new {
            self.index.insert(*c, u32::try_from(self.chars.len()).unwrap_or(u32::MAX));
            self.chars.push(*c);
        }
        new
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    #[must_use]
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The index of `c`.
    #[must_use]
    pub fn get(&self, c: char) -> Option<u32> {
        self.index.get(&c).copied()
    }

    /// The character at `i`.
    #[must_use]
    pub fn char_at(&self, i: u32) -> Option<char> {
        self.chars.get(i as usize).copied()
    }

    /// Encodes `text`, skipping characters outside the vocabulary; returns them too.
    #[must_use]
    pub fn encode(&self, text: &str) -> (Vec<u32>, Vec<char>) {
        let mut ids = Vec::with_capacity(text.len());
        let mut unknown = Vec::new();
        for c in text.chars() {
            match self.get(c) {
                Some(i) => ids.push(i),
                None if !unknown.contains(&c) => unknown.push(c),
                None => {}
            }
        }
        (ids, unknown)
    }

    /// The index-to-character list as JSON (`["\n", " ", "!", ...]`).
    #[must_use]
    pub fn to_json(&self) -> Value {
        Value::Array(self.chars.iter().map(|c| Value::String(c.to_string())).collect())
    }

    /// Reads [`Self::to_json`]'s form back.
    ///
    /// # Errors
    /// A message when the JSON is not a list of one-character strings.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let list = v.as_array().ok_or("vocabulary is not a list")?;
        let mut chars = Vec::with_capacity(list.len());
        for item in list {
            let s = item.as_str().ok_or("vocabulary entries must be strings")?;
            let mut it = s.chars();
            match (it.next(), it.next()) {
                (Some(c), None) => chars.push(c),
                _ => return Err(format!("vocabulary entry {s:?} is not one character")),
            }
        }
        Ok(Self::from_chars(chars))
    }
}

/// Training and validation tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corpus {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

/// Reads a text dataset.
pub(crate) fn read_text(path: &Path) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read its file: {}", trainyard_domain::failure::io_summary(&e.to_string())))?;
    String::from_utf8(bytes).map_err(|e| format!("not valid UTF-8 at byte {}", e.utf8_error().valid_up_to()))
}

/// Encodes every text; the last `validation_split` of each one is held out for validation, so
/// validation measures text the model never trained on.
pub(crate) fn corpus(texts: &[String], vocab: &Vocabulary, validation_split: f64) -> Corpus {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for text in texts {
        let (ids, _) = vocab.encode(text);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let held = ((ids.len() as f64) * validation_split).round() as usize;
        let cut = ids.len() - held.min(ids.len());
        train.extend_from_slice(&ids[..cut]);
        val.extend_from_slice(&ids[cut..]);
    }
    Corpus { train, val }
}

/// Start offsets of the non-overlapping windows of `seq + 1` tokens in `len` tokens.
pub(crate) fn window_starts(len: usize, seq: usize) -> Vec<usize> {
    if len < seq + 1 {
        return Vec::new();
    }
    (0..=(len - seq - 1)).step_by(seq).collect()
}

pub(crate) use crate::rng::epoch_order;

/// Inputs and targets of a batch of windows: `tokens[s..s+seq]` and `tokens[s+1..s+seq+1]`.
pub(crate) fn batch(tokens: &[u32], starts: &[usize], seq: usize) -> (Vec<u32>, Vec<u32>) {
    let mut x = Vec::with_capacity(starts.len() * seq);
    let mut y = Vec::with_capacity(starts.len() * seq);
    for &s in starts {
        x.extend_from_slice(&tokens[s..s + seq]);
        y.extend_from_slice(&tokens[s + 1..=s + seq]);
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use quickcheck::quickcheck;

    use super::*;

    #[test]
    fn vocabulary_is_sorted_and_extends_at_the_end() {
        let mut v = Vocabulary::from_texts(["hello", "world"]);
        assert_eq!(v.chars().iter().collect::<String>(), "dehlorw");
        assert_eq!(v.extend_with(["hello!", "zap"]), ['!', 'a', 'p', 'z']);
        assert_eq!(v.get('z'), Some(10));
        assert_eq!(v.encode("hi z"), (vec![2, 10], vec!['i', ' ']));
        assert_eq!(Vocabulary::from_json(&v.to_json()).unwrap(), v);
    }

    #[test]
    fn validation_is_the_tail_of_each_text() {
        let v = Vocabulary::from_texts(["abcdefghij"]);
        let c = corpus(&["abcdefghij".into(), "jihgfedcba".into()], &v, 0.2);
        assert_eq!(c.train, [0, 1, 2, 3, 4, 5, 6, 7, 9, 8, 7, 6, 5, 4, 3, 2]);
        assert_eq!(c.val, [8, 9, 1, 0]);
    }

    quickcheck! {
        // Property 41: training windows cover the text without overlap, each input is followed
        // by its next-character targets, and an epoch's order depends only on seed and epoch.
        fn prop41_windows_are_next_character_pairs(len: u16, seq: u8, seed: u64, epoch: u32) -> bool {
            let (len, seq) = (usize::from(len % 2000), usize::from(seq % 50) + 1);
            let tokens: Vec<u32> = (0..len).map(|i| u32::try_from(i).unwrap()).collect();
            let starts = window_starts(len, seq);
            let order = epoch_order(&starts, seed, epoch);
            let (x, y) = batch(&tokens, &order, seq);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted == starts
                && starts.windows(2).all(|w| w[1] - w[0] == seq)
                && starts.last().is_none_or(|s| s + seq < len)
                && x.iter().zip(&y).all(|(a, b)| *b == a + 1)
                && order == epoch_order(&starts, seed, epoch)
        }
    }
}
