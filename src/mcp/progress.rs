//! MCP progress notifications for the engines' [`Progress`] reports.
//!
//! Notifications are sent in order by one forwarding task per call, only
//! when the client sent a progress token; [`McpProgress::finish`] drains them
//! before the tool returns its result, so none arrives after the response.
//! When the call runs as a task, each report also becomes the task's status
//! message, which `tasks/get` shows.

use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use tokio::sync::mpsc;

use crate::progress::Progress;

type Update = (u64, Option<u64>, String);

/// Progress for one tool call.
pub struct McpProgress {
    tx: Option<mpsc::UnboundedSender<Update>>,
    task: Option<tokio::task::JoinHandle<()>>,
    as_task: Option<rmcp::task_manager::TaskContext>,
}

impl McpProgress {
    /// Progress for the call `ctx` belongs to; silent without a progress token.
    pub fn new(ctx: &RequestContext<RoleServer>) -> Self {
        let as_task = ctx
            .extensions
            .get::<rmcp::task_manager::TaskContext>()
            .cloned();
        let Some(token) = ctx.meta.get_progress_token() else {
            return McpProgress {
                tx: None,
                task: None,
                as_task,
            };
        };
        let peer = ctx.peer.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
        let task = tokio::spawn(async move {
            while let Some((done, total, message)) = rx.recv().await {
                let mut p = ProgressNotificationParam::new(token.clone(), done as f64)
                    .with_message(message);
                if let Some(t) = total {
                    p = p.with_total(t as f64);
                }
                if peer.notify_progress(p).await.is_err() {
                    break;
                }
            }
        });
        McpProgress {
            tx: Some(tx),
            task: Some(task),
            as_task,
        }
    }

    /// Waits until every queued notification is sent.
    pub async fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Progress for McpProgress {
    fn update(&self, done: u64, total: Option<u64>, message: &str) {
        if let Some(t) = &self.as_task {
            t.set_status_message(match total {
                Some(total) => format!("{message} ({done}/{total})"),
                None => format!("{message} ({done})"),
            });
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send((done, total, message.to_string()));
        }
    }
}
