//! The in-memory store: a map of users behind one mutex, bounded to [`MAX_USERS`] users
//! (the least recently seen one is dropped to make room) and [`HISTORY_LEN`] messages
//! each. Logins are not kept one by one here: a session row is what PostgreSQL adds.
//! Nothing in it awaits, so the lock is never held across an await point.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{HISTORY_LEN, Message, Profile};

/// Users kept in memory; the least recently seen one is dropped to make room.
pub const MAX_USERS: usize = 10_000;

/// Users, their history and preferences, in this process only.
#[derive(Default)]
pub struct MemoryStore {
    users: Mutex<Users>,
}

impl MemoryStore {
    pub(super) fn login(&self, user: &str) {
        self.users().entry(user);
    }

    pub(super) fn preferences(&self, user: &str) -> Profile {
        self.users()
            .map
            .get(user)
            .map(|data| data.preferences.clone())
            .unwrap_or_default()
    }

    pub(super) fn set_preferences(&self, user: &str, profile: &Profile) {
        self.users().entry(user).preferences = profile.clone();
    }

    pub(super) fn history(&self, user: &str) -> Vec<Message> {
        self.users()
            .map
            .get(user)
            .map(|data| data.history.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub(super) fn clear_history(&self, user: &str) {
        if let Some(data) = self.users().map.get_mut(user) {
            data.history.clear();
        }
    }

    pub(super) fn record_chat(&self, user: &str, messages: &[Message]) -> Profile {
        let mut users = self.users();
        let data = users.entry(user);
        for message in messages {
            data.remember(message.clone());
        }
        data.preferences.clone()
    }

    fn users(&self) -> MutexGuard<'_, Users> {
        // A panic elsewhere cannot leave `Users` half-updated in a way that matters for a
        // demo, so a poisoned lock is used as is rather than taking the server down.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct Users {
    map: HashMap<String, UserData>,
    /// Logical clock for least-recently-seen eviction.
    clock: u64,
}

#[derive(Default)]
struct UserData {
    history: VecDeque<Message>,
    preferences: Profile,
    last_seen: u64,
}

impl Users {
    /// The user's data, created if needed, marked as just seen.
    fn entry(&mut self, user: &str) -> &mut UserData {
        self.clock += 1;
        if !self.map.contains_key(user) && self.map.len() >= MAX_USERS {
            // A linear scan, but only when full; a demo does not need an LRU structure.
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, data)| data.last_seen)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.map.remove(&oldest);
            }
        }
        let data = self.map.entry(user.to_owned()).or_default();
        data.last_seen = self.clock;
        data
    }
}

impl UserData {
    fn remember(&mut self, message: Message) {
        self.history.push_back(message);
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Role;
    use super::*;

    #[test]
    fn users_are_bounded_and_evict_least_recently_seen() {
        let mut users = Users::default();
        for i in 0..MAX_USERS {
            users.entry(&format!("u{i}"));
        }
        // Touch the oldest so the second-oldest becomes the eviction candidate.
        users.entry("u0");
        users.entry("newcomer");
        assert_eq!(users.map.len(), MAX_USERS);
        assert!(users.map.contains_key("u0"));
        assert!(users.map.contains_key("newcomer"));
        assert!(!users.map.contains_key("u1"));
    }

    #[test]
    fn history_keeps_the_last_messages() {
        let mut data = UserData::default();
        for i in 0..HISTORY_LEN + 3 {
            data.remember(Message::new(Role::User, i.to_string()));
        }
        assert_eq!(data.history.len(), HISTORY_LEN);
        assert_eq!(data.history.front().map(|m| m.content.as_str()), Some("3"));
    }
}
