//! Rendering one entry: its values read, checked and decrypted, passed
//! through the validator plugins, templated, checked by its command, and
//! written in place.

use super::*;

impl Runner {
    /// The entry's file: values checked and decrypted, passed through the
    /// validator plugins, then templated.
    pub(super) async fn content(
        &self,
        compiled: &Compiled,
        keyring: &Keyring,
        kvs: &[KeyValue],
        sequences: &[Option<u64>],
    ) -> Result<Vec<u8>, String> {
        let plain = plain_values(keyring, kvs, sequences)?;
        let Some(validators) = self
            .validators
            .get()
            .filter(|v| plain.iter().any(|(key, _)| v.covers(key)))
        else {
            return produce_with(compiled, &plain, &self.services(compiled));
        };
        let checked = tokio::task::spawn_blocking(move || {
            for (key, value) in &plain {
                validators
                    .validate(key, value)
                    .map_err(|err| err.to_string())?;
            }
            Ok::<_, String>(plain)
        })
        .await
        .map_err(|err| format!("the validation task failed: {err}"))??;
        produce_with(compiled, &checked, &self.services(compiled))
    }

    /// The fleet's service instances, if the entry shows them.
    pub(super) fn services(&self, compiled: &Compiled) -> Vec<Instance> {
        match &self.membership {
            Some(membership) if compiled.uses_services() => {
                discover(&membership.members(), &Query::default())
            }
            _ => Vec::new(),
        }
    }

    /// Renders one entry and notes how the rollout values in it fared.
    pub(super) async fn render_one(
        &mut self,
        index: usize,
        compiled: &Compiled,
        startup: bool,
    ) -> Rendered {
        let mut used = Vec::new();
        self.last_failure = None;
        let start = Instant::now();
        let rendered = self.render_entry(compiled, startup, &mut used).await;
        crate::telemetry::RENDER.observe(start.elapsed());
        let failure = self.last_failure.take();
        self.rollouts.record(index, used, failure.as_deref());
        rendered
    }

    pub(super) async fn render_entry(
        &mut self,
        compiled: &Compiled,
        startup: bool,
        used: &mut Vec<String>,
    ) -> Rendered {
        let entry = &compiled.entry;
        let dest = entry.dest.display().to_string();
        let read = match compiled.range() {
            Some(range) => self
                .node
                .store()
                .range_with_sequences(&RangeRequest::new(range)),
            None => Ok((Default::default(), self.node.store().revision(), Vec::new())),
        };
        let (mut response, revision, mut sequences) = match read {
            Ok(read) => read,
            Err(err) => {
                self.failed(compiled, format!("reading the store: {err}"));
                return Rendered::Failed;
            }
        };
        let keyring: Arc<Keyring> = self.keyring.get();
        // What the store holds, before rollout values stand in for it.
        let stored_keys = protected(&keyring, &response.kvs);
        if let Some(range) = compiled.range() {
            *used = self
                .rollouts
                .apply(&range, &mut response.kvs, &mut sequences);
        }
        if let Err(err) =
            self.rendered_keys
                .check(&entry.dest, &keyring, self.node.store(), &response.kvs)
        {
            self.failed(compiled, err);
            return Rendered::Refused;
        }
        let holds_secret = response.kvs.iter().any(|kv| holds_secret(&kv.value));
        let applied = entry.for_content(holds_secret);
        let entry = &*applied;
        let content = match self
            .content(compiled, &keyring, &response.kvs, &sequences)
            .await
        {
            Ok(content) => content,
            Err(err) => {
                self.failed(compiled, err);
                return Rendered::Refused;
            }
        };
        let current = files::read(&entry.dest).unwrap_or(None);
        let unchanged = current.as_deref() == Some(content.as_slice())
            && files::has_attributes(&entry.dest, entry);
        if !unchanged {
            if let Some(check) = &entry.check {
                if let Err(err) = check_content(check, entry, &content).await {
                    self.failed(compiled, err);
                    return Rendered::Refused;
                }
            }
            if let Err(err) = files::write(entry, &content) {
                self.failed(compiled, format!("writing {dest}: {err}"));
                return Rendered::Failed;
            }
        }
        let changed = !unchanged;
        if startup || changed {
            tracing::info!(entry = %entry.name, dest = %dest, bytes = content.len(), revision, changed, "rendered");
            if holds_secret && !entry.mode_set {
                tracing::info!(entry = %entry.name, dest = %dest, "the file holds a decrypted secret: written with mode 0600 (set `mode` in its [[render]] entry to choose another)");
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.status.update(&dest, &entry.name, |s| {
            s.renders += 1;
            s.writes += u64::from(changed);
            s.revision = revision;
            s.rendered_unix_ms = now_ms;
            s.bytes = content.len() as u64;
            s.error = None;
            s.drift = None;
        });
        self.reported.remove(&entry.dest);
        self.rendered_keys
            .remember(&entry.dest, compiled.range(), stored_keys);
        self.written
            .insert(entry.dest.clone(), (content, holds_secret));
        if changed {
            Rendered::Changed
        } else {
            Rendered::Unchanged
        }
    }

    pub(super) fn failed(&mut self, compiled: &Compiled, err: String) {
        self.last_failure = Some(err.clone());
        let entry = &compiled.entry;
        let dest = entry.dest.display().to_string();
        tracing::error!(entry = %entry.name, dest = %dest, error = %err, "render failed; the last good file stays");
        self.status.update(&dest, &entry.name, |s| {
            s.renders += 1;
            s.error = Some(err);
        });
    }
}

/// Runs the entry's check command on the new content, written to a
/// private temporary file beside the destination (so relative includes in
/// it resolve as they will).
async fn check_content(
    check: &str,
    entry: &crate::config::RenderEntry,
    content: &[u8],
) -> Result<(), String> {
    let dir = entry.dest.parent().unwrap_or(Path::new("."));
    let _ = std::fs::create_dir_all(dir);
    let mut temp = tempfile::Builder::new()
        .prefix(".edgeconf-check-")
        .tempfile_in(dir)
        .map_err(|err| format!("check: cannot write a temporary file: {err}"))?;
    std::io::Write::write_all(&mut temp, content)
        .map_err(|err| format!("check: cannot write a temporary file: {err}"))?;
    let quoted = format!(
        "'{}'",
        temp.path().display().to_string().replace('\'', "'\\''")
    );
    let command = check.replace("{}", &quoted);
    crate::render::reload::run(&command, entry.reload_timeout)
        .await
        .map_err(|err| format!("check command refused the new content ({check}): {err}"))
}

/// Whether a stored value is a secret (an encrypted signed change); the
/// file that shows it holds the decrypted secret.
fn holds_secret(value: &[u8]) -> bool {
    matches!(
        crate::signing::SignedChange::from_stored(value),
        Ok(Some(change)) if change.encrypted
    )
}
