//! Starting the server: the sockets bound, the HTTP side started, the replay floors read,
//! and the loop's state put together.

use super::api_calls::ApiCalls;
use super::clock_watch::ClockWatch;
use super::frames::{PreviousKeyPeers, RejectionLog};
use super::outage::ReopenDelay;
use super::space::SpaceCheck;
use super::{now_us, Server, Setup, MAX_BATCH};
use crate::config::BrokerConfig;
use crate::http::{CoreHandle, InternalRequest};
use crate::reload::LiveSettings;
use crate::replay_floors::ReplayFloors;
use crate::sockets::{Listeners, Settings};
use crate::store::Store;
use anyhow::{Context, Result};
use jobcast_core::Core;
use jobcast_protocol::envelope::Opener;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where the broker ended up listening (ports resolved when 0 was asked for).
#[derive(Debug, Clone)]
pub struct Bound {
    pub router: String,
    pub publish: String,
    pub http: Option<String>,
}

/// The HTTP side's task, to stop with the broker.
pub(super) type HttpTask = Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>;

impl Server {
    /// Binds everything, tells `on_bound` where, and returns the loop's state.
    pub(super) async fn start(
        replay_floors: ReplayFloors,
        role: crate::http::BrokerRole,
        setup: Setup<'_>,
        on_bound: impl FnOnce(&Bound) -> Result<()>,
    ) -> Result<(Server, HttpTask)> {
        let Setup {
            config,
            side,
            reloading,
        } = setup;
        let live_settings = LiveSettings::new(config);
        let listeners = Listeners::start(
            &Settings {
                router: config.router.clone(),
                publish: config.publish.clone(),
                max_frame_bytes: config.max_frame_bytes,
                peer_timeout: config.peer_timeout,
                keys: live_settings.keys.subscribe(),
            },
            side,
        )?;
        let (internal_tx, internal) = mpsc::channel::<InternalRequest>(1024);
        let live = crate::http::LiveFeed::new();
        let metrics = crate::metrics::Metrics::default();
        let (role, role_seen) = tokio::sync::watch::channel(role);
        // Bound and served on the side's runtime: its listener is watched by the side's
        // threads, and its tasks run there.
        let http = side
            .spawn(crate::http::start(
                config.clone(),
                CoreHandle::new(internal_tx),
                live.clone(),
                live_settings.api_tokens.subscribe(),
                metrics.clone(),
                role_seen,
            ))
            .await
            .context("the HTTP side's start failed")??;
        let bound = Bound {
            router: listeners.router_endpoint.clone(),
            publish: listeners.publish_endpoint.clone(),
            http: http.as_ref().map(|(addr, _)| addr.to_string()),
        };
        tracing::info!(router = %bound.router, publish = %bound.publish, "broker listening");
        // Frames sealed from here on are taken: a client told where the broker listens
        // (`on_bound`) seals its first one after this.
        let acting_from_us = now_us();
        on_bound(&bound)?;
        let (commits_told, commits) = tokio::sync::mpsc::unbounded_channel();
        let server = Server {
            service_manager: super::service_manager::ServiceManager::new(),
            deadline: crate::deadline::Deadline::new().context("cannot create the loop's timer")?,
            space: SpaceCheck::new(config),
            reopen_delay: ReopenDelay::new(),
            in_flight: Default::default(),
            commits_told,
            commits,
            reads: super::reads::Reads::start()?,
            opener: opener(config, &replay_floors, acting_from_us),
            replay_floors,
            previous_key_peers: PreviousKeyPeers::default(),
            clock: ClockWatch::new(),
            notifier: crate::notify::Notifier::start(
                config.webhooks.clone(),
                Duration::from_secs(1),
            ),
            metrics,
            running: config.clone(),
            reloading,
            live_settings,
            hangup: false,
            new_keys: None,
            listeners,
            api_calls: ApiCalls::new(internal),
            live,
            rejections: RejectionLog::default(),
            batch: Vec::with_capacity(MAX_BATCH),
            acting_until: None,
            leadership: None,
            role,
        };
        // Everything is in place: the loop starts next.
        server.service_manager.ready(&bound);
        Ok((server, http))
    }
}

/// The frame opener of a broker that starts acting at `acting_from_us`: frames sealed
/// before then are refused (they may have been taken by an earlier process or another
/// broker), and so are those at or below each sender's floor kept in the store.
fn opener(config: &BrokerConfig, replay_floors: &ReplayFloors, acting_from_us: u64) -> Opener {
    Opener::new(
        config.max_frame_bytes,
        config.max_clock_skew.as_millis() as u64,
    )
    .not_before(acting_from_us / 1_000)
    .sender_floors(replay_floors.floors())
}

impl Server {
    /// This broker starts acting on `core` (it took the leader's lease at
    /// `acting_from_us`): frames are opened as at a start, with the replay floors the
    /// store keeps.
    pub(super) fn acting_on<S: Store>(
        &mut self,
        core: &Core<S>,
        acting_from_us: u64,
    ) -> Result<()> {
        let replay_floors = ReplayFloors::load(core.store())
            .context("cannot read the replay floors from the store")?;
        self.opener = opener(&self.running, &replay_floors, acting_from_us);
        self.replay_floors = replay_floors;
        tracing::info!(boot_id = %core.boot_id(), "acting on the store's state");
        Ok(())
    }
}
