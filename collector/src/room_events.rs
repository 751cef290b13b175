//! Room membership changes recorded in the catalog, as `room_events` rows.
//!
//! `sipvault room` writes every membership change to the catalog's event
//! log; the collector of `serve` reads the events after the last one it
//! archived (see `Pipeline::new_catalog_room_events`) and archives each
//! once. Names become URIs, as IMs name rooms and users.

use sipvault_catalog::{ROOM_USER_PREFIX, RoomEvent};
use sipvault_schemas::RoomEventRow;

/// The archive row of a catalog room event of a room in `domain` (`None`
/// when the room is no longer in the catalog: names stay bare).
pub fn from_catalog(event: &RoomEvent, domain: Option<&str>) -> RoomEventRow {
    let uri = |user: &str| match domain {
        Some(domain) => format!("sip:{user}@{domain}"),
        None => user.to_string(),
    };
    // The catalog writes `member-added:ROLE`, `role-changed:ROLE`,
    // `member-removed` and `created`.
    let (kind, role) = match event.event.split_once(':') {
        Some((kind, role)) => (kind, Some(role.to_string())),
        None => (event.event.as_str(), None),
    };
    RoomEventRow {
        time_ns: event.time_ns,
        kind: "room".into(),
        room: uri(&format!("{ROOM_USER_PREFIX}{}", event.room)),
        member: (!event.user.is_empty()).then(|| uri(&event.user)),
        event: kind.replace('-', "_"),
        role,
        by_user: event.by.clone(),
        call_id: None,
        catalog_id: Some(event.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, user: &str, event: &str) -> RoomEvent {
        RoomEvent {
            id,
            time_ns: 1_764_000_000_000_000_000,
            room: "budget".into(),
            user: user.into(),
            event: event.into(),
            by: "lead".into(),
        }
    }

    #[test]
    fn catalog_events_become_rows_with_uris_and_roles() {
        let created = from_catalog(&event(1, "", "created"), Some("example.com"));
        assert_eq!(created.room, "sip:room-budget@example.com");
        assert_eq!(
            (created.member, created.event.as_str(), created.role),
            (None, "created", None)
        );
        let added = from_catalog(
            &event(2, "alice", "member-added:read-only"),
            Some("example.com"),
        );
        assert_eq!(added.member.as_deref(), Some("sip:alice@example.com"));
        assert_eq!(added.event, "member_added");
        assert_eq!(added.role.as_deref(), Some("read-only"));
        assert_eq!(
            (added.catalog_id, added.by_user.as_str()),
            (Some(2), "lead")
        );
        let changed = from_catalog(&event(3, "alice", "role-changed:owner"), None);
        assert_eq!(
            (changed.room.as_str(), changed.member.as_deref()),
            ("room-budget", Some("alice"))
        );
        assert_eq!(
            (changed.event.as_str(), changed.role.as_deref()),
            ("role_changed", Some("owner"))
        );
        let removed = from_catalog(&event(4, "alice", "member-removed"), None);
        assert_eq!(
            (removed.event.as_str(), removed.role),
            ("member_removed", None)
        );
    }
}
