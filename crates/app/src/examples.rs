//! The example datasets bundled into the binary, registered on request so that a newcomer can
//! train within a minute of the first start.

use std::io::Write;

use anyhow::Context;
use trainyard_domain::{
    catalog::{Catalog, Upload},
    DatasetName,
};

/// Name, client file name and bytes of each bundled dataset, in registration order (the
/// owner's bot trains on the first dataset listed, so the text comes first).
const BUNDLED: &[(&str, &str, &[u8])] = &[
    ("tempest", "tempest.txt", include_bytes!("../../../examples/datasets/tempest.txt")),
    ("iris", "iris.csv", include_bytes!("../../../examples/datasets/iris.csv")),
    ("wine", "wine.csv", include_bytes!("../../../examples/datasets/wine.csv")),
    ("breast_cancer", "breast_cancer.csv", include_bytes!("../../../examples/datasets/breast_cancer.csv")),
    ("digits", "digits.csv", include_bytes!("../../../examples/datasets/digits.csv")),
    ("digits_png", "digits_png.zip", include_bytes!("../../../examples/datasets/digits_png.zip")),
];

/// Registers every bundled dataset that is not in the registry yet; returns the names added.
///
/// # Errors
/// When a staging file cannot be written or the registry refuses a dataset.
pub fn register(catalog: &Catalog) -> anyhow::Result<Vec<String>> {
    let mut added = Vec::new();
    for (name, file_name, bytes) in BUNDLED {
        let name = DatasetName::new(*name).context("bundled dataset name")?;
        if catalog.datasets().get(&name)?.is_some() {
            continue;
        }
        let mut staged = tempfile::Builder::new().prefix(".example-").tempfile_in(catalog.datasets().staging_dir())?;
        staged.write_all(bytes)?;
        let upload = Upload {
            staged: staged.path(),
            file_name: Some(file_name),
            size_bytes: bytes.len() as u64,
            head: &bytes[..bytes.len().min(64)],
            content_hash: None,
        };
        catalog.add_dataset(name.clone(), &upload, false).with_context(|| format!("registering example {name}"))?;
        // The registry moved the file into place.
        let _ = staged.into_temp_path().keep();
        added.push(name.to_string());
    }
    Ok(added)
}
