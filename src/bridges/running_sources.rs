//! The sources' tasks: started, stopped, restarted and reconciled with the configuration at
//! run time (hot reload, the API's enable/disable/restart). A stopped source ends after the
//! message in hand; its durable state (the MQTT source's remote session and packet-id marks,
//! the Kafka source's stored offsets) is kept, so starting it again resumes where it stopped.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{kafka_source, source, Bridges};
use crate::broker::metrics::{SinkStats, SinkStatus};
use crate::config::{SourceKind, SourceSpec};

/// A source's task.
pub(super) struct SourceRun {
    spec: SourceSpec,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn kind_name(kind: &SourceKind) -> &'static str {
    match kind {
        SourceKind::Mqtt => "mqtt",
        SourceKind::Kafka => "kafka",
    }
}

impl Bridges {
    /// Starts source `spec` (enabled) with its counters (kept across a restart).
    fn spawn_source(&self, spec: &SourceSpec, stats: Arc<SinkStats>) -> SourceRun {
        let (stop, stopped) = watch::channel(false);
        let broker = self.inner.broker.clone();
        let task = match spec.kind {
            SourceKind::Mqtt => tokio::spawn(source::run(broker, spec.clone(), stats, stopped)),
            SourceKind::Kafka => {
                tokio::spawn(kafka_source::run(broker, spec.clone(), stats, stopped))
            }
        };
        SourceRun {
            spec: spec.clone(),
            stop,
            task,
        }
    }

    /// Makes the running sources those of `specs` (the enabled ones): passwords of new and
    /// changed sources are read first (an error changes nothing), then removed, disabled and
    /// changed ones stop (after the message in hand) and new and changed ones start;
    /// `restart` names one to restart even if unchanged. Returns the names that changed.
    pub async fn reload_sources(
        &self,
        specs: &[SourceSpec],
        restart: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let mut running = self.inner.sources.lock().await;
        // Names of enabled sources whose task runs with the same spec (and no restart asked).
        let unchanged: Vec<String> = specs
            .iter()
            .filter(|s| s.enabled && restart != Some(s.name.as_str()))
            .filter(|s| running.get(&s.name).is_some_and(|r| r.spec == **s))
            .map(|s| s.name.clone())
            .collect();
        for spec in specs
            .iter()
            .filter(|s| s.enabled && !unchanged.contains(&s.name))
        {
            spec.password()
                .map_err(|e| format!("source `{}`: {e}", spec.name))?;
        }
        let mut changed = Vec::new();
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names.into_iter().filter(|n| !unchanged.contains(n)) {
            if let Some(run) = running.remove(&name) {
                stop_source(run).await;
                changed.push(name.clone());
            }
            if !specs.iter().any(|s| s.name == name && s.enabled) {
                self.source_stopped(&name, specs);
            }
        }
        let starting: Vec<&SourceSpec> = specs
            .iter()
            .filter(|s| s.enabled && !running.contains_key(&s.name))
            .collect();
        for spec in starting {
            let stats = self.source_stats(spec);
            running.insert(spec.name.clone(), self.spawn_source(spec, stats));
            if !changed.contains(&spec.name) {
                changed.push(spec.name.clone());
            }
        }
        Ok(changed)
    }

    /// The counters of source `spec`: its existing ones (same kind), or new ones, registered.
    fn source_stats(&self, spec: &SourceSpec) -> Arc<SinkStats> {
        let kind = kind_name(&spec.kind);
        let existing = self.inner.broker.source_stats(&spec.name);
        let stats = existing
            .filter(|s| s.kind == kind)
            .unwrap_or_else(|| Arc::new(SinkStats::new(&spec.name, kind)));
        self.inner.broker.add_source_stats(stats.clone());
        stats
    }

    /// A stopped source: disabled (its counters stay, status "disconnected: disabled") or
    /// removed (its counters go).
    fn source_stopped(&self, name: &str, specs: &[SourceSpec]) {
        let broker = &self.inner.broker;
        match specs.iter().any(|s| s.name == name) {
            true => {
                if let Some(stats) = broker.source_stats(name) {
                    stats.set_status(SinkStatus::Disconnected, "disabled");
                }
            }
            false => broker.remove_source_stats(name),
        }
    }

    /// Stops every source (after the message in hand), at shutdown.
    pub(super) async fn stop_sources(&self) {
        let runs: Vec<SourceRun> = {
            let mut running = self.inner.sources.lock().await;
            std::mem::take(&mut *running).into_values().collect()
        };
        for run in runs {
            stop_source(run).await;
        }
    }
}

/// Stops a source's task, waiting (bounded) for the message in hand.
async fn stop_source(run: SourceRun) {
    let _ = run.stop.send(true);
    let mut task = run.task;
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
        .await
        .is_err()
    {
        tracing::warn!(source = %run.spec.name, "source did not stop in time; aborted");
        task.abort();
    }
}
