//! The image: the durable state as the log and the store describe it, kept in memory by the
//! persistence layer and changed only by [`Image::apply`] — the same function recovery uses to
//! replay the log over the last checkpoint. Applying records in log order from a checkpoint
//! taken after record S reproduces exactly the image after the last record.
//!
//! The image remembers which keys changed since the last checkpoint ([`Image::take_changes`]),
//! so a checkpoint writes only what changed, and only its current value: a message queued and
//! acknowledged between two checkpoints never reaches the store.
//!
//! # What stays in memory
//! Sessions, subscriptions, queue entries (their metadata) and inbound QoS 2 ids are held
//! whole. Message bodies and retained messages are held only until a checkpoint has written
//! them ([`Image::checkpointed`]); from then on the store is their only copy: a body keeps
//! just its reference count here, and a retained message nothing at all. [`Image::load`]
//! reads neither table, so recovery reads only metadata, and the bodies of offline queues are
//! paged in from the store when their session resumes (`Persistence::load_messages`).
//!
//! # Store keys (all tables of `keelmq-storage`)
//! | table | key | value |
//! |---|---|---|
//! | sessions | client id (UTF-8) | `SessionRecord` |
//! | subscriptions | u16 BE client-id length, client id, filter | `StoredSubscription` |
//! | messages | u64 BE message id | `StoredMessage` |
//! | queues | u16 BE client-id length, client id, packet id: u16 BE up to 65,535, else u32 BE | `StoredDelivery` |
//! | inbound | u16 BE client-id length, client id, u16 BE packet id | empty: awaits PUBREL; one byte 1: refused (`InboundRefused`) |
//! | retained | topic (UTF-8) | `StoredMessage` |
//! | meta | `max_message_id` ([`MAX_MESSAGE_ID_KEY`]) | u64 LE (`applied_seq` is the store's) |
//! | meta | `will/` ([`WILL_KEY_PREFIX`]) + client id | `StoredWill`: a will waiting for its delay |
//! | meta | `owner/` ([`OWNER_KEY_PREFIX`]) + client id | `Option<String>`: the username the session belongs to |
//! | meta | `produced/` ([`PRODUCED_KEY_PREFIX`]) + u16 BE client-id length, client id, u64 BE message id, u32 BE index | empty: an output a consumer published |
//!
//! Values are a version byte and postcard (see `records.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use keelmq_storage::{Change, Store, Table};

use super::records::*;
use crate::session::PacketId;

/// A persistent session in the image.
#[derive(Debug, Clone, Default)]
pub struct SessionImage {
    pub record: Option<SessionRecord>,
    pub subscriptions: BTreeMap<String, StoredSubscription>,
    /// Outbound deliveries by packet id.
    pub deliveries: HashMap<PacketId, StoredDelivery>,
    pub inbound: BTreeSet<u16>,
    /// Inbound QoS 2 ids answered PUBREC 0x80 (`Record::InboundRefused`): a DUP re-send
    /// under one is that message again.
    pub refused: BTreeSet<u16>,
    /// The will waiting for its delay since the session's connection closed.
    pub will: Option<StoredWill>,
    /// The username the session belongs to (`Some(None)`: a client without one); `None`:
    /// not known (logged by a build that did not record owners).
    pub owner: Option<Option<String>>,
    /// Outputs a durable consumer published for messages still in its queue:
    /// (message id, output index).
    pub produced: BTreeSet<(u64, u32)>,
    next_order: u64,
}

#[derive(Debug, Clone)]
struct Body {
    /// The body itself until a checkpoint wrote it; then only the store has it.
    /// Boxed: most bodies are not resident, and a recovered backlog has millions of them.
    message: Option<Box<StoredMessage>>,
    refs: u32,
}

/// What a record does to an inbound QoS 2 id.
enum Inbound {
    Received,
    Refused,
    Released,
}

/// The inbound table's value of a refused id (after [`VALUE_V1`]).
const REFUSED: u8 = 1;

/// A key that changed since the last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Session(String),
    Subscription(String, String),
    Message(u64),
    Delivery(String, PacketId),
    Inbound(String, u16),
    Retained(String),
    Will(String),
    Owner(String),
    Produced(String, u64, u32),
}

/// The durable state.
#[derive(Debug, Default)]
pub struct Image {
    pub sessions: HashMap<String, SessionImage>,
    bodies: HashMap<u64, Body>,
    /// Retained changes not yet checkpointed (`None`: deleted). The others live in the store.
    retained: HashMap<String, Option<StoredMessage>>,
    /// The largest message id seen, so that new ids never collide after a restart.
    max_id: u64,
    dirty: HashSet<Key>,
    /// Dirty keys of bodies and queue entries created since the last checkpoint that the
    /// store does not hold: one removed again before the next checkpoint (a message delivered
    /// and acknowledged meanwhile, the usual case with an online subscriber) leaves nothing to
    /// write — not a write of it, nor a delete — so a checkpoint, and the image lock it holds
    /// while it takes the changes, is as small as what is really waiting.
    unstored: HashSet<Key>,
    /// Bodies added since the last checkpoint, which may have no delivery referring to them:
    /// the only candidates for [`Self::take_changes`]' orphan sweep (a body whose last delivery
    /// goes is removed there and then), so a checkpoint never walks every body.
    new_bodies: Vec<u64>,
    /// Records that referred to state the image does not have (a delivery for an unknown
    /// message). They mean a bug or damaged data; they are counted and reported.
    pub inconsistencies: u64,
}

fn client_key(client: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client.len() + rest.len());
    k.extend_from_slice(&(client.len() as u16).to_be_bytes());
    k.extend_from_slice(client.as_bytes());
    k.extend_from_slice(rest);
    k
}

fn split_client_key(key: &[u8]) -> Option<(String, &[u8])> {
    let len = u16::from_be_bytes([*key.first()?, *key.get(1)?]) as usize;
    let client = std::str::from_utf8(key.get(2..2 + len)?).ok()?.to_string();
    Some((client, key.get(2 + len..)?))
}

impl Image {
    /// A message body still in memory (not yet checkpointed).
    pub fn resident_message(&self, id: u64) -> Option<&StoredMessage> {
        self.bodies.get(&id).and_then(|b| b.message.as_deref())
    }

    /// Whether some queue entry refers to message `id`.
    pub fn has_message(&self, id: u64) -> bool {
        self.bodies.contains_key(&id)
    }

    /// Counts for inspection: sessions, subscriptions, deliveries, inbound ids, bodies (for
    /// retained messages see [`Self::retained_count`]).
    pub fn counts(&self) -> [usize; 5] {
        let subs = self.sessions.values().map(|s| s.subscriptions.len()).sum();
        let deliveries = self.sessions.values().map(|s| s.deliveries.len()).sum();
        let inbound = self.sessions.values().map(|s| s.inbound.len()).sum();
        [
            self.sessions.len(),
            subs,
            deliveries,
            inbound,
            self.bodies.len(),
        ]
    }

    /// The largest message id seen (bodies, queue entries and retained messages of the log;
    /// retained messages of the store are counted by [`Self::visit_retained`]).
    pub fn max_message_id(&self) -> u64 {
        self.max_id
    }

    /// Calls `visit` for every retained message: those of the store that no later change
    /// replaced or deleted, then the changes not yet checkpointed. Blocking (a store scan).
    pub fn visit_retained(
        &self,
        store: &dyn Store,
        visit: &mut dyn FnMut(StoredMessage),
    ) -> Result<(), LoadError> {
        visit_retained(store, &self.retained, visit)
    }

    /// The retained changes not yet checkpointed, for [`visit_retained`] without the image.
    pub fn retained_overlay(&self) -> HashMap<String, Option<StoredMessage>> {
        self.retained.clone()
    }

    /// How many retained messages there are (store and log together). Blocking.
    pub fn retained_count(&self, store: &dyn Store) -> Result<usize, LoadError> {
        let mut n = 0;
        self.visit_retained(store, &mut |_| n += 1)?;
        Ok(n)
    }

    fn see_id(&mut self, id: u64) {
        self.max_id = self.max_id.max(id);
    }

    fn unref(&mut self, message_id: u64) {
        if let Some(body) = self.bodies.get_mut(&message_id) {
            body.refs = body.refs.saturating_sub(1);
            if body.refs == 0 {
                self.bodies.remove(&message_id);
                self.removed(Key::Message(message_id));
            }
        }
    }

    /// `key` (a body or a queue entry) now exists in the image and did not: a write is due,
    /// and the store does not hold the key unless a delete of an older value is pending.
    fn created(&mut self, key: Key) {
        if !self.dirty.contains(&key) {
            self.unstored.insert(key.clone());
        }
        self.dirty.insert(key);
    }

    /// `key` (a body or a queue entry) left the image: nothing to write if the store never
    /// had it, else its delete is due.
    fn removed(&mut self, key: Key) {
        if self.unstored.remove(&key) {
            self.dirty.remove(&key);
        } else {
            self.dirty.insert(key);
        }
    }

    /// Removes the delivery under `packet_id`, if it is of `message_id` (any message for the
    /// old `Dequeue`, which does not name one).
    fn dequeue(&mut self, client: String, packet_id: PacketId, message_id: Option<u64>) {
        let Some(s) = self.sessions.get_mut(&client) else {
            return;
        };
        let Some(d) = s.deliveries.get(&packet_id) else {
            return;
        };
        if message_id.is_some_and(|id| id != d.message_id) {
            return;
        }
        let gone = d.message_id;
        s.deliveries.remove(&packet_id);
        self.forget_outputs(&client, gone);
        self.removed(Key::Delivery(client, packet_id));
        self.unref(gone);
    }

    /// Drops a consumer's output marks of `message_id` (its delivery left the queue).
    fn forget_outputs(&mut self, client: &str, message_id: u64) {
        let Some(s) = self.sessions.get_mut(client) else {
            return;
        };
        let range = (message_id, 0)..=(message_id, u32::MAX);
        let outputs: Vec<_> = s.produced.range(range).copied().collect();
        for (m, i) in outputs {
            s.produced.remove(&(m, i));
            self.dirty.insert(Key::Produced(client.to_string(), m, i));
        }
    }

    fn remove_session(&mut self, client: &str) {
        let Some(s) = self.sessions.remove(client) else {
            return;
        };
        self.dirty.insert(Key::Session(client.to_string()));
        for filter in s.subscriptions.keys() {
            self.dirty
                .insert(Key::Subscription(client.to_string(), filter.clone()));
        }
        for (pid, d) in &s.deliveries {
            self.removed(Key::Delivery(client.to_string(), *pid));
            self.unref(d.message_id);
        }
        for pid in s.inbound.iter().chain(&s.refused) {
            self.dirty.insert(Key::Inbound(client.to_string(), *pid));
        }
        if s.will.is_some() {
            self.dirty.insert(Key::Will(client.to_string()));
        }
        if s.owner.is_some() {
            self.dirty.insert(Key::Owner(client.to_string()));
        }
        for (m, i) in &s.produced {
            self.dirty.insert(Key::Produced(client.to_string(), *m, *i));
        }
    }

    /// Applies one record. Records about a session the image does not hold are ignored (the
    /// session ended); a delivery of an unknown message is counted as an inconsistency.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Session(r) => {
                let client = r.client.clone();
                self.dirty.insert(Key::Session(client.clone()));
                self.sessions.entry(client).or_default().record = Some(r);
            }
            Record::SessionRemove { client } => self.remove_session(&client),
            Record::Message(m) => self.apply_message(m),
            Record::Enqueue {
                client,
                packet_id,
                message_id,
                qos,
                retain,
                subscription_ids,
                shared_group,
            } => {
                let d = StoredDelivery {
                    order: 0,
                    message_id,
                    qos,
                    retain,
                    subscription_ids,
                    shared_group,
                    awaiting_pubcomp: false,
                    expires_at_ms: None,
                };
                self.apply_enqueue(client, packet_id, d)
            }
            Record::Dequeue { client, packet_id } => self.dequeue(client, packet_id, None),
            Record::DequeueMessage {
                client,
                packet_id,
                message_id,
            } => self.dequeue(client, packet_id, Some(message_id)),
            Record::RetainSet(m) => {
                self.see_id(m.id);
                self.dirty.insert(Key::Retained(m.topic.clone()));
                self.retained.insert(m.topic.clone(), Some(m));
            }
            Record::RetainDelete { topic } => {
                // The store may hold it: the deletion is written whatever memory holds.
                self.dirty.insert(Key::Retained(topic.clone()));
                self.retained.insert(topic, None);
            }
            other => self.apply_to_session(other),
        }
    }

    /// A message body; one known already (in memory, or written by a checkpoint) stays as it
    /// is.
    fn apply_message(&mut self, m: StoredMessage) {
        let id = m.id;
        self.see_id(id);
        if let std::collections::hash_map::Entry::Vacant(v) = self.bodies.entry(id) {
            v.insert(Body {
                message: Some(Box::new(m)),
                refs: 0,
            });
            self.created(Key::Message(id));
            self.new_bodies.push(id);
        }
    }

    /// A delivery queued under `packet_id` (its order and expiry filled in here); a delivery
    /// it replaces is released with its output marks.
    fn apply_enqueue(&mut self, client: String, packet_id: PacketId, mut d: StoredDelivery) {
        let message_id = d.message_id;
        self.see_id(message_id);
        let Some(s) = self.sessions.get_mut(&client) else {
            return;
        };
        let Some(body) = self.bodies.get_mut(&message_id) else {
            self.inconsistencies += 1;
            return;
        };
        body.refs += 1;
        s.next_order += 1;
        d.order = s.next_order;
        d.expires_at_ms = body.message.as_ref().and_then(|m| m.expires_at_ms);
        let replaced = s.deliveries.insert(packet_id, d).map(|old| old.message_id);
        if let Some(old) = replaced {
            self.forget_outputs(&client, old);
            // Replaced in place: stored or not, as the entry it replaces.
            self.dirty.insert(Key::Delivery(client, packet_id));
        } else {
            self.created(Key::Delivery(client, packet_id));
        }
        if let Some(old) = replaced {
            self.unref(old);
        }
    }

    /// The records that change one held session's subscriptions, QoS 2 states, will, owner or
    /// output marks (nothing if the image does not hold the session).
    fn apply_to_session(&mut self, record: Record) {
        let key = match record {
            Record::Subscribe {
                client,
                filter,
                subscription,
            } => {
                let Some(s) = self.sessions.get_mut(&client) else {
                    return;
                };
                s.subscriptions.insert(filter.clone(), subscription);
                Key::Subscription(client, filter)
            }
            Record::Unsubscribe { client, filter } => {
                let Some(s) = self.sessions.get_mut(&client) else {
                    return;
                };
                if s.subscriptions.remove(&filter).is_none() {
                    return;
                }
                Key::Subscription(client, filter)
            }
            Record::PubRec { client, packet_id } => {
                let Some(d) = self
                    .sessions
                    .get_mut(&client)
                    .and_then(|s| s.deliveries.get_mut(&packet_id))
                else {
                    return;
                };
                d.awaiting_pubcomp = true;
                Key::Delivery(client, packet_id)
            }
            other => return self.apply_session_state(other),
        };
        self.dirty.insert(key);
    }

    /// Inbound QoS 2 ids, the waiting will, the owner, output marks (of a session the image
    /// has; a record for another changes nothing).
    fn apply_session_state(&mut self, record: Record) {
        let key = match record {
            Record::InboundQos2 { client, packet_id } => {
                self.apply_inbound(client, packet_id, Inbound::Received)
            }
            Record::InboundRefused { client, packet_id } => {
                self.apply_inbound(client, packet_id, Inbound::Refused)
            }
            Record::InboundRelease { client, packet_id } => {
                self.apply_inbound(client, packet_id, Inbound::Released)
            }
            Record::WillSet { client, will } => self
                .sessions
                .get_mut(&client)
                .map(|s| s.will = Some(will))
                .map(|_| Key::Will(client)),
            Record::WillClear { client } => self
                .sessions
                .get_mut(&client)
                .and_then(|s| s.will.take())
                .map(|_| Key::Will(client)),
            Record::SessionOwner { client, username } => self
                .sessions
                .get_mut(&client)
                .map(|s| s.owner = Some(username))
                .map(|_| Key::Owner(client)),
            Record::Produced {
                client,
                message_id,
                index,
            } => self
                .sessions
                .get_mut(&client)
                .map(|s| s.produced.insert((message_id, index)))
                .map(|_| Key::Produced(client, message_id, index)),
            // Applied by `apply` and `apply_to_session` (listed so that a new record type
            // must be placed).
            Record::Session(_)
            | Record::SessionRemove { .. }
            | Record::Message(_)
            | Record::Enqueue { .. }
            | Record::Dequeue { .. }
            | Record::DequeueMessage { .. }
            | Record::RetainSet(_)
            | Record::RetainDelete { .. }
            | Record::Subscribe { .. }
            | Record::Unsubscribe { .. }
            | Record::PubRec { .. } => None,
        };
        if let Some(key) = key {
            self.dirty.insert(key);
        }
    }

    /// An inbound QoS 2 id received (awaits PUBREL), refused (PUBREC 0x80) or released; the
    /// key to write, if anything changed.
    fn apply_inbound(&mut self, client: String, packet_id: u16, change: Inbound) -> Option<Key> {
        let s = self.sessions.get_mut(&client)?;
        let changed = match change {
            Inbound::Received => {
                s.refused.remove(&packet_id);
                s.inbound.insert(packet_id);
                true
            }
            Inbound::Refused => {
                s.inbound.remove(&packet_id);
                s.refused.insert(packet_id);
                true
            }
            Inbound::Released => s.inbound.remove(&packet_id),
        };
        changed.then_some(Key::Inbound(client, packet_id))
    }

    /// A canonical listing of the whole state, for comparing two images in tests.
    /// Bodies are read from `store` where only it holds them. Blocking.
    pub fn canonical(&self, store: &dyn Store) -> Vec<String> {
        let mut out = Vec::new();
        for (c, s) in &self.sessions {
            out.push(format!("session {c} {:?}", s.record));
            for (f, sub) in &s.subscriptions {
                out.push(format!("sub {c} {f} {sub:?}"));
            }
            // Queue order by rank: the counter behind `order` restarts from the highest stored
            // value after a checkpoint, so only the relative order is state.
            let mut ds: Vec<_> = s.deliveries.iter().collect();
            ds.sort_by_key(|(_, d)| d.order);
            for (rank, (pid, d)) in ds.into_iter().enumerate() {
                let d = StoredDelivery {
                    order: rank as u64,
                    ..(*d).clone()
                };
                out.push(format!("delivery {c} {pid} {d:?}"));
            }
            for pid in &s.inbound {
                out.push(format!("inbound {c} {pid}"));
            }
            for pid in &s.refused {
                out.push(format!("refused {c} {pid}"));
            }
            if let Some(w) = &s.will {
                out.push(format!("will {c} {w:?}"));
            }
            if let Some(o) = &s.owner {
                out.push(format!("owner {c} {o:?}"));
            }
            for (m, i) in &s.produced {
                out.push(format!("produced {c} {m} {i}"));
            }
        }
        for (id, b) in &self.bodies {
            let message = match &b.message {
                Some(m) => Some((**m).clone()),
                None => store
                    .get_many(Table::Messages, &[id.to_be_bytes().to_vec()])
                    .ok()
                    .and_then(|mut v| v.pop().flatten())
                    .and_then(|v| decode_value::<StoredMessage>(&v).ok()),
            };
            out.push(format!("body {id} refs {} {message:?}", b.refs));
        }
        let mut retained = Vec::new();
        if let Err(e) = self.visit_retained(store, &mut |m| retained.push(m)) {
            out.push(format!("retained unreadable: {e}"));
        }
        for m in retained {
            out.push(format!("retained {} {m:?}", m.topic));
        }
        out.sort();
        out
    }

    /// How many keys changed since the last [`Self::take_changes`].
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Whether anything changed since the last [`Self::take_changes`].
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The current value (or deletion) of every key changed since the last call, for a
    /// checkpoint. On a failed checkpoint, give the changes back with [`Self::restore_dirty`].
    pub fn take_changes(&mut self) -> Vec<Change> {
        // Bodies no delivery refers to (every target session ended) are dropped here, so they
        // never reach the store. Only bodies added since the last checkpoint can be such.
        for id in std::mem::take(&mut self.new_bodies) {
            if self.bodies.get(&id).is_some_and(|b| b.refs == 0) {
                self.bodies.remove(&id);
                self.removed(Key::Message(id));
            }
        }
        // What is taken now is in the store once this checkpoint is written (if it fails, the
        // keys are dirty again and a later removal writes a delete: harmless).
        self.unstored.clear();
        let dirty: Vec<Key> = self.dirty.drain().collect();
        let mut changes: Vec<Change> = dirty
            .into_iter()
            .filter_map(|k| self.change_for(k))
            .collect();
        // The id high-water mark, so that a restart knows it without reading every body and
        // retained message.
        changes.push(Change {
            table: Table::Meta,
            key: MAX_MESSAGE_ID_KEY.to_vec(),
            value: Some(self.max_id.to_le_bytes().to_vec()),
        });
        changes
    }

    /// A checkpoint of `changes` succeeded: the bodies and retained messages it wrote leave
    /// memory unless they changed again since (the store is their copy now).
    pub fn checkpointed(&mut self, changes: &[Change]) {
        for c in changes {
            match (c.table, &c.value) {
                (Table::Messages, Some(_)) => {
                    let Ok(id) = <[u8; 8]>::try_from(c.key.as_slice()).map(u64::from_be_bytes)
                    else {
                        continue;
                    };
                    if !self.dirty.contains(&Key::Message(id)) {
                        if let Some(b) = self.bodies.get_mut(&id) {
                            b.message = None;
                        }
                    }
                }
                (Table::Retained, _) => {
                    let Ok(topic) = std::str::from_utf8(&c.key) else {
                        continue;
                    };
                    if !self.dirty.contains(&Key::Retained(topic.to_string())) {
                        self.retained.remove(topic);
                    }
                }
                _ => {}
            }
        }
    }

    /// Marks every key of `changes` dirty again (their checkpoint failed).
    pub fn restore_dirty(&mut self, changes: &[Change]) {
        for c in changes {
            if let Some(k) = Self::key_of(c.table, &c.key) {
                self.dirty.insert(k);
            }
        }
    }

    fn key_of(table: Table, key: &[u8]) -> Option<Key> {
        let pid = |rest: &[u8]| Some(u16::from_be_bytes(rest.try_into().ok()?));
        Some(match table {
            Table::Sessions => Key::Session(String::from_utf8(key.to_vec()).ok()?),
            Table::Subscriptions => {
                let (c, f) = split_client_key(key)?;
                Key::Subscription(c, String::from_utf8(f.to_vec()).ok()?)
            }
            Table::Messages => Key::Message(u64::from_be_bytes(key.try_into().ok()?)),
            Table::Queues => {
                let (c, rest) = split_client_key(key)?;
                Key::Delivery(c, delivery_id(rest)?)
            }
            Table::Inbound => {
                let (c, rest) = split_client_key(key)?;
                Key::Inbound(c, pid(rest)?)
            }
            Table::Retained => Key::Retained(String::from_utf8(key.to_vec()).ok()?),
            Table::Meta => match key.strip_prefix(WILL_KEY_PREFIX) {
                Some(c) => Key::Will(String::from_utf8(c.to_vec()).ok()?),
                None => match key.strip_prefix(PRODUCED_KEY_PREFIX) {
                    Some(rest) => {
                        let (c, m, i) = split_produced_key(rest)?;
                        Key::Produced(c, m, i)
                    }
                    None => Key::Owner(
                        String::from_utf8(key.strip_prefix(OWNER_KEY_PREFIX)?.to_vec()).ok()?,
                    ),
                },
            },
        })
    }

    /// The change to write for a dirty key (`None` if there is nothing to write: a body only
    /// the store holds).
    fn change_for(&self, key: Key) -> Option<Change> {
        Some(match key {
            Key::Session(c) => Change {
                table: Table::Sessions,
                value: self
                    .sessions
                    .get(&c)
                    .and_then(|s| s.record.as_ref())
                    .map(encode_value),
                key: c.into_bytes(),
            },
            Key::Subscription(c, f) => Change {
                table: Table::Subscriptions,
                value: self
                    .sessions
                    .get(&c)
                    .and_then(|s| s.subscriptions.get(&f))
                    .map(encode_value),
                key: client_key(&c, f.as_bytes()),
            },
            Key::Message(id) => Change {
                table: Table::Messages,
                value: match self.bodies.get(&id) {
                    Some(b) => Some(encode_value(b.message.as_deref()?)),
                    None => None,
                },
                key: id.to_be_bytes().to_vec(),
            },
            Key::Delivery(c, pid) => Change {
                table: Table::Queues,
                value: self
                    .sessions
                    .get(&c)
                    .and_then(|s| s.deliveries.get(&pid))
                    .map(encode_delivery),
                key: client_key(&c, &delivery_id_bytes(pid)),
            },
            Key::Inbound(c, pid) => Change {
                table: Table::Inbound,
                value: self.sessions.get(&c).and_then(|s| {
                    match (s.inbound.contains(&pid), s.refused.contains(&pid)) {
                        (true, _) => Some(vec![VALUE_V1]),
                        (false, true) => Some(vec![VALUE_V1, REFUSED]),
                        (false, false) => None,
                    }
                }),
                key: client_key(&c, &pid.to_be_bytes()),
            },
            Key::Retained(t) => Change {
                table: Table::Retained,
                value: self.retained.get(&t)?.as_ref().map(encode_value),
                key: t.into_bytes(),
            },
            key @ (Key::Will(_) | Key::Produced(..) | Key::Owner(_)) => {
                self.meta_change_for(key)?
            }
        })
    }

    /// [`Self::change_for`] of the keys kept in the meta table: waiting wills, output marks,
    /// owners.
    fn meta_change_for(&self, key: Key) -> Option<Change> {
        Some(match key {
            Key::Will(c) => Change {
                table: Table::Meta,
                value: self
                    .sessions
                    .get(&c)
                    .and_then(|s| s.will.as_ref())
                    .map(encode_value),
                key: [WILL_KEY_PREFIX, c.as_bytes()].concat(),
            },
            Key::Produced(c, m, i) => Change {
                table: Table::Meta,
                value: self
                    .sessions
                    .get(&c)
                    .filter(|s| s.produced.contains(&(m, i)))
                    .map(|_| vec![VALUE_V1]),
                key: produced_key(&c, m, i),
            },
            Key::Owner(c) => Change {
                table: Table::Meta,
                value: self
                    .sessions
                    .get(&c)
                    .and_then(|s| s.owner.as_ref())
                    .map(encode_value),
                key: [OWNER_KEY_PREFIX, c.as_bytes()].concat(),
            },
            _ => return None,
        })
    }

    /// Loads the image from a checkpoint. Any key or value that does not decode is an error
    /// naming the table and key: corrupt state is never skipped silently.
    pub fn load(store: &dyn Store) -> Result<Image, LoadError> {
        let mut image = Image {
            max_id: load_max_id(store)?,
            ..Image::default()
        };
        let sessions = &mut image.sessions;
        let scan = |table, visit: &mut keelmq_storage::Visitor<'_>| scan(store, table, visit);
        scan(Table::Sessions, &mut |k, v| {
            let r = decode_value::<SessionRecord>(v).map_err(|e| corrupt(Table::Sessions, k, e))?;
            let client = r.client.clone();
            sessions.entry(client).or_default().record = Some(r);
            Ok(())
        })?;
        scan(Table::Subscriptions, &mut |k, v| {
            let sub = decode_value::<StoredSubscription>(v)
                .map_err(|e| corrupt(Table::Subscriptions, k, e))?;
            let (c, f) =
                split_client_key(k).ok_or_else(|| corrupt(Table::Subscriptions, k, "bad key"))?;
            let f =
                String::from_utf8(f.to_vec()).map_err(|e| corrupt(Table::Subscriptions, k, e))?;
            sessions.entry(c).or_default().subscriptions.insert(f, sub);
            Ok(())
        })?;
        // Bodies stay in the store (paged in when their session resumes): only their reference
        // counts are rebuilt, from the queue entries.
        let bodies = &mut image.bodies;
        let max_id = &mut image.max_id;
        scan(Table::Queues, &mut |k, v| {
            let d = decode_delivery(v).map_err(|e| corrupt(Table::Queues, k, e))?;
            let (s, pid) = session_of(sessions, k)
                .and_then(|(s, rest)| Some((s, delivery_id(rest)?)))
                .ok_or_else(|| corrupt(Table::Queues, k, "bad key"))?;
            let body = bodies.entry(d.message_id).or_insert(Body {
                message: None,
                refs: 0,
            });
            body.refs += 1;
            *max_id = (*max_id).max(d.message_id);
            s.next_order = s.next_order.max(d.order);
            s.deliveries.insert(pid, d);
            Ok(())
        })?;
        scan(Table::Inbound, &mut |k, v| {
            let (s, pid) = session_of(sessions, k)
                .and_then(|(s, rest)| Some((s, u16::from_be_bytes(rest.try_into().ok()?))))
                .ok_or_else(|| corrupt(Table::Inbound, k, "bad key"))?;
            match v.get(1) {
                Some(&REFUSED) => s.refused.insert(pid),
                _ => s.inbound.insert(pid),
            };
            Ok(())
        })?;
        load_meta(store, &mut image)?;
        if let Some(c) = image
            .sessions
            .iter()
            .find(|(_, s)| s.record.is_none())
            .map(|(c, _)| c)
        {
            return Err(LoadError {
                table: "sessions",
                what: format!("state for client {c:?} without a session record"),
            });
        }
        Ok(image)
    }
}

/// Calls `visit` for every retained message of `store` that `overlay` (changes not yet
/// checkpointed) does not replace or delete, then for every message of `overlay`. Blocking.
pub fn visit_retained(
    store: &dyn Store,
    overlay: &HashMap<String, Option<StoredMessage>>,
    visit: &mut dyn FnMut(StoredMessage),
) -> Result<(), LoadError> {
    store
        .scan(Table::Retained, &mut |k, v| {
            let topic = String::from_utf8_lossy(k);
            if overlay.contains_key(topic.as_ref()) {
                return Ok(());
            }
            let m =
                decode_value::<StoredMessage>(v).map_err(|e| keelmq_storage::Error::Corrupt {
                    path: std::path::PathBuf::from(Table::Retained.name()),
                    what: format!("key {topic:?}: {e}"),
                })?;
            visit(m);
            Ok(())
        })
        .map_err(|e| LoadError {
            table: Table::Retained.name(),
            what: e.to_string(),
        })?;
    for m in overlay.values().flatten() {
        visit(m.clone());
    }
    Ok(())
}

/// Meta key of the largest message id any checkpoint covered (u64 LE).
pub const MAX_MESSAGE_ID_KEY: &[u8] = b"max_message_id";
/// Prefix of the `meta` keys that hold waiting wills (the client id follows).
pub const WILL_KEY_PREFIX: &[u8] = b"will/";

/// The meta-table key prefix of a session's owner (then the client id).
pub const OWNER_KEY_PREFIX: &[u8] = b"owner/";

/// The meta-table key prefix of a consumer's published outputs (see [`Record::Produced`]).
pub const PRODUCED_KEY_PREFIX: &[u8] = b"produced/";

fn produced_key(client: &str, message_id: u64, index: u32) -> Vec<u8> {
    let mut rest = [0u8; 12];
    rest[..8].copy_from_slice(&message_id.to_be_bytes());
    rest[8..].copy_from_slice(&index.to_be_bytes());
    [PRODUCED_KEY_PREFIX, &client_key(client, &rest)].concat()
}

/// (client, message id, index) of a produced key without its prefix.
fn split_produced_key(rest: &[u8]) -> Option<(String, u64, u32)> {
    let (client, ids) = split_client_key(rest)?;
    let m = u64::from_be_bytes(ids.get(..8)?.try_into().ok()?);
    let i = u32::from_be_bytes(ids.get(8..)?.try_into().ok()?);
    Some((client, m, i))
}

/// A checkpoint entry that does not decode.
/// A value or key of the store that does not decode.
fn corrupt(table: Table, key: &[u8], what: impl ToString) -> keelmq_storage::Error {
    keelmq_storage::Error::Corrupt {
        path: std::path::PathBuf::from(table.name()),
        what: format!(
            "key {:?}: {}",
            String::from_utf8_lossy(key),
            what.to_string()
        ),
    }
}

/// Scans `table`, naming it in the error.
fn scan(
    store: &dyn Store,
    table: Table,
    visit: &mut keelmq_storage::Visitor<'_>,
) -> Result<(), LoadError> {
    store.scan(table, visit).map_err(|e| LoadError {
        table: table.name(),
        what: e.to_string(),
    })
}

/// The session of a client-prefixed key, without allocating when it exists already, and the
/// rest of the key.
fn session_of<'a, 'k>(
    sessions: &'a mut HashMap<String, SessionImage>,
    key: &'k [u8],
) -> Option<(&'a mut SessionImage, &'k [u8])> {
    let len = u16::from_be_bytes([*key.first()?, *key.get(1)?]) as usize;
    let client = std::str::from_utf8(key.get(2..2 + len)?).ok()?;
    let rest = key.get(2 + len..)?;
    if !sessions.contains_key(client) {
        sessions.insert(client.to_string(), SessionImage::default());
    }
    Some((sessions.get_mut(client)?, rest))
}

/// A queue key's packet id: two bytes up to 65,535 (the only form before ids could be
/// larger), four beyond.
fn delivery_id_bytes(pid: PacketId) -> Vec<u8> {
    match u16::try_from(pid) {
        Ok(short) => short.to_be_bytes().to_vec(),
        Err(_) => pid.to_be_bytes().to_vec(),
    }
}

/// The packet id [`delivery_id_bytes`] wrote.
fn delivery_id(rest: &[u8]) -> Option<PacketId> {
    match rest.len() {
        2 => Some(PacketId::from(u16::from_be_bytes(rest.try_into().ok()?))),
        4 => Some(PacketId::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// The largest message id: stored in the meta table, or found the slow way (once) in a store
/// written by an older version.
fn load_max_id(store: &dyn Store) -> Result<u64, LoadError> {
    let meta = |e: keelmq_storage::Error| LoadError {
        table: Table::Meta.name(),
        what: e.to_string(),
    };
    let stored = store
        .get_many(Table::Meta, &[MAX_MESSAGE_ID_KEY.to_vec()])
        .map_err(meta)?
        .pop()
        .flatten();
    if let Some(v) = stored {
        let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| LoadError {
            table: Table::Meta.name(),
            what: format!("max_message_id has {} bytes, expected 8", v.len()),
        })?;
        return Ok(u64::from_le_bytes(bytes));
    }
    let mut max = 0;
    visit_retained(store, &HashMap::new(), &mut |m| max = max.max(m.id))?;
    scan(store, Table::Messages, &mut |k, _| {
        if let Ok(id) = <[u8; 8]>::try_from(k) {
            max = max.max(u64::from_be_bytes(id));
        }
        Ok(())
    })?;
    Ok(max)
}

/// The meta table's per-session values: waiting wills and owners. A will of an earlier
/// disconnect (left by a build that did not log wills) or a value of a session that no longer
/// exists is dropped, and deleted by the next checkpoint.
fn load_meta(store: &dyn Store, image: &mut Image) -> Result<(), LoadError> {
    let sessions = &mut image.sessions;
    let mut stale = Vec::new();
    scan(store, Table::Meta, &mut |k, v| {
        if let Some(rest) = k.strip_prefix(PRODUCED_KEY_PREFIX) {
            let (client, m, i) =
                split_produced_key(rest).ok_or_else(|| corrupt(Table::Meta, k, "bad key"))?;
            match sessions.get_mut(&client) {
                Some(s) => {
                    s.produced.insert((m, i));
                }
                None => stale.push(Key::Produced(client, m, i)),
            }
            return Ok(());
        }
        if let Some(client) = k.strip_prefix(OWNER_KEY_PREFIX) {
            let client = std::str::from_utf8(client).map_err(|e| corrupt(Table::Meta, k, e))?;
            let owner =
                decode_value::<Option<String>>(v).map_err(|e| corrupt(Table::Meta, k, e))?;
            match sessions.get_mut(client) {
                Some(s) => s.owner = Some(owner),
                None => stale.push(Key::Owner(client.to_string())),
            }
            return Ok(());
        }
        let Some(client) = k.strip_prefix(WILL_KEY_PREFIX) else {
            return Ok(()); // max_message_id, applied_seq
        };
        let client = std::str::from_utf8(client).map_err(|e| corrupt(Table::Meta, k, e))?;
        let will = decode_value::<StoredWill>(v).map_err(|e| corrupt(Table::Meta, k, e))?;
        match sessions.get_mut(client) {
            Some(s)
                if s.record.as_ref().and_then(|r| r.disconnected_at_ms)
                    == Some(will.disconnected_at_ms) =>
            {
                s.will = Some(will);
            }
            _ => {
                tracing::warn!(
                    client,
                    "dropping a stored will that no longer belongs to its session"
                );
                stale.push(Key::Will(client.to_string()));
            }
        }
        Ok(())
    })?;
    image.dirty.extend(stale);
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("state store table {table}: {what}")]
pub struct LoadError {
    pub table: &'static str,
    pub what: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelmq_storage::MemStore;

    fn will(disconnected_at_ms: u64) -> StoredWill {
        StoredWill {
            topic: "gone".into(),
            payload: b"x".to_vec(),
            qos: 1,
            retain: false,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
            due_at_ms: disconnected_at_ms + 5000,
            disconnected_at_ms,
        }
    }

    fn session(client: &str, disconnected_at_ms: Option<u64>) -> Record {
        Record::Session(SessionRecord {
            client: client.into(),
            protocol: 5,
            expiry_interval: 600,
            disconnected_at_ms,
        })
    }

    #[test]
    fn a_stored_will_is_loaded_only_with_the_disconnect_it_belongs_to() {
        let store = MemStore::new();
        let mut image = Image::default();
        for r in [
            session("current", Some(1000)),
            Record::WillSet {
                client: "current".into(),
                will: will(1000),
            },
            session("resumed", Some(1000)),
            Record::WillSet {
                client: "resumed".into(),
                will: will(1000),
            },
        ] {
            image.apply(r);
        }
        store.write_checkpoint(image.take_changes(), 1).unwrap();
        // What a build that does not log wills leaves: the session resumed and disconnected
        // again, and the old will is still stored.
        let mut old_build = Image::default();
        old_build.apply(session("resumed", Some(2000)));
        let changes: Vec<Change> = old_build
            .take_changes()
            .into_iter()
            .filter(|c| c.table == Table::Sessions)
            .collect();
        store.write_checkpoint(changes, 2).unwrap();

        let mut loaded = Image::load(&store).unwrap();
        assert_eq!(loaded.sessions["current"].will, Some(will(1000)));
        assert_eq!(loaded.sessions["resumed"].will, None, "stale will dropped");
        // ...and deleted by the next checkpoint.
        let deletion = loaded
            .take_changes()
            .into_iter()
            .find(|c| c.table == Table::Meta && c.key == b"will/resumed");
        assert_eq!(deletion.map(|c| c.value), Some(None));
    }

    fn body(id: u64) -> Record {
        Record::Message(StoredMessage {
            id,
            topic: "t".into(),
            payload: vec![1],
            qos: 2,
            retain: false,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
            expires_at_ms: None,
            publisher: None,
        })
    }

    fn enqueue(packet_id: PacketId, message_id: u64) -> Record {
        Record::Enqueue {
            client: "sub".into(),
            packet_id,
            message_id,
            qos: 2,
            retain: false,
            subscription_ids: vec![],
            shared_group: None,
        }
    }

    fn dequeue(packet_id: PacketId, message_id: u64) -> Record {
        Record::DequeueMessage {
            client: "sub".into(),
            packet_id,
            message_id,
        }
    }

    fn produced(message_id: u64, index: u32) -> Record {
        Record::Produced {
            client: "sub".into(),
            message_id,
            index,
        }
    }

    /// Packet ids above 65,535 (a broker-internal reader's) survive a checkpoint and a reload
    /// next to ordinary ones (keys of four bytes and of two), and leave with their dequeue;
    /// a log written when ids were u16 reads the same (postcard writes both as a varint).
    #[test]
    fn wide_packet_ids_round_trip_through_the_store() {
        assert_eq!(
            postcard::to_allocvec(&65_535u16).unwrap(),
            postcard::to_allocvec(&65_535u32).unwrap()
        );
        let store = MemStore::new();
        let mut image = Image::default();
        for r in [
            session("sub", None),
            body(1),
            enqueue(9, 1),
            body(2),
            enqueue(70_000, 2),
        ] {
            image.apply(r);
        }
        store.write_checkpoint(image.take_changes(), 5).unwrap();
        let mut loaded = Image::load(&store).unwrap();
        let ids = |i: &Image| {
            let mut ids: Vec<PacketId> = i.sessions["sub"].deliveries.keys().copied().collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&loaded), [9, 70_000]);
        assert_eq!(loaded.sessions["sub"].deliveries[&70_000].message_id, 2);
        loaded.apply(dequeue(70_000, 2));
        store.write_checkpoint(loaded.take_changes(), 6).unwrap();
        assert_eq!(ids(&Image::load(&store).unwrap()), [9]);
    }

    /// A message queued and dequeued between two checkpoints costs the next one nothing (no
    /// write, no delete of what the store never had); one the store has is deleted; a queue
    /// entry whose stored predecessor left and whose packet id came back is written over it.
    /// The store ends as a reload of every step would see it.
    #[test]
    fn entries_created_and_removed_between_checkpoints_are_not_written() {
        let store = MemStore::new();
        let mut image = Image::default();
        for r in [session("sub", None), body(1), enqueue(1, 1)] {
            image.apply(r);
        }
        store.write_checkpoint(image.take_changes(), 3).unwrap();
        for r in [body(2), enqueue(2, 2), dequeue(2, 2)] {
            image.apply(r);
        }
        let keys = |changes: &[Change]| -> Vec<(Table, bool)> {
            let mut k: Vec<_> = changes
                .iter()
                .map(|c| (c.table, c.value.is_some()))
                .collect();
            k.sort_by_key(|(t, v)| (format!("{t:?}"), *v));
            k
        };
        let transient = image.take_changes();
        assert_eq!(
            keys(&transient),
            [(Table::Meta, true)],
            "only the id high-water mark"
        );
        store.write_checkpoint(transient, 6).unwrap();
        // The stored entry leaves and its packet id is taken by a new message: one write of
        // the entry over the stored one, one write of the new body, one delete of the old.
        for r in [dequeue(1, 1), body(3), enqueue(1, 3)] {
            image.apply(r);
        }
        let changes = image.take_changes();
        assert_eq!(
            keys(&changes),
            [
                (Table::Messages, false),
                (Table::Messages, true),
                (Table::Meta, true),
                (Table::Queues, true)
            ]
        );
        store.write_checkpoint(changes, 9).unwrap();
        let loaded = Image::load(&store).unwrap();
        let d = &loaded.sessions["sub"].deliveries;
        assert_eq!((d.len(), d[&1].message_id), (1, 3));
        assert!(store
            .get_many(Table::Messages, &[1u64.to_be_bytes().to_vec()])
            .unwrap()[0]
            .is_none());
        // A stored entry removed and not replaced is deleted.
        image.apply(dequeue(1, 3));
        let gone = image.take_changes();
        assert!(gone
            .iter()
            .any(|c| c.table == Table::Queues && c.value.is_none()));
        assert!(gone
            .iter()
            .any(|c| c.table == Table::Messages && c.value.is_none()));
    }

    /// An inbound id answered PUBREC 0x80 is kept as refused (not awaiting PUBREL) across a
    /// checkpoint and a reload, until a new message takes the id again.
    #[test]
    fn refused_inbound_ids_survive_a_checkpoint_until_reused() {
        let store = MemStore::new();
        let mut image = Image::default();
        let refused = |packet_id| Record::InboundRefused {
            client: "sub".into(),
            packet_id,
        };
        let received = |packet_id| Record::InboundQos2 {
            client: "sub".into(),
            packet_id,
        };
        for r in [session("sub", None), received(4), received(5), refused(4)] {
            image.apply(r);
        }
        store.write_checkpoint(image.take_changes(), 4).unwrap();
        let mut loaded = Image::load(&store).unwrap();
        let ids = |i: &Image| {
            let s = &i.sessions["sub"];
            (s.inbound.clone(), s.refused.clone())
        };
        assert_eq!(ids(&loaded), ([5].into(), [4].into()));
        loaded.apply(received(4));
        store.write_checkpoint(loaded.take_changes(), 5).unwrap();
        assert_eq!(
            ids(&Image::load(&store).unwrap()),
            ([4, 5].into(), [].into())
        );
    }

    /// A consumer's output marks survive a checkpoint and a restart while their delivery is
    /// queued, and go (from memory and from the store) with its `DequeueMessage`.
    #[test]
    fn output_marks_last_as_long_as_their_delivery() {
        let store = MemStore::new();
        let mut image = Image::default();
        for r in [
            session("sub", None),
            body(1),
            enqueue(3, 1),
            body(2),
            enqueue(4, 2),
            produced(1, 1),
            produced(1, 2),
            produced(2, 1),
        ] {
            image.apply(r);
        }
        store.write_checkpoint(image.take_changes(), 8).unwrap();
        let mut loaded = Image::load(&store).unwrap();
        let marks = |i: &Image| {
            i.sessions["sub"]
                .produced
                .iter()
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(marks(&loaded), [(1, 1), (1, 2), (2, 1)]);
        loaded.apply(dequeue(3, 1));
        assert_eq!(marks(&loaded), [(2, 1)]);
        store.write_checkpoint(loaded.take_changes(), 9).unwrap();
        let reloaded = Image::load(&store).unwrap();
        assert_eq!(marks(&reloaded), [(2, 1)]);
        assert_eq!(reloaded.canonical(&store), loaded.canonical(&store));
        // The session's end deletes its marks from the store.
        let mut after = reloaded;
        after.apply(Record::SessionRemove {
            client: "sub".into(),
        });
        store.write_checkpoint(after.take_changes(), 11).unwrap();
        assert!(Image::load(&store).unwrap().sessions.is_empty());
    }

    /// A subscriber completes message 1 under packet id 7 and a publish at once takes the freed
    /// id for message 2: the new delivery's `Enqueue` may reach the log before the old one's
    /// `Dequeue` (each is logged after the session lock is released). Replayed in that order,
    /// message 2 stays queued, in memory and after a checkpoint and a restart.
    #[test]
    fn a_late_dequeue_leaves_the_delivery_that_reused_its_packet_id() {
        let store = MemStore::new();
        let mut image = Image::default();
        for r in [
            session("sub", None),
            body(1),
            enqueue(7, 1),
            body(2),
            enqueue(7, 2),
            dequeue(7, 1),
        ] {
            image.apply(r);
        }
        let queued = |image: &Image| {
            let d = image.sessions["sub"].deliveries.get(&7);
            d.map(|d| d.message_id)
        };
        assert_eq!(queued(&image), Some(2));
        assert!(image.has_message(2));
        assert!(!image.has_message(1), "message 1 is no longer referenced");
        store.write_checkpoint(image.take_changes(), 6).unwrap();
        let mut loaded = Image::load(&store).unwrap();
        assert_eq!(queued(&loaded), Some(2));
        // Its own Dequeue removes it; the old record (no message named) removes any.
        loaded.apply(dequeue(7, 2));
        assert_eq!(queued(&loaded), None);
        loaded.apply(body(3));
        loaded.apply(enqueue(7, 3));
        assert_eq!(queued(&loaded), Some(3));
        loaded.apply(Record::Dequeue {
            client: "sub".into(),
            packet_id: 7,
        });
        assert_eq!(queued(&loaded), None);
    }
}
