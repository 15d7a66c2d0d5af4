//! Training data: tables read through the shared reader (or from NumPy files) and decoded
//! images, labels mapped to class indices, a seeded train/validation split, and inputs
//! standardised with the training split's statistics: per feature for tables (missing values
//! imputed with the training mean), per channel for images.

use std::{cmp::Ordering, fs::File, io::BufReader, path::Path};

use crate::{
    images::PixelStats,
    rng::{SplitMix64, Stream},
    table::{Delimiter, TableError, TableReader},
};

/// More distinct labels than this and the label column is taken for a regression target.
pub(crate) const MAX_CLASSES: usize = 1000;

/// The order of class labels: numbers numerically, then other strings by byte order.
pub(crate) fn label_order(a: &str, b: &str) -> Ordering {
    let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x.total_cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// A whole table in memory, as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Table {
    pub feature_names: Vec<String>,
    pub label_column: String,
    /// Row-major, `rows * feature_names.len()` cells.
    pub features: Vec<Option<f64>>,
    pub labels: Vec<String>,
}

impl Table {
    pub(crate) fn rows(&self) -> usize {
        self.labels.len()
    }
}

/// Reads the table at `path` with the reader the inspector uses.
pub(crate) fn read_table(path: &Path, delimiter: Delimiter) -> Result<Table, TableError> {
    let file = File::open(path).map_err(|e| TableError::Io(format!("{}: {e}", path.display())))?;
    let mut reader = TableReader::open(BufReader::new(file), delimiter)?;
    let feature_names = reader.feature_names();
    let label_column = reader.columns()[reader.label_index()].clone();
    let (mut features, mut labels, mut row) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = reader.next_row(&mut row)? {
        features.extend_from_slice(&row);
        labels.push(r.label);
    }
    Ok(Table { feature_names, label_column, features, labels })
}

/// A NumPy table as a [`Table`]: features named `x0`, `x1`, ... and the label column `y`.
pub(crate) fn table_from_numpy(t: crate::images::NumpyTable) -> Table {
    Table {
        feature_names: (0..t.features).map(|j| format!("x{j}")).collect(),
        label_column: "y".into(),
        features: t.x.into_iter().map(Some).collect(),
        labels: t.labels,
    }
}

/// Samples of one split: standardised features and class indices.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Split {
    /// Row-major `len() * features`.
    pub x: Vec<f32>,
    pub y: Vec<u32>,
}

impl Split {
    pub(crate) fn len(&self) -> usize {
        self.y.len()
    }
}

/// Training-ready data.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prepared {
    /// One sample's shape: `[features]` for tables, `[channels, height, width]` for images.
    pub sample_shape: Vec<usize>,
    /// Feature names of a table; empty for images.
    pub feature_names: Vec<String>,
    pub label_column: String,
    /// Class names; a sample's class index points into this list.
    pub classes: Vec<String>,
    pub rows: usize,
    pub train: Split,
    /// `None` when the validation split is 0.
    pub val: Option<Split>,
    /// Mean and standard deviation of the training split, per feature (tables) or per
    /// channel (images), as applied.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Missing cells replaced by the training mean.
    pub imputed: usize,
}

impl Prepared {
    /// Numbers per sample.
    pub(crate) fn features(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Whether the samples are images.
    pub(crate) fn is_image(&self) -> bool {
        self.sample_shape.len() == 3
    }
}

/// Shuffles `0..rows` with `seed` and cuts off the validation rows: `(validation, training)`.
fn split_rows(rows: usize, validation_split: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..rows).collect();
    SplitMix64::stream(seed, Stream::Split).shuffle(&mut order);
    let n_val = if validation_split > 0.0 {
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let wanted = (rows as f64 * validation_split).round() as usize;
        wanted.clamp(1, rows - 1)
    } else {
        0
    };
    let train = order.split_off(n_val);
    (order, train)
}

/// Checks the class list a labelled dataset yields.
fn check_classes(classes: &[String], what: &str) -> Result<(), String> {
    match classes.len() {
        0 | 1 => {
            Err(format!("{what} holds a single class ({:?}); a classifier needs at least two", classes.first().map_or("", String::as_str)))
        }
        n if n > MAX_CLASSES => {
            Err(format!("{what} holds {n} distinct values, more than the {MAX_CLASSES} classes supported; is it a regression target?"))
        }
        _ => Ok(()),
    }
}

/// Splits decoded images with `seed` and standardises each channel with the training split's
/// mean and standard deviation.
///
/// # Errors
/// A message when the images cannot train a classifier: fewer than two, or a single class.
pub(crate) fn prepare_images(images: crate::images::ImageData, validation_split: f64, seed: u64) -> Result<Prepared, String> {
    let (c, h, w) = (images.channels, images.height, images.width);
    let per = images.sample_len();
    let rows = images.len();
    if rows < 2 {
        return Err(format!("the dataset has {rows} image(s); training needs at least 2"));
    }
    let mut present = vec![false; images.classes.len()];
    for &y in &images.y {
        present[y as usize] = true;
    }
    let used: Vec<String> = images.classes.iter().zip(&present).filter(|(_, &p)| p).map(|(c, _)| c.clone()).collect();
    check_classes(&used, "the dataset")?;
    let (val_rows, train_rows) = split_rows(rows, validation_split, seed);
    let plane = h * w;
    let mut stats = PixelStats::new(c);
    for &r in &train_rows {
        for ch in 0..c {
            stats.add_f32(ch, images.x[r * per + ch * plane..r * per + (ch + 1) * plane].iter().copied());
        }
    }
    let (mean, spread) = stats.mean_std();
    // A constant channel keeps std 1 rather than dividing by nothing.
    let std: Vec<f64> = spread.into_iter().map(|sd| if sd > 1e-6 { sd } else { 1.0 }).collect();
    let split = |rows: &[usize]| -> Split {
        let mut x = Vec::with_capacity(rows.len() * per);
        for &r in rows {
            for ch in 0..c {
                #[allow(clippy::cast_possible_truncation)]
                let (m, s) = (mean[ch] as f32, std[ch] as f32);
                x.extend(images.x[r * per + ch * plane..r * per + (ch + 1) * plane].iter().map(|v| (v - m) / s));
            }
        }
        Split { x, y: rows.iter().map(|&r| images.y[r]).collect() }
    };
    let train = split(&train_rows);
    let val = (!val_rows.is_empty()).then(|| split(&val_rows));
    Ok(Prepared {
        sample_shape: vec![c, h, w],
        feature_names: Vec::new(),
        label_column: String::new(),
        classes: images.classes,
        rows,
        train,
        val,
        mean,
        std,
        imputed: 0,
    })
}

/// Maps labels, splits with `seed`, and standardises.
///
/// # Errors
/// A message when the table cannot train a classifier: fewer than two rows, a single class,
/// more than [`MAX_CLASSES`] classes, or a column whose values overflow its statistics.
pub(crate) fn prepare(table: Table, validation_split: f64, seed: u64) -> Result<Prepared, String> {
    let rows = table.rows();
    let d = table.feature_names.len();
    if rows < 2 {
        return Err(format!("the dataset has {rows} data row(s); training needs at least 2"));
    }
    let mut classes: Vec<String> = table.labels.clone();
    classes.sort_by(|a, b| label_order(a, b));
    classes.dedup();
    check_classes(&classes, &format!("the label column '{}'", table.label_column))?;
    let class_of = |label: &str| -> u32 {
        let i = classes.binary_search_by(|c| label_order(c, label)).unwrap_or(0);
        u32::try_from(i).unwrap_or(0)
    };

    let (val_rows, train_rows) = split_rows(rows, validation_split, seed);
    let n_val = val_rows.len();

    // Mean and standard deviation (population) of the training split, ignoring missing cells.
    let (mut mean, mut std) = (vec![0.0f64; d], vec![1.0f64; d]);
    for j in 0..d {
        let values: Vec<f64> = train_rows.iter().filter_map(|&r| table.features[r * d + j]).collect();
        if values.is_empty() {
            continue;
        }
        #[allow(clippy::cast_precision_loss)]
        let n = values.len() as f64;
        let m = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n;
        if !(m.is_finite() && var.is_finite()) {
            return Err(format!("column '{}' holds values too large to standardise", table.feature_names[j]));
        }
        mean[j] = m;
        std[j] = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
    }

    let mut imputed = 0;
    let mut split = |rows: &[usize]| -> Split {
        let mut x = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            for j in 0..d {
                let v = table.features[r * d + j].unwrap_or_else(|| {
                    imputed += 1;
                    mean[j]
                });
                #[allow(clippy::cast_possible_truncation)]
                x.push(((v - mean[j]) / std[j]) as f32);
            }
        }
        Split { x, y: rows.iter().map(|&r| class_of(&table.labels[r])).collect() }
    };
    let train = split(&train_rows);
    let val = (n_val > 0).then(|| split(&val_rows));
    Ok(Prepared {
        sample_shape: vec![d],
        feature_names: table.feature_names,
        label_column: table.label_column,
        classes,
        rows,
        train,
        val,
        mean,
        std,
        imputed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(labels: &[&str], features: &[Option<f64>]) -> Table {
        Table {
            feature_names: vec!["a".into()],
            label_column: "label".into(),
            features: features.to_vec(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        }
    }

    #[test]
    fn orders_labels_numerically_then_by_name() {
        let mut v = vec!["10", "b", "2", "a", "-1"];
        v.sort_by(|a, b| label_order(a, b));
        assert_eq!(v, ["-1", "2", "10", "a", "b"]);
    }

    #[test]
    fn splits_standardises_and_imputes_from_the_training_split() {
        let t = table(&["x", "y", "x", "y"], &[Some(1.0), Some(3.0), None, Some(5.0)]);
        let p = prepare(t, 0.0, 1).unwrap();
        assert_eq!((p.classes.clone(), p.train.len(), p.val.is_none(), p.imputed), (vec!["x".into(), "y".into()], 4, true, 1));
        assert!((p.mean[0] - 3.0).abs() < 1e-12);
        let mut sorted = p.train.x.clone();
        sorted.sort_by(f32::total_cmp);
        assert!((sorted.iter().sum::<f32>()).abs() < 1e-5, "standardised values centre on 0");

        let t = table(&["0", "1", "0", "1", "0"], &[Some(1.0); 5]);
        let p = prepare(t, 0.2, 1).unwrap();
        assert_eq!((p.train.len(), p.val.as_ref().map(Split::len)), (4, Some(1)));
        assert_eq!(p.std, [1.0], "a constant column keeps std 1");
    }

    #[test]
    fn refuses_tables_a_classifier_cannot_learn() {
        assert!(prepare(table(&["0"], &[Some(1.0)]), 0.2, 1).unwrap_err().contains("at least 2"));
        assert!(prepare(table(&["a", "a"], &[Some(1.0), Some(2.0)]), 0.2, 1).unwrap_err().contains("single class"));
        let many: Vec<String> = (0..=MAX_CLASSES).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = prepare(table(&refs, &vec![Some(0.0); refs.len()]), 0.2, 1).unwrap_err();
        assert!(err.contains("regression"), "{err}");
        let huge = prepare(table(&["0", "1"], &[Some(1e308), Some(-1e308)]), 0.0, 1).unwrap_err();
        assert!(huge.contains("too large"), "{huge}");
    }
}
