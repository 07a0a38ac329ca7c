//! The restaurant replica: the amenity and opening hours of every restaurant that the
//! catalog published, read from the `restaurant.upserted` stream.

use async_trait::async_trait;
use tiffin_bus::{Envelope, Handler, HandlerError};
use tiffin_events::restaurant::RestaurantUpserted;
use tiffin_hours::OpeningHours;
use tiffin_runtime::db::Database;

use crate::storage;

/// The stream group of the replica. It starts at the beginning of the stream, so a
/// new kitchen database fills with every restaurant published so far.
pub(crate) const REPLICA_GROUP: &str = "kitchen-restaurants";

/// Keeps the latest revision of every restaurant.
///
/// Upserts are idempotent by revision, so it needs no inbox.
#[derive(Debug)]
pub(crate) struct RestaurantReplica {
    pub(crate) db: Database,
}

#[async_trait]
impl Handler for RestaurantReplica {
    async fn handle(&self, event: &Envelope) -> Result<(), HandlerError> {
        self.handle_batch(std::slice::from_ref(event)).await
    }

    fn applies_batches(&self) -> bool {
        true
    }

    async fn handle_batch(&self, events: &[Envelope]) -> Result<(), HandlerError> {
        let mut restaurants = Vec::with_capacity(events.len());
        for event in events {
            restaurants.push(
                event
                    .decode::<RestaurantUpserted>()
                    .map_err(HandlerError::permanent)?,
            );
        }

        let mut tx = self.db.begin_write().await?;
        for restaurant in &restaurants {
            storage::upsert_restaurant(&mut tx, restaurant).await?;
        }
        tx.commit().await?;

        for restaurant in &restaurants {
            let Some(value) = restaurant.opening_hours.as_deref() else {
                continue;
            };
            if let Err(error) = OpeningHours::parse(value) {
                tracing::debug!(
                    restaurant_id = %restaurant.restaurant_id,
                    amenity = %restaurant.amenity,
                    error = %error,
                    "opening hours not understood; the amenity's default hours apply"
                );
            }
        }
        tracing::trace!(
            restaurants = restaurants.len(),
            "restaurant replica updated"
        );
        Ok(())
    }
}
