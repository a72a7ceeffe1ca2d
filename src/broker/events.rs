//! The hooks as the broker holds them (see `crate::hooks`): the authenticator, the authorizer
//! (swapped at run time), and the event channels with their counted overflow.

use super::*;
use crate::hooks::{AllowAll, Authenticator, Authorizer, Event, EventKinds, Identity};
use tokio::sync::mpsc;

/// The broker's hooks. Reading the authenticator or the authorizer clones an `Arc` under a
/// read lock held for that clone only.
pub(crate) struct HookSet {
    authenticator: RwLock<Arc<dyn Authenticator>>,
    authorizer: RwLock<Arc<dyn Authorizer>>,
    listeners: RwLock<Vec<(EventKinds, mpsc::Sender<Event>)>>,
    /// The kinds some event channel wants (an [`EventKinds`] bit set): an event of another
    /// kind is not even built.
    listening: std::sync::atomic::AtomicU32,
}

impl Default for HookSet {
    fn default() -> HookSet {
        HookSet {
            authenticator: RwLock::new(Arc::new(AllowAll)),
            authorizer: RwLock::new(Arc::new(AllowAll)),
            listeners: RwLock::new(Vec::new()),
            listening: std::sync::atomic::AtomicU32::new(0),
        }
    }
}

impl Broker {
    /// Sets the authenticator every later CONNECT goes through.
    pub fn set_authenticator(&self, authenticator: Arc<dyn Authenticator>) {
        *self.shared.hooks.authenticator.write() = authenticator;
    }

    /// Swaps the authorizer: every later PUBLISH and SUBSCRIBE is decided by the new one (hot
    /// reload of rules).
    pub fn set_authorizer(&self, authorizer: Arc<dyn Authorizer>) {
        *self.shared.hooks.authorizer.write() = authorizer;
    }

    pub(crate) fn authenticator(&self) -> Arc<dyn Authenticator> {
        self.shared.hooks.authenticator.read().clone()
    }

    pub(crate) fn authorizer(&self) -> Arc<dyn Authorizer> {
        self.shared.hooks.authorizer.read().clone()
    }

    /// A new event channel of every kind, holding at most `capacity` events; when it is full,
    /// further events are dropped for it and counted (`events_dropped`). Messages are reported
    /// only once durable and visible.
    pub fn events(&self, capacity: usize) -> mpsc::Receiver<Event> {
        self.events_of(capacity, EventKinds::ALL)
    }

    /// [`Self::events`] of the given kinds only.
    pub fn events_of(&self, capacity: usize, kinds: EventKinds) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut listeners = self.shared.hooks.listeners.write();
        listeners.push((kinds, tx));
        self.shared
            .hooks
            .listening
            .fetch_or(kinds.0, Ordering::AcqRel);
        rx
    }

    /// Reports an event of `kind` to every channel that wants it (built only if one does).
    pub(crate) fn emit(&self, kind: EventKinds, event: impl FnOnce() -> Event) {
        let wanted = EventKinds(self.shared.hooks.listening.load(Ordering::Acquire));
        if !wanted.contains(kind) {
            return;
        }
        let event = event();
        let mut closed = false;
        for (kinds, tx) in self.shared.hooks.listeners.read().iter() {
            if !kinds.contains(kind) {
                continue;
            }
            match tx.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Metrics::add(&self.shared.metrics.events_dropped, 1);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed {
            let mut listeners = self.shared.hooks.listeners.write();
            listeners.retain(|(_, tx)| !tx.is_closed());
            let any = listeners
                .iter()
                .fold(EventKinds::NONE, |a, (k, _)| a.union(*k));
            self.shared.hooks.listening.store(any.0, Ordering::Release);
        }
    }

    /// Sets the rules evaluated on the publish path (`None`: none); later publishes use them.
    pub fn set_publish_rules(&self, rules: Option<Arc<dyn crate::hooks::PublishRules>>) {
        let some = rules.is_some();
        *self.shared.publish_rules.write() = rules;
        self.shared.has_publish_rules.store(some, Ordering::Release);
    }

    pub(crate) fn publish_rules(&self) -> Option<Arc<dyn crate::hooks::PublishRules>> {
        if !self.shared.has_publish_rules.load(Ordering::Acquire) {
            return None;
        }
        self.shared.publish_rules.read().clone()
    }

    /// Reports an authorization decision (`$events/client_check_authz_complete`).
    pub(crate) fn report_authz(
        &self,
        client: &crate::hooks::Client<'_>,
        topic: &str,
        action: keelmq_auth::Action,
        allowed: bool,
    ) {
        self.emit(EventKinds::AUTHORIZED, || Event::Authorized {
            client_id: Arc::from(client.client_id),
            username: client.identity.username.clone(),
            topic: topic.to_string(),
            action: match action {
                keelmq_auth::Action::Publish => "publish",
                keelmq_auth::Action::Subscribe => "subscribe",
            },
            allowed,
        });
    }

    /// Records who the connection attached to `slot` authenticated as.
    pub(crate) fn set_identity(&self, slot: &SessionSlot, conn: ConnId, identity: Arc<Identity>) {
        let mut st = slot.state.lock();
        if st.owner == Some(conn) {
            st.identity = identity;
        }
    }
}
