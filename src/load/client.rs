//! The load generator's HTTP calls, all through the gateway.

use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::replay::Venue;

/// A logged-in customer.
#[derive(Debug, Clone)]
pub struct Customer {
    /// The user id (the token's `sub`).
    pub id: String,
    /// The bearer token.
    pub token: String,
}

/// One menu item as the catalog lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct MenuEntry {
    /// The item id.
    pub id: String,
}

/// The response of the order endpoint.
#[derive(Debug)]
pub enum PlaceOutcome {
    /// 201: the order id.
    Placed(String),
    /// 402: the decline detail.
    Declined(String),
    /// Anything else: status and detail.
    Failed(u16, String),
}

/// Calls the gateway at `base`.
#[derive(Debug, Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: String,
}

impl GatewayClient {
    /// Creates a client whose requests time out after `timeout`.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: tiffin_runtime::http::client(timeout)?,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// Registers the customer (an existing one is fine) and logs in.
    pub async fn sign_in(&self, email: &str, password: &str) -> anyhow::Result<Customer> {
        let credentials = json!({ "email": email, "password": password });
        let response = self
            .http
            .post(format!("{}/v1/auth/register", self.base))
            .json(&credentials)
            .send()
            .await
            .context("failed to register a customer")?;
        let status = response.status();
        if status != StatusCode::CREATED && status != StatusCode::CONFLICT {
            anyhow::bail!(
                "registering {email} returned {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }

        let response = self
            .http
            .post(format!("{}/v1/auth/login", self.base))
            .json(&credentials)
            .send()
            .await
            .context("failed to log in")?;
        let status = response.status();
        if status != StatusCode::OK {
            anyhow::bail!(
                "logging in {email} returned {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let body: Value = response.json().await?;
        let token = body["access_token"]
            .as_str()
            .context("the login response has no access_token")?
            .to_owned();
        let id = subject_of(&token)?;
        Ok(Customer { id, token })
    }

    /// Lists every restaurant, following the pagination.
    pub async fn restaurants(&self) -> anyhow::Result<Vec<Venue>> {
        let mut venues = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/restaurants?limit=100", self.base);
            if let Some(cursor) = &cursor {
                url.push_str("&cursor=");
                url.push_str(cursor);
            }
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .context("failed to list restaurants")?;
            let status = response.status();
            if !status.is_success() {
                anyhow::bail!(
                    "listing restaurants returned {status}: {}",
                    response.text().await.unwrap_or_default()
                );
            }
            let page: Value = response.json().await?;
            for item in page["items"]
                .as_array()
                .context("the restaurant page has no items")?
            {
                let amenity = item["amenity"].as_str().unwrap_or("restaurant");
                venues.push(Venue {
                    id: item["id"]
                        .as_str()
                        .context("a restaurant has no id")?
                        .to_owned(),
                    lat: item["lat"].as_f64().context("a restaurant has no lat")?,
                    lon: item["lon"].as_f64().context("a restaurant has no lon")?,
                    hours: opening_hours(amenity, item["opening_hours"].as_str()),
                });
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Ok(venues),
            }
        }
    }

    /// Reads a restaurant's menu.
    pub async fn menu(&self, restaurant_id: &str) -> anyhow::Result<Vec<MenuEntry>> {
        #[derive(Deserialize)]
        struct Menu {
            items: Vec<MenuEntry>,
        }
        let response = self
            .http
            .get(format!("{}/v1/restaurants/{restaurant_id}/menu", self.base))
            .send()
            .await
            .with_context(|| format!("failed to read the menu of {restaurant_id}"))?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("reading the menu of {restaurant_id} returned {status}");
        }
        Ok(response.json::<Menu>().await?.items)
    }

    /// Places an order. Transport errors are returned as `Err`.
    pub async fn place(
        &self,
        customer: &Customer,
        key: &str,
        body: &Value,
    ) -> anyhow::Result<PlaceOutcome> {
        let response = self
            .http
            .post(format!("{}/v1/orders", self.base))
            .bearer_auth(&customer.token)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok(match status {
            StatusCode::CREATED => PlaceOutcome::Placed(
                body["id"]
                    .as_str()
                    .context("the 201 response has no id")?
                    .to_owned(),
            ),
            StatusCode::PAYMENT_REQUIRED => PlaceOutcome::Declined(detail(&body)),
            other => PlaceOutcome::Failed(other.as_u16(), detail(&body)),
        })
    }

    /// Asks to cancel an order: true when it was cancelled (now or before), false
    /// when it was past cancelling (409).
    pub async fn cancel(&self, customer: &Customer, order_id: &str) -> anyhow::Result<bool> {
        let response = self
            .http
            .post(format!("{}/v1/orders/{order_id}/cancel", self.base))
            .bearer_auth(&customer.token)
            .send()
            .await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            other => anyhow::bail!(
                "cancelling order {order_id} returned {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }

    /// Reads an order with its timeline.
    pub async fn order(&self, customer: &Customer, order_id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}/v1/orders/{order_id}", self.base))
            .bearer_auth(&customer.token)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("reading order {order_id} returned {status}");
        }
        Ok(response.json().await?)
    }

    /// Reads an order's status.
    pub async fn status(&self, customer: &Customer, order_id: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("{}/v1/orders/{order_id}/status", self.base))
            .bearer_auth(&customer.token)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("reading the status of order {order_id} returned {status}");
        }
        let body: Value = response.json().await?;
        Ok(body["status"].as_str().unwrap_or_default().to_owned())
    }
}

/// The hours the kitchen applies: the mapped hours when they parse, else the
/// amenity's default.
fn opening_hours(amenity: &str, mapped: Option<&str>) -> tiffin_hours::OpeningHours {
    mapped
        .and_then(|text| tiffin_hours::OpeningHours::parse(text).ok())
        .unwrap_or_else(|| tiffin_hours::default_for(amenity))
}

fn detail(problem: &Value) -> String {
    problem["detail"].as_str().unwrap_or("no detail").to_owned()
}

/// Reads the `sub` claim of a token without verifying it: the client only needs
/// its own user id, and the services verify the token.
fn subject_of(token: &str) -> anyhow::Result<String> {
    let payload = token
        .split('.')
        .nth(1)
        .context("the access token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    let claims: Value = serde_json::from_slice(&bytes)?;
    Ok(claims["sub"]
        .as_str()
        .context("the access token has no sub")?
        .to_owned())
}
