//! The catch-up worker: fills closed gaps over REST, checks profiles for rotated tokens and
//! writes the checkpoint. One task; fills and profile checks run as child tasks so one slow
//! account never holds up another (the REST client bounds them together).

use super::checkpoint::CheckpointFile;
use super::gaps::{Gap, GapCause};
use super::rest::{ApiToken, DecodeError, Item, RestClient, RestError, PAGE};
use super::telemetry::{self as t, emit, Unrecovered};
use super::{Catchup, Job, Rotation};
use crate::connection::{hand_over, Handed, Shared};
use crate::route::Receiver;
use crate::shutdown::Shutdown;
use crate::status::now_ms;
use crate::telemetry as bt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use voxsig_protocol::{EventKind, EventRef, PubsubToken, RawStr, RoomIdentifier};
use voxsig_sinks::Pushed;

/// How often the checkpoint is written.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The most message pages read for one conversation in one fill (100,000 messages): a server
/// that never stops paging cannot keep a fill going forever.
const MAX_PAGES: usize = 1000;

/// Starts the worker. At shutdown it stops its fills and profile checks and hands over the last
/// checkpoint (when `[state] dir` is set), for the bridge to write while the sink drains.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    jobs: mpsc::UnboundedReceiver<Job>,
    checkpoint: Option<CheckpointFile>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<Option<LastCheckpoint>> {
    tokio::spawn(run(shared, jobs, checkpoint, shutdown))
}

/// The checkpoint still to write at shutdown, once no fill can claim a message any more.
pub(crate) struct LastCheckpoint {
    shared: Arc<Shared>,
    file: CheckpointFile,
}

impl LastCheckpoint {
    /// Writes it (the file is replaced atomically: a deadline passing mid-write leaves the
    /// previous one); returns how many messages it counts as unpublished because their records
    /// were not safe yet (the next start's catch-up fetches them again).
    pub(crate) async fn write(&self) -> usize {
        write_checkpoint(&self.shared.catchup, &self.shared, &self.file).await
    }
}

async fn run(
    shared: Arc<Shared>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    checkpoint: Option<CheckpointFile>,
    mut shutdown: Shutdown,
) -> Option<LastCheckpoint> {
    let cu = shared.catchup.clone();
    let mut tasks = JoinSet::new();
    let mut checkpoint_tick = tokio::time::interval(CHECKPOINT_EVERY);
    checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let profile_every = cu.config.profile_check;
    let mut profile_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + profile_every, profile_every);
    profile_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When each API token's profile last showed the tokens the subscriptions use.
    let profile_ok: Arc<std::sync::Mutex<HashMap<String, i64>>> = Arc::default();
    // One fill per account at a time: a gap closing while its account is being filled waits,
    // merged with any other that closes meanwhile, and is filled next.
    let mut filling: HashMap<u64, Option<Gap>> = HashMap::new();
    // One profile fetch per API token at a time, however many subscriptions ask for it.
    let mut checking: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            () = shutdown.recv() => break,
            job = jobs.recv() => match job {
                None => break,
                Some(Job::Fill(gap)) => match filling.get_mut(&gap.account) {
                    Some(waiting) => *waiting = Some(merge(waiting.take(), gap)),
                    None => {
                        filling.insert(gap.account, None);
                        tasks.spawn(fill(shared.clone(), gap));
                    }
                },
                Some(Job::CheckProfile(index)) => {
                    if let Some(token) = cu.sub_api_token(index) {
                        check(&mut tasks, &mut checking, &shared, &profile_ok, token);
                    }
                }
            },
            _ = profile_tick.tick() => {
                for token in cu.api_tokens() {
                    check(&mut tasks, &mut checking, &shared, &profile_ok, token);
                }
            }
            _ = checkpoint_tick.tick(), if checkpoint.is_some() => {
                if let Some(file) = &checkpoint {
                    write_checkpoint(&cu, &shared, file).await;
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => match done {
                Ok(Done::Filled(account)) => match filling.get_mut(&account).and_then(Option::take) {
                    Some(next) => {
                        tasks.spawn(fill(shared.clone(), next));
                    }
                    None => {
                        filling.remove(&account);
                    }
                },
                Ok(Done::Profile(key)) => {
                    checking.remove(&key);
                }
                // A task that panicked: its books are released at shutdown at the latest.
                Err(_) => {}
            },
        }
    }
    // Every fill stopped (its unpublished claims released) before the ledger is written.
    tasks.shutdown().await;
    checkpoint.map(|file| LastCheckpoint { shared, file })
}

/// Writes the checkpoint; returns how many messages it counts as unpublished because their
/// records were not safe yet (`Ledger::checkpoint`).
async fn write_checkpoint(cu: &Catchup, shared: &Shared, file: &CheckpointFile) -> usize {
    // The last sign of life of each account: its subscriptions' last frames (events, confirms,
    // pings), so a quiet account does not look like a long gap after a restart; for an account
    // in an open gap, the gap's start, so a restart keeps the gap. The ledger keeps the latest.
    let open: HashMap<u64, i64> = cu
        .book()
        .open_gaps()
        .map(|(a, start, _)| (a, start))
        .collect();
    let status = &shared.status;
    for (i, sub) in status.subscriptions().iter().enumerate() {
        let at = match open.get(&sub.account_id) {
            Some(start) => *start,
            None => status.last_frame_ms(i),
        };
        cu.ledger.received(sub.account_id, at);
    }
    // Read before the ledger: a record made safe in between counts as not (fetched again).
    let safe_below = shared.buffer.safe_below();
    let snapshot = cu.ledger.checkpoint(safe_below);
    let unsafe_messages = snapshot.unsafe_messages;
    let file = file.clone();
    let written = now_ms();
    let result = tokio::task::spawn_blocking(move || file.store(written, snapshot.accounts)).await;
    if let Ok(Err(e)) = result {
        tracing::warn!(error = %e, "catch-up checkpoint not written");
    }
    unsafe_messages
}

/// Where a restart's listing must reach back to for a fetched message while its record is not
/// safe (Unix ms): when it was created, but never before this fill's own listing started (the
/// conversation was listed as updated since then) nor after `now`: a `created_at` the platform
/// got wrong, or a hostile one, can neither hide the message from the next listing nor stretch
/// the restart's gap back to 1970.
fn listing_from(created_at: Option<i64>, since_ms: i64, now_ms: i64) -> i64 {
    created_at.map_or(since_ms, |seconds| {
        seconds
            .saturating_mul(1000)
            .clamp(since_ms, now_ms.max(since_ms))
    })
}

/// Two gaps of one account as one: from the earlier start to the later end, resuming from the
/// lower watermark (`None`, nothing known, is the lowest).
fn merge(waiting: Option<Gap>, gap: Gap) -> Gap {
    match waiting {
        None => gap,
        Some(w) => Gap {
            account: gap.account,
            start_ms: w.start_ms.min(gap.start_ms),
            end_ms: w.end_ms.max(gap.end_ms),
            cause: w.cause,
            watermark: w.watermark.min(gap.watermark),
        },
    }
}

/// Starts a profile check of `token` unless one is running.
fn check(
    tasks: &mut JoinSet<Done>,
    checking: &mut std::collections::HashSet<String>,
    shared: &Arc<Shared>,
    profile_ok: &Arc<std::sync::Mutex<HashMap<String, i64>>>,
    token: ApiToken,
) {
    if checking.insert(token.expose().to_owned()) {
        let (shared, profile_ok) = (shared.clone(), profile_ok.clone());
        tasks.spawn(async move {
            let key = token.expose().to_owned();
            check_profile(shared, token, profile_ok).await;
            Done::Profile(key)
        });
    }
}

/// What a worker task finished.
enum Done {
    /// A fill of this account.
    Filled(u64),
    /// A profile check of this API token.
    Profile(String),
}

/// Fills one gap (conversations changed in it, then their messages after the last published).
async fn fill(shared: Arc<Shared>, gap: Gap) -> Done {
    fill_one(&shared, &gap).await;
    Done::Filled(gap.account)
}

async fn fill_one(shared: &Arc<Shared>, gap: &Gap) {
    let gap = *gap;
    let cu = &shared.catchup;
    let info = cu.accounts.get(&gap.account);
    let Some((client, token)) = cu.filler(gap.account) else {
        unrecovered(cu, &gap, Unrecovered::NoApiToken, None, 0);
        return;
    };
    if gap.duration_ms() > i64::try_from(cu.config.max_window.as_millis()).unwrap_or(i64::MAX) {
        unrecovered(cu, &gap, Unrecovered::TooLong, None, 0);
        return;
    }
    let Some(receiver) = info.map(|i| i.receiver.clone()) else {
        return;
    };
    let mut tally = Tally::default();
    match fill_with(shared, &client, &token, &receiver, &gap, &mut tally).await {
        Ok(()) => {
            cu.status.gap_done(
                gap.account,
                gap.start_ms,
                gap.end_ms,
                gap.cause,
                Ok(tally.published),
            );
            emit(
                &cu.metrics,
                t::GapRecovered {
                    gap: &gap,
                    published: tally.published,
                    duplicates: tally.duplicates,
                    conversations: tally.conversations,
                    requests: tally.requests,
                },
            );
        }
        Err(e) => unrecovered(cu, &gap, Unrecovered::RestFailed, Some(&e), tally.published),
    }
}

fn unrecovered(
    cu: &Catchup,
    gap: &Gap,
    reason: Unrecovered,
    error: Option<&RestError>,
    published: u64,
) {
    cu.status.gap_done(
        gap.account,
        gap.start_ms,
        gap.end_ms,
        gap.cause,
        Err((reason, published)),
    );
    let entry = cu.accounts.get(&gap.account).map(|a| a.entry.as_str());
    emit(
        &cu.metrics,
        t::GapUnrecovered {
            gap,
            entry,
            reason,
            error,
            published,
        },
    );
}

#[derive(Default)]
struct Tally {
    published: u64,
    duplicates: u64,
    conversations: usize,
    requests: u64,
}

async fn fill_with(
    shared: &Shared,
    client: &RestClient,
    token: &ApiToken,
    receiver: &Receiver,
    gap: &Gap,
    tally: &mut Tally,
) -> Result<(), RestError> {
    let cu = &shared.catchup;
    let account = gap.account;
    let class = shared.router.receiver_class(receiver);
    let margin_ms = i64::try_from(cu.config.margin.as_millis()).unwrap_or(0);
    let since_ms = gap.start_ms - margin_ms;
    let seconds = u64::try_from((now_ms() - since_ms).max(1000).div_euclid(1000) + 1).unwrap_or(1);
    tally.requests += 1;
    let conversations = client.conversations(token, account, seconds).await?;
    tally.conversations = conversations.len();
    for conversation in &conversations {
        let display_id = conversation.id;
        let resume = cu.ledger.resume_after(account, display_id, gap.watermark);
        // Nothing known of the conversation or the account: fetch from its start and keep
        // what was created since the gap began.
        let created_since = resume.is_none().then_some(since_ms.div_euclid(1000));
        let mut after = resume.unwrap_or(0);
        for page_number in 0.. {
            if page_number == MAX_PAGES {
                return Err(DecodeError::TooManyPages {
                    display_id,
                    pages: MAX_PAGES,
                }
                .into());
            }
            tally.requests += 1;
            let page = match client.messages(token, account, display_id, after).await {
                Ok(page) => page,
                // Deleted since it was listed: nothing to recover there.
                Err(RestError::NotFound) => break,
                Err(e) => return Err(e),
            };
            let full = page.len() >= PAGE;
            let mut advanced = false;
            for message in &page {
                if message.id > after {
                    after = message.id;
                    advanced = true;
                }
                if let (Some(since), Some(at)) = (created_since, message.created_at) {
                    if at < since {
                        continue;
                    }
                }
                let conv = message.conversation_id.unwrap_or(display_id);
                let listed_from = listing_from(message.created_at, since_ms, now_ms());
                match cu
                    .ledger
                    .hold(account, class, conv, message.id, listed_from)
                {
                    Some(held) => {
                        let handed = publish(
                            shared,
                            receiver,
                            account,
                            EventKind::MessageCreated,
                            message,
                        )
                        .await;
                        if let Handed::Done(pushed) = handed {
                            held.accepted(pushed, || shared.buffer.safe_below());
                            tally.published += 1;
                        }
                    }
                    None => tally.duplicates += 1,
                }
            }
            // A full page that did not move forward would loop forever: stop.
            if !full || !advanced {
                break;
            }
        }
        publish(
            shared,
            receiver,
            account,
            EventKind::ConversationUpdated,
            conversation,
        )
        .await;
    }
    Ok(())
}

/// One REST object as a replayed event, through the same filter, router and buffer as live
/// ones. The payload is the object's bytes exactly as the API returned them.
async fn publish(
    shared: &Shared,
    receiver: &Receiver,
    account: u64,
    kind: EventKind,
    item: &Item,
) -> Handed {
    let name = kind.name().unwrap_or("other");
    let m = &shared.metrics;
    if !shared.router.allows(name) {
        bt::emit(m, bt::EventFiltered { kind });
        return Handed::Done(Pushed::Dropped);
    }
    let event = EventRef {
        identifier: RawStr::plain(""),
        name: name.into(),
        kind,
        account_id: Some(account),
        conversation_id: match kind {
            EventKind::MessageCreated => item.conversation_id,
            _ => Some(item.id),
        },
        inbox_id: item.inbox_id,
        message_id: (kind == EventKind::MessageCreated).then_some(item.id),
        data: item.raw.get(),
    };
    let routed = shared
        .router
        .route_replayed(&event, receiver, SystemTime::now(), Instant::now());
    hand_over(shared, routed, name).await
}

/// Fetches a profile; subscriptions using this API token whose pubsub token changed follow the
/// new one.
async fn check_profile(
    shared: Arc<Shared>,
    token: ApiToken,
    profile_ok: Arc<std::sync::Mutex<HashMap<String, i64>>>,
) {
    let cu = &shared.catchup;
    let Some(client) = cu.client.clone() else {
        return;
    };
    let asked_at = now_ms();
    let profile = match client.profile(&token).await {
        Ok(p) => p,
        Err(error) => {
            let entry = cu.entry_of(&token).unwrap_or_default();
            emit(
                &cu.metrics,
                t::ProfileFailed {
                    entry: &entry,
                    error: &error,
                },
            );
            return;
        }
    };
    let new = PubsubToken::new(profile.pubsub_token.trim());
    if new.expose().is_empty() {
        return;
    }
    let last_ok = {
        let mut ok = profile_ok.lock().unwrap_or_else(|p| p.into_inner());
        ok.insert(token.expose().to_owned(), asked_at).unwrap_or(0)
    };
    cu.rotate(&token, &new, last_ok);
}

impl Catchup {
    /// The API token of subscription `index`.
    fn sub_api_token(&self, index: usize) -> Option<ApiToken> {
        self.subs
            .lock()
            .ok()
            .and_then(|s| s.get(index).and_then(|s| s.api_token.clone()))
    }

    /// Every distinct API token.
    fn api_tokens(&self) -> Vec<ApiToken> {
        let mut out: Vec<ApiToken> = Vec::new();
        if let Ok(subs) = self.subs.lock() {
            for s in subs.iter() {
                if let Some(t) = &s.api_token {
                    if !out.contains(t) {
                        out.push(t.clone());
                    }
                }
            }
        }
        out
    }

    /// The entry of the first subscription using an API token.
    fn entry_of(&self, token: &ApiToken) -> Option<String> {
        self.subs.lock().ok().and_then(|s| {
            s.iter()
                .find(|s| s.api_token.as_ref() == Some(token))
                .map(|s| s.entry.clone())
        })
    }

    /// The profile of `api` shows pubsub token `new`: every subscription of that API token
    /// with another token follows it. `last_ok_ms` is when the profile last showed the old one
    /// (the rotation happened after it).
    pub(crate) fn rotate(&self, api: &ApiToken, new: &PubsubToken, last_ok_ms: i64) {
        let mut rotated = Vec::new();
        if let Ok(mut subs) = self.subs.lock() {
            for (index, sub) in subs.iter_mut().enumerate() {
                if sub.api_token.as_ref() != Some(api) || &sub.token == new {
                    continue;
                }
                let old = std::mem::replace(&mut sub.token, new.clone());
                let identifier = match sub.user_id {
                    Some(user) => RoomIdentifier::user(new.clone(), sub.account, user),
                    None => RoomIdentifier::contact(new.clone()),
                };
                rotated.push((index, sub.account, sub.conn, old, identifier));
            }
        }
        for (index, account, conn, old, identifier) in rotated {
            // The old subscription went quiet at the rotation: after its last event, and after
            // the last profile that still showed the old token.
            let start = self.status.last_event_ms(index).max(last_ok_ms);
            self.lost(index, account, GapCause::TokenRotated, start);
            self.status.rotated(index, new.clone());
            self.book().recause(account, GapCause::TokenRotated);
            emit(
                &self.metrics,
                t::TokenRotated {
                    account,
                    old: &old.redacted(),
                    new: &new.redacted(),
                },
            );
            if let Some(tx) = self.rotations.get(conn) {
                let _ = tx.send(Rotation { index, identifier });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(start_ms: i64, end_ms: i64, cause: GapCause, watermark: Option<u64>) -> Gap {
        Gap {
            account: 1,
            start_ms,
            end_ms,
            cause,
            watermark,
        }
    }

    #[test]
    fn a_fetched_message_is_listed_from_its_creation_within_the_fill_s_window() {
        let (since, now) = (1_700_000_000_000, 1_700_000_600_000);
        let cases = [
            (None, since),
            (Some(1_700_000_300), 1_700_000_300_000),
            (Some(1_600_000_000), since),
            (Some(0), since),
            (Some(-1), since),
            (Some(i64::MIN), since),
            (Some(1_800_000_000), now),
            (Some(i64::MAX), now),
        ];
        for (created_at, want) in cases {
            assert_eq!(listing_from(created_at, since, now), want, "{created_at:?}");
        }
        // A clock behind the gap's start: never before the listing.
        assert_eq!(listing_from(Some(i64::MAX), since, since - 5), since);
    }

    #[test]
    fn merged_gaps_cover_both_and_resume_from_the_lower_watermark() {
        let a = gap(10, 20, GapCause::Stale, Some(5));
        let b = gap(30, 40, GapCause::SocketDropped, Some(9));
        assert_eq!(merge(None, a), a);
        let m = merge(Some(a), b);
        assert_eq!(
            (m.start_ms, m.end_ms, m.cause, m.watermark),
            (10, 40, GapCause::Stale, Some(5))
        );
        let n = merge(Some(b), gap(0, 1, GapCause::Restart, None));
        assert_eq!(
            (n.start_ms, n.end_ms, n.watermark),
            (0, 40, None),
            "nothing known is lowest"
        );
    }
}
