//! Session in-flight bookkeeping: the per-message cost of the session state machine for an
//! outbound QoS 1 flow (reserve, commit, next_publish, on_puback) and QoS 2 flow (…, on_pubrec,
//! on_pubcomp) with a full in-flight window and a queue backlog, and of inbound QoS 2 packet
//! identifier tracking (inbound_qos2_is_new, inbound_qos2_received, inbound_pubrel).
//! Run with `cargo bench --bench session`.
//!
//! The session is driven as the broker drives it: routing reserves room and a packet identifier
//! and commits the delivery once it is durable; the connection takes the next PUBLISH when the
//! window has room; the client's acknowledgements complete the oldest deliveries in order. In a
//! QoS 2 flow the client's PUBRECs run half a window ahead of its PUBCOMPs, so that the window
//! holds both states as it does on a pipelined connection.
//!
//! An outbound iteration runs `MESSAGES_PER_ITERATION` messages through a session set up (outside
//! the timed section) with a full window and `BACKLOG` queued deliveries, so window and backlog
//! stay at their size throughout. Throughput is messages per second; divide the time of one
//! iteration by `MESSAGES_PER_ITERATION` for the cost of one message.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keelmq::codec::{ProtocolVersion, QoS};
use keelmq::session::{
    Delivery, Enqueued, Message, Outgoing, PubRecOutcome, Session, SessionLimits,
};
use tokio::time::Instant;

/// Messages completed per timed iteration of an outbound flow.
const MESSAGES_PER_ITERATION: usize = 1024;

/// Deliveries waiting in the queue behind the full window.
const BACKLOG: usize = 512;

/// In-flight windows measured: 64 is a typical Receive Maximum, 1024 shows how the cost grows
/// with the window.
const WINDOWS: [u16; 2] = [64, 1024];

/// The configuration defaults (`limits.max_queued_messages`, `limits.max_queued_bytes`).
const LIMITS: SessionLimits = SessionLimits {
    max_queued_messages: 1000,
    max_queued_bytes: 64 * 1024 * 1024,
};

fn delivery(qos: QoS) -> Delivery {
    let message = Message {
        id: 1,
        topic: "vehicles/4711/telemetry/speed".into(),
        payload: Bytes::from_static(&[0xA5; 64]),
        qos,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        publisher: Some("vehicle-4711".into()),
        rules: Default::default(),
    };
    Delivery {
        message: Arc::new(message),
        qos,
        retain: false,
        subscription_ids: Vec::new(),
        shared_group: None,
    }
}

/// A session with its client: the packet identifiers the client has received and not yet
/// acknowledged, as it would know them from the wire.
struct Flow {
    session: Session,
    /// QoS 1 PUBLISHes awaiting PUBACK, or QoS 2 PUBLISHes awaiting PUBREC, oldest first.
    awaiting_ack: VecDeque<keelmq::session::PacketId>,
    /// QoS 2 deliveries PUBRECed and awaiting PUBCOMP, oldest first.
    awaiting_comp: VecDeque<keelmq::session::PacketId>,
    delivery: Delivery,
    now: Instant,
}

impl Flow {
    /// A session with a full window of `window` deliveries and `BACKLOG` queued behind it.
    fn new(qos: QoS, window: u16) -> Flow {
        let mut session = Session::new("subscriber".into(), ProtocolVersion::V5, LIMITS);
        session.set_window(window);
        let capacity = usize::from(window) + 1;
        let mut flow = Flow {
            session,
            awaiting_ack: VecDeque::with_capacity(capacity),
            awaiting_comp: VecDeque::with_capacity(capacity),
            delivery: delivery(qos),
            now: Instant::now(),
        };
        // Fill the window one delivery at a time (it may exceed the queue limit), then the
        // backlog.
        for _ in 0..window {
            assert!(flow.route(), "set-up delivery queued");
            assert!(flow.send(), "set-up delivery sent");
        }
        for _ in 0..BACKLOG {
            assert!(flow.route(), "set-up delivery queued");
        }
        if qos == QoS::ExactlyOnce {
            for _ in 0..window / 2 {
                assert!(flow.pubrec(), "set-up PUBREC");
            }
        }
        assert_eq!(flow.session.inflight_len(), usize::from(window));
        assert_eq!(flow.session.queued_len(), BACKLOG);
        flow
    }

    /// Routing places a new delivery: reserve, then commit once it is durable.
    fn route(&mut self) -> bool {
        let d = &self.delivery;
        match self.session.reserve(d.qos, d.accounted_bytes(), true) {
            Enqueued::Queued(packet_id) => {
                self.session.commit(packet_id, d.clone());
                true
            }
            Enqueued::DroppedQos0 | Enqueued::Full => false,
        }
    }

    /// The connection sends the next queued delivery, if the window has room.
    fn send(&mut self) -> bool {
        match self.session.next_publish(self.now) {
            Some(Outgoing::Publish {
                packet_id,
                delivery,
                ..
            }) => {
                black_box(&delivery);
                self.awaiting_ack.push_back(packet_id);
                true
            }
            Some(Outgoing::PubRel { .. }) | None => false,
        }
    }

    /// The client PUBACKs the oldest QoS 1 PUBLISH.
    fn puback(&mut self) -> bool {
        let Some(packet_id) = self.awaiting_ack.pop_front() else {
            return false;
        };
        black_box(self.session.on_puback(packet_id)).is_ok()
    }

    /// The client PUBRECs the oldest QoS 2 PUBLISH; the broker answers PUBREL.
    fn pubrec(&mut self) -> bool {
        let Some(packet_id) = self.awaiting_ack.pop_front() else {
            return false;
        };
        self.awaiting_comp.push_back(packet_id);
        self.session.on_pubrec(packet_id, false) == PubRecOutcome::Release
    }

    /// The client PUBCOMPs the oldest PUBRELed delivery.
    fn pubcomp(&mut self) -> bool {
        let Some(packet_id) = self.awaiting_comp.pop_front() else {
            return false;
        };
        black_box(self.session.on_pubcomp(packet_id)).is_ok()
    }

    /// One message through a QoS 1 flow in steady state; returns whether every step succeeded.
    fn step_qos1(&mut self) -> bool {
        let routed = self.route();
        let acked = self.puback();
        let sent = self.send();
        routed && acked && sent
    }

    /// One message through a QoS 2 flow in steady state; returns whether every step succeeded.
    fn step_qos2(&mut self) -> bool {
        let routed = self.route();
        let released = self.pubrec();
        let completed = self.pubcomp();
        let sent = self.send();
        routed && released && completed && sent
    }

    /// Runs `MESSAGES_PER_ITERATION` messages; returns how many completed every step.
    fn run(&mut self, qos: QoS) -> usize {
        let mut ok = 0;
        for _ in 0..MESSAGES_PER_ITERATION {
            let done = if qos == QoS::AtLeastOnce {
                self.step_qos1()
            } else {
                self.step_qos2()
            };
            ok += usize::from(done);
        }
        ok
    }
}

fn bench_outbound(c: &mut Criterion) {
    for (name, qos) in [("qos1", QoS::AtLeastOnce), ("qos2", QoS::ExactlyOnce)] {
        let mut group = c.benchmark_group(format!("outbound_{name}"));
        group.throughput(Throughput::Elements(MESSAGES_PER_ITERATION as u64));
        for window in WINDOWS {
            // Check once, outside the measurement, that every step of every message succeeds
            // and that window and backlog keep their size.
            let mut check = Flow::new(qos, window);
            assert_eq!(
                check.run(qos),
                MESSAGES_PER_ITERATION,
                "{name} window {window}"
            );
            assert_eq!(check.session.inflight_len(), usize::from(window));
            assert_eq!(check.session.queued_len(), BACKLOG);

            let id = format!("window_{window}_backlog_{BACKLOG}");
            group.bench_function(id, |b| {
                b.iter_batched(
                    || Flow::new(qos, window),
                    |mut flow| {
                        black_box(flow.run(qos));
                        flow
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

fn bench_inbound_qos2(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbound_qos2");
    group.throughput(Throughput::Elements(1));
    for awaiting in [1u16, 64, 1024] {
        let mut session = Session::new("publisher".into(), ProtocolVersion::V5, LIMITS);
        // The publisher keeps `awaiting` identifiers between PUBREC and PUBREL.
        for packet_id in 1..=awaiting {
            session.inbound_qos2_received(packet_id);
        }
        let mut next: u16 = awaiting + 1;
        let id = format!("publish_pubrel/{awaiting}_awaiting_pubrel");
        group.bench_function(id, |b| {
            b.iter(|| {
                let packet_id = next;
                next = next.checked_add(1).unwrap_or(1);
                // PUBLISH: a new identifier is routed and PUBRECed.
                let new = session.inbound_qos2_is_new(packet_id);
                if new {
                    session.inbound_qos2_received(packet_id);
                }
                // PUBREL for the oldest identifier awaiting it.
                let oldest = match packet_id.checked_sub(awaiting) {
                    Some(0) | None => packet_id.wrapping_add(u16::MAX - awaiting),
                    Some(id) => id,
                };
                black_box((new, session.inbound_pubrel(oldest)))
            })
        });
        assert_eq!(session.inbound_awaiting_rel(), usize::from(awaiting));
    }
    group.finish();
}

criterion_group!(benches, bench_outbound, bench_inbound_qos2);
criterion_main!(benches);
