//! Progress bars on standard error (indicatif), shown only to a person: never with `--json`,
//! never when standard error is not a terminal.

use std::{io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether bars are drawn.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    shown: bool,
}

impl Progress {
    /// Bars for a person at a terminal, unless `json`.
    #[must_use]
    pub fn new(json: bool) -> Self {
        Self { shown: !json && std::io::stderr().is_terminal() }
    }

    /// Whether bars are drawn (else the caller prints plain lines where it matters).
    #[must_use]
    pub fn shown(self) -> bool {
        self.shown
    }

    fn bar(self, len: Option<u64>, template: &str) -> ProgressBar {
        if !self.shown {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "));
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A bar over bytes, its length set once known.
    #[must_use]
    pub fn bytes(self, message: String) -> ProgressBar {
        let bar = self.bar(None, "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}");
        bar.set_message(message);
        bar
    }

    /// A bar over a session's epochs.
    #[must_use]
    pub fn epochs(self, total: u64) -> ProgressBar {
        self.bar(Some(total), "{spinner} epoch {pos}/{len} [{bar:30}] {msg} ({elapsed}, eta {eta})")
    }
}
