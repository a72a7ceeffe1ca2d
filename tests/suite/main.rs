//! The integration tests, as one test binary (each of these modules used to link the broker
//! and RocksDB into a binary of its own). One scenario per module; `common` holds the harness:
//! brokers in-process or as the real `keelmq` binary, a raw MQTT client, temporary directories.

mod common;

mod acl;
mod api;
mod auth;
mod auth_http;
mod auth_ldap;
mod bench_tool;
mod codec_props;
mod codec_vectors;
mod config_props;
mod crash_paho;
mod crash_recovery;
mod crash_torture;
mod dashboard;
mod hooks;
mod hostile_clients;
mod interop_mosquitto;
mod interop_paho;
mod interop_rumqttc;
mod jwt;
mod listeners;
mod local_client;
mod persistence_faults;
mod power_loss;
mod protocol;
mod proxy_props;
mod restart;
mod review_fixes;
mod rules;
mod rules_crash;
mod sinks;
mod sinks_crash;
mod smoke_binary;
mod verify_tool;
