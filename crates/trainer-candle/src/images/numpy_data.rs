//! NumPy `.npz` datasets (a zip of `.npy` arrays, as `numpy.savez` and `numpy.savez_compressed`
//! write them), read through the checked archive reader.
//!
//! The arrays used: `x` and `y`, else `X`/`Y`, `features`/`labels`, `x_train`/`y_train`,
//! `X_train`/`y_train`, `data`/`target`, `data`/`labels`, else the first two arrays in archive
//! order (`arr_0`, `arr_1` from `numpy.savez(f, x, y)`). `x` is a table `[n, d]` (more axes are
//! flattened for a table) or images: `[n, h, w]`, `[n, h, w, c]` or `[n, c, h, w]` with `c` in
//! 1, 3, 4 (see [`crate::npy::NpyHeader::image_shape`]); `u8` pixels are scaled by 1/255, other
//! types kept as they are. `y` holds one label per sample: integers, floats, booleans or strings.

use std::fs::File;

use serde_json::json;
use trainyard_domain::registry::{DatasetFormat, DatasetInfo};

use super::{class_statistics, limits::MAX_CLASSES, push_chw, ImageData, NumpyTable};
use crate::{
    archive::{Budget, Container, SafeArchive},
    data::label_order,
    npy::{self, Elem, NpyHeader},
};

/// Array-name pairs tried for `x` and `y`, in order.
const PAIRS: [(&str, &str); 7] = [
    ("x", "y"),
    ("X", "Y"),
    ("features", "labels"),
    ("x_train", "y_train"),
    ("X_train", "y_train"),
    ("data", "target"),
    ("data", "labels"),
];

/// The entries holding `x` and (when there is one) `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    x: String,
    y: Option<String>,
}

fn is_npy(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".npy")
}

fn plan(names: &[&str]) -> Result<Plan, String> {
    let arrays: Vec<&str> = names.iter().copied().filter(|n| is_npy(n)).collect();
    let key = |n: &str| n[..n.len() - 4].to_owned();
    for (x, y) in PAIRS {
        let find = |k: &str| arrays.iter().find(|&&n| key(n) == k).map(|&n| n.to_owned());
        if let (Some(x), Some(y)) = (find(x), find(y)) {
            return Ok(Plan { x, y: Some(y) });
        }
    }
    match arrays[..] {
        [] => Err("the npz archive holds no .npy arrays".into()),
        [x] => Ok(Plan { x: x.to_owned(), y: None }),
        [x, y, ..] => Ok(Plan { x: x.to_owned(), y: Some(y.to_owned()) }),
    }
}

fn names_of(archive: &SafeArchive) -> Result<Vec<String>, String> {
    match archive.listed_names() {
        Some(names) => Ok(names.into_iter().map(str::to_owned).collect()),
        None => Err("an .npz must be a zip archive (numpy.savez)".into()),
    }
}

/// Inspects an `.npz`: every array's header and length are checked, `y` is read for class counts.
pub(crate) fn inspect_npz(archive: SafeArchive, budget: &Budget) -> Result<DatasetInfo, String> {
    let names = names_of(&archive)?;
    let plan = plan(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let max = budget.limits().max_loaded_values;
    let (mut arrays, mut x, mut labels) = (Vec::new(), None, None);
    archive.for_each_file(|mut entry| {
        if !is_npy(&entry.name) {
            return Ok(());
        }
        let name = entry.name.clone();
        let what = |e: String| format!("{name} in the npz archive: {e}");
        let header = npy::read_header(&mut entry).map_err(what)?;
        if plan.y.as_ref() == Some(&name) {
            labels = Some(npy::read_labels(&mut entry, &header, max).map_err(what)?);
        } else {
            npy::skip_data(&mut entry, &header).map_err(what)?;
        }
        arrays.push(json!({ "name": name, "dtype": header.descr, "shape": header.shape }));
        if name == plan.x {
            x = Some(header);
        }
        Ok(())
    })?;
    let x = x.ok_or_else(|| format!("{} is missing from the npz archive", plan.x))?;
    check_numeric(&x, &plan.x)?;
    let mut statistics = json!({ "arrays": arrays, "x": plan.x, "y": plan.y });
    if let Some(image) = x.image_shape() {
        statistics["layout"] = json!(if image.channels_last { "nhwc" } else { "nchw" });
    }
    if let Some(labels) = labels {
        check_count(&x, &plan, labels.len())?;
        let (classes, counts) = count_classes(&labels);
        if classes.len() <= MAX_CLASSES {
            let (class_counts, list) = class_statistics(&classes, &counts);
            statistics["class_counts"] = class_counts;
            statistics["classes"] = list;
        } else {
            statistics["distinct_labels"] = json!(classes.len());
        }
    }
    Ok(DatasetInfo {
        format: DatasetFormat::Npz,
        sample_count: Some(x.sample_count()),
        dimensions: Some(x.sample_dimensions()),
        statistics,
    })
}

fn check_numeric(x: &NpyHeader, name: &str) -> Result<(), String> {
    match x.elem() {
        Ok((Elem::Bytes(_) | Elem::Unicode(_), _)) => Err(format!("{name} holds strings; x must hold numbers")),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{name} in the npz archive: {e}")),
    }
}

fn check_count(x: &NpyHeader, plan: &Plan, labels: usize) -> Result<(), String> {
    if labels as u64 != x.sample_count() {
        return Err(format!(
            "{} holds {labels} labels but {} holds {} samples; they must match",
            plan.y.as_deref().unwrap_or("y"),
            plan.x,
            x.sample_count()
        ));
    }
    Ok(())
}

/// The distinct labels in class order, and their counts.
fn count_classes(labels: &[String]) -> (Vec<String>, Vec<u64>) {
    let mut classes: Vec<String> = labels.to_vec();
    classes.sort_by(|a, b| label_order(a, b));
    classes.dedup();
    let mut counts = vec![0u64; classes.len()];
    for l in labels {
        if let Ok(i) = classes.binary_search_by(|c| label_order(c, l)) {
            counts[i] += 1;
        }
    }
    (classes, counts)
}

/// `x` (converted by the function `convert` makes from its header) and `y`, read from an `.npz`.
fn load_arrays<T: Copy, F: FnMut(f64) -> T>(
    file: File,
    budget: &Budget,
    convert: impl Fn(&NpyHeader) -> F,
) -> Result<(NpyHeader, Vec<T>, Vec<String>, Plan), String> {
    let archive = SafeArchive::open(file, Container::Zip, budget.clone())?;
    let names = names_of(&archive)?;
    let plan = plan(&names.iter().map(String::as_str).collect::<Vec<_>>())?;
    let max = budget.limits().max_loaded_values;
    let (mut x, mut y) = (None, None);
    archive.for_each_file(|mut entry| {
        let name = entry.name.clone();
        if name != plan.x && plan.y.as_ref() != Some(&name) {
            return Ok(());
        }
        let what = |e: String| format!("{name} in the npz archive: {e}");
        let header = npy::read_header(&mut entry).map_err(what)?;
        if name == plan.x {
            check_numeric(&header, &name)?;
            let values = npy::read_values(&mut entry, &header, max, convert(&header)).map_err(what)?;
            x = Some((header, values));
        } else {
            y = Some(npy::read_labels(&mut entry, &header, max).map_err(what)?);
        }
        Ok(())
    })?;
    let (header, values) = x.ok_or_else(|| format!("{} is missing from the npz archive", plan.x))?;
    let Some(labels) = y else {
        return Err(format!("the npz archive holds only {}; training needs labels too: save x and y (numpy.savez(f, x=x, y=y))", plan.x));
    };
    check_count(&header, &plan, labels.len())?;
    Ok((header, values, labels, plan))
}

/// Loads an `.npz` whose `x` is image-shaped.
pub(crate) fn load_images(file: File, budget: &Budget) -> Result<ImageData, String> {
    #[allow(clippy::cast_possible_truncation)]
    let (header, values, labels, plan) = load_arrays(file, budget, |h| {
        let bytes = matches!(h.elem(), Ok((Elem::U8, _)));
        move |v: f64| if bytes { (v / 255.0) as f32 } else { v as f32 }
    })?;
    let image = header.image_shape().ok_or_else(|| {
        format!(
            "{} has shape {:?}, which is not images: use [n, h, w], [n, h, w, c] or [n, c, h, w] with c = 1, 3 or 4",
            plan.x, header.shape
        )
    })?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("{} holds a non-finite value ({}) at flat index {i}; clean the data", plan.x, values[i]));
    }
    let (height, width, channels) = (image.height, image.width, image.channels);
    let x = if image.channels_last && channels > 1 {
        let mut out = Vec::with_capacity(values.len());
        for sample in values.chunks_exact(height * width * channels) {
            push_chw(&mut out, sample, channels);
        }
        out
    } else {
        values
    };
    let (classes, _) = count_classes(&labels);
    if classes.len() > MAX_CLASSES {
        return Err(format!(
            "{} holds {} distinct labels, more than the {MAX_CLASSES} classes supported",
            plan.y.unwrap_or_default(),
            classes.len()
        ));
    }
    let y = labels.iter().map(|l| u32::try_from(classes.binary_search_by(|c| label_order(c, l)).unwrap_or(0)).unwrap_or(0)).collect();
    Ok(ImageData { channels, height, width, x, y, classes })
}

/// Loads an `.npz` as a table.
pub(crate) fn load_table(file: File, budget: &Budget) -> Result<NumpyTable, String> {
    let (header, x, labels, plan) = load_arrays(file, budget, |_| |v: f64| v)?;
    let rows = labels.len();
    let features = x.len().checked_div(rows).unwrap_or(0);
    if rows == 0 || features == 0 {
        return Err(format!("{} has shape {:?}: no samples or no features to train on", plan.x, header.shape));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{}[{}, {}] is {}; tables must hold finite numbers: fill or drop missing values",
            plan.x,
            i / features,
            i % features,
            x[i]
        ));
    }
    Ok(NumpyTable { rows, features, x, labels })
}
