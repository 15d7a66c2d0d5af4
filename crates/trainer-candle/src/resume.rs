//! Per-epoch checkpoints shared by every architecture: the weights, the optimizer state, the
//! epoch and its metrics, written atomically to the session's scratch directory after every
//! epoch, and read back when an interrupted session's run starts again.

use std::{collections::HashMap, path::Path};

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use trainyard_domain::{
    lr_schedule::PlateauState,
    metrics::EpochMetrics,
    ports::{TrainError, TrainingEvents},
    selection::Tracker,
};

use crate::{
    checkpoint,
    epoch_loop::backend,
    model_meta::ModelMeta,
    optim::{TrainOptimizer, STATE_PREFIX},
    weights,
};

/// The checkpoint's file name in the scratch directory.
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The best epoch's checkpoint, a second name of the checkpoint file written in that epoch.
pub(crate) const BEST_FILE: &str = "best.safetensors";

/// A checkpoint read back.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    /// The last epoch it holds.
    pub epoch: u32,
    /// The model it holds, as the model file would describe it.
    pub description: ModelMeta,
    pub tensors: HashMap<String, Tensor>,
    metrics: Option<EpochMetrics>,
    /// Where the judging of epochs stood after its epoch (absent from older checkpoints).
    pub tracker: Option<Tracker>,
    /// The `plateau` schedule's state after its epoch.
    pub plateau: Option<PlateauState>,
}

impl Checkpoint {
    /// Reads the checkpoint in `dir`, if there is one.
    pub(crate) fn read(dir: &Path, device: &Device) -> Result<Option<Self>, String> {
        let path = dir.join(CHECKPOINT_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let loaded = weights::load_safetensors(&path, device).map_err(|e| format!("unreadable checkpoint: {e}"))?;
        let epoch = loaded.header.get("epoch").and_then(|e| e.parse::<u32>().ok()).ok_or("the checkpoint names no epoch")?;
        let metrics = loaded.header.get("metrics").and_then(|m| serde_json::from_str(m).ok());
        let tracker = loaded.header.get("selection").and_then(|t| serde_json::from_str(t).ok());
        let plateau = loaded.header.get("lr_plateau").and_then(|t| serde_json::from_str(t).ok());
        let description = ModelMeta::from_header(&loaded.header).map_err(|e| format!("the checkpoint's model: {e}"))?;
        Ok(Some(Self { epoch, description, tensors: loaded.tensors, metrics, tracker, plateau }))
    }

    /// Loads the optimizer state, then tells `events` where the run resumes and replays the
    /// checkpoint's epoch metrics (the crash may have come before they were recorded).
    /// Returns the epoch to continue after.
    pub(crate) fn restore(&self, optimizer: &mut TrainOptimizer, events: &mut dyn TrainingEvents) -> Result<u32, TrainError> {
        let state: HashMap<String, Tensor> =
            self.tensors.iter().filter(|(k, _)| k.starts_with(STATE_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect();
        optimizer.load_state(&state).map_err(backend)?;
        events.resumed(self.epoch);
        if let Some(m) = &self.metrics {
            events.epoch_finished(m.clone());
        }
        Ok(self.epoch)
    }
}

/// Writes the checkpoint of a finished epoch: the model's description plus the epoch, its
/// metrics, where the judging of epochs stands and the learning-rate schedule's state.
pub(crate) fn write(
    dir: &Path,
    varmap: &VarMap,
    optimizer: &TrainOptimizer,
    description: &ModelMeta,
    metrics: &EpochMetrics,
    tracker: &Tracker,
    plateau: &PlateauState,
) -> Result<(), TrainError> {
    let failed = |e: serde_json::Error| TrainError::Failed(e.to_string());
    let mut header = description.to_header();
    header.insert("epoch".into(), metrics.epoch.to_string());
    header.insert("metrics".into(), serde_json::to_string(metrics).map_err(failed)?);
    header.insert("selection".into(), serde_json::to_string(tracker).map_err(failed)?);
    header.insert("lr_plateau".into(), serde_json::to_string(plateau).map_err(failed)?);
    let extra = optimizer.state().map_err(backend)?;
    checkpoint::save_with(varmap, extra, header, &dir.join(CHECKPOINT_FILE)).map_err(|e| TrainError::Io(e.to_string()))
}

/// Copies `tensors` into the same-named variables of `varmap`. Embedding and output rows may
/// be fewer than the variable's (a grown vocabulary): the first rows are copied, the rest keep
/// their fresh initialisation. Returns how many variables grew that way.
pub(crate) fn assign(varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<usize, String> {
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut grown = 0;
    for (name, var) in data.iter() {
        let Some(src) = tensors.get(name) else { return Err(format!("the weights lack '{name}'")) };
        grown += usize::from(copy_rows(var, src, name)?);
    }
    Ok(grown)
}

fn copy_rows(var: &Var, src: &Tensor, name: &str) -> Result<bool, String> {
    let (want, have) = (var.dims().to_vec(), src.dims().to_vec());
    let src = src.to_device(var.device()).and_then(|t| t.to_dtype(var.dtype())).map_err(|e| e.to_string())?;
    if want == have {
        var.set(&src).map_err(|e| e.to_string())?;
        return Ok(false);
    }
    if want.len() == have.len() && !want.is_empty() && want[1..] == have[1..] && have[0] < want[0] {
        let rest = var.as_tensor().narrow(0, have[0], want[0] - have[0]).map_err(|e| e.to_string())?;
        let merged = Tensor::cat(&[&src, &rest], 0).map_err(|e| e.to_string())?;
        var.set(&merged).map_err(|e| e.to_string())?;
        return Ok(true);
    }
    Err(format!("'{name}' has shape {have:?} but this model needs {want:?}"))
}

/// Makes the checkpoint just written the best one too: a hard link to the same file, so it
/// costs no copy, and stays the best epoch's when later epochs replace the checkpoint (each is
/// written to a new file renamed into place). Where links are not possible it is copied.
pub(crate) fn mark_best(dir: &Path) -> Result<(), TrainError> {
    let (checkpoint, best) = (dir.join(CHECKPOINT_FILE), dir.join(BEST_FILE));
    let tmp = dir.join(format!(".{BEST_FILE}.partial"));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(&checkpoint, &tmp)
        .or_else(|_| std::fs::copy(&checkpoint, &tmp).map(|_| ()))
        .and_then(|()| std::fs::rename(&tmp, &best))
        .map_err(|e| TrainError::Io(format!("could not keep the best epoch's checkpoint: {e}")))
}

/// Loads the best epoch's weights (see [`mark_best`]) into `varmap`, reading only them (not
/// the optimizer state beside them); returns that epoch's metrics, which its checkpoint holds.
pub(crate) fn load_best(dir: &Path, varmap: &VarMap, device: &Device) -> Result<Option<EpochMetrics>, String> {
    let names: Vec<String> = {
        let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        data.keys().cloned().collect()
    };
    let loaded = weights::load_some(&dir.join(BEST_FILE), &names, device)?;
    assign(varmap, &loaded.tensors)?;
    Ok(loaded.header.get("metrics").and_then(|m| serde_json::from_str(m).ok()))
}
