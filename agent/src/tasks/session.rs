//! The node's task session with the managers: the assignment stream (from the leader: the
//! managers are tried in turn, the last known leader first, and the others refuse) and the
//! batched status reports.

use std::time::Duration;

use shoal_api::v1::{self, dispatcher_client::DispatcherClient};
use shoal_control::dispatcher::Assignment;
use std::collections::HashMap;

use shoal_control::limits;
use shoal_control::manager::logs::ToNode;
use shoal_control::manager::protocol::StatusReport;
use shoal_control::tls::{self, Credentials};
use tonic::Request;

use super::Worker;

/// How long one RPC may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the session can reach the managers, and with what certificate.
pub(crate) trait Contact: Clone + Send + Sync + 'static {
    /// The managers' addresses (the leader's first) and the node's credentials; `None` once
    /// the node has left.
    fn contact(&self) -> impl Future<Output = Option<(Vec<String>, Credentials)>> + Send;
}

fn client(
    addr: &str,
    credentials: &Credentials,
) -> Result<DispatcherClient<tonic::transport::Channel>, String> {
    let config = credentials.client_config().map_err(|e| e.to_string())?;
    let channel = tls::channel(addr, config, RPC_TIMEOUT).map_err(|e| e.to_string())?;
    Ok(DispatcherClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Follows the node's assignment until the node leaves.
pub(crate) async fn assignments(worker: Worker, contact: impl Contact) {
    with_managers(contact, "assignment stream", |addr, credentials| {
        let worker = worker.clone();
        async move { follow(&worker, &addr, &credentials).await }
    })
    .await;
}

/// Runs `session` with the managers in turn (the last known leader first; the others refuse)
/// until the node leaves.
async fn with_managers<F, Fut>(contact: impl Contact, what: &str, mut session: F)
where
    F: FnMut(String, Credentials) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut next = 0_usize;
    loop {
        let Some((managers, credentials)) = contact.contact().await else {
            return;
        };
        let Some(addr) = managers.get(next % managers.len().max(1)).cloned() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        match session(addr.clone(), credentials).await {
            Ok(()) => tracing::debug!(manager = %addr, "the {what} ended"),
            Err(e) => tracing::debug!(manager = %addr, error = %e, "no {what}"),
        }
        next += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn follow(worker: &Worker, addr: &str, credentials: &Credentials) -> Result<(), String> {
    let mut client = client(addr, credentials)?;
    let mut stream = client
        .assignments(Request::new(v1::AssignmentsRequest {}))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    while let Some(message) = stream.message().await.map_err(|s| s.message().to_owned())? {
        let assignment =
            Assignment::try_from(message).map_err(|e| format!("decoding an assignment: {e}"))?;
        worker.assign(assignment);
    }
    Ok(())
}

/// Keeps a log session with the leader until the node leaves: serves the log requests that come
/// down it.
pub(crate) async fn logs(worker: Worker, contact: impl Contact) {
    with_managers(contact, "log session", |addr, credentials| {
        let worker = worker.clone();
        async move { log_session(&worker, &addr, &credentials).await }
    })
    .await;
}

async fn log_session(worker: &Worker, addr: &str, credentials: &Credentials) -> Result<(), String> {
    let mut client = client(addr, credentials)?;
    let (up, up_rx) = tokio::sync::mpsc::channel::<v1::NodeLogReply>(64);
    let mut down = client
        .logs(tokio_stream::wrappers::ReceiverStream::new(up_rx))
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let mut serving: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
    let result = loop {
        let request = match down.message().await {
            Ok(Some(request)) => request,
            Ok(None) => break Ok(()),
            Err(s) => break Err(s.message().to_owned()),
        };
        serving.retain(|_, handle| !handle.is_finished());
        match ToNode::try_from(request) {
            Ok(ToNode::Subscribe { id, tasks, query }) => {
                let worker = worker.clone();
                let up = up.clone();
                let handle = tokio::spawn(async move {
                    worker.serve_logs(id, tasks, query, up).await;
                });
                serving.insert(id, handle.abort_handle());
            }
            Ok(ToNode::Cancel { id }) => {
                if let Some(handle) = serving.remove(&id) {
                    handle.abort();
                }
            }
            Err(e) => break Err(format!("decoding a log request: {e}")),
        }
    };
    for handle in serving.values() {
        handle.abort();
    }
    result
}

/// Sends task status changes to the managers, batched, until the node leaves.
pub(crate) async fn reports(worker: Worker, contact: impl Contact) {
    loop {
        tokio::select! {
            () = worker.reports_waiting() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // Let a burst gather.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut updates = worker.take_reports();
        if updates.is_empty() {
            continue;
        }
        // Within the managers' bounds: the rest goes in the next report.
        if updates.len() > limits::MAX_REPORT_UPDATES {
            worker.requeue(updates.split_off(limits::MAX_REPORT_UPDATES));
            worker.wake_reports();
        }
        for (_, status) in &mut updates {
            limits::clip(&mut status.message, limits::MAX_MESSAGE);
            limits::clip(&mut status.err, limits::MAX_MESSAGE);
        }
        let Some((managers, credentials)) = contact.contact().await else {
            return;
        };
        let report = StatusReport { updates };
        let message = v1::StatusReport::from(report.clone());
        let mut sent = false;
        for addr in &managers {
            let Ok(mut client) = client(addr, &credentials) else {
                continue;
            };
            let mut request = Request::new(message.clone());
            request.set_timeout(RPC_TIMEOUT * 3);
            match client.report(request).await {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(manager = %addr, error = %e.message(), "reporting task status")
                }
            }
        }
        if !sent {
            worker.requeue(report.updates);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
