//! Builds one service from the system's settings, for `tiffin up` (all services in
//! one process) and `tiffin serve` (one service per process) alike.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use futures::future::BoxFuture;
use tiffin_bus::api::Bus;
use tiffin_runtime::CancellationToken;

use crate::system::{Delivery, SystemSettings};

/// The services, in the order an all-in-one system starts them: payments and auth
/// first (orders and the kitchen fetch auth's key set at start), the gateway last.
pub const START_ORDER: [&str; 9] = [
    "payments",
    "auth",
    "catalog",
    "orders",
    "kitchen",
    "delivery",
    "notifications",
    "analytics",
    "gateway",
];

/// Where each service listens, as the others reach it.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Addresses by service name.
    pub addresses: Vec<(String, SocketAddr)>,
}

impl Topology {
    /// The address of `service`.
    ///
    /// # Errors
    ///
    /// Fails when the topology does not know it.
    pub fn addr(&self, service: &str) -> anyhow::Result<SocketAddr> {
        self.addresses
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, addr)| *addr)
            .with_context(|| {
                format!("the address of {service} is not known: pass --{service}-addr")
            })
    }

    /// Records the address of `service`.
    pub fn set(&mut self, service: &str, addr: SocketAddr) {
        self.addresses.retain(|(name, _)| name != service);
        self.addresses.push((service.to_owned(), addr));
    }

    fn http(&self, service: &str) -> anyhow::Result<String> {
        Ok(format!("http://{}", self.addr(service)?))
    }
}

/// A built service, listening, ready to run.
pub struct Built {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Runs it until the token is cancelled.
    pub run: Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built").field("addr", &self.addr).finish()
    }
}

/// Builds `service` listening on `listen`, reaching the others through `topology`.
///
/// # Errors
///
/// Fails when the service name is unknown, a dependency's address is missing, or the
/// service cannot start (database, bus, port).
pub async fn build(
    service: &str,
    listen: SocketAddr,
    topology: &Topology,
    settings: &SystemSettings,
    database_url: String,
    bus: Arc<dyn Bus>,
) -> anyhow::Result<Built> {
    let built = match service {
        "payments" => {
            let payments = tiffin_payments::Service::build(tiffin_payments::Settings {
                grpc_addr: listen,
                database_url,
                pool: settings.pool.clone(),
                processor: settings.processor.clone(),
            })
            .await?;
            Built {
                addr: payments.grpc_addr(),
                run: Box::new(|token| Box::pin(payments.run(token))),
            }
        }
        "auth" => {
            let mut auth_settings = tiffin_auth::Settings::new(listen, database_url);
            auth_settings.pool = settings.pool.clone();
            let auth = tiffin_auth::Service::build(auth_settings).await?;
            Built {
                addr: auth.http_addr(),
                run: Box::new(|token| Box::pin(auth.run(token))),
            }
        }
        "catalog" => {
            let catalog = tiffin_catalog::Service::build(
                tiffin_catalog::Settings {
                    http_addr: listen,
                    database_url,
                    pool: settings.pool.clone(),
                },
                bus,
            )
            .await?;
            Built {
                addr: catalog.http_addr(),
                run: Box::new(|token| Box::pin(catalog.run(token))),
            }
        }
        "orders" => {
            let mut orders_settings = tiffin_orders::Settings::new(
                listen,
                database_url,
                format!("{}/v1/auth/jwks", topology.http("auth")?),
                topology.http("payments")?,
            );
            orders_settings.fault_exit_after_payment_step = settings.fault_exit_after_payment_step;
            orders_settings.pool = settings.pool.clone();
            orders_settings.release_unclaimed_after = settings.release_unclaimed_after;
            orders_settings.admission = settings.admission;
            let orders = tiffin_orders::Service::build(orders_settings, bus).await?;
            Built {
                addr: orders.http_addr(),
                run: Box::new(|token| Box::pin(orders.run(token))),
            }
        }
        "kitchen" => {
            let mut kitchen_settings = tiffin_kitchen::Settings::new(listen, database_url);
            kitchen_settings.time_scale = settings.time_scale;
            kitchen_settings.pool = settings.pool.clone();
            kitchen_settings.jwks_url = Some(format!("{}/v1/auth/jwks", topology.http("auth")?));
            kitchen_settings.reject_rate = settings.reject_rate;
            kitchen_settings.capacity_per_restaurant = settings.kitchen_capacity;
            let kitchen = tiffin_kitchen::Service::build(kitchen_settings, bus).await?;
            Built {
                addr: kitchen.http_addr(),
                run: Box::new(|token| Box::pin(kitchen.run(token))),
            }
        }
        "delivery" => {
            let mut delivery_settings = tiffin_delivery::Settings::new(listen, database_url);
            delivery_settings.time_scale = settings.time_scale;
            delivery_settings.pool = settings.pool.clone();
            delivery_settings.couriers = settings.couriers;
            let delivery = tiffin_delivery::Service::build(delivery_settings, bus).await?;
            Built {
                addr: delivery.http_addr(),
                run: Box::new(|token| Box::pin(delivery.run(token))),
            }
        }
        "notifications" => {
            let mut notifications_settings =
                tiffin_notifications::Settings::new(listen, database_url);
            notifications_settings.channel = settings.notify_channel.clone();
            notifications_settings.pool = settings.pool.clone();
            let notifications =
                tiffin_notifications::Service::build(notifications_settings, bus).await?;
            Built {
                addr: notifications.http_addr(),
                run: Box::new(|token| Box::pin(notifications.run(token))),
            }
        }
        "analytics" => {
            let mut analytics_settings = tiffin_analytics::Settings::new(listen, database_url);
            analytics_settings.pool = settings.pool.clone();
            let analytics = tiffin_analytics::Service::build(analytics_settings, bus).await?;
            Built {
                addr: analytics.http_addr(),
                run: Box::new(|token| Box::pin(analytics.run(token))),
            }
        }
        "gateway" => {
            let gateway = tiffin_gateway::Service::build(tiffin_gateway::Settings::new(
                listen,
                tiffin_gateway::Upstreams {
                    auth: topology.http("auth")?,
                    catalog: topology.http("catalog")?,
                    orders: topology.http("orders")?,
                    kitchen: topology.http("kitchen")?,
                    delivery: match settings.delivery {
                        Delivery::Runs => Some(topology.http("delivery")?),
                        Delivery::LeftOut => None,
                    },
                    notifications: topology.http("notifications")?,
                    analytics: topology.http("analytics")?,
                },
            ))
            .await?;
            Built {
                addr: gateway.http_addr(),
                run: Box::new(|token| Box::pin(gateway.run(token))),
            }
        }
        other => anyhow::bail!(
            "unknown service `{other}`: choose one of {}",
            START_ORDER.join(", ")
        ),
    };
    Ok(built)
}
