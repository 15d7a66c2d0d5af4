//! [`MetricsStore`] for [`SqliteStore`]: one row per session and epoch.

use rusqlite::{params, OptionalExtension, Row};
use trainyard_domain::{
    metrics::EpochMetrics,
    ports::{MetricsStore, StoreError},
    SessionId,
};

use super::SqliteStore;
use crate::{codec, db::missing_as};

const COLUMNS: &str = "epoch, loss, accuracy, val_loss, val_accuracy, samples_per_second, epoch_seconds, timestamp, learning_rate";

/// An epoch's columns as SQLite returns them. SQLite stores NaN as NULL, so the required
/// measures come back as options.
struct MetricsRow {
    epoch: i64,
    loss: Option<f64>,
    accuracy: Option<f64>,
    val_loss: Option<f64>,
    val_accuracy: Option<f64>,
    samples_per_second: Option<f64>,
    epoch_seconds: Option<f64>,
    timestamp: String,
    learning_rate: Option<f64>,
}

impl MetricsRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            epoch: r.get(0)?,
            loss: r.get(1)?,
            accuracy: r.get(2)?,
            val_loss: r.get(3)?,
            val_accuracy: r.get(4)?,
            samples_per_second: r.get(5)?,
            epoch_seconds: r.get(6)?,
            timestamp: r.get(7)?,
            learning_rate: r.get(8)?,
        })
    }

    /// The stored epoch. A NULL required measure was a NaN; a NaN validation measure reads
    /// back as absent.
    fn decode(self) -> Result<EpochMetrics, StoreError> {
        Ok(EpochMetrics {
            epoch: codec::to_u32(self.epoch, "metrics epoch")?,
            loss: self.loss.unwrap_or(f64::NAN),
            accuracy: self.accuracy.unwrap_or(f64::NAN),
            val_loss: self.val_loss,
            val_accuracy: self.val_accuracy,
            samples_per_second: self.samples_per_second.unwrap_or(f64::NAN),
            epoch_seconds: self.epoch_seconds.unwrap_or(f64::NAN),
            learning_rate: self.learning_rate,
            timestamp: codec::parse_ts(&self.timestamp)?,
        })
    }
}

impl MetricsStore for SqliteStore {
    fn record(&self, session: &SessionId, m: &EpochMetrics) -> Result<(), StoreError> {
        let timestamp = codec::ts(m.timestamp)?;
        self.db
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO metrics
                         (session_id, epoch, loss, accuracy, val_loss, val_accuracy, samples_per_second, epoch_seconds, timestamp,
                          learning_rate)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (session_id, epoch) DO UPDATE SET
                         loss = excluded.loss, accuracy = excluded.accuracy, val_loss = excluded.val_loss,
                         val_accuracy = excluded.val_accuracy, samples_per_second = excluded.samples_per_second,
                         epoch_seconds = excluded.epoch_seconds, timestamp = excluded.timestamp,
                         learning_rate = excluded.learning_rate",
                )?
                .execute(params![
                    session.as_str(),
                    m.epoch,
                    m.loss,
                    m.accuracy,
                    m.val_loss,
                    m.val_accuracy,
                    m.samples_per_second,
                    m.epoch_seconds,
                    timestamp,
                    m.learning_rate
                ])
            })
            .map_err(missing_as(|| format!("session {session}")))?;
        Ok(())
    }

    fn latest(&self, session: &SessionId) -> Result<Option<EpochMetrics>, StoreError> {
        let row = self.db.read(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM metrics WHERE session_id = ?1 ORDER BY epoch DESC LIMIT 1"))?
                .query_row([session.as_str()], MetricsRow::read)
                .optional()
        })?;
        row.map(MetricsRow::decode).transpose()
    }

    fn history(&self, session: &SessionId) -> Result<Vec<EpochMetrics>, StoreError> {
        let rows = self.db.read(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM metrics WHERE session_id = ?1 ORDER BY epoch"))?
                .query_map([session.as_str()], MetricsRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(MetricsRow::decode).collect()
    }

    fn discard_after(&self, session: &SessionId, epoch: u32) -> Result<(), StoreError> {
        self.db.write(|tx| {
            tx.prepare_cached("DELETE FROM metrics WHERE session_id = ?1 AND epoch > ?2")?.execute(params![session.as_str(), epoch])
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use quickcheck::{Gen, QuickCheck};
    use trainyard_domain::ports::SessionRepository;

    use super::*;
    use crate::test_support::{session, temp_store, time_from};

    fn metrics(epoch: u32, loss: f64, val: Option<f64>, at: u32) -> EpochMetrics {
        EpochMetrics {
            epoch,
            loss,
            accuracy: 0.5,
            val_loss: val,
            val_accuracy: val.map(|v| v / 2.0),
            samples_per_second: 1000.0,
            epoch_seconds: 0.25,
            learning_rate: Some(0.001 * f64::from(epoch + 1)),
            timestamp: time_from(at, at),
        }
    }

    #[test]
    fn discard_after_keeps_earlier_epochs_only() {
        let (_dir, store) = temp_store();
        let s = session(0);
        store.insert(&s).unwrap();
        for e in 1..=5 {
            store.record(&s.id, &metrics(e, f64::from(e), None, e)).unwrap();
        }
        store.discard_after(&s.id, 2).unwrap();
        assert_eq!(store.history(&s.id).unwrap().iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
        store.discard_after(&s.id, 0).unwrap();
        assert!(store.history(&s.id).unwrap().is_empty());
    }

    #[test]
    fn metrics_of_an_unknown_session_are_refused() {
        let (_dir, store) = temp_store();
        let id = session(0).id;
        assert_eq!(store.record(&id, &metrics(1, 1.0, None, 0)), Err(StoreError::NotFound(format!("session {id}"))));
        assert_eq!(store.history(&id).unwrap(), []);
        assert_eq!(store.latest(&id).unwrap(), None);
    }

    #[test]
    fn nan_and_infinite_losses_are_kept() {
        let (_dir, store) = temp_store();
        let s = session(0);
        store.insert(&s).unwrap();
        store.record(&s.id, &metrics(1, f64::NAN, Some(f64::NAN), 0)).unwrap();
        store.record(&s.id, &metrics(2, f64::INFINITY, Some(f64::NEG_INFINITY), 0)).unwrap();
        let h = store.history(&s.id).unwrap();
        assert!(h[0].loss.is_nan());
        assert_eq!(h[0].val_loss, None, "a NaN validation loss reads back as absent");
        assert_eq!(h[1].loss, f64::INFINITY);
        assert_eq!(h[1].val_loss, Some(f64::NEG_INFINITY));
    }

    // Property 19: the metrics history is ordered by epoch with no duplicate epochs,
    // recording an epoch twice keeps the last, and latest is the highest epoch.
    #[test]
    fn prop19_metrics_history_is_ordered_and_last_write_wins() {
        fn prop(records: Vec<(u8, u32, Option<u32>)>, other: Vec<u8>) -> bool {
            let (_dir, store) = temp_store();
            let (s, t) = (session(0), session(1));
            store.insert(&s).unwrap();
            store.insert(&t).unwrap();
            let mut model = BTreeMap::new();
            for (i, (epoch, loss, val)) in records.into_iter().enumerate() {
                let m = metrics(u32::from(epoch % 16), f64::from(loss) / 7.0, val.map(f64::from), u32::try_from(i).unwrap());
                store.record(&s.id, &m).unwrap();
                model.insert(m.epoch, m);
            }
            for epoch in other {
                store.record(&t.id, &metrics(u32::from(epoch), 9.0, None, 0)).unwrap();
            }
            let history = store.history(&s.id).unwrap();
            history.windows(2).all(|w| w[0].epoch < w[1].epoch)
                && history == model.values().cloned().collect::<Vec<_>>()
                && store.latest(&s.id).unwrap().as_ref() == model.values().next_back()
        }
        QuickCheck::new().tests(40).rng(Gen::new(24)).quickcheck(prop as fn(Vec<(u8, u32, Option<u32>)>, Vec<u8>) -> bool);
    }
}
