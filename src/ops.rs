//! Operator commands on a stopped system's data directory.

use std::path::Path;
use std::sync::Arc;

use tiffin_bus::api::Bus;
use tiffin_bus::embedded::EmbeddedBus;
use tiffin_runtime::db::Database;

fn require_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        data_dir.join("bus.db").exists(),
        "{} holds no Tiffin data (no bus.db): pass the --data-dir that `tiffin up` used",
        data_dir.display()
    );
    Ok(())
}

/// `tiffin analytics rebuild`.
///
/// # Errors
///
/// Fails when the data directory contains no Tiffin data or the rebuild fails.
pub async fn rebuild_analytics(data_dir: &Path) -> anyhow::Result<()> {
    require_data_dir(data_dir)?;
    let bus = EmbeddedBus::open(&data_dir.join("bus.db")).await?;
    let shared: Arc<dyn Bus> = Arc::new(bus.clone());
    eprintln!("Replaying the order stream into a fresh projection...");
    let summary =
        tiffin_analytics::rebuild(&Database::sqlite_url(data_dir, "analytics"), shared).await?;
    bus.close().await;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// `tiffin dead-letters list`.
///
/// # Errors
///
/// Fails when the data directory contains no Tiffin data.
pub async fn list_dead_letters(data_dir: &Path) -> anyhow::Result<()> {
    require_data_dir(data_dir)?;
    let bus = EmbeddedBus::open(&data_dir.join("bus.db")).await?;
    let letters = bus.dead_letters().await?;
    bus.close().await;
    if letters.is_empty() {
        println!("No dead letters.");
    }
    for letter in letters {
        println!(
            "{:<16} {:<20} {} subject {} after {} attempts: {}",
            letter.queue,
            letter.event_type,
            letter.event_id,
            letter.subject,
            letter.attempts,
            letter.reason
        );
    }
    Ok(())
}

/// `tiffin dead-letters replay QUEUE`.
///
/// # Errors
///
/// Fails when the data directory contains no Tiffin data.
pub async fn replay_dead_letters(data_dir: &Path, queue: &str) -> anyhow::Result<()> {
    require_data_dir(data_dir)?;
    let bus = EmbeddedBus::open(&data_dir.join("bus.db")).await?;
    let moved = bus.replay_dead_letters(queue).await?;
    bus.close().await;
    println!(
        "Put {moved} dead letters back on queue {queue}; they are delivered at the next start."
    );
    Ok(())
}
