//! The catalog service: Helsinki's restaurants and their menus over REST.
//!
//! On its first start the service fills its database from the data files compiled
//! into the crate and publishes one `menu.item.upserted` event per menu item, so other
//! services can build their own copy of the menus from the event stream. Later
//! starts find everything stored and publish nothing.
//!
//! # Layout
//!
//! - [`seed`]: the restaurants of the OpenStreetMap extract and the rule that
//!   generates their menus and prices.
//! - [`domain`]: restaurants, menu items, amenities and listing parameters.
//! - [`storage`]: every SQL statement.
//! - `routes`: the HTTP handlers, which validate with [`domain`] and read through
//!   [`storage`].
//! - [`Service`] ties them together: [`Service::build`] opens the database and seeds
//!   it in one transaction together with the outbox rows of the new items, and
//!   [`Service::run`] serves HTTP while an [`OutboxRelay`] publishes those rows.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod domain;
mod routes;
pub mod seed;
pub mod storage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use tiffin_bus::api::{Bus, Publisher};
use tiffin_bus::envelope::Envelope;
use tiffin_bus::outbox::OutboxRelay;
use tiffin_events::menu::MenuItemUpserted;
use tiffin_events::restaurant::RestaurantUpserted;
use tiffin_runtime::CancellationToken;
use tiffin_runtime::db::{Database, PoolSettings};
use tiffin_runtime::http;
use tiffin_runtime::trace::TraceContext;
use tokio::net::TcpListener;

use crate::seed::SeedRestaurant;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The CloudEvents `source` of the catalog's events.
pub const SOURCE: &str = "/tiffin/catalog";

/// The service name in logs.
const NAME: &str = "catalog";

/// The catalog's listen address and database.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The HTTP listen address. Port 0 picks a free port, and [`Service::http_addr`]
    /// returns the one bound.
    pub http_addr: SocketAddr,
    /// The database URL, `sqlite://PATH?mode=rwc` or `postgres://USER:PASSWORD@HOST/DB`
    /// (see [`Database::sqlite_url`]).
    pub database_url: String,
    /// Size and acquire timeout of the database connection pool.
    pub pool: PoolSettings,
}

/// The state shared by the HTTP handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    db: Database,
}

impl AppState {
    /// Creates the state over the catalog's database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

/// Builds the catalog's HTTP API, with `/healthz`, `/readyz` and the common layers of
/// [`http::with_common_layers`].
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/restaurants", get(routes::list_restaurants))
        .route("/v1/restaurants/{id}", get(routes::get_restaurant))
        .route("/v1/restaurants/{id}/menu", get(routes::get_menu))
        .route("/readyz", get(routes::ready))
        .with_state(state);
    http::with_common_layers(api)
}

/// A built catalog service: database open and seeded, listener bound, not yet
/// serving.
#[derive(Debug)]
pub struct Service {
    db: Database,
    listener: TcpListener,
    http_addr: SocketAddr,
    relay: OutboxRelay,
}

impl Service {
    /// Opens the database (running migrations), binds the HTTP listener and seeds the
    /// catalog.
    ///
    /// Seeding stores the restaurants and menu items that are missing and, in the same
    /// transaction, one `menu.item.upserted` outbox row per new item. A database that
    /// already contains the catalog gains no rows and no events. `bus` receives the
    /// events once [`Service::run`] starts the outbox relay.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be opened, migrated or written, or the address
    /// cannot be bound.
    pub async fn build(settings: Settings, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        let db = Database::open(&settings.database_url, &settings.pool, &MIGRATOR)
            .await
            .context("failed to open the catalog database")?;
        let listener = http::bind(settings.http_addr).await?;
        let http_addr = listener.local_addr()?;

        seed_database(&db).await?;

        let publisher: Arc<dyn Publisher> = bus;
        let relay = OutboxRelay::new(NAME, db.clone(), publisher);
        Ok(Self {
            db,
            listener,
            http_addr,
            relay,
        })
    }

    /// Returns the address the HTTP server listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Counts the menu items in the catalog.
    ///
    /// # Errors
    ///
    /// Fails when the database cannot be read.
    pub async fn menu_item_count(&self) -> anyhow::Result<i64> {
        storage::menu_item_count(&self.db)
            .await
            .context("failed to count menu items")
    }

    /// Serves HTTP and publishes the outbox until `shutdown` is cancelled.
    ///
    /// On shutdown the server stops accepting connections and waits for requests in
    /// flight, the relay publishes what is left in the outbox, trying for up to 10 s,
    /// and the database is closed. Rows the relay could not publish stay in the outbox
    /// and are published after the next start.
    ///
    /// # Errors
    ///
    /// Fails when the HTTP server fails; the relay is then stopped and flushed too.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // A child token lets a failed server stop the relay without cancelling
        // the caller's token.
        let stop = shutdown.child_token();
        let relay = tokio::spawn(self.relay.run(stop.clone()));

        let served = http::serve(
            NAME,
            self.listener,
            router(AppState::new(self.db.clone())),
            stop.clone(),
        )
        .await;

        stop.cancel();
        if let Err(error) = relay.await {
            tracing::error!(error = %error, "outbox relay task failed");
        }
        self.db.close().await;
        served
    }
}

/// How many seed events are built and queued at a time.
const SEED_EVENTS_PER_CHUNK: usize = 500;

/// Stores the seed catalog's missing rows and queues an event per new menu item, all
/// in one transaction.
async fn seed_database(db: &Database) -> anyhow::Result<()> {
    let started = Instant::now();
    let catalog = seed::catalog().context("failed to build the seed catalog")?;
    let restaurants = catalog
        .iter()
        .map(|entry| &entry.restaurant)
        .collect::<Vec<_>>();
    let items = catalog
        .iter()
        .flat_map(|entry| &entry.menu)
        .collect::<Vec<_>>();

    let mut tx = db
        .begin_write()
        .await
        .context("failed to begin the seed transaction")?;
    let new_restaurants = storage::insert_restaurants(&mut tx, &restaurants)
        .await
        .context("failed to store the seed restaurants")?;
    let new_items = storage::insert_menu_items(&mut tx, &items)
        .await
        .context("failed to store the seed menu items")?;
    // All events of one seed belong to one operation, hence one trace. They are
    // built and queued a chunk at a time: built all at once, the 14,700 envelopes
    // left about 20 MB with the allocator for the life of the process.
    let trace = TraceContext::new_root();
    for ids in new_restaurants.chunks(SEED_EVENTS_PER_CHUNK) {
        tiffin_bus::outbox::enqueue_many(&mut tx, &restaurant_events(&catalog, ids, trace))
            .await
            .context("failed to queue the seed events")?;
    }
    for ids in new_items.chunks(SEED_EVENTS_PER_CHUNK) {
        tiffin_bus::outbox::enqueue_many(&mut tx, &upserted_events(&catalog, ids, trace))
            .await
            .context("failed to queue the seed events")?;
    }
    tx.commit()
        .await
        .context("failed to commit the seed transaction")?;

    let elapsed_ms = started.elapsed().as_millis() as u64;
    if new_restaurants.is_empty() && new_items.is_empty() {
        tracing::info!(elapsed_ms, "catalog already seeded");
    } else {
        tracing::info!(
            restaurants = new_restaurants.len(),
            menu_items = new_items.len(),
            elapsed_ms,
            "catalog seeded"
        );
    }
    Ok(())
}

/// Builds one `restaurant.upserted` event per restaurant of `catalog` whose id is in
/// `new_restaurants`, in catalog order.
fn restaurant_events(
    catalog: &[SeedRestaurant],
    new_restaurants: &[String],
    trace: TraceContext,
) -> Vec<Envelope> {
    let new_restaurants = new_restaurants
        .iter()
        .map(String::as_str)
        .collect::<std::collections::HashSet<_>>();
    catalog
        .iter()
        .map(|entry| &entry.restaurant)
        .filter(|restaurant| new_restaurants.contains(restaurant.id.as_str()))
        .map(|restaurant| {
            let payload = RestaurantUpserted {
                restaurant_id: restaurant.id.clone(),
                name: restaurant.name.clone(),
                amenity: restaurant.amenity.as_str().to_owned(),
                lat: restaurant.lat,
                lon: restaurant.lon,
                opening_hours: restaurant.opening_hours.clone(),
                revision: 1,
            };
            Envelope::new(SOURCE, &payload, Some(trace))
        })
        .collect()
}

/// Builds one `menu.item.upserted` event per item of `catalog` whose id is in
/// `new_items`, in catalog order.
fn upserted_events(
    catalog: &[SeedRestaurant],
    new_items: &[String],
    trace: TraceContext,
) -> Vec<Envelope> {
    let new_items = new_items
        .iter()
        .map(String::as_str)
        .collect::<std::collections::HashSet<_>>();
    catalog
        .iter()
        .flat_map(|entry| entry.menu.iter().map(move |item| (&entry.restaurant, item)))
        .filter(|(_, item)| new_items.contains(item.id.as_str()))
        .map(|(restaurant, item)| {
            let payload = MenuItemUpserted {
                menu_item_id: item.id.clone(),
                restaurant_id: restaurant.id.clone(),
                restaurant_name: restaurant.name.clone(),
                name: item.name.clone(),
                price_cents: item.price_cents,
                currency: item.currency.clone(),
                available: item.available,
                revision: item.revision,
            };
            Envelope::new(SOURCE, &payload, Some(trace))
        })
        .collect()
}
