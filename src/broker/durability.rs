//! The broker's side of persistence: logging records (committed, pipelined or lazy), waiting
//! for them, and stopping the broker when persistence fails.

use super::*;

impl Broker {
    /// A new message id, unique across restarts.
    pub fn next_message_id(&self) -> u64 {
        match &self.shared.persistence {
            Some(p) => p.next_message_id(),
            None => self.shared.next_message_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn persistence(&self) -> Option<&Arc<Persistence>> {
        self.shared.persistence.as_ref()
    }

    /// Whether persistence failed (the broker then stops; the process exits non-zero).
    pub fn has_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Logs `records` and waits until they are durable. On failure the broker stops.
    /// Logs `records` now; the caller awaits [`Self::wait_pending`] before acknowledging.
    pub(crate) fn log_pending(&self, records: Vec<Record>) -> Result<PendingDurable, NotDurable> {
        let Some(p) = &self.shared.persistence else {
            return Ok(PendingDurable::ready());
        };
        p.log_pending(records).map_err(|e| self.not_durable(e))
    }

    /// Waits until what [`Self::log_pending`] logged is durable.
    pub(crate) async fn wait_pending(
        &self,
        pending: &mut PendingDurable,
    ) -> Result<(), NotDurable> {
        let Some(p) = &self.shared.persistence else {
            return Ok(());
        };
        p.wait_pending(pending)
            .await
            .map_err(|e| self.not_durable(e))
    }

    pub(super) fn not_durable(&self, e: persistence::Error) -> NotDurable {
        if e.is_fatal() {
            self.fatal(&e);
        } else {
            tracing::warn!(error = %e, "operation refused");
        }
        NotDurable
    }

    pub(crate) async fn commit(&self, records: Vec<Record>) -> Result<(), NotDurable> {
        let Some(p) = &self.shared.persistence else {
            return Ok(());
        };
        if records.is_empty() {
            return if p.has_failed() {
                Err(NotDurable)
            } else {
                Ok(())
            };
        }
        match p.commit(records).await {
            Ok(()) => Ok(()),
            Err(e) if !e.is_fatal() => {
                tracing::warn!(error = %e, "operation refused");
                Err(NotDurable)
            }
            Err(e) => {
                self.fatal(&e);
                Err(NotDurable)
            }
        }
    }

    /// Logs `records` without waiting, and without asking for an fdatasync of their own (their
    /// loss costs only a re-delivery or a later expiry): the next commit covers them.
    pub(crate) fn log(&self, records: Vec<Record>) {
        let Some(p) = &self.shared.persistence else {
            return;
        };
        if records.is_empty() {
            return;
        }
        let broker = self.clone();
        let logged = p.log_lazy(records, move |e| broker.fatal(e));
        match logged {
            Ok(()) => {}
            Err(e) if e.is_fatal() => self.fatal(&e),
            Err(e) => tracing::warn!(error = %e, "record not logged"),
        }
    }

    /// Ends the WAL writer's commit window now: a client is held up by what was just logged
    /// (see `keelmq_wal::WalOptions::commit_window`).
    pub(crate) fn expedite(&self) {
        if let Some(p) = &self.shared.persistence {
            p.wal().expedite();
        }
    }

    pub(super) fn fatal(&self, e: &persistence::Error) {
        if !self.shared.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "persistence failed; stopping the broker");
            self.begin_shutdown();
        }
    }
}
