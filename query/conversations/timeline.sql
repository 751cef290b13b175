-- timeline: one user's IMs sent and received, presence changes, calls
-- placed and received, and the changes of their room and conference
-- memberships in a time range, oldest first. A presence row is
-- shown when its state (basic, activities, note) differs from the user's
-- previous one in the range, so a state published once and notified to
-- several watchers appears once. The other party of an IM or a call is
-- shown as `Name <uri>` when its display name was archived.
WITH presence_states AS (
    SELECT
        time,
        call_id,
        basic,
        nullif(array_to_string(activities, ', '), '') AS activities,
        note
    FROM presence
    WHERE {in_range} AND entity = {user}
),
presence_changes AS (
    SELECT
        *,
        row_number() OVER (ORDER BY time, call_id) AS n,
        lag(basic) OVER (ORDER BY time, call_id) AS prev_basic,
        lag(activities) OVER (ORDER BY time, call_id) AS prev_activities,
        lag(note) OVER (ORDER BY time, call_id) AS prev_note
    FROM presence_states
),
events AS (
    SELECT
        time,
        'im-sent' AS kind,
        CASE
            WHEN nullif(to_display, '') IS NOT NULL AND cardinality(recipients) = 1
            THEN concat(to_display, ' <', recipients[1], '>')
            ELSE array_to_string(recipients, ', ')
        END AS party,
        delivery_status AS status,
        CAST(status AS INT) AS code,
        body AS detail,
        call_id || '#' || CAST(cseq AS VARCHAR) AS id
    FROM im_messages
    WHERE {in_range} AND sender = {user}
    UNION ALL
    SELECT
        time, 'im-received',
        CASE WHEN nullif(from_display, '') IS NOT NULL THEN concat(from_display, ' <', sender, '>') ELSE sender END,
        delivery_status, CAST(status AS INT), body,
        call_id || '#' || CAST(cseq AS VARCHAR)
    FROM im_messages
    WHERE {in_range} AND array_has(recipients, {user})
    UNION ALL
    SELECT
        time, 'presence', CAST(NULL AS VARCHAR), basic, CAST(NULL AS INT),
        nullif(concat_ws('; ', activities, note), ''),
        call_id
    FROM presence_changes
    WHERE n = 1
       OR (basic IS DISTINCT FROM prev_basic)
       OR (activities IS DISTINCT FROM prev_activities)
       OR (note IS DISTINCT FROM prev_note)
    UNION ALL
    SELECT
        time, 'call-placed',
        CASE WHEN nullif(callee_display, '') IS NOT NULL THEN concat(callee_display, ' <', callee, '>') ELSE callee END,
        disposition, CAST(final_code AS INT),
        CASE
            WHEN duration_ms IS NOT NULL THEN concat('talked ', CAST(duration_ms / 1000 AS VARCHAR), ' s')
            ELSE reason
        END,
        call_id
    FROM calls
    WHERE {in_range} AND caller = {user}
    UNION ALL
    SELECT
        time, 'call-received',
        CASE WHEN nullif(caller_display, '') IS NOT NULL THEN concat(caller_display, ' <', caller, '>') ELSE caller END,
        disposition, CAST(final_code AS INT),
        CASE
            WHEN duration_ms IS NOT NULL THEN concat('talked ', CAST(duration_ms / 1000 AS VARCHAR), ' s')
            ELSE reason
        END,
        call_id
    FROM calls
    WHERE {in_range} AND callee = {user}
    UNION ALL
    SELECT
        time, kind || '-event', room, event, CAST(NULL AS INT),
        concat_ws(' ', role, 'by', by_user),
        coalesce(call_id, CAST(catalog_id AS VARCHAR))
    FROM room_events
    WHERE {in_range} AND member = {user}
)
SELECT time, kind, party, status, code, detail, id
FROM events
ORDER BY time, kind, id
