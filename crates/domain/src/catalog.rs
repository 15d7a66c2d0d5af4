//! The catalog use cases: adding, listing and deleting models and datasets, keeping the
//! registries consistent with the sessions that use them.

use std::{fmt, path::Path, sync::Arc};

use crate::{
    ids::{DatasetName, ModelName},
    ports::{DatasetInspector, DatasetRegistry, InspectError, ModelRegistry, SessionRepository, StoreError},
    registry::{DatasetRecord, ModelFormat, ModelRecord, NewDataset, NewModel},
    session::SessionState,
};

/// What catalog operations fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// The uploaded file is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
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

/// Model and dataset registries behind one set of rules.
#[derive(Clone)]
pub struct Catalog {
    models: Arc<dyn ModelRegistry>,
    datasets: Arc<dyn DatasetRegistry>,
    inspector: Arc<dyn DatasetInspector>,
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
        sessions: Arc<dyn SessionRepository>,
    ) -> Self {
        Self { models, datasets, inspector, sessions }
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
            Some(_) => Err(CatalogError::Conflict(format!("model '{name}' already exists"))),
            None => Ok(()),
        }
    }

    /// Fails with a conflict when a dataset of this name exists.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] or a store error.
    pub fn ensure_dataset_absent(&self, name: &DatasetName) -> Result<(), CatalogError> {
        match self.datasets.get(name)? {
            Some(_) => Err(CatalogError::Conflict(format!("dataset '{name}' already exists"))),
            None => Ok(()),
        }
    }

    /// Registers an uploaded model staged in the registry's staging directory. `head` holds the
    /// file's first bytes, for format detection.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the name is taken, or a store error.
    pub fn add_model(&self, name: ModelName, staged: &Path, head: &[u8], file_name: Option<&str>) -> Result<ModelRecord, CatalogError> {
        self.ensure_model_absent(&name)?;
        let format = ModelFormat::detect(head, file_name);
        let metadata = serde_json::json!({ "original_file_name": file_name });
        Ok(self.models.import(NewModel { name, staged_file: staged.to_path_buf(), format, session_id: None, metadata })?)
    }

    /// Inspects and registers an uploaded dataset staged in the registry's staging directory.
    ///
    /// # Errors
    /// [`CatalogError::Invalid`] when inspection refuses the content,
    /// [`CatalogError::Conflict`] when the name is taken, or a store error.
    pub fn add_dataset(&self, name: DatasetName, staged: &Path, file_name: Option<&str>) -> Result<DatasetRecord, CatalogError> {
        self.ensure_dataset_absent(&name)?;
        let info = self.inspector.inspect(staged, file_name)?;
        Ok(self.datasets.import(NewDataset { name, staged_file: staged.to_path_buf(), info })?)
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
        for state in [SessionState::Running, SessionState::Queued] {
            if let Some(s) = self.sessions.list_in_state(state)?.into_iter().find(|s| s.config.base_model.as_ref() == Some(name)) {
                return Err(CatalogError::Conflict(format!("model '{name}' is the base model of {state} session {}", s.id)));
            }
        }
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
        for state in [SessionState::Running, SessionState::Queued] {
            if let Some(s) = self.sessions.list_in_state(state)?.into_iter().find(|s| s.config.datasets().any(|d| d == name)) {
                return Err(CatalogError::Conflict(format!("dataset '{name}' is used by {state} session {}", s.id)));
            }
        }
        self.datasets.delete(name).map_err(|e| match e {
            StoreError::NotFound(_) => CatalogError::NotFound { kind: "dataset", name: name.to_string() },
            other => other.into(),
        })
    }
}
