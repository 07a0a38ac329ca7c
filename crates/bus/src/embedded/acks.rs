//! Group commit of work-queue acks.
//!
//! An ack deletes one row, and on its own it would be one SQLite transaction with
//! its own fsync, competing for the file's write lock with every other ack through
//! SQLite's sleeping busy handler. Consumers ack from many tasks at once, so one
//! task collects the acks waiting at that moment and deletes them in one
//! transaction. Each caller still returns only after the commit that contains its ack,
//! so an acked message is as durable as before.

use tiffin_runtime::db::Database;
use tokio::sync::{mpsc, oneshot};

/// Maximum acks per transaction. Any more wait for the next one.
const MAX_GROUP: usize = 512;

/// One ack waiting for its commit.
struct Pending {
    queue: String,
    seq: i64,
    done: oneshot::Sender<Result<(), String>>,
}

/// Sends acks to the committing task.
#[derive(Debug, Clone)]
pub(super) struct Acker {
    sender: mpsc::UnboundedSender<Pending>,
}

impl Acker {
    /// Starts the committing task on the current runtime. It ends when the last
    /// `Acker` is dropped.
    pub(super) fn start(db: Database) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(commit_groups(db, receiver));
        Self { sender }
    }

    /// Deletes message `seq` from `queue` and returns once that is committed.
    pub(super) async fn ack(&self, queue: &str, seq: i64) -> anyhow::Result<()> {
        let (done, committed) = oneshot::channel();
        self.sender
            .send(Pending {
                queue: queue.to_owned(),
                seq,
                done,
            })
            .map_err(|_| anyhow::anyhow!("the embedded bus is closed"))?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(anyhow::anyhow!(error)),
            Err(_) => anyhow::bail!("the embedded bus stopped before the ack was committed"),
        }
    }
}

async fn commit_groups(db: Database, mut receiver: mpsc::UnboundedReceiver<Pending>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while receiver.recv_many(&mut group, MAX_GROUP).await > 0 {
        let outcome = delete(&db, &group).await;
        if let Err(error) = &outcome {
            tracing::warn!(error = %error, acks = group.len(), "failed to commit acks");
        }
        for pending in group.drain(..) {
            // A caller that stopped waiting needs no result.
            let _ = pending
                .done
                .send(outcome.as_ref().map(|_| ()).map_err(ToString::to_string));
        }
    }
}

async fn delete(db: &Database, group: &[Pending]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write().await?;
    for pending in group {
        sqlx::query("DELETE FROM queue_messages WHERE queue = $1 AND seq = $2")
            .bind(&pending.queue)
            .bind(pending.seq)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}
