//! The catalog use cases: adding, listing and deleting models and datasets, keeping the
//! registries consistent with the sessions that use them.

use std::{fmt, path::Path, sync::Arc};

use crate::{
    ids::{DatasetName, ModelName, SessionId},
    ports::{DatasetInspector, DatasetRegistry, InspectError, ModelInspector, ModelRegistry, SessionRepository, StoreError},
    registry::{ContentHash, DatasetRecord, ModelFormat, ModelRecord, NewDataset, NewModel},
    session::SessionState,
};

/// What catalog operations fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// The uploaded dataset is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The uploaded model file is not acceptable; the message says why.
    #[error("{0}")]
    InvalidModel(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<InspectError> for CatalogError {
    fn from(e: InspectError) -> Self {
        match e {
            InspectError::Invalid(m) => Self::Invalid(m),
            InspectError::Io(m) => Self::Store(StoreError::Io(m)),
        }
    }
}

/// A file a client uploaded, staged in a registry's staging directory.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    pub staged: &'a Path,
    /// The client's file name: a hint for format detection, never a path.
    pub file_name: Option<&'a str>,
    pub size_bytes: u64,
    /// The file's first bytes (at least 16 when it has them), for format detection.
    pub head: &'a [u8],
    /// SHA-256 computed while the upload was received; the registry computes it when absent.
    pub content_hash: Option<&'a ContentHash>,
}

/// Model and dataset registries behind one set of rules.
#[derive(Clone)]
pub struct Catalog {
    models: Arc<dyn ModelRegistry>,
    datasets: Arc<dyn DatasetRegistry>,
    inspector: Arc<dyn DatasetInspector>,
    model_inspector: Arc<dyn ModelInspector>,
    sessions: Arc<dyn SessionRepository>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    #[must_use]
    pub fn new(
        models: Arc<dyn ModelRegistry>,
        datasets: Arc<dyn DatasetRegistry>,
        inspector: Arc<dyn DatasetInspector>,
        model_inspector: Arc<dyn ModelInspector>,
        sessions: Arc<dyn SessionRepository>,
    ) -> Self {
        Self { models, datasets, inspector, model_inspector, sessions }
    }

    /// The model registry, for listing and downloads.
    #[must_use]
    pub fn models(&self) -> &Arc<dyn ModelRegistry> {
        &self.models
    }

    /// The dataset registry, for listing.
    #[must_use]
    pub fn datasets(&self) -> &Arc<dyn DatasetRegistry> {
        &self.datasets
    }

    /// Fails with a conflict when a model of this name exists (checked before an upload is read).
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] or a store error.
    pub fn ensure_model_absent(&self, name: &ModelName) -> Result<(), CatalogError> {
        match self.models.get(name)? {
            Some(_) => Err(CatalogError::Conflict(format!("model '{name}' already exists; add overwrite=true to replace it"))),
            None => Ok(()),
        }
    }

    /// Fails with a conflict when a dataset of this name exists.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] or a store error.
    pub fn ensure_dataset_absent(&self, name: &DatasetName) -> Result<(), CatalogError> {
        match self.datasets.get(name)? {
            Some(_) => Err(CatalogError::Conflict(format!("dataset '{name}' already exists; add overwrite=true to replace it"))),
            None => Ok(()),
        }
    }

    /// Whether an upload under `name` may go ahead (checked before the body is read, and again
    /// before the file is registered): without `overwrite` the name must be free; with it, no
    /// queued or running session may start from the model.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] (naming the session when it is one), or a store error.
    pub fn check_model_upload(&self, name: &ModelName, overwrite: bool) -> Result<(), CatalogError> {
        if overwrite {
            self.ensure_model_unused(name)
        } else {
            self.ensure_model_absent(name)
        }
    }

    /// As [`Self::check_model_upload`], for datasets.
    ///
    /// # Errors
    /// As [`Self::check_model_upload`].
    pub fn check_dataset_upload(&self, name: &DatasetName, overwrite: bool) -> Result<(), CatalogError> {
        if overwrite {
            self.ensure_dataset_unused(name)
        } else {
            self.ensure_dataset_absent(name)
        }
    }

    /// Fails with a conflict naming the session when a queued or running session starts from
    /// the model (the rule for deleting or replacing it).
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] or a store error.
    pub fn ensure_model_unused(&self, name: &ModelName) -> Result<(), CatalogError> {
        match self.session_using(|c| c.base_model.as_ref() == Some(name))? {
            Some((state, id)) => Err(CatalogError::Conflict(format!("model '{name}' is the base model of {state} session {id}"))),
            None => Ok(()),
        }
    }

    /// Fails with a conflict naming the session when a queued or running session trains on the
    /// dataset (the rule for deleting or replacing it).
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] or a store error.
    pub fn ensure_dataset_unused(&self, name: &DatasetName) -> Result<(), CatalogError> {
        match self.session_using(|c| c.datasets().any(|d| d == name))? {
            Some((state, id)) => Err(CatalogError::Conflict(format!("dataset '{name}' is used by {state} session {id}"))),
            None => Ok(()),
        }
    }

    /// The first running, else queued, session whose config `uses` the entry.
    fn session_using(
        &self,
        uses: impl Fn(&crate::config::TrainingConfig) -> bool,
    ) -> Result<Option<(SessionState, SessionId)>, CatalogError> {
        for state in [SessionState::Running, SessionState::Queued] {
            if let Some(s) = self.sessions.list_in_state(state)?.into_iter().find(|s| uses(&s.config)) {
                return Ok(Some((state, s.id)));
            }
        }
        Ok(None)
    }

    /// Checks and registers an uploaded model. The format is detected from the content; a file
    /// that is none of [`ModelFormat::UPLOADABLE`], or that inspection refuses, is
    /// [`CatalogError::InvalidModel`]. With `overwrite`, an existing model of that name is
    /// replaced atomically.
    ///
    /// # Errors
    /// [`CatalogError::InvalidModel`], [`CatalogError::Conflict`] when the name is taken (or,
    /// with `overwrite`, the model is in use), or a store error.
    pub fn add_model(&self, name: ModelName, upload: &Upload<'_>, overwrite: bool) -> Result<ModelRecord, CatalogError> {
        self.check_model_upload(&name, overwrite)?;
        let format = ModelFormat::detect(upload.head, upload.file_name, Some(upload.size_bytes));
        if format == ModelFormat::Binary {
            let supported: Vec<&str> = ModelFormat::UPLOADABLE.iter().map(|f| f.as_str()).collect();
            return Err(CatalogError::InvalidModel(format!(
                "unrecognised model file: supported formats are {} (safetensors, PyTorch zip checkpoints .pth/.pt, ONNX .onnx)",
                supported.join(", ")
            )));
        }
        let info = self.model_inspector.inspect(upload.staged, format).map_err(|e| match e {
            InspectError::Invalid(m) => CatalogError::InvalidModel(m),
            InspectError::Io(m) => CatalogError::Store(StoreError::Io(m)),
        })?;
        let mut metadata = serde_json::json!({ "original_file_name": upload.file_name });
        if let (Some(obj), serde_json::Value::Object(found)) = (metadata.as_object_mut(), info.metadata) {
            obj.extend(found);
        }
        let model = NewModel {
            name,
            staged_file: upload.staged.to_path_buf(),
            format: info.format,
            session_id: None,
            metadata,
            content_hash: upload.content_hash.cloned(),
        };
        Ok(if overwrite { self.models.replace(model)? } else { self.models.import(model)? })
    }

    /// Inspects and registers an uploaded dataset staged in the registry's staging directory.
    /// With `overwrite`, an existing dataset of that name is replaced atomically.
    ///
    /// # Errors
    /// [`CatalogError::Invalid`] when inspection refuses the content,
    /// [`CatalogError::Conflict`] when the name is taken (or, with `overwrite`, the dataset is
    /// in use), or a store error.
    pub fn add_dataset(&self, name: DatasetName, upload: &Upload<'_>, overwrite: bool) -> Result<DatasetRecord, CatalogError> {
        self.check_dataset_upload(&name, overwrite)?;
        let info = self.inspector.inspect(upload.staged, upload.file_name)?;
        let dataset = NewDataset { name, staged_file: upload.staged.to_path_buf(), info, content_hash: upload.content_hash.cloned() };
        Ok(if overwrite { self.datasets.replace(dataset)? } else { self.datasets.import(dataset)? })
    }

    /// One model.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`] or a store error.
    pub fn model(&self, name: &ModelName) -> Result<ModelRecord, CatalogError> {
        self.models.get(name)?.ok_or_else(|| CatalogError::NotFound { kind: "model", name: name.to_string() })
    }

    /// One dataset.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`] or a store error.
    pub fn dataset(&self, name: &DatasetName) -> Result<DatasetRecord, CatalogError> {
        self.datasets.get(name)?.ok_or_else(|| CatalogError::NotFound { kind: "dataset", name: name.to_string() })
    }

    /// Deletes a model's row and file, unless a queued or running session starts from it.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`], [`CatalogError::Conflict`] naming the session, or a store error.
    pub fn delete_model(&self, name: &ModelName) -> Result<(), CatalogError> {
        self.model(name)?;
        self.ensure_model_unused(name)?;
        self.models.delete(name).map_err(|e| match e {
            StoreError::NotFound(_) => CatalogError::NotFound { kind: "model", name: name.to_string() },
            other => other.into(),
        })
    }

    /// Deletes a dataset's row and file, unless a queued or running session uses it.
    ///
    /// # Errors
    /// [`CatalogError::NotFound`], [`CatalogError::Conflict`] naming the session, or a store error.
    pub fn delete_dataset(&self, name: &DatasetName) -> Result<(), CatalogError> {
        self.dataset(name)?;
        self.ensure_dataset_unused(name)?;
        self.datasets.delete(name).map_err(|e| match e {
            StoreError::NotFound(_) => CatalogError::NotFound { kind: "dataset", name: name.to_string() },
            other => other.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use time::OffsetDateTime;

    use super::*;
    use crate::{
        config::{TrainingConfig, TrainingRequest},
        session::Session,
        testing::{CountingModelInspector, CsvInspector, MemoryDatasets, MemoryModels, MemorySessions},
    };

    struct World {
        catalog: Catalog,
        sessions: Arc<MemorySessions>,
    }

    fn world() -> World {
        let sessions = Arc::new(MemorySessions::default());
        let catalog = Catalog::new(
            Arc::new(MemoryModels::default()),
            Arc::new(MemoryDatasets::default()),
            Arc::new(CsvInspector),
            Arc::new(CountingModelInspector),
            sessions.clone(),
        );
        World { catalog, sessions }
    }

    fn safetensors_head() -> Vec<u8> {
        let mut head = 2u64.to_le_bytes().to_vec();
        head.extend_from_slice(b"{}");
        head
    }

    fn upload<'a>(staged: &'a Path, head: &'a [u8], hash: Option<&'a ContentHash>) -> Upload<'a> {
        Upload { staged, file_name: Some("w.safetensors"), size_bytes: 10, head, content_hash: hash }
    }

    fn model(name: &str) -> ModelName {
        ModelName::new(name).unwrap()
    }

    #[test]
    fn an_unrecognised_model_file_is_refused_listing_the_supported_formats() {
        let w = world();
        let staged = PathBuf::from("upload");
        let notes = Upload { file_name: Some("notes.bin"), ..upload(&staged, b"just some bytes", None) };
        let err = w.catalog.add_model(model("m"), &notes, false).unwrap_err();
        assert!(matches!(&err, CatalogError::InvalidModel(m) if m.contains("safetensors, pytorch, onnx")), "{err:?}");
        assert!(w.catalog.models().list().unwrap().is_empty());
    }

    #[test]
    fn an_inspection_refusal_is_an_invalid_model_and_registers_nothing() {
        let w = world();
        let staged = PathBuf::from("upload.bad");
        let err = w.catalog.add_model(model("m"), &upload(&staged, &safetensors_head(), None), false).unwrap_err();
        assert_eq!(err, CatalogError::InvalidModel("not a model".into()));
        assert!(w.catalog.models().list().unwrap().is_empty());
    }

    #[test]
    fn an_accepted_model_carries_what_inspection_found_and_its_hash() {
        let w = world();
        let staged = PathBuf::from("upload");
        let hash = ContentHash::of(b"weights");
        let rec = w.catalog.add_model(model("m"), &upload(&staged, &safetensors_head(), Some(&hash)), false).unwrap();
        assert_eq!(rec.format, ModelFormat::Safetensors);
        assert_eq!(rec.metadata["parameter_count"], 3);
        assert_eq!(rec.metadata["original_file_name"], "w.safetensors");
        assert_eq!(rec.content_hash, Some(hash));
    }

    #[test]
    fn overwrite_replaces_unless_a_live_session_uses_the_entry() {
        let w = world();
        let staged = PathBuf::from("upload");
        let head = safetensors_head();
        let first = ContentHash::of(b"first");
        let second = ContentHash::of(b"second");
        w.catalog.add_model(model("base"), &upload(&staged, &head, Some(&first)), false).unwrap();
        let err = w.catalog.add_model(model("base"), &upload(&staged, &head, Some(&second)), false).unwrap_err();
        assert!(matches!(&err, CatalogError::Conflict(m) if m.contains("already exists") && m.contains("overwrite=true")), "{err:?}");
        let rec = w.catalog.add_model(model("base"), &upload(&staged, &head, Some(&second)), true).unwrap();
        assert_eq!(rec.content_hash.as_ref(), Some(&second));
        assert_eq!(w.catalog.models().list().unwrap().len(), 1);

        let req = TrainingRequest {
            model_architecture: Some("mlp".into()),
            dataset_name: Some("iris".into()),
            base_model: Some("base".into()),
            ..TrainingRequest::default()
        };
        let session = Session::queued(SessionId::generate(), TrainingConfig::validate(&req).unwrap(), OffsetDateTime::UNIX_EPOCH);
        w.sessions.insert(&session).unwrap();
        let err = w.catalog.add_model(model("base"), &upload(&staged, &head, Some(&first)), true).unwrap_err();
        assert!(matches!(&err, CatalogError::Conflict(m) if m.contains(session.id.as_str()) && m.contains("queued")), "{err:?}");
        assert_eq!(w.catalog.model(&model("base")).unwrap().content_hash, Some(second));
        let dataset = DatasetName::new("iris").unwrap();
        w.catalog.add_dataset(dataset.clone(), &upload(&staged, b"a,b\n", None), false).unwrap();
        let err = w.catalog.add_dataset(dataset.clone(), &upload(&staged, b"a,b\n", None), true).unwrap_err();
        assert!(matches!(&err, CatalogError::Conflict(m) if m.contains("used by queued session")), "{err:?}");
    }
}
