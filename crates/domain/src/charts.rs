//! Charts of training history as data: the validated chart queries, the chart a session's
//! history (or several sessions' histories of one metric) becomes, and the [`ChartRenderer`]
//! port that draws it as PNG or SVG.
//!
//! The HTTP chart routes and the notifiers build charts through [`Charts`]; what a chart
//! shows (which panels, which series, the title, the note of an empty panel) is decided here,
//! and how it looks is the renderer's business.

use std::{fmt, sync::Arc};

use crate::{
    config::FieldError,
    failure::shown,
    ids::SessionId,
    manager::{ManagerError, SessionManager},
    metrics::EpochMetrics,
    session::Session,
};

/// The narrowest and lowest chart, in pixels.
pub const MIN_SIDE: u32 = 200;
/// The widest and highest chart, in pixels.
pub const MAX_SIDE: u32 = 4000;
/// The width of a chart when the query names none.
pub const DEFAULT_WIDTH: u32 = 1000;
/// The height of a chart when the query names none.
pub const DEFAULT_HEIGHT: u32 = 700;
/// The most sessions one comparison overlays.
pub const MAX_COMPARE_SESSIONS: usize = 20;

/// A per-epoch metric a chart can show, or a session be judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Loss,
    ValLoss,
    Accuracy,
    ValAccuracy,
}

/// Which panel a metric belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Loss,
    Accuracy,
}

impl Metric {
    /// Every metric, in the order panels list them.
    pub const ALL: [Self; 4] = [Self::Loss, Self::ValLoss, Self::Accuracy, Self::ValAccuracy];
    /// The wire names, in the same order.
    pub const NAMES: &'static [&'static str] = &["loss", "val_loss", "accuracy", "val_accuracy"];

    /// The wire name (`val_loss`), as the metrics endpoints spell it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loss => "loss",
            Self::ValLoss => "val_loss",
            Self::Accuracy => "accuracy",
            Self::ValAccuracy => "val_accuracy",
        }
    }

    /// Parses the wire name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == raw)
    }

    /// What a legend calls it.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Loss => "training loss",
            Self::ValLoss => "validation loss",
            Self::Accuracy => "training accuracy",
            Self::ValAccuracy => "validation accuracy",
        }
    }

    /// The panel it is drawn in.
    #[must_use]
    pub fn kind(self) -> MetricKind {
        match self {
            Self::Loss | Self::ValLoss => MetricKind::Loss,
            Self::Accuracy | Self::ValAccuracy => MetricKind::Accuracy,
        }
    }

    /// Its value in one epoch's metrics (`None` when the session holds out no validation data).
    #[must_use]
    pub fn value(self, m: &EpochMetrics) -> Option<f64> {
        match self {
            Self::Loss => Some(m.loss),
            Self::ValLoss => m.val_loss,
            Self::Accuracy => Some(m.accuracy),
            Self::ValAccuracy => m.val_accuracy,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The file format a chart is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChartFormat {
    Png,
    Svg,
}

impl ChartFormat {
    /// The media type of the drawn bytes.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Svg => "image/svg+xml",
        }
    }
}

/// How a panel's value axis labels its ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxisFormat {
    /// Plain numbers.
    Number,
    /// Fractions shown as percentages (`0.93` is `93%`).
    Percent,
}

/// One line of a panel: a legend label and its points `(epoch, value)`, in epoch order.
/// Points whose value is not finite are not drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// The points a renderer draws: those whose epoch and value are finite.
    pub fn finite_points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite())
    }
}

/// One plot of a chart: its axes' labels and its series, each with a legend entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// What the horizontal axis says (`epoch`).
    pub x_label: String,
    /// What the vertical axis says (`loss`, `accuracy`).
    pub y_label: String,
    pub y_format: AxisFormat,
    /// Bounds the value axis never goes past when every value lies within them (accuracies
    /// stay within 0 and 1).
    pub y_clamp: Option<(f64, f64)>,
    pub series: Vec<Series>,
    /// Written across the panel when none of its series has a finite point.
    pub empty_note: String,
}

impl Panel {
    /// Whether some series has a point to draw.
    #[must_use]
    pub fn has_points(&self) -> bool {
        self.series.iter().any(|s| s.finite_points().next().is_some())
    }
}

/// A chart as data: a title line, a line under it, panels stacked top to bottom, and its size
/// in pixels (within [`MIN_SIDE`]..=[`MAX_SIDE`] when built by this module).
#[derive(Debug, Clone, PartialEq)]
pub struct ChartSpec {
    pub title: String,
    pub subtitle: String,
    pub panels: Vec<Panel>,
    pub width: u32,
    pub height: u32,
}

/// A renderer could not draw a chart (a bug or an exhausted resource, never the client's
/// doing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not draw the chart: {0}")]
pub struct RenderError(pub String);

/// Draws charts.
///
/// # Errors
/// [`RenderError`] when drawing or encoding fails; an implementation must draw every
/// [`ChartSpec`] whose size is within [`MIN_SIDE`]..=[`MAX_SIDE`], whatever its values
/// (non-finite points are skipped, a flat or single-point series still gets a readable axis,
/// a panel without points shows its note), at exactly `width` x `height` pixels. It must not
/// depend on fonts installed on the machine.
pub trait ChartRenderer: Send + Sync + 'static {
    fn render(&self, spec: &ChartSpec, format: ChartFormat) -> Result<Vec<u8>, RenderError>;
}

/// Every query parameter that failed validation, in parameter order.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
#[error("invalid chart request: {}", self.summary())]
pub struct ChartQueryErrors(pub Vec<FieldError>);

impl ChartQueryErrors {
    fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError { field: field.to_owned(), message: message.into() });
    }

    /// `field: message; field: message`.
    #[must_use]
    pub fn summary(&self) -> String {
        self.0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
    }

    fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

/// The raw query of a session chart, as a client sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawChartQuery {
    /// Comma-separated metric names; every metric when absent.
    pub metrics: Option<String>,
    pub width: Option<String>,
    pub height: Option<String>,
}

/// A validated session chart query: at least one metric, each once, in [`Metric::ALL`]
/// order, and a size within bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartQuery {
    metrics: Vec<Metric>,
    width: u32,
    height: u32,
}

impl ChartQuery {
    /// Validates a raw query; every failing parameter is named.
    ///
    /// # Errors
    /// [`ChartQueryErrors`] naming `metrics`, `width` or `height`.
    pub fn parse(raw: &RawChartQuery) -> Result<Self, ChartQueryErrors> {
        let mut errors = ChartQueryErrors::default();
        let metrics = match raw.metrics.as_deref() {
            None => Metric::ALL.to_vec(),
            Some(list) => parse_metrics(list, &mut errors),
        };
        let (width, height) = parse_size(raw.width.as_deref(), raw.height.as_deref(), &mut errors);
        errors.into_result(|| Self { metrics, width, height })
    }

    /// Every metric, at the default size.
    #[must_use]
    pub fn all_metrics() -> Self {
        Self { metrics: Metric::ALL.to_vec(), width: DEFAULT_WIDTH, height: DEFAULT_HEIGHT }
    }

    /// The metrics asked for, in [`Metric::ALL`] order.
    #[must_use]
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    #[must_use]
    pub fn width(&self) -> u32 {
        self.width
    }

    #[must_use]
    pub fn height(&self) -> u32 {
        self.height
    }
}

/// The raw query of a comparison chart, as a client sent it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawCompareQuery {
    /// Comma-separated session ids.
    pub sessions: Option<String>,
    /// One metric name; `val_accuracy` when absent.
    pub metric: Option<String>,
    pub width: Option<String>,
    pub height: Option<String>,
}

/// A validated comparison query: 1 to [`MAX_COMPARE_SESSIONS`] distinct sessions, one metric,
/// a size within bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareQuery {
    sessions: Vec<SessionId>,
    metric: Metric,
    width: u32,
    height: u32,
}

impl CompareQuery {
    /// Validates a raw query; every failing parameter is named.
    ///
    /// # Errors
    /// [`ChartQueryErrors`] naming `sessions`, `metric`, `width` or `height`.
    pub fn parse(raw: &RawCompareQuery) -> Result<Self, ChartQueryErrors> {
        let mut errors = ChartQueryErrors::default();
        let sessions = parse_sessions(raw.sessions.as_deref(), &mut errors);
        let metric = match raw.metric.as_deref() {
            None => Metric::ValAccuracy,
            Some(name) => Metric::parse(name.trim()).unwrap_or_else(|| {
                errors.push("metric", format!("unknown metric '{}'; {}", shown(name), one_of_metrics()));
                Metric::ValAccuracy
            }),
        };
        let (width, height) = parse_size(raw.width.as_deref(), raw.height.as_deref(), &mut errors);
        errors.into_result(|| Self { sessions, metric, width, height })
    }

    /// The sessions, in the order asked.
    #[must_use]
    pub fn sessions(&self) -> &[SessionId] {
        &self.sessions
    }

    #[must_use]
    pub fn metric(&self) -> Metric {
        self.metric
    }

    #[must_use]
    pub fn width(&self) -> u32 {
        self.width
    }

    #[must_use]
    pub fn height(&self) -> u32 {
        self.height
    }
}

fn one_of_metrics() -> String {
    format!("expected one of: {}", Metric::NAMES.join(", "))
}

fn parse_metrics(list: &str, errors: &mut ChartQueryErrors) -> Vec<Metric> {
    let mut metrics = Vec::new();
    let mut unknown = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Metric::parse(name) {
            Some(m) if !metrics.contains(&m) => metrics.push(m),
            Some(_) => {}
            None => unknown.push(format!("'{}'", shown(name))),
        }
    }
    if !unknown.is_empty() {
        errors.push("metrics", format!("unknown metric {}; {}", unknown.join(", "), one_of_metrics()));
    } else if metrics.is_empty() {
        errors.push("metrics", format!("names no metric; {}", one_of_metrics()));
    }
    metrics.sort_unstable();
    metrics
}

fn parse_side(field: &str, raw: Option<&str>, default: u32, errors: &mut ChartQueryErrors) -> u32 {
    let Some(raw) = raw else { return default };
    match raw.trim().parse::<u64>() {
        Ok(n) if (u64::from(MIN_SIDE)..=u64::from(MAX_SIDE)).contains(&n) => u32::try_from(n).unwrap_or(default),
        Ok(n) => {
            errors.push(field, format!("must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {n}"));
            default
        }
        Err(_) => {
            errors.push(field, format!("must be a whole number of pixels between {MIN_SIDE} and {MAX_SIDE}, got '{}'", shown(raw)));
            default
        }
    }
}

fn parse_size(width: Option<&str>, height: Option<&str>, errors: &mut ChartQueryErrors) -> (u32, u32) {
    (parse_side("width", width, DEFAULT_WIDTH, errors), parse_side("height", height, DEFAULT_HEIGHT, errors))
}

fn parse_sessions(raw: Option<&str>, errors: &mut ChartQueryErrors) -> Vec<SessionId> {
    let Some(raw) = raw else {
        errors.push("sessions", format!("is required: 1 to {MAX_COMPARE_SESSIONS} comma-separated session ids"));
        return Vec::new();
    };
    let mut sessions: Vec<SessionId> = Vec::new();
    let mut bad = Vec::new();
    let mut repeated = false;
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match SessionId::parse(part) {
            Ok(id) if sessions.contains(&id) => repeated = true,
            Ok(id) => sessions.push(id),
            Err(_) => bad.push(format!("'{}'", shown(part))),
        }
    }
    if !bad.is_empty() {
        let more = if bad.len() > 3 { format!(" and {} more", bad.len() - 3) } else { String::new() };
        bad.truncate(3);
        errors.push("sessions", format!("not a session id: {}{more} (expected sess_ and 32 hex digits)", bad.join(", ")));
    } else if repeated {
        errors.push("sessions", "names a session more than once");
    } else if sessions.is_empty() {
        errors.push("sessions", format!("names no session; give 1 to {MAX_COMPARE_SESSIONS} comma-separated session ids"));
    } else if sessions.len() > MAX_COMPARE_SESSIONS {
        errors.push("sessions", format!("names {} sessions; at most {MAX_COMPARE_SESSIONS} can be compared", sessions.len()));
    }
    sessions
}

/// What a session trained, for titles and legends: `mlp on iris` (`+ wine` for each extra
/// dataset).
fn trained(session: &Session) -> String {
    let c = &session.config;
    let mut datasets = c.dataset_name.as_str().to_owned();
    for extra in &c.extra_datasets {
        datasets.push_str(" + ");
        datasets.push_str(extra.as_str());
    }
    format!("{} on {datasets}", c.model_architecture.as_str())
}

/// The first characters of a session id's hex part, enough to tell sessions apart in a legend.
fn short_id(id: &SessionId) -> &str {
    let s = id.as_str();
    let hex = s.strip_prefix("sess_").unwrap_or(s);
    hex.get(..8).unwrap_or(hex)
}

fn epoch_axis(history: &[EpochMetrics], metric: Metric) -> Vec<(f64, f64)> {
    history.iter().filter_map(|m| metric.value(m).map(|v| (f64::from(m.epoch), v))).collect()
}

/// An empty panel of `kind`, with its axes named.
fn panel(kind: MetricKind, y_label: &str, empty_note: String) -> Panel {
    let (y_format, y_clamp) = match kind {
        MetricKind::Loss => (AxisFormat::Number, None),
        MetricKind::Accuracy => (AxisFormat::Percent, Some((0.0, 1.0))),
    };
    Panel { x_label: "epoch".to_owned(), y_label: y_label.to_owned(), y_format, y_clamp, series: Vec::new(), empty_note }
}

/// The chart of one session's history: a loss panel for the loss metrics asked, an accuracy
/// panel for the accuracy metrics asked, one series per metric. A session with no finished
/// epoch yet still gets its panels, each saying so.
#[must_use]
pub fn session_chart(session: &Session, history: &[EpochMetrics], query: &ChartQuery) -> ChartSpec {
    let mut panels = Vec::new();
    for (kind, y_label) in [(MetricKind::Loss, "loss"), (MetricKind::Accuracy, "accuracy")] {
        let metrics: Vec<Metric> = query.metrics.iter().copied().filter(|m| m.kind() == kind).collect();
        if metrics.is_empty() {
            continue;
        }
        let note = if history.is_empty() {
            "no epochs yet".to_owned()
        } else if metrics.iter().all(|m| matches!(m, Metric::ValLoss | Metric::ValAccuracy)) {
            "no validation data: the session holds none out".to_owned()
        } else {
            "no finite values to plot".to_owned()
        };
        let mut p = panel(kind, y_label, note);
        p.series = metrics.iter().map(|m| Series { label: m.label().to_owned(), points: epoch_axis(history, *m) }).collect();
        panels.push(p);
    }
    ChartSpec {
        title: trained(session),
        subtitle: format!("{} \u{b7} {} \u{b7} epoch {} of {}", session.id, session.state, session.current_epoch, session.total_epochs()),
        panels,
        width: query.width,
        height: query.height,
    }
}

/// The chart comparing one metric across sessions: one panel, one series per session (in the
/// order given), each labelled with the start of its id and what it trained.
#[must_use]
pub fn compare_chart(sessions: &[(Session, Vec<EpochMetrics>)], query: &CompareQuery) -> ChartSpec {
    let metric = query.metric;
    let note = if sessions.iter().all(|(_, h)| h.is_empty()) {
        "no epochs yet".to_owned()
    } else {
        format!("no session has {} values yet", metric.as_str())
    };
    let mut p = panel(metric.kind(), metric.label(), note);
    p.series = sessions
        .iter()
        .map(|(s, history)| Series { label: format!("{} {}", short_id(&s.id), trained(s)), points: epoch_axis(history, metric) })
        .collect();
    let n = sessions.len();
    ChartSpec {
        title: format!("{} of {n} session{}", metric.label(), if n == 1 { "" } else { "s" }),
        subtitle: format!("compared by epoch \u{b7} {}", metric.as_str()),
        panels: vec![p],
        width: query.width,
        height: query.height,
    }
}

/// What the chart use cases fail with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChartError {
    /// An unknown session, or a store error, from the session manager.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// The use case behind every chart: reads sessions and their history through the session
/// manager, builds the chart, and draws it. Cheap to clone.
#[derive(Clone)]
pub struct Charts {
    manager: SessionManager,
    renderer: Arc<dyn ChartRenderer>,
}

impl fmt::Debug for Charts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charts").finish_non_exhaustive()
    }
}

impl Charts {
    #[must_use]
    pub fn new(manager: SessionManager, renderer: Arc<dyn ChartRenderer>) -> Self {
        Self { manager, renderer }
    }

    /// One session's chart, drawn in `format`; a running session's chart shows the epochs
    /// finished so far.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`] for an unknown session, a store error, or a render error.
    pub fn session(&self, id: &SessionId, query: &ChartQuery, format: ChartFormat) -> Result<Vec<u8>, ChartError> {
        let session = self.manager.view(id)?.session;
        let history = self.manager.history(id)?;
        Ok(self.renderer.render(&session_chart(&session, &history, query), format)?)
    }

    /// The comparison of several sessions, drawn in `format`.
    ///
    /// # Errors
    /// [`ManagerError::NotFound`] naming the first unknown session, a store error, or a render
    /// error.
    pub fn compare(&self, query: &CompareQuery, format: ChartFormat) -> Result<Vec<u8>, ChartError> {
        let mut sessions = Vec::with_capacity(query.sessions.len());
        for id in &query.sessions {
            let session = self.manager.view(id)?.session;
            let history = self.manager.history(id)?;
            sessions.push((session, history));
        }
        Ok(self.renderer.render(&compare_chart(&sessions, query), format)?)
    }
}

#[cfg(test)]
mod tests;
